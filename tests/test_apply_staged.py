"""The set-based apply of keys new here writes exactly what the row-by-row apply writes.

`apply.STAGING` sends the rows of keys a node never held through a staging
table and two `INSERT ... SELECT` statements (issue 17); the row-by-row
path (`TableSql.fast_rows`) is the reference.  Each example writes rows of
every storage class (REAL into INTEGER columns, -0.0, TEXT that is not
UTF-8, blobs, NULLs), updates and deletes at a source, and applies the
source's feed to two copies of one target file, one per path.  The copies
must end with the same user rows (values and storage classes), the same
shadow rows (every column but the seq, which is the applying clock's), the
same quarantine, and hash trees that agree with their files.  Targets may
hold a UNIQUE value a new row also has: the set statement then fails and
the rows take the row-by-row path, which quarantines exactly the one.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncmesh.model import SqlValue
from syncmesh.store.sqlite import SqliteStore, apply
from tests.helpers import exchange_all, rows_with_types

DDL = "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, s TEXT, r REAL, b BLOB, u TEXT UNIQUE)"
COLUMNS = ("n", "s", "r", "b", "u")

values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.0, -0.0, 3.0, 1.5, 1e300]),
    st.text(max_size=6),
    st.sampled_from(["3", "4.0", " 5"]),  # text an INTEGER or REAL column turns into a number
    st.binary(max_size=6),
)
# (key, values): SQL literals for a row written at the source; `bad` writes
# TEXT that is not UTF-8 into `s`.
writes = st.lists(
    st.tuples(
        st.sampled_from([f"k{index}" for index in range(8)]),
        st.sampled_from(["insert", "update", "delete", "bad"]),
        st.lists(values, min_size=len(COLUMNS), max_size=len(COLUMNS)),
        st.booleans(),  # captured at once (else with the next): lives beyond the first
    ),
    min_size=1,
    max_size=25,
)


def _write(connection: sqlite3.Connection, key: str, op: str, row: list[SqlValue]) -> None:
    names = ", ".join(COLUMNS)
    if op == "delete":
        connection.execute("DELETE FROM t WHERE id = ?", (key,))
    elif op == "bad":
        connection.execute(
            "INSERT INTO t (id, s) VALUES (?, CAST(X'ff61' AS TEXT))"
            " ON CONFLICT (id) DO UPDATE SET s = excluded.s",
            (key,),
        )
    else:
        # The UNIQUE column takes the key's own name: rows never collide at the source.
        row = [*row[:-1], f"u-{key}"]
        sql = (
            f"INSERT INTO t (id, {names}) VALUES (?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS)}"
        )
        connection.execute(sql, (key, *row))


def _dump(store: SqliteStore) -> tuple[object, ...]:
    connection = store.connection
    columns = [row[1] for row in connection.execute("PRAGMA table_info(_syncmesh_shadow_t)")]
    kept = [column for column in columns if column != "seq"]
    shadow = connection.execute(
        f"SELECT {', '.join(kept)} FROM _syncmesh_shadow_t ORDER BY k0"
    ).fetchall()
    quarantined = connection.execute(
        "SELECT pk, reason FROM _syncmesh_quarantine ORDER BY pk"
    ).fetchall()
    return (rows_with_types(connection, "t"), shadow, quarantined)


def _tree(store: SqliteStore) -> object:
    return store.summaries(["t"])["t"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(written=writes, held=st.lists(st.sampled_from(range(8)), max_size=3, unique=True))
def test_the_set_path_writes_what_the_row_path_writes(
    tmp_path_factory: pytest.TempPathFactory,
    written: list[tuple[str, str, list[SqlValue], bool]],
    held: list[int],
) -> None:
    directory = tmp_path_factory.mktemp("staged")
    source = SqliteStore.open(directory / "source.db")
    target = SqliteStore.open(directory / "target.db")
    try:
        for store in (source, target):
            store.init()
            store.connection.execute(DDL)
            store.track(["t"])
        for key, op, row, captured in written:
            _write(source.connection, key, op, row)
            if captured:
                source.capture()
        source.capture()
        # The target holds UNIQUE values some arriving rows have: those must
        # be refused (quarantined), and only those.
        for index in held:
            target.connection.execute(
                "INSERT INTO t (id, u) VALUES (?, ?)", (f"local{index}", f"u-k{index}")
            )
        target.capture()
    finally:
        target.close()
    shutil.copy(directory / "target.db", directory / "twin.db")
    results = {}
    try:
        for name, staging in (("target", True), ("twin", False)):
            apply.STAGING = staging
            store = SqliteStore.open(directory / f"{name}.db")
            try:
                _tree(store)  # built now, so the apply must keep it in step
                exchange_all(source, store)
                results[name] = (_dump(store), _tree(store))
            finally:
                store.close()
            # The trees kept while applying are the file's: reopened, they are rebuilt from it.
            reopened = SqliteStore.open(directory / f"{name}.db")
            try:
                assert _tree(reopened) == results[name][1], f"{name}: tree out of step with file"
            finally:
                reopened.close()
    finally:
        apply.STAGING = True
        source.close()
    assert results["target"] == results["twin"]


def test_the_set_path_is_taken_for_a_backlog_of_new_keys(tmp_path: Path) -> None:
    """The staged path really runs (its table exists after an apply), and agrees."""
    source = SqliteStore.open(tmp_path / "source.db")
    target = SqliteStore.open(tmp_path / "target.db")
    try:
        for store in (source, target):
            store.init()
            store.connection.execute(DDL)
            store.track(["t"])
        source.connection.executemany(
            "INSERT INTO t (id, n, s, u) VALUES (?, ?, ?, ?)",
            [(f"k{index}", index, "x" * index, f"u{index}") for index in range(500)],
        )
        source.capture()
        assert exchange_all(source, target) == 500
        staged = target.connection.execute(
            "SELECT name FROM sqlite_temp_schema WHERE name LIKE '_syncmesh_stage_%'"
        ).fetchall()
        assert staged, "no stage table: the set path did not run"
        assert rows_with_types(target.connection, "t") == rows_with_types(source.connection, "t")
    finally:
        source.close()
        target.close()
