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
from syncmesh.store.sqlite.table import TableSql


def status(ctx: StoreContext) -> StoreStatus:
    """All of `StoreStatus` from one read snapshot (BEGIN DEFERRED)."""
    ctx.require_init()
    with ctx.transaction("DEFERRED"):
        state = ctx.state()
        counts = {name: _row_counts(ctx, table) for name, table in ctx.tables.items()}
        tables = {name: rows for name, (rows, _nulls) in counts.items()}
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
            null_key_rows={name: nulls for name, (_rows, nulls) in counts.items() if nulls},
        )


def _row_counts(ctx: StoreContext, table: TableSql) -> tuple[int, int]:
    """Rows of a tracked table, and those with a NULL key value (capture skips them).

    One pass: the rows are counted anyway.  (-1, 0) when the table cannot
    be read as tracked (DDL not followed yet): a table renamed or dropped
    since the last reconcile is named in `schema_problems`, and the status
    still reads (issue 14).
    """
    nulls = " OR ".join(f"{quote_identifier(column)} IS NULL" for column in table.spec.pk)
    try:
        rows, null_keys = ctx.connection.execute(
            f"SELECT count(*), count(CASE WHEN {nulls} THEN 1 END) FROM {table.table}"
        ).fetchone()
    except sqlite3.OperationalError:
        return -1, 0
    return int(rows), int(null_keys)
