"""Retrying quarantined rows: every entry goes through the merge again.

Above `apply`, `capture` and `orphans` (it runs them), so that `quarantine`, which
`apply` records refused rows in, stays below them.  A retry also merges
the waiting cells whose column is here now (`waiting.merge_ready`).
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from syncmesh.model import (
    TEXT_ERRORS,
    ChangeBatch,
    RowChange,
    TableRows,
    row_from_plain,
    row_of_state,
)
from syncmesh.store.sqlite import apply, capture, orphans, vector, waiting
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.sites import SiteMap

# An entry's table, the columns its row names (None: a deleted row) and
# their creation stamps here (empty: unknown).
_EntryShape = tuple[str, tuple[str, ...] | None, tuple[int, ...]]


def retry(ctx: StoreContext) -> int:
    """Try every quarantined row and waiting cell again through the merge; returns rows resolved.

    A row of a table tracked here applies the columns we have; cells of
    columns not here become waiting cells.  A row of a table not tracked
    here (or with another primary key) stays quarantined whole.
    """
    sites = ctx.require_init()
    entries = ctx.connection.execute(
        "SELECT id, change, origin, column_created, table_name, pk, reason"
        " FROM _syncmesh_quarantine ORDER BY id"
    ).fetchall()
    ready = waiting.worth_trying(ctx)
    if not entries and not ready:
        return 0
    ctx.retrying = frozenset((table, pk, reason) for *_, table, pk, reason in entries)
    try:
        return _retry(ctx, sites, entries, ready)
    finally:
        ctx.retrying = frozenset()


def _retry(ctx: StoreContext, sites: SiteMap, entries: list[Any], ready: bool) -> int:
    with ctx.transaction():
        capture.capture_pending(ctx)
        merged = waiting.merge_ready(ctx) if ready else 0
        # Per origin one batch, as it came: one clock reading judges it whole
        # (apply.merge_rows), so a transaction's rows all pass or all wait.
        # Within it, one table entry per table and set of columns named (a
        # deleted row names none: it goes with our columns, its cells
        # unstamped).
        # An entry in our column names also says when each was created here:
        # the merge then tells a column dropped, or dropped and added again,
        # since the row was refused from the one it was refused in
        # (`apply.cells_at_or_below`), by our own stamps, not the cells'.
        by_origin: dict[str, dict[_EntryShape, list[RowChange]]] = {}
        for entry_id, blob, origin, created_json, *_ in entries:
            change = row_from_plain(msgpack.unpackb(blob, unicode_errors=TEXT_ERRORS))
            table = apply.local_table(ctx, change.table)
            if table is None or len(change.pk) != table.key_count:
                continue  # still unknown here: kept as it is, never applied in part
            ctx.connection.execute("DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,))
            named = tuple(change.state.cells) if change.state.alive else None
            created: tuple[int, ...] = ()
            if named and created_json is not None:
                created_here = json.loads(created_json)
                if all(column in created_here for column in named):
                    created = tuple(int(created_here[column]) for column in named)
            shape = (change.table, named, created)
            by_origin.setdefault(origin, {}).setdefault(shape, []).append(change)
        for origin, groups in by_origin.items():
            # Each entry with the columns its rows name, as the sender named
            # them: the merge maps them to ours (a column renamed here since
            # by our former names; one not here waits; one the sender lacks
            # takes the default cell, as it would have on time).  Rows that
            # name other columns go in an entry of their own: in one they
            # would read as unstamped cells of each other's columns.
            batch_sites: dict[str, int] = {}
            tables = []
            for (name, named, created), changes in groups.items():
                columns = _values_of(ctx, name) if named is None else named
                rows = [row_of_state(change, columns, batch_sites) for change in changes]
                tables.append(TableRows(name, columns, len(changes[0].pk), rows, created=created))
            batch = ChangeBatch("", 0, 0, 0, None, tuple(batch_sites), tuple(tables))
            apply.merge_rows(ctx, origin, batch, sites)
            orphans.resolve(ctx, *orphans.batch_keys(ctx, batch))
            # A row refused for drift was left out of every claim; held now, it
            # counts for its site's restore check (HELLO's `held`, ADR 0006).
            vector.note_stamps_held(ctx, batch)
        remaining = ctx.connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[
            0
        ]
        ctx.connection.execute("UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (ctx.clock.last,))
    return merged + max(0, len(entries) - int(remaining))


def _values_of(ctx: StoreContext, name: str) -> tuple[str, ...]:
    table = apply.local_table(ctx, name)
    assert table is not None  # entries of tables not here were kept in the quarantine
    return table.values
