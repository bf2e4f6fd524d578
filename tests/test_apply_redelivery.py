"""The apply passes over a row it already holds (a duplicate delivery) without a join.

`apply.held_again` decides it on the positional rows; passing a row over
is only right when the full join would change nothing and resolve
nothing.  These tests hold it to that, for arbitrary held and incoming
states, including the cases the shortcut must refuse (1 against 1.0,
0.0 against -0.0, a cell with a past, another stamp).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from syncmesh.merge import join_rows, resolve_cells
from syncmesh.model import Cell, RowChange, RowState, SqlValue, Stamp, row_of_state
from syncmesh.store.sqlite.apply import held_again, identical_states
from tests.test_integrity_values import pasts, stamps

COLUMNS = ("x", "y", "z")
VALUES: list[SqlValue] = [None, 0, 1, 1.0, 0.0, -0.0, 1.5, "", "1", "a", b"", b"1"]


def twin(value: SqlValue) -> SqlValue:
    """A value Python calls equal to `value` that SQLite stores apart, or `value` itself."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, int):
        return float(value)
    if value == 0:
        return -value  # 0.0 and -0.0
    return int(value) if value.is_integer() else value


states = st.builds(
    RowState,
    st.integers(1, 3),
    st.none() | stamps,
    st.dictionaries(
        st.sampled_from(COLUMNS),
        st.builds(Cell, st.sampled_from(VALUES), stamps, pasts),
        max_size=len(COLUMNS),
    ),
)


@st.composite
def copies(draw: st.DrawFn, held: RowState) -> RowState:
    """`held` as a peer may send it again: some cells left out, a value or past changed."""
    cells = {}
    for column, cell in held.cells.items():
        if draw(st.booleans()):
            continue
        # The same value, one SQLite stores apart though Python calls it equal, or any.
        value = draw(st.sampled_from([cell.value, twin(cell.value), draw(st.sampled_from(VALUES))]))
        past = draw(pasts) if draw(st.integers(0, 3)) == 0 else ()
        cells[column] = Cell(value, cell.stamp, past)
    return RowState(held.cl, held.cl_stamp, cells)


def rows(held: RowState, incoming: RowState) -> tuple[list[SqlValue], list[SqlValue], list[int]]:
    """Positional rows as the apply meets them: held by our ordinals, incoming by batch index."""
    ours: dict[str, int] = {}
    held_row = row_of_state(RowChange("t", ("k",), held), COLUMNS, ours)
    batch: dict[str, int] = {"c": 0}  # another numbering than ours
    incoming_row = row_of_state(RowChange("t", ("k",), incoming), COLUMNS, batch)
    ordinals = [ours.setdefault(site, len(ours)) for site in batch]
    return incoming_row, held_row, ordinals


@settings(max_examples=1000)
@given(states.flatmap(lambda held: st.tuples(st.just(held), copies(held) | states)))
def test_a_row_passed_over_is_one_the_join_would_not_change(
    pair: tuple[RowState, RowState],
) -> None:
    held, incoming = pair
    incoming_row, held_row, ordinals = rows(held, incoming)
    if held_again(incoming_row, held_row, 1, ordinals):
        assert identical_states(join_rows(held, incoming), held)
        assert resolve_cells(held, incoming, {}) == ([], {})


def test_an_exact_copy_is_passed_over() -> None:
    held = RowState(1, Stamp(2, "a"), {"x": Cell(1, Stamp(2, "a")), "y": Cell("v", Stamp(3, "b"))})
    assert held_again(*rows(held, held)[:2], 1, rows(held, held)[2])
    # A copy that leaves a cell out (the peer knew we held it) is one too.
    part = RowState(1, Stamp(2, "a"), {"y": Cell("v", Stamp(3, "b"))})
    assert held_again(*rows(held, part)[:2], 1, rows(held, part)[2])


def test_what_the_join_must_see_is_not_passed_over() -> None:
    def again(held: RowState, incoming: RowState) -> bool:
        incoming_row, held_row, ordinals = rows(held, incoming)
        return held_again(incoming_row, held_row, 1, ordinals)

    stamp = Stamp(2, "a")
    one = RowState(1, stamp, {"x": Cell(1, stamp)})
    assert not again(one, RowState(1, stamp, {"x": Cell(1.0, stamp)}))  # REAL, not INTEGER
    zero = RowState(1, stamp, {"x": Cell(0.0, stamp)})
    assert not again(zero, RowState(1, stamp, {"x": Cell(-0.0, stamp)}))
    assert not again(one, RowState(1, stamp, {"x": Cell(1, stamp, (("b", 1),))}))  # a past
    assert not again(one, RowState(1, stamp, {"x": Cell(1, Stamp(3, "a"))}))  # a newer write
    assert not again(one, RowState(1, stamp, {"x": Cell(1, Stamp(2, "b"))}))  # another site
    assert not again(one, RowState(3, stamp, {"x": Cell(1, stamp)}))  # another life
    assert not again(one, RowState(1, Stamp(2, "b"), {"x": Cell(1, stamp)}))
    assert not again(one, RowState(1, stamp, {"y": Cell(1, stamp)}))  # a cell we lack
