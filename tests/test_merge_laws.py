"""The merge is a join: commutative, associative, idempotent (DESIGN.md section 2).

States are drawn from small ranges (three sites, a handful of stamps, two
columns) so that equal stamps, equal causal lengths and ties happen often.
"Consistent" states model a real cluster: a stamp identifies one write, so
equal stamps on a column imply equal values.  The inconsistent case (a file
edited behind the engine's back) must converge too, by value order.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from syncmesh.merge import join_cells, join_rows, value_order_key
from syncmesh.model import Cell, RowState, SqlValue, Stamp

SITES = ["a", "b", "c"]
COLUMNS = ["x", "y", "z"]
# -0.0 and NaN are left out on purpose: SQLite stores NaN as NULL, and
# -0.0 = 0.0 in SQLite's (and Python's) comparison, so no order tells them apart.
VALUES: list[SqlValue] = [None, 0, 1, 2, 1.0, 1.5, "", "1", "a", "b", b"", b"1", b"a"]

stamps = st.builds(Stamp, st.integers(0, 4), st.sampled_from(SITES))
values = st.sampled_from(VALUES)
ValueOf = Callable[[str, Stamp], SqlValue]


@st.composite
def value_functions(draw: st.DrawFn) -> ValueOf:
    """A 'history': the single value each (column, stamp) write stored."""
    table = draw(st.lists(values, min_size=7, max_size=7))

    def value_of(column: str, stamp: Stamp) -> SqlValue:
        index = stamp.hlc * 3 + SITES.index(stamp.site_id) + COLUMNS.index(column) * 5
        return table[index % len(table)]

    return value_of


def consistent_states(value_of: ValueOf) -> st.SearchStrategy[RowState]:
    def build(cl: int, cl_stamp: Stamp | None, cell_stamps: dict[str, Stamp]) -> RowState:
        cells = {
            column: Cell(value_of(column, stamp), stamp) for column, stamp in cell_stamps.items()
        }
        return RowState(cl, cl_stamp, cells)

    return st.builds(
        build,
        st.integers(1, 4),
        st.none() | stamps,
        st.dictionaries(st.sampled_from(COLUMNS), stamps, max_size=len(COLUMNS)),
    )


# Arbitrary states: equal stamps may carry different values, and different
# pasts (a write has one past; only an edited file shows two).
pasts = st.dictionaries(st.sampled_from(SITES), st.integers(0, 4), max_size=2).map(
    lambda known: tuple(sorted(known.items()))
)
any_states = st.builds(
    RowState,
    st.integers(1, 4),
    st.none() | stamps,
    st.dictionaries(
        st.sampled_from(COLUMNS), st.builds(Cell, values, stamps, pasts), max_size=len(COLUMNS)
    ),
)


@st.composite
def consistent_lists(draw: st.DrawFn, min_size: int, max_size: int) -> list[RowState]:
    value_of = draw(value_functions())
    return draw(st.lists(consistent_states(value_of), min_size=min_size, max_size=max_size))


def fold(states: list[RowState]) -> RowState | None:
    merged: RowState | None = None
    for state in states:
        merged = join_rows(merged, state)
    return merged


def same(left: RowState | None, right: RowState | None) -> bool:
    """Equal, also in each value's type (1 == 1.0 in Python, not in SQLite)."""
    if left is None or right is None:
        return left is right
    if (left.cl, left.cl_stamp, left.cells.keys()) != (
        right.cl,
        right.cl_stamp,
        right.cells.keys(),
    ):
        return False
    return all(
        cell.stamp == right.cells[column].stamp
        and type(cell.value) is type(right.cells[column].value)
        and cell.value == right.cells[column].value
        for column, cell in left.cells.items()
    )


# -- the laws on consistent states --------------------------------------------------


@given(consistent_lists(2, 2))
def test_join_is_commutative(states: list[RowState]) -> None:
    left, right = states
    assert same(join_rows(left, right), join_rows(right, left))


@given(consistent_lists(3, 3))
def test_join_is_associative(states: list[RowState]) -> None:
    first, second, third = states
    assert same(
        join_rows(join_rows(first, second), third), join_rows(first, join_rows(second, third))
    )


@given(consistent_lists(1, 1))
def test_join_is_idempotent(states: list[RowState]) -> None:
    (state,) = states
    assert same(join_rows(state, state), state)
    assert same(join_rows(None, state), state)


@given(consistent_lists(2, 2))
def test_join_absorbs_what_it_already_holds(states: list[RowState]) -> None:
    left, right = states
    merged = join_rows(left, right)
    assert same(join_rows(merged, left), merged)
    assert same(join_rows(merged, right), merged)


@given(st.data(), consistent_lists(1, 8))
def test_delivery_order_and_duplicates_do_not_matter(
    data: st.DataObject, states: list[RowState]
) -> None:
    duplicates = data.draw(st.lists(st.sampled_from(states), max_size=len(states)))
    delivered = data.draw(st.permutations(states + duplicates))
    assert same(fold(delivered), fold(states))


# -- inconsistent states (equal stamps, different values) still converge -------------


@given(any_states, any_states)
def test_equal_stamps_with_different_values_commute(left: RowState, right: RowState) -> None:
    assert same(join_rows(left, right), join_rows(right, left))


@given(any_states, any_states, any_states)
def test_equal_stamps_with_different_values_associate(
    first: RowState, second: RowState, third: RowState
) -> None:
    assert same(
        join_rows(join_rows(first, second), third), join_rows(first, join_rows(second, third))
    )


@given(st.data(), st.lists(any_states, min_size=1, max_size=6))
def test_inconsistent_states_converge_in_any_order(
    data: st.DataObject, states: list[RowState]
) -> None:
    duplicates = data.draw(st.lists(st.sampled_from(states), max_size=len(states)))
    delivered = data.draw(st.permutations(states + duplicates))
    assert same(fold(delivered), fold(states))


def test_equal_stamp_tie_is_broken_by_value_order() -> None:
    stamp = Stamp(5, "a")
    low, high = Cell("apple", stamp), Cell("banana", stamp)
    assert join_cells(low, high) == high
    assert join_cells(high, low) == high
    integer, real = Cell(1, stamp), Cell(1.0, stamp)
    winner = join_cells(integer, real)
    assert winner is not None
    assert type(winner.value) is float
    other = join_cells(real, integer)
    assert other is not None
    assert type(other.value) is float


# -- existence by causal length ----------------------------------------------------


@given(consistent_lists(1, 1), st.integers(0, 3), stamps, st.integers(1, 3))
def test_delete_beats_concurrent_update(
    updates: list[RowState], life: int, delete_stamp: Stamp, higher_hlc: int
) -> None:
    """Any update made in life 2k+1 loses to the delete that ends it, whatever its stamps."""
    alive_cl = 2 * life + 1
    update = RowState(
        alive_cl,
        updates[0].cl_stamp,
        {
            column: Cell(cell.value, Stamp(cell.stamp.hlc + 100 * higher_hlc, cell.stamp.site_id))
            for column, cell in updates[0].cells.items()
        },
    )
    delete = RowState(alive_cl + 1, delete_stamp, {})
    for merged in (join_rows(update, delete), join_rows(delete, update)):
        assert not merged.alive
        assert merged.cl == alive_cl + 1
        assert merged.cl_stamp == delete_stamp


def test_reinsert_after_delete_shows_no_columns_from_before() -> None:
    old = RowState(
        1, Stamp(1, "a"), {"x": Cell("old-x", Stamp(9, "a")), "y": Cell("old-y", Stamp(9, "b"))}
    )
    deleted = RowState(2, Stamp(2, "b"), {})
    reinserted = RowState(3, Stamp(3, "c"), {"x": Cell("new-x", Stamp(3, "c"))})
    for order in (
        [old, deleted, reinserted],
        [reinserted, old, deleted],
        [deleted, reinserted, old],
        [old, reinserted],
    ):
        merged = fold(order)
        assert merged is not None
        assert merged.alive
        assert merged.cl == 3
        assert merged.cells == {"x": Cell("new-x", Stamp(3, "c"))}  # no old "y"


@given(consistent_lists(2, 6))
def test_greatest_causal_length_decides_existence(states: list[RowState]) -> None:
    merged = fold(states)
    assert merged is not None
    greatest = max(state.cl for state in states)
    assert merged.cl == greatest
    assert merged.alive == (greatest % 2 == 1)
    # Cells come only from states of the winning life.
    for column, cell in merged.cells.items():
        assert any(state.cl == greatest and state.cells.get(column) == cell for state in states)


@given(consistent_lists(2, 6))
def test_each_column_takes_the_greatest_stamp_of_the_winning_life(
    states: list[RowState],
) -> None:
    merged = fold(states)
    assert merged is not None
    life = [state for state in states if state.cl == merged.cl]
    for column in COLUMNS:
        candidates = [state.cells[column].stamp for state in life if column in state.cells]
        if candidates:
            assert merged.cells[column].stamp == max(candidates)
        else:
            assert column not in merged.cells


# -- value order ------------------------------------------------------------------


def test_value_order_follows_sqlite_storage_classes() -> None:
    ordered: list[SqlValue] = [
        None,
        -(2**63),
        -1.5,
        0,
        1,
        1.0,
        1.5,
        2**63 - 1,
        1e308,
        "",
        "1",
        "a",
        "\u00e9",
        b"",
        b"\x00",
        b"1",
    ]
    keys = [value_order_key(value) for value in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)  # a strict order: no two distinct values tie


def test_value_order_null_numbers_text_blob() -> None:
    assert value_order_key(None) < value_order_key(-(10**18)) < value_order_key(10**18)
    assert value_order_key(1e308) < value_order_key("")
    assert value_order_key("\U0010ffff") < value_order_key(b"")


def test_value_order_distinguishes_integer_and_real() -> None:
    assert value_order_key(1) != value_order_key(1.0)
    assert value_order_key(1) < value_order_key(1.0)  # deterministic: integer first
    assert value_order_key(1.0) < value_order_key(2)
    assert value_order_key(0.5) < value_order_key(1)


def test_value_order_of_text_is_utf8_byte_order() -> None:
    texts = ["a", "z", "\u00e9", "\uffff", "\U0001f600", "A", ""]
    by_key = sorted(texts, key=value_order_key)
    assert by_key == sorted(texts, key=lambda text: text.encode("utf-8"))


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False).filter(lambda f: f != 0.0 or str(f) == "0.0"),
            st.text(max_size=4),
            st.binary(max_size=4),
        ),
        min_size=2,
        max_size=2,
    )
)
def test_value_order_is_total_and_injective(pair: list[SqlValue]) -> None:
    left, right = pair
    left_key, right_key = value_order_key(left), value_order_key(right)
    assert (left_key < right_key) or (left_key > right_key) or (left_key == right_key)
    if left_key == right_key:
        assert type(left) is type(right)
        assert left == right
