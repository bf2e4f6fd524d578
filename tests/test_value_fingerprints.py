"""Per-cell value fingerprints: what the reconcile after a table rebuild compares (ADR 0013).

A shadow row keeps one 4-byte fingerprint per cell of the values the engine
last stamped or applied (`vf`).  After a rebuild, a cell whose value no
longer matches was written while the capture triggers were gone.  These
properties run the SQL the store builds on a real SQLite connection with
the store's functions: the mask the compare returns names exactly the
cells whose values changed, among the slots that are left (a dropped slot
is not compared, a default-stamped cell never), for values of every
storage class, TEXT that is not UTF-8 included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncmesh.model import SqlValue
from syncmesh.store.sqlite.ddl import ALL_COLUMNS, DEFAULT_CELL_HLC, MASK_COLUMNS_MAX
from syncmesh.store.sqlite.functions import (
    VALUES_FP_CHANGES_FUNCTION,
    cells_text_sql,
    values_fp_sql,
)
from syncmesh.store.sqlite.opening import connect

SLOTS = 8
Row = dict[int, SqlValue]  # slot -> value
# Values whose texts differ from one another whatever their storage class: no integral
# REAL (it reads as its INTEGER), no TEXT that spells a number.  A change draws from the
# same pool, so "changed" is "another value of the pool".
VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
    st.text(max_size=12).map(lambda text: "t" + text),
    st.binary(max_size=12).map(lambda data: b"b" + data),
)


@pytest.fixture(scope="module")
def connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    opened = connect(Path(tmp_path_factory.mktemp("fp")) / "fp.db")
    yield opened
    opened.close()


def _fingerprint(connection: sqlite3.Connection, row: Row, stamps: dict[int, int]) -> bytes:
    cells = [(slot, str(stamps[slot]), f":v{slot}") for slot in row]
    (value,) = connection.execute(
        f"SELECT {values_fp_sql(cells)}", {f"v{slot}": v for slot, v in row.items()}
    ).fetchone()
    assert isinstance(value, bytes)
    return value


def _changes(
    connection: sqlite3.Connection,
    stored: bytes,
    row: Row,
    stamps: dict[int, int],
    live: set[int],
) -> int:
    cells = [(slot, str(stamps[slot]), f":v{slot}") for slot in row if slot in live]
    parameters = {f"v{slot}": v for slot, v in row.items() if slot in live}
    (mask,) = connection.execute(
        f"SELECT {VALUES_FP_CHANGES_FUNCTION}(:stored, {cells_text_sql(cells)}, NULL)",
        {"stored": stored, **parameters},
    ).fetchone()
    assert isinstance(mask, int)
    return mask


@st.composite
def cases(draw: st.DrawFn) -> tuple[Row, dict[int, int], Row, set[int]]:
    """A row (slot -> value), its cells' stamps, the values after some writes, the live slots."""
    slots = draw(st.sets(st.integers(0, SLOTS - 1), min_size=1))
    row = {slot: draw(VALUES) for slot in sorted(slots)}
    stamps = {slot: draw(st.sampled_from([5, DEFAULT_CELL_HLC])) for slot in row}
    after = {slot: draw(VALUES) if draw(st.booleans()) else row[slot] for slot in row}
    dropped = draw(st.sets(st.sampled_from(sorted(slots))))
    return row, stamps, after, set(slots) - dropped


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_the_mask_names_exactly_the_changed_cells_among_the_slots_left(
    connection: sqlite3.Connection,
    case: tuple[Row, dict[int, int], Row, set[int]],
) -> None:
    row, stamps, after, live = case
    stored = _fingerprint(connection, row, stamps)
    expected = 0
    for slot in live:
        if stamps[slot] != DEFAULT_CELL_HLC and not _same(row[slot], after[slot]):
            expected |= 1 << slot
    assert _changes(connection, stored, after, stamps, live) == expected


def _same(a: SqlValue, b: SqlValue) -> bool:
    """The same value for the fingerprint: same type and value (no other equal texts here)."""
    return type(a) is type(b) and a == b


def test_equal_texts_of_other_storage_classes_are_no_change(connection: sqlite3.Connection) -> None:
    """A rebuild that changes a column's affinity stores 3 as '3' or 3.0: no write."""
    stamps = {0: 5, 1: 5, 2: 5}
    stored = _fingerprint(connection, {0: 3, 1: "3", 2: 3.0}, stamps)
    assert _changes(connection, stored, {0: "3", 1: 3.0, 2: 3}, stamps, {0, 1, 2}) == 0
    assert _changes(connection, stored, {0: 4, 1: "3", 2: 3.0}, stamps, {0, 1, 2}) == 1


def test_non_utf8_text_is_fingerprinted_by_its_bytes(connection: sqlite3.Connection) -> None:
    """TEXT that is not UTF-8 (the shell's CAST(X'E9' AS TEXT)) is hashed by its bytes:
    another such value is a change, the same one is not."""
    cells = [(0, "5", "v")]
    connection.execute("CREATE TEMP TABLE odd (v)")
    connection.execute("INSERT INTO odd SELECT CAST(X'E9' AS TEXT)")
    (stored,) = connection.execute(f"SELECT {values_fp_sql(cells)} FROM odd").fetchone()
    compare = f"SELECT {VALUES_FP_CHANGES_FUNCTION}(?, {cells_text_sql(cells)}, NULL) FROM odd"
    assert connection.execute(compare, (stored,)).fetchone() == (0,)
    connection.execute("UPDATE odd SET v = CAST(X'E8' AS TEXT)")
    assert connection.execute(compare, (stored,)).fetchone() == (1,)
    connection.execute("DROP TABLE odd")


def test_a_slot_beyond_the_masks_bits_changes_every_column(connection: sqlite3.Connection) -> None:
    """A table of more than 62 value columns: a change in a high slot logs ALL_COLUMNS."""
    slot = MASK_COLUMNS_MAX + 3
    stamps = {slot: 5}
    stored = _fingerprint(connection, {slot: "x"}, stamps)
    assert len(stored) == 4 * (slot + 1)
    assert _changes(connection, stored, {slot: "y"}, stamps, {slot}) == ALL_COLUMNS
    assert _changes(connection, stored, {slot: "x"}, stamps, {slot}) == 0
