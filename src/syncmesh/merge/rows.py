"""Causal-length existence plus column-level last-writer-wins, as a join.

A row's state is joined with an incoming state by two rules:

1. The greater causal length (`cl`) wins the row's existence.  An odd `cl`
   is a live row, an even one a deleted row; each delete or re-insert adds
   one.  When the incoming `cl` is greater, the local cells belong to an older
   life of the row and are discarded: a re-inserted row never shows columns
   from before its delete.  So a delete beats a concurrent update (the update
   was made in the older life), and a later re-insert resurrects the row.
2. With equal `cl`, each column independently takes the cell with the greater
   stamp (hlc, site_id).  Two different writes never share a stamp; should a
   file edited behind the engine's back produce equal stamps with different
   values, the greater value in SQLite's ordering wins, so even that converges.

`join_rows` is commutative, associative and idempotent (tests/test_merge_laws.py
proves it with Hypothesis); that is what lets any delivery order, duplicate or
relay path converge.  Nothing here touches SQLite, a clock or the network.
"""

from __future__ import annotations

import math

from syncmesh.model import CELL_FIELDS, Cell, RowState, SqlValue, Stamp, TableRows, text_bytes


def value_order_key(value: SqlValue) -> tuple[int, int | float | bytes, int]:
    """A total order on every value SQLite can store, two values tie only if identical.

    It follows SQLite's order of storage classes (NULL < numbers < text <
    blob) and, within them, its order of numbers and BINARY order of text
    and blobs.  Where SQLite calls two different values equal, a fixed
    tie-break keeps them apart, because the merge must pick the same one of
    them on every node: INTEGER 1 before REAL 1.0, and -0.0 before 0.0.
    Text compares by its bytes (`text_bytes`), so TEXT that is not valid
    UTF-8 has its place too, and code-point order never disagrees with
    SQLite's memcmp.
    """
    if value is None:
        return (0, 0, 0)
    if isinstance(value, bool):  # bool is an int subclass; SQLite stores 0/1
        return (1, int(value), 0)
    if isinstance(value, int):
        return (1, value, 0)
    if isinstance(value, float):
        # 1 and 1.0 compare equal numerically: integer first; then -0.0 before 0.0.
        return (1, value, 1 if math.copysign(1.0, value) < 0 else 2)
    if isinstance(value, str):
        return (2, text_bytes(value), 0)
    return (3, bytes(value), 0)


def join_cells(left: Cell | None, right: Cell | None) -> Cell | None:
    """The cell that wins: greater stamp, then greater value (then greater past)."""
    if left is None:
        return right
    if right is None:
        return left
    if right.stamp != left.stamp:
        return right if right.stamp > left.stamp else left
    right_key, left_key = value_order_key(right.value), value_order_key(left.value)
    if right_key != left_key:
        return right if right_key > left_key else left
    # One write has one past; only a file edited behind the engine's back
    # gets here with two.  Any fixed order keeps the join commutative.
    return right if right.past > left.past else left


def _max_stamp(left: Stamp | None, right: Stamp | None) -> Stamp | None:
    if left is None:
        return right
    if right is None:
        return left
    return max(left, right)


def join_rows(local: RowState | None, incoming: RowState) -> RowState:
    """The merged state of a row: the join of the two states."""
    if local is None or incoming.cl > local.cl:
        return incoming
    if local.cl > incoming.cl:
        return local
    cells = dict(local.cells)
    for column, cell in incoming.cells.items():
        winner = join_cells(cells.get(column), cell)
        assert winner is not None
        cells[column] = winner
    return RowState(local.cl, _max_stamp(local.cl_stamp, incoming.cl_stamp), cells)


def missing_rows(
    table: TableRows, sites: tuple[str, ...], vector: dict[str, int]
) -> list[list[SqlValue]]:
    """The rows of `table`, or the parts of them, that a node with `vector` may lack.

    V[X] = h means the node holds every write of site X stamped <= h, or a
    state that wins over it, so such cells need not be sent.  A dead row
    ships no cells.  A row whose causal length the node may lack ships all
    its cells: that node is on an older life of the row, and any cell it
    lacks would read as NULL after it takes the new life.  Works on flat
    rows (no objects per row: this runs for every row that leaves a node);
    rows come back unchanged when nothing of them is covered.
    """
    bounds = [vector.get(site, -1) for site in sites]
    base = table.key_count
    first_cell = base + 3
    width = table.width
    kept: list[list[SqlValue]] = []
    for row in table.rows:
        cl, cl_hlc, cl_site = row[base], row[base + 1], row[base + 2]
        cl_covered = cl_hlc is not None and cl_hlc <= bounds[cl_site]  # type: ignore[index, operator]
        if cl % 2 == 0:  # type: ignore[operator]
            if cl_covered:
                continue
            if any(row[at] is not None for at in range(first_cell + 1, width, CELL_FIELDS)):
                row = [*row[:first_cell], *([None] * (width - first_cell))]
            kept.append(row)
            continue
        if not cl_covered:
            kept.append(row)
            continue
        trimmed: list[SqlValue] | None = None
        remaining = 0
        for at in range(first_cell, width, CELL_FIELDS):
            hlc = row[at + 1]
            if hlc is None:
                continue
            if hlc <= bounds[row[at + 2]]:  # type: ignore[index, operator]
                if trimmed is None:
                    trimmed = list(row)
                trimmed[at] = trimmed[at + 1] = trimmed[at + 2] = trimmed[at + 3] = None
            else:
                remaining += 1
        if remaining:
            kept.append(row if trimmed is None else trimmed)
    return kept
