"""The set-based capture folds the log exactly as the per-key Python fold does (issue 17).

`capture_table` folds a table's log in SQL (`set_based=True`: one GROUP BY
into a temporary table, one UPDATE ... FROM, one INSERT ... SELECT) or in
Python, one upsert per key (small logs, and tables with slots beyond the
mask's bits).  Both must leave the same file: the same shadow rows, column
for column, the same log, the same leaf deltas of the hash tree, the same
stamped keys for the orphan search and the same warnings.  Each example
writes one random history to a real file, copies it, and captures the two
copies with the same stamp, one each way.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncmesh.model import SqlValue, text_of_bytes
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.capture import SET_BASED_ENTRIES_MIN, capture_table
from syncmesh.store.sqlite.ddl import shadow_name
from syncmesh.store.sqlite.execute import bindable
from syncmesh.store.sqlite.functions import text_key_hash
from syncmesh.store.summary import LEAF_MASK, key_hash

# BLOB keys have no affinity: 1, 1.0 and '1' keep their storage classes (1 and
# 1.0 are one key to SQLite), and a rowid table holds NULL in a key that is not
# INTEGER PRIMARY KEY.  The UNIQUE column makes REPLACE log checks (OP_CHECK).
# `track` warns about both (numbers in a BLOB key, a UNIQUE index).
DDL = [
    "CREATE TABLE t (id BLOB PRIMARY KEY, a, b TEXT, u UNIQUE)",
    "CREATE TABLE pair (k1 BLOB, k2 TEXT, v, PRIMARY KEY (k1, k2))",
]
TABLES = ("t", "pair")
KEYS: list[SqlValue] = [1, 2, 1.0, 2.5, "a", "A", b"a", text_of_bytes(b"\xe9x"), "", None]
VALUES: list[SqlValue] = [None, 0, 1, "x", b"\x00", 1.5, text_of_bytes(b"\xff")]

key = st.sampled_from(KEYS)
value = st.sampled_from(VALUES)
operation = st.one_of(
    st.tuples(
        st.just("INSERT OR REPLACE INTO t (id, a, b, u) VALUES (?, ?, ?, ?)"),
        st.tuples(key, value, value, st.sampled_from([None, 1, 2])),
    ),
    # A collision on `u` that the insert then ignores logs a check of a row still there.
    st.tuples(
        st.just("INSERT OR IGNORE INTO t (id, a, u) VALUES (?, ?, ?)"),
        st.tuples(key, value, st.sampled_from([None, 1, 2])),
    ),
    st.tuples(st.just("UPDATE t SET a = ? WHERE id IS ?"), st.tuples(value, key)),
    st.tuples(st.just("UPDATE t SET a = ?, b = ? WHERE id IS ?"), st.tuples(value, value, key)),
    st.tuples(
        st.just("UPDATE OR REPLACE t SET u = ? WHERE id IS ?"),
        st.tuples(st.sampled_from([1, 2, 3]), key),
    ),
    st.tuples(st.just("UPDATE OR IGNORE t SET id = ? WHERE id IS ?"), st.tuples(key, key)),
    st.tuples(st.just("DELETE FROM t WHERE id IS ?"), st.tuples(key)),
    st.tuples(
        st.just("INSERT OR REPLACE INTO pair (k1, k2, v) VALUES (?, ?, ?)"),
        st.tuples(key, st.sampled_from(["p", "q", None]), value),
    ),
    st.tuples(st.just("UPDATE pair SET v = ? WHERE k1 IS ?"), st.tuples(value, key)),
    st.tuples(st.just("DELETE FROM pair WHERE k1 IS ?"), st.tuples(key)),
)
# Writes captured before the history, so that some keys have shadow rows.
history = st.tuples(st.lists(operation, max_size=12), st.lists(operation, min_size=1, max_size=30))


def _run(connection: sqlite3.Connection, sql: str, parameters: tuple[SqlValue, ...]) -> None:
    """Run one write of the history (TEXT that is not UTF-8 bound as its bytes, cast)."""
    with contextlib.suppress(sqlite3.IntegrityError):  # a refusal: the history goes on
        connection.execute(*bindable(sql, list(parameters)))


def _state(store: SqliteStore, table: str) -> tuple[list[tuple[SqlValue, ...]], ...]:
    connection = store.connection
    shadow = connection.execute(
        f'SELECT *, typeof(k0) FROM "{shadow_name(table)}" ORDER BY 1, 2'
    ).fetchall()
    logged = connection.execute(f'SELECT * FROM "_syncmesh_log_{table}" ORDER BY id').fetchall()
    return shadow, logged


def _tree_change(
    before: list[tuple[SqlValue, ...]], after: list[tuple[SqlValue, ...]]
) -> dict[int, int]:
    """Leaf -> XOR delta between two sets of (kh, dg) rows: what the hash tree must move by."""
    deltas: dict[int, int] = {}
    for hashed, digest in [*before, *after]:
        if isinstance(hashed, int) and isinstance(digest, int):
            leaf = hashed & LEAF_MASK
            deltas[leaf] = deltas.get(leaf, 0) ^ digest
    return {leaf: delta for leaf, delta in deltas.items() if delta}


def _captured(path: Path, set_based: bool, entries_max: int, hlc: int) -> dict[str, object]:
    """Capture every table of the file at `path` one way; what the capture left."""
    store = SqliteStore.open(path)
    try:
        ctx = store.context

        def digests(table: str) -> list[tuple[SqlValue, ...]]:
            return ctx.connection.execute(f'SELECT kh, dg FROM "{shadow_name(table)}"').fetchall()

        own = ctx.require_init().site(0)
        keys_out: dict[str, dict[tuple[SqlValue, ...], bool]] = {}
        counts = []
        noted: dict[str, dict[int, int]] = {}

        def note(table: str, leaf: int, delta: int) -> None:
            """What the capture notes into the trees, both from Python and from SQL."""
            leaves = noted.setdefault(table, {})
            leaves[leaf] = leaves.get(leaf, 0) ^ delta

        # The SQL digest functions note into the store's trees (opening.py).
        with ctx.transaction(), mock.patch.object(ctx.summaries, "note", note):
            before = {name: digests(name) for name in TABLES}
            for name in TABLES:
                stamp = hlc
                while True:
                    count = capture_table(
                        ctx.connection,
                        ctx.tables[name],
                        stamp,
                        stamp,
                        entries_max,
                        own,
                        note,
                        keys_out,
                        set_based=set_based,
                    )
                    counts.append(count)
                    stamp += 1
                    if count == 0 or entries_max < 0:
                        break
            truth = {name: _tree_change(before[name], digests(name)) for name in TABLES}
        # The keys with their storage classes (1 and 1.0 are equal in a dict).
        stamped = {
            table: sorted(
                (repr([(type(part).__name__, part) for part in found]), alive)
                for found, alive in keys.items()
            )
            for table, keys in keys_out.items()
        }
        return {
            "counts": counts,
            "stamped": stamped,
            "noted": {
                table: {leaf: delta for leaf, delta in leaves.items() if delta}
                for table, leaves in noted.items()
                if any(leaves.values())
            },
            "truth": {table: leaves for table, leaves in truth.items() if leaves},
            "states": [_state(store, name) for name in TABLES],
        }
    finally:
        store.close()


def _history(
    path: Path,
    before: list[tuple[str, tuple[SqlValue, ...]]],
    after: list[tuple[str, tuple[SqlValue, ...]]],
) -> None:
    """A tracked file at `path`: `before` written and captured, then `after` written."""
    store = SqliteStore.open(path)
    try:
        store.init()
        for statement in DDL:
            store.connection.execute(statement)
        store.track(list(TABLES))
        assert sorted(store.context.tables) == sorted(TABLES)
        app = sqlite3.connect(path, isolation_level=None)
        try:
            for sql, parameters in before:
                _run(app, sql, parameters)
            store.capture()
            for sql, parameters in after:
                _run(app, sql, parameters)
        finally:
            app.close()
    finally:
        store.close()


def _both_ways(
    directory: Path, caplog: pytest.LogCaptureFixture, entries_max: int
) -> dict[bool, tuple[dict[str, object], list[str]]]:
    """The file `directory/original.db` captured in Python (False) and set-based (True)."""
    outcomes = {}
    for set_based in (False, True):
        copy = directory / f"copy-{set_based}.db"
        source, target = sqlite3.connect(directory / "original.db"), sqlite3.connect(copy)
        source.backup(target)
        source.close()
        target.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syncmesh.store.sqlite.capture"):
            outcome = _captured(copy, set_based, entries_max, hlc=10**15)
        outcomes[set_based] = (outcome, [record.getMessage() for record in caplog.records])
    return outcomes


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history, st.sampled_from([-1, -1, 1, 3]))
def test_set_based_capture_leaves_what_the_python_fold_leaves(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    writes: tuple[list[tuple[str, tuple[SqlValue, ...]]], list[tuple[str, tuple[SqlValue, ...]]]],
    entries_max: int,
) -> None:
    before, after = writes
    for leftover in tmp_path.glob("*.db*"):
        leftover.unlink()
    _history(tmp_path / "original.db", before, after)
    outcomes = _both_ways(tmp_path, caplog, entries_max)
    (python, python_warnings), (sets, sets_warnings) = outcomes[False], outcomes[True]
    assert sets["counts"] == python["counts"]  # rows stamped, per call
    assert sets["stamped"] == python["stamped"]  # the keys stamped, and whether each is alive
    assert sets["states"] == python["states"]  # shadow rows and logs, column for column
    assert sets_warnings == python_warnings  # one per key with a NULL in it
    # The leaves move by exactly what the rows' digests changed by.  (The
    # Python fold can miss that for a key of another storage class than its
    # row's: see the test below.)
    assert sets["noted"] == sets["truth"]


def test_set_based_capture_moves_the_leaf_of_a_key_stored_as_another_class(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row stored under 1, re-inserted as 1.0: its digest changes, its leaf is 1's.

    The Python fold guesses the key new (an insert), notes a guessed digest
    at the leaf of 1.0's hash, and the upsert takes the guess back at the
    leaf of the row's own key hash (1's): a stray delta stays in the tree.
    The set-based capture looks the row up first and notes at its leaf only.
    """
    insert = "INSERT OR REPLACE INTO t (id, a, b, u) VALUES (?, ?, ?, ?)"
    _history(
        tmp_path / "original.db",
        [(insert, (1, None, None, None))],
        [(insert, (1.0, "x", None, None))],
    )
    outcomes = _both_ways(tmp_path, caplog, -1)
    sets = outcomes[True][0]
    assert sets["noted"] == sets["truth"]
    assert list(sets["truth"]["t"]) == [key_hash([1]) & LEAF_MASK]  # type: ignore[index]
    assert outcomes[False][0]["states"] == sets["states"]


def test_python_fold_moves_the_leaf_of_a_key_stored_as_another_class(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert = "INSERT OR REPLACE INTO t (id, a, b, u) VALUES (?, ?, ?, ?)"
    _history(
        tmp_path / "original.db",
        [(insert, (1, None, None, None))],
        [(insert, (1.0, "x", None, None))],
    )
    python = _both_ways(tmp_path, caplog, -1)[False][0]
    assert python["noted"] == python["truth"]


@pytest.mark.parametrize("size", [0, 1, 31, 32, 255, 256, 65_535, 65_536])
def test_key_hash_from_sql_is_the_key_hash_of_the_str_read(size: int) -> None:
    """`syncmesh_text_key_hash` (TEXT as bytes, msgpack headers built by hand) is `key_hash`.

    Every str header size, TEXT that is not UTF-8, and the other classes, in
    keys of one to seventeen columns (array headers fixarray and array 16).
    """
    connection = sqlite3.connect(":memory:")
    connection.text_factory = text_of_bytes
    connection.create_function("h", -1, text_key_hash)
    text = ("é" * size).encode()[:size]  # cut mid-character: not UTF-8 at odd sizes
    pairs: list[SqlValue] = [7, text] * 8
    keys: list[list[SqlValue]] = [[text], [text, 1, 2.5, b"\x00", None], [*pairs, text]]
    for key in keys:
        columns = ", ".join(f"v{index}" for index in range(len(key)))
        connection.execute(f"CREATE TABLE k ({columns})")
        stored = [
            "CAST(? AS TEXT)" if isinstance(part, bytes) and part is text else "?" for part in key
        ]
        connection.execute(f"INSERT INTO k VALUES ({', '.join(stored)})", key)
        arguments = ", ".join(
            f"typeof(v{index}) = 'text',"
            f" CASE WHEN typeof(v{index}) = 'text' THEN CAST(v{index} AS BLOB) ELSE v{index} END"
            for index in range(len(key))
        )
        row = connection.execute(f"SELECT {columns} FROM k").fetchone()
        (hashed,) = connection.execute(f"SELECT h({arguments}) FROM k").fetchone()
        assert hashed == key_hash(list(row))
        assert isinstance(row[0] if key[0] is text else row[1], str)
        connection.execute("DROP TABLE k")


def test_capture_folds_set_based_only_long_logs_mostly_not_inserts(tmp_path: Path) -> None:
    """Which fold `capture` picks: by the log's length and its share of inserts.

    The set-based fold leaves its (emptied) fold table behind on the
    store's connection; the Python fold never makes one.
    """
    store = SqliteStore.open(tmp_path / "a.db")
    try:
        store.init()
        store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER)")
        store.track(["items"])
        app = sqlite3.connect(tmp_path / "a.db", isolation_level=None)

        def folded_set_based() -> bool:
            found = store.connection.execute(
                "SELECT 1 FROM sqlite_temp_schema WHERE name = '_syncmesh_fold_items'"
            ).fetchone()
            return found is not None

        count = SET_BASED_ENTRIES_MIN
        app.executemany("INSERT INTO items VALUES (?, 0)", [(f"k{i}",) for i in range(count)])
        assert store.capture() == count
        assert not folded_set_based()  # all inserts
        app.executemany("UPDATE items SET qty = 1 WHERE id = ?", [(f"k{i}",) for i in range(8)])
        assert store.capture() == 8
        assert not folded_set_based()  # short
        app.executemany("UPDATE items SET qty = 2 WHERE id = ?", [(f"k{i}",) for i in range(count)])
        assert store.capture() == count
        assert folded_set_based()
        assert store.connection.execute("SELECT count(*) FROM _syncmesh_fold_items").fetchone() == (
            0,
        )
        app.close()
    finally:
        store.close()
