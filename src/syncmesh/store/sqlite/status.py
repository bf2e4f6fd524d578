"""The store's status: one snapshot of its identity, feed, tables, peers and problems."""

from __future__ import annotations

import sqlite3

from syncmesh.store.records import StoreStatus
from syncmesh.store.sqlite import (
    conflicts,
    integer_keys,
    lifecycle,
    orphans,
    peers,
    tracking,
    waitlist,
)
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import quote_identifier
from syncmesh.store.sqlite.introspect import fingerprint, untyped_key_warnings


def status(ctx: StoreContext) -> StoreStatus:
    """All of `StoreStatus` from one read snapshot (BEGIN DEFERRED)."""
    ctx.require_init()
    with ctx.transaction("DEFERRED"):
        state = ctx.state()
        tables = {name: _row_count(ctx, table.table) for name, table in ctx.tables.items()}
        quarantined = int(
            ctx.connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[0]
        )
        return StoreStatus(
            ctx.site_id(),
            ctx.incarnation(),
            state["seq"],
            state["hlc"],
            fingerprint(ctx.specs()),
            tables,
            ctx.vector(),
            peers.peer_cursors(ctx),
            quarantined,
            state["restore_floor"],
            ctx.path,
            tracking.schema_problems(ctx),
            conflicts.totals(ctx),
            [
                f"table {table!r}, key ({key}): {reason}"
                for (table, key), reason in sorted(ctx.row_problems.items())
            ],
            waiting_cells=waitlist.waiting_counts(ctx),
            discarded_cells=waitlist.discarded_counts(ctx),
            parked_cells=waitlist.waiting_counts(ctx, parked=True),
            warnings=[*integer_keys.warnings(ctx), *untyped_key_warnings(ctx.specs())],
            orphans=orphans.orphan_counts(ctx),
            orphan_problems=orphans.problems(ctx),
            lifecycle=lifecycle.status(ctx),
            null_key_rows=_null_key_rows(ctx),
        )


def _null_key_rows(ctx: StoreContext) -> dict[str, int]:
    """Per tracked table, rows with a NULL key value (capture skips them); only nonzero.

    `key IS NULL` is a lookup in the key's index, so status stays cheap.
    """
    counts: dict[str, int] = {}
    for name, table in ctx.tables.items():
        nulls = " OR ".join(f"{quote_identifier(column)} IS NULL" for column in table.spec.pk)
        try:
            (rows,) = ctx.connection.execute(
                f"SELECT count(*) FROM {table.table} WHERE {nulls}"
            ).fetchone()
        except sqlite3.OperationalError:  # DDL not followed yet: schema_problems says so
            continue
        if rows:
            counts[name] = int(rows)
    return counts


def _row_count(ctx: StoreContext, quoted_table: str) -> int:
    """Rows of a tracked table; -1 when it cannot be read as tracked (DDL not followed yet).

    A table renamed or dropped since the last reconcile is named in
    `schema_problems`; the status still reads (issue 14).
    """
    try:
        return int(ctx.connection.execute(f"SELECT count(*) FROM {quoted_table}").fetchone()[0])
    except sqlite3.OperationalError:
        return -1
