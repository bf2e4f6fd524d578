"""Merging waiting cells once their column is here (ADR 0013, "Mixed schema versions").

A waiting cell is a cell of a column this node did not have when the
cell arrived (`waitlist` keeps them).  `merge_ready` runs every waiting
cell whose column now maps to one of ours (by its name, the sender's
former names, or ours) through the normal merge, as the one-column row
it arrived in: its key, the row's causal length and its stamp, the cell.
The merge then decides as it would have on arrival: a cell of a past life
of the row loses to the row's later life, an older stamp loses to a newer
one.  Cells of a column dropped here are discarded and counted.

The schema reconcile calls it when the schema changed, and
`retry_quarantine` calls it too; both inside their transaction, after
capturing pending local writes (so that nothing local is stamped late).
"""

from __future__ import annotations

import logging

from syncmesh.model import ChangeBatch, RowChange, TableRows, row_of_state
from syncmesh.store.sqlite import apply, waitlist
from syncmesh.store.sqlite.context import StoreContext

log = logging.getLogger(__name__)


def merge_ready(ctx: StoreContext) -> int:
    """Merge (or discard) the waiting cells whose column is here now; returns how many.

    Runs inside the caller's transaction, after `capture.capture_pending`.
    Cells of a table no longer tracked here are forgotten: the table's
    rows sync again in full if it is tracked again (ADR 0013).
    """
    sites = ctx.require_init()
    groups: dict[tuple[str, str, str, tuple[str, ...]], list[RowChange]] = {}
    done: list[int] = []
    forgotten: list[int] = []
    for rowid, cell in waitlist.entries(ctx):
        table = apply.local_table(ctx, cell.table)
        if table is None:
            forgotten.append(rowid)
            continue
        shape = TableRows(cell.table, (cell.column,), table.key_count, [], (cell.former,))
        mapping = apply.map_columns(table, shape)
        if mapping.waiting:
            continue  # still not here
        done.append(rowid)
        key = (cell.origin, table.spec.name, cell.column, cell.former)
        groups.setdefault(key, []).append(cell.change)
    waitlist.remove(ctx, done + forgotten)
    if forgotten:
        log.info("forgot %d waiting cells of tables no longer tracked", len(forgotten))
    for (origin, name, column, former), changes in groups.items():
        batch_sites: dict[str, int] = {}
        rows = [row_of_state(change, (column,), batch_sites) for change in changes]
        table_rows = TableRows(name, (column,), len(changes[0].pk), rows, (former,))
        batch = ChangeBatch("", 0, 0, 0, None, tuple(batch_sites), (table_rows,))
        apply.merge_rows(ctx, origin, batch, sites)
    if done:
        log.info("merged %d waiting cells: their columns are here now", len(done))
    return len(done)
