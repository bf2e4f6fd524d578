"""Which merges resolve a conflict: two concurrent writes to one cell.

A write *knows* an earlier write to the same cell when that write, or a
write that knew it, had reached the writer's node before it wrote
(Lamport's happened-before, carried by the cell's own values).  Two writes
are *concurrent* when neither knows the other; the merge then keeps one and
discards the other although neither writer had seen the other's value.
That is a conflict.  A write that replaces a value its writer had seen is a
causal overwrite, not a conflict.

Each cell value carries its `past` (`model.Cell.past`): per other site, the
greatest HLC of that site's writes to the cell that its writer knew.  A
site's writes to one cell know all of that site's earlier writes to it, and
knowing a write means knowing what it knew, so one HLC per site describes
the whole set.  The writer's own site is implied: a write knows every
earlier write of its own site.  So `knows` is exact, not a guess from the
order of the stamps (docs/adr/0007-conflict-ledger.md says why the stamp
order is not enough).

A node also remembers what it learned of a cell beyond its current value:
the writes it discarded when it resolved a conflict, and their pasts
(*knowledge*, `absorb`).  Its next write to the cell knows them too.

Comparisons are only made within one life of a row (equal causal length):
a greater causal length replaces the row whole, and a life's writes know
nothing of another life's.  Nothing here touches SQLite, a clock or the
network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from syncmesh.merge.rows import value_order_key
from syncmesh.model import DEFAULT_CELL_STAMP, Cell, RowState, Stamp

_DEFAULT_HLC, _DEFAULT_SITE = DEFAULT_CELL_STAMP.hlc, DEFAULT_CELL_STAMP.site_id

Knowledge = dict[str, int]  # site id -> the greatest HLC of its writes known (all below too)


@dataclass(frozen=True, slots=True)
class CellConflict:
    """A conflict the merge resolved: `winner` kept, `loser` discarded."""

    column: str
    winner: Cell
    loser: Cell


def knows(writer: Cell, stamp: Stamp) -> bool:
    """Whether the write of `writer` was made knowing the write stamped `stamp`.

    Every write knows the default stamp: that cell holds a column's default,
    which nobody wrote (`model.DEFAULT_CELL_STAMP`), so a write replacing it,
    or a row that lacks the column meeting a written value, loses no one's
    value.  Without this a rolling ADD COLUMN filled the conflict ledger with
    "conflicts" whose loser was NULL or the default from site 00000000.
    """
    if stamp.hlc == _DEFAULT_HLC and stamp.site_id == _DEFAULT_SITE:
        return True
    if stamp.site_id == writer.stamp.site_id:
        return stamp.hlc <= writer.stamp.hlc
    for site, hlc in writer.past:
        if site == stamp.site_id:
            return stamp.hlc <= hlc
    return False


def concurrent(left: Cell, right: Cell) -> bool:
    """Two different writes to one cell, neither made knowing the other."""
    return (
        left.stamp != right.stamp and not knows(left, right.stamp) and not knows(right, left.stamp)
    )


def same_value(left: Cell, right: Cell) -> bool:
    """Equal values of the same storage class (1 and 1.0 differ, as in SQLite)."""
    return value_order_key(left.value) == value_order_key(right.value)


def absorb(known: Mapping[str, int], kept: Cell, discarded: Cell) -> Knowledge:
    """What a node knows of a cell beyond `kept` and its past, once `discarded` is merged.

    `known` is what it knew beyond the cell's previous value.  Entries that
    `kept` knows anyway are dropped, so knowledge stays empty unless the
    node resolved a conflict on the cell.
    """
    result: Knowledge = dict(known)
    if not knows(kept, discarded.stamp):
        learned = (*discarded.past, (discarded.stamp.site_id, discarded.stamp.hlc))
        for site, hlc in learned:
            if result.get(site, -1) < hlc:
                result[site] = hlc
    return {site: hlc for site, hlc in result.items() if not knows(kept, Stamp(hlc, site))}


def resolve_cells(
    local: RowState, incoming: RowState, known: Mapping[str, Knowledge]
) -> tuple[list[CellConflict], dict[str, Knowledge]]:
    """The conflicts that joining `incoming` into `local` resolves, and the knowledge after.

    `known` maps a column to what the node knew beyond its local cell; the
    result maps every column whose knowledge changed.  Concurrent writes of
    the same value (the same storage class too) are not reported: nobody's
    value was lost.  Their knowledge is still absorbed.  Rows in different
    lives resolve nothing.  (This runs for every cell a node receives for a
    row it holds, so the common case, an overwrite by a write that knew
    ours with nothing else known, costs one lookup in the past.)
    """
    conflicts: list[CellConflict] = []
    changed: dict[str, Knowledge] = {}
    if local.cl != incoming.cl or not local.alive:
        return conflicts, changed
    for column, theirs in incoming.cells.items():
        ours = local.cells.get(column)
        if ours is None:
            continue
        # Plain attribute comparisons: the dataclass operators build tuples.
        mine, other = ours.stamp, theirs.stamp
        if mine.hlc == other.hlc and mine.site_id == other.site_id:
            continue
        newer = other.hlc > mine.hlc or (other.hlc == mine.hlc and other.site_id > mine.site_id)
        winner, loser = (theirs, ours) if newer else (ours, theirs)
        before = known.get(column)
        if knows(winner, loser.stamp):  # causal: an overwrite, or an old value arriving late
            if before:
                after = absorb(before, winner, loser)
                if after != before:
                    changed[column] = after
            continue
        after = absorb(before or {}, winner, loser)
        if after != (before or {}):
            changed[column] = after
        if concurrent(ours, theirs) and not same_value(ours, theirs):
            conflicts.append(CellConflict(column, winner, loser))
    return conflicts, changed
