"""Bytes are bytes (issue 12): every value SQLite can store survives the merge and the wire.

The domain is all of SQLite's values, not the tidy ones: TEXT whose bytes
are not valid UTF-8 (a str with lone surrogates, `model.TEXT_ERRORS`),
-0.0 next to 0.0, INTEGER 1 next to REAL 1.0, infinities, and BLOB next to
TEXT of the same bytes.  Two values are "the same" here only if they are
bit for bit the same value of the same storage class (`exact`), which is
stricter than Python's `==` (1 == 1.0 == True, 0.0 == -0.0).
"""

from __future__ import annotations

import sqlite3
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncmesh.errors import ProtocolError
from syncmesh.merge import join_cells, join_rows, value_order_key
from syncmesh.merge.conflicts import same_value
from syncmesh.model import (
    Cell,
    ChangeBatch,
    RowState,
    SqlValue,
    Stamp,
    TableRows,
    is_utf8_text,
    text_bytes,
    text_of_bytes,
)
from syncmesh.protocol import Batch, decode, encode

SITES = ["a", "b", "c"]
COLUMNS = ["x", "y"]
# Values that SQLite or Python call equal although they are different values.
TWINS: list[SqlValue] = [
    0,
    0.0,
    -0.0,
    1,
    1.0,
    "\u00e9",  # é as UTF-8: C3 A9
    text_of_bytes(b"\xc3"),  # the first byte of it alone
    text_of_bytes(b"\xe9"),  # é as Latin-1: not UTF-8
    b"\xe9",  # the same byte as a BLOB
    b"\xc3\xa9",
    "",
    b"",
    None,
]

sql_values: st.SearchStrategy[SqlValue] = st.one_of(
    st.sampled_from(TWINS),
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),  # includes -0.0 and the infinities
    st.text(max_size=6),
    st.binary(max_size=6).map(text_of_bytes),  # any bytes as TEXT, most not UTF-8
    st.binary(max_size=6),
)


def exact(value: SqlValue) -> tuple[str, object]:
    """The identity of a value: storage class and exact bytes."""
    if isinstance(value, float):
        return ("real", struct.pack(">d", value))
    if isinstance(value, bool):
        raise AssertionError("a bool is not an SQL value")
    if isinstance(value, int):
        return ("integer", value)
    if isinstance(value, str):
        return ("text", text_bytes(value))
    if isinstance(value, bytes):
        return ("blob", value)
    return ("null", None)


def same_state(left: RowState | None, right: RowState | None) -> bool:
    if left is None or right is None:
        return left is right
    return (left.cl, left.cl_stamp, sorted(left.cells)) == (
        right.cl,
        right.cl_stamp,
        sorted(right.cells),
    ) and all(
        exact(cell.value) == exact(right.cells[column].value)
        and cell.stamp == right.cells[column].stamp
        and cell.past == right.cells[column].past
        for column, cell in left.cells.items()
    )


# -- text as bytes ------------------------------------------------------------------


@given(st.binary(max_size=12))
def test_any_bytes_are_one_text_and_back(raw: bytes) -> None:
    text = text_of_bytes(raw)
    assert text_bytes(text) == raw
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert not is_utf8_text(text)
    else:
        assert is_utf8_text(text)


def test_sqlite_reads_non_utf8_text_back_with_its_bytes() -> None:
    """How such a value meets Python: the default text_factory raises, ours keeps the bytes."""
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t(v)")
    connection.execute("INSERT INTO t VALUES (CAST(X'61E962' AS TEXT))")
    with pytest.raises(sqlite3.OperationalError, match="Could not decode to UTF-8"):
        connection.execute("SELECT v FROM t").fetchone()
    connection.text_factory = text_of_bytes
    [(value, kind)] = connection.execute("SELECT v, typeof(v) FROM t").fetchall()
    assert (value, kind) == ("a\udce9b", "text")
    # Written back through a BLOB parameter cast to TEXT, the bytes are the same.
    connection.execute("INSERT INTO t VALUES (CAST(? AS TEXT))", (text_bytes(value),))
    assert connection.execute("SELECT count(DISTINCT v), hex(max(v)) FROM t").fetchone() == (
        1,
        "61E962",
    )


# -- the merge's total order --------------------------------------------------------


@given(sql_values, sql_values)
def test_value_order_ties_only_identical_values(left: SqlValue, right: SqlValue) -> None:
    left_key, right_key = value_order_key(left), value_order_key(right)
    assert (left_key == right_key) == (exact(left) == exact(right))
    assert (left_key < right_key) + (left_key > right_key) + (left_key == right_key) == 1


@given(sql_values, sql_values, sql_values)
def test_value_order_is_transitive(first: SqlValue, second: SqlValue, third: SqlValue) -> None:
    low, middle, high = sorted([first, second, third], key=value_order_key)
    assert value_order_key(low) <= value_order_key(middle) <= value_order_key(high)
    assert value_order_key(low) <= value_order_key(high)


def _bind(value: SqlValue) -> tuple[str, SqlValue]:
    """An SQL expression and parameter that give SQLite `value` (any TEXT through a BLOB)."""
    if isinstance(value, str):
        return "CAST(? AS TEXT)", text_bytes(value)
    return "?", value


@given(sql_values, sql_values)
def test_value_order_agrees_with_sqlite_where_sqlite_tells_values_apart(
    left: SqlValue, right: SqlValue
) -> None:
    connection = sqlite3.connect(":memory:")
    # Columns without affinity: SQLite compares the stored values as they are.
    connection.execute("CREATE TABLE pair(a, b)")
    (left_sql, left_param), (right_sql, right_param) = _bind(left), _bind(right)
    connection.execute(
        f"INSERT INTO pair VALUES ({left_sql}, {right_sql})", (left_param, right_param)
    )
    # NULL compares to nothing (both are NULL then); ORDER BY puts it first, as the key does.
    less, greater = connection.execute("SELECT a < b, a > b FROM pair").fetchone()
    connection.close()
    if less:
        assert value_order_key(left) < value_order_key(right)
    if greater:
        assert value_order_key(left) > value_order_key(right)


def test_value_order_keeps_zero_signs_and_classes_apart() -> None:
    ordered: list[SqlValue] = [0, -0.0, 0.0, 1, 1.0]
    backwards = [1.0, 1, 0.0, -0.0, 0]  # a tie would keep this order (sorted is stable)
    assert [exact(value) for value in sorted(backwards, key=value_order_key)] == [
        exact(value) for value in ordered
    ]
    assert not same_value(Cell(0.0, Stamp(1, "a")), Cell(-0.0, Stamp(1, "a")))
    assert not same_value(Cell(b"\xe9", Stamp(1, "a")), Cell(text_of_bytes(b"\xe9"), Stamp(1, "a")))


def test_text_orders_by_its_bytes_as_sqlite_binary_does() -> None:
    # By code point U+4E2D < U+DC80; by bytes E4 B8 AD > 80, which is SQLite's order.
    assert value_order_key(text_of_bytes(b"\x80")) < value_order_key("\u4e2d")


# -- merge laws over the whole domain ----------------------------------------------

stamps = st.builds(Stamp, st.integers(0, 3), st.sampled_from(SITES))
pasts = st.dictionaries(st.sampled_from(SITES), st.integers(0, 3), max_size=2).map(
    lambda known: tuple(sorted(known.items()))
)
# Arbitrary states: equal stamps may carry different values (an edited file).
states = st.builds(
    RowState,
    st.integers(1, 3),
    st.none() | stamps,
    st.dictionaries(
        st.sampled_from(COLUMNS), st.builds(Cell, sql_values, stamps, pasts), max_size=2
    ),
)


@given(states, states)
def test_join_commutes_over_all_values(left: RowState, right: RowState) -> None:
    assert same_state(join_rows(left, right), join_rows(right, left))


@given(states, states, states)
def test_join_associates_over_all_values(
    first: RowState, second: RowState, third: RowState
) -> None:
    assert same_state(
        join_rows(join_rows(first, second), third), join_rows(first, join_rows(second, third))
    )


@given(states)
def test_join_is_idempotent_over_all_values(state: RowState) -> None:
    assert same_state(join_rows(state, state), state)


@given(st.sampled_from(TWINS), st.sampled_from(TWINS))
def test_equal_stamps_pick_the_same_twin_in_either_order(left: SqlValue, right: SqlValue) -> None:
    stamp = Stamp(7, "a")
    one, other = (
        join_cells(Cell(left, stamp), Cell(right, stamp)),
        join_cells(Cell(right, stamp), Cell(left, stamp)),
    )
    assert one is not None
    assert other is not None
    assert exact(one.value) == exact(other.value)


# -- the wire ---------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> ChangeBatch:
    rows: list[list[SqlValue]] = []
    keys_seen: set[tuple[str, object]] = set()
    for _ in range(draw(st.integers(1, 4))):
        key = draw(sql_values.filter(lambda value: value is not None))
        if exact(key) in keys_seen:
            continue
        keys_seen.add(exact(key))
        row: list[SqlValue] = [key, 1, 5, 0]
        for _column in COLUMNS:
            row.extend((draw(sql_values), 5, 0, None))
        rows.append(row)
    return ChangeBatch("inc", 0, 1, 1, None, ("a",), (TableRows("t", tuple(COLUMNS), 1, rows),))


@given(batches())
def test_codec_round_trip_is_bit_exact(batch: ChangeBatch) -> None:
    sent = [[exact(value) for value in row] for row in batch.tables[0].rows]
    message = decode(encode(Batch(batch)))
    assert isinstance(message, Batch)
    received = message.batch.tables[0].rows
    assert [[exact(value) for value in row] for row in received] == sent
    # A TEXT value comes back as a plain str, whatever its bytes.
    assert all(type(value) is str for row in received for value in row if isinstance(value, str))


def test_utf8_text_keeps_its_old_encoding() -> None:
    """Frames without non-UTF-8 TEXT are byte for byte what protocol version 2 always sent."""
    batch = ChangeBatch(
        "i", 0, 1, 1, None, ("a",), (TableRows("t", ("v",), 1, [["k", 1, 5, 0, "é", 5, 0, None]]),)
    )
    frame = encode(Batch(batch))
    assert frame == _frame(
        {
            "t": "batch",
            "inc": "i",
            "from": 0,
            "to": 1,
            "head": 1,
            "vv": None,
            "sites": ["a"],
            "tables": [["t", ["v"], 1, [["k", 1, 5, 0, "é", 5, 0, None]]]],
        }
    )


def _frame(plain: dict[str, object]) -> bytes:
    return b"\x00" + msgpack.packb(plain, use_bin_type=True)


def _batch_plain(value: object, sites: list[object] | None = None) -> dict[str, object]:
    return {
        "t": "batch",
        "inc": "i",
        "from": 0,
        "to": 1,
        "head": 1,
        "vv": None,
        "sites": sites or ["a"],
        "tables": [["t", ["v"], 1, [["k", 1, 5, 0, value, 5, 0, None]]]],
    }


@pytest.mark.parametrize(
    ("plain", "problem"),
    [
        (_batch_plain(msgpack.ExtType(1, b"ok")), "holds valid UTF-8"),
        (_batch_plain(msgpack.ExtType(2, b"\xe9")), "unknown msgpack extension type 2"),
        (_batch_plain("v", sites=[msgpack.ExtType(1, b"\xe9")]), "site id"),
        ({"t": "refuse", "reason": msgpack.ExtType(1, b"\xe9")}, "not UTF-8 text"),
        ({"t": "have", "vv": {msgpack.ExtType(1, b"\xe9"): 1}}, "not valid msgpack"),
    ],
    ids=["valid-utf8", "unknown-code", "site-id", "reason", "vector-key"],
)
def test_text_extension_is_refused_outside_values(plain: dict[str, object], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode(_frame(plain))
