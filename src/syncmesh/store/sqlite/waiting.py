"""Merging waiting cells once their column is here (ADR 0013, "Mixed schema versions").

A waiting cell is a cell of a column this node did not have when the
cell arrived (`waitlist` keeps them).  `merge_ready` runs every waiting
cell whose column now maps to one of ours (by its name, the sender's
former names, or ours) through the normal merge, as the one-column row
it arrived in: its key, the row's causal length and its stamp, the cell.
The merge then decides as it would have on arrival: a cell of a past life
of the row loses to the row's later life, an older stamp loses to a newer
one.  Cells of a column dropped here are discarded and counted.  Parked
cells (of a name dropped here, from a column added again at its sender) go the same way
once the name is a column here again, as the column added again
whatever their stamps (they were judged to be of it when they arrived:
`apply.cells_at_or_below`), so a sender's clock behind ours loses none.

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


MERGE_ROWS_PER_STEP = 10_000  # waiting cells merged per `merge_rows` call (one seq each)


def merge_ready(ctx: StoreContext) -> int:
    """Merge (or discard) the waiting cells whose column is here now; returns how many.

    Runs inside the caller's transaction, after `capture.capture_pending`.
    Cheap when nothing is ready: it looks at the few distinct (table,
    column) pairs that cells wait for, not at the cells.  Cells of a table
    no longer tracked here are forgotten: the table's rows sync again in
    full if it is tracked again (ADR 0013).
    """
    sites = ctx.require_init()
    merged = forgotten = 0
    groups = [(group, False) for group in waitlist.groups(ctx)]
    groups += [(group, True) for group in waitlist.groups(ctx, parked=True)]
    for (name, column, former, generation), parked in groups:
        table = apply.local_table(ctx, name)
        if table is None:
            forgotten += waitlist.forget_table(ctx, name)
            continue
        shape = TableRows(name, (column,), table.key_count, [], (former,))
        mapping = apply.map_columns(table, shape)
        if mapping.waiting or (parked and mapping.dropped):
            continue  # still not here (a parked name: not added again here yet)
        if parked and apply.newer_than_ours(table, mapping, 0, generation, None):
            continue  # the column here is still an older one of the name
        cells = waitlist.take(ctx, name, column, former, generation, parked=parked)
        merged += len(cells)
        by_origin: dict[str, list[RowChange]] = {}
        for cell in cells:
            by_origin.setdefault(cell.origin, []).append(cell.change)
        for origin, changes in by_origin.items():
            for start in range(0, len(changes), MERGE_ROWS_PER_STEP):
                step = changes[start : start + MERGE_ROWS_PER_STEP]
                batch_sites: dict[str, int] = {}
                rows = [row_of_state(change, (column,), batch_sites) for change in step]
                # A parked cell was judged of the column added again when it
                # arrived: it is, whatever its stamp (its sender's clock may
                # run behind ours).  Its generation says so to the merge.
                generations = (
                    (generation or apply.drops_here(table, (column, *former)),) if parked else ()
                )
                table_rows = TableRows(
                    name, (column,), table.key_count, rows, (former,), (), generations
                )
                batch = ChangeBatch("", 0, 0, 0, None, tuple(batch_sites), (table_rows,))
                apply.merge_rows(ctx, origin, batch, sites)
    if merged or forgotten:
        waitlist.refresh_floors(ctx)
    ctx.waiting_tables_version = ctx.tables_version
    if forgotten:
        log.info("forgot %d waiting cells of tables no longer tracked", forgotten)
    if merged:
        log.info("merged %d waiting cells: their columns are here now", merged)
    return merged


def worth_trying(ctx: StoreContext) -> bool:
    """Whether `merge_ready` may find something: tables changed since it last looked."""
    return ctx.waiting_tables_version != ctx.tables_version
