"""Change capture on real SQLite files: every writer of the file is captured.

Writes come from this process's own connection, the `sqlite3` shell and a
second Python process; the triggers only mark rows pending, `Store.capture()`
stamps them (docs/adr/0002-stamp-in-capture-loop.md).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.errors import SchemaError
from syncmesh.model import ChangeBatch, RowChange, SqlValue, Stamp
from syncmesh.schema import quote_identifier
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.capture import CAPTURE_ENTRIES_PER_SEQ
from syncmesh.store.sqlite.tracking import BACKFILL_ROWS_PER_SEQ, BACKFILL_ROWS_PER_STEP
from tests.helpers import exchange, exchange_all, rows_with_types

SQLITE_SHELL = shutil.which("sqlite3") or "/usr/bin/sqlite3"
ITEMS_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "a.db")
    opened.init()
    opened.connection.execute(ITEMS_DDL)
    assert opened.track(["items"]) == []
    yield opened
    opened.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "b.db")
    opened.init()
    opened.connection.execute(ITEMS_DDL)
    opened.track(["items"])
    yield opened
    opened.close()


def feed(store: SqliteStore, from_seq: int = 0, rows_max: int = 10_000) -> ChangeBatch:
    """The store's change feed after `from_seq`, unfiltered (empty receiver vector)."""
    return store.read_batch(from_seq, {}, rows_max)


def rows_by_key(batch: ChangeBatch) -> dict[tuple[SqlValue, ...], RowChange]:
    return {change.pk: change for change in batch.rows}


def pending_count(store: SqliteStore, table: str = "items") -> int:
    """Keys with logged, not yet captured writes."""
    log = quote_identifier(f"_syncmesh_log_{table}")
    return int(store.connection.execute(f"SELECT count(DISTINCT k0) FROM {log}").fetchone()[0])


def run_shell(path: Path, sql: str) -> None:
    subprocess.run([SQLITE_SHELL, str(path), sql], check=True, capture_output=True, timeout=30)


# -- writers ----------------------------------------------------------------------


def test_capture_of_python_connection_writes(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1), ('b', 'banana', 2)")
    assert pending_count(store) == 2
    assert store.capture() == 2
    assert pending_count(store) == 0
    assert store.capture() == 0
    first = feed(store)
    assert set(rows_by_key(first)) == {("a",), ("b",)}
    assert all(change.state.alive for change in first.rows)

    connection.execute("UPDATE items SET qty = 5 WHERE id = 'a'")
    connection.execute("DELETE FROM items WHERE id = 'b'")
    assert store.capture() == 2
    later = rows_by_key(feed(store, first.to_seq))
    assert later[("a",)].state.cells["qty"].value == 5
    assert later[("b",)].state.cl == 2
    assert not later[("b",)].state.alive


def test_capture_of_sqlite3_shell_writes(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    run_shell(
        path,
        "INSERT INTO items VALUES ('shell', 'from the shell', 7);"
        " INSERT INTO items VALUES ('gone', 'x', 0);",
    )
    run_shell(
        path, "UPDATE items SET qty = 8 WHERE id = 'shell'; DELETE FROM items WHERE id = 'gone';"
    )
    assert store.capture() == 2
    changes = rows_by_key(feed(store))
    assert changes[("shell",)].state.cells["qty"].value == 8
    assert changes[("shell",)].state.cells["name"].value == "from the shell"
    assert changes[("gone",)].state.cl == 2


def test_capture_of_second_python_process_writes(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    script = (
        "import sqlite3, sys\n"
        "connection = sqlite3.connect(sys.argv[1])\n"
        "with connection:\n"
        "    connection.execute(\"INSERT INTO items VALUES ('p', 'other process', 3)\")\n"
        "    connection.execute(\"INSERT INTO items VALUES ('q', 'other process', 4)\")\n"
        "connection.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert store.capture() == 2
    assert set(rows_by_key(feed(store))) == {("p",), ("q",)}


def test_insert_or_replace_is_captured(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    before = feed(store)
    connection.execute("INSERT OR REPLACE INTO items VALUES ('a', 'avocado', 2)")
    assert store.capture() == 1
    change = rows_by_key(feed(store, before.to_seq))[("a",)]
    assert change.state.alive
    assert change.state.cl == 1  # replaced, not deleted and re-inserted
    assert change.state.cells["name"].value == "avocado"
    assert change.state.cells["qty"].value == 2
    old_stamp = rows_by_key(before)[("a",)].state.cells["name"].stamp
    assert change.state.cells["name"].stamp > old_stamp


def test_upsert_is_captured(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    before = feed(store)
    connection.execute(
        "INSERT INTO items VALUES ('a', 'ignored', 10), ('n', 'new', 1)"
        " ON CONFLICT (id) DO UPDATE SET qty = items.qty + excluded.qty"
    )
    assert store.capture() == 2
    changes = rows_by_key(feed(store, before.to_seq))
    assert changes[("a",)].state.cells["qty"].value == 11
    assert changes[("a",)].state.cells["name"].value == "apple"
    # The upsert's update path stamps only the changed column.
    old = rows_by_key(before)[("a",)].state.cells
    assert changes[("a",)].state.cells["name"].stamp == old["name"].stamp
    assert changes[("a",)].state.cells["qty"].stamp > old["qty"].stamp
    assert changes[("n",)].state.cells["name"].value == "new"


def test_primary_key_change_is_delete_plus_insert(store: SqliteStore, peer: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('old', 'thing', 3)")
    store.capture()
    exchange(store, peer)
    before = feed(store)
    connection.execute("UPDATE items SET id = 'new' WHERE id = 'old'")
    assert store.capture() == 2
    changes = rows_by_key(feed(store, before.to_seq))
    assert changes[("old",)].state.cl == 2  # even: deleted
    assert changes[("new",)].state.cl == 1
    assert {column: cell.value for column, cell in changes[("new",)].state.cells.items()} == {
        "name": "thing",
        "qty": 3,
    }
    exchange(store, peer)
    assert rows_with_types(peer.connection, "items") == [
        (("new", "text"), ("thing", "text"), (3, "integer"))
    ]


def test_update_stamps_only_the_columns_it_sets(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    before = rows_by_key(feed(store))[("a",)].state
    connection.execute("UPDATE items SET qty = 2 WHERE id = 'a'")
    store.capture()
    after = rows_by_key(feed(store))[("a",)].state
    assert after.cells["name"].stamp == before.cells["name"].stamp  # not set: untouched
    assert after.cells["qty"].stamp > before.cells["qty"].stamp
    assert after.cl_stamp == before.cl_stamp  # an update does not change existence


def test_update_to_the_same_value_is_a_write(store: SqliteStore) -> None:
    """ADR 0013: a column an UPDATE sets is written, even to the value it had.

    The capture triggers name no value column in their body (so that
    DROP COLUMN works), so they cannot compare old and new values: an
    UPDATE that sets a column stamps it, as change capture usually does.
    (Before ADR 0013 such an UPDATE logged nothing.)
    """
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1), ('b', NULL, NULL)")
    store.capture()
    before = rows_by_key(feed(store))
    head = store.head_seq()
    connection.execute("UPDATE items SET name = name WHERE id = 'a'")
    connection.execute("UPDATE items SET name = NULL WHERE id = 'b'")
    assert store.capture() == 2
    after = rows_by_key(feed(store, head))
    for key in (("a",), ("b",)):
        assert after[key].state.cells["name"].stamp > before[key].state.cells["name"].stamp
        assert after[key].state.cells["qty"].stamp == before[key].state.cells["qty"].stamp
    assert rows_by_key(feed(store))[("a",)].state.cells["name"].value == "apple"


def test_update_that_matches_no_row_produces_no_feed_rows(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    head = store.head_seq()
    connection.execute("UPDATE items SET name = 'x' WHERE id = 'nobody'")
    assert pending_count(store) == 0
    assert store.capture() == 0
    assert store.head_seq() == head
    assert feed(store, head).rows == []


def test_update_changing_only_storage_class_or_case_is_captured(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """1 -> 1.0 and 'a' -> 'A' under NOCASE are changes, though `IS NOT` calls them equal.

    Regression: the update trigger compared with plain `IS NOT`, so these
    writes were never stamped and the replicas diverged for good.
    """
    for target in (store, peer):
        target.connection.execute(
            "CREATE TABLE tags (id TEXT PRIMARY KEY, label TEXT COLLATE NOCASE, v)"
        )
        target.track(["tags"])
    store.connection.execute("INSERT INTO tags VALUES ('t', 'abc', 1)")
    store.capture()
    exchange(store, peer)
    store.connection.execute("UPDATE tags SET v = 1.0")
    store.connection.execute("UPDATE tags SET label = 'ABC'")
    assert store.capture() == 1
    exchange(store, peer)
    assert rows_with_types(peer.connection, "tags") == [
        (("t", "text"), ("ABC", "text"), (1.0, "real"))
    ]
    assert rows_with_types(peer.connection, "tags") == rows_with_types(store.connection, "tags")


def test_local_transaction_is_captured_under_one_seq(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('solo', 'x', 0)")
    store.capture()
    start = store.head_seq()
    connection.execute("BEGIN")
    for index in range(5):
        connection.execute("INSERT INTO items VALUES (?, 'tx', ?)", (f"k{index}", index))
    connection.execute("DELETE FROM items WHERE id = 'solo'")
    connection.execute("COMMIT")
    assert store.capture() == 6
    head = store.head_seq()
    assert head > start
    batch = store.read_batch(start, {}, 1)  # rows_max=1 still yields the whole group
    assert len(batch.rows) == 6
    assert batch.to_seq == head
    assert batch.vector is not None  # it reached the head
    stamps = {change.state.cells["name"].stamp for change in batch.rows if change.state.alive}
    assert len(stamps) == 1  # one HLC for the whole transaction


def test_separate_transactions_are_separate_groups(store: SqliteStore) -> None:
    connection = store.connection
    connection.execute("INSERT INTO items VALUES ('a', 'x', 0)")
    store.capture()
    connection.execute("INSERT INTO items VALUES ('b', 'x', 0)")
    store.capture()
    first = store.read_batch(0, {}, 1)
    assert [change.pk for change in first.rows] == [("a",)]
    assert first.vector is None  # cut before the head: no vector
    second = store.read_batch(first.to_seq, {}, 1)
    assert [change.pk for change in second.rows] == [("b",)]
    assert second.vector is not None


# -- track / init -------------------------------------------------------------------


def test_track_picks_up_existing_rows(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "pre.db")
    try:
        store.init()
        store.connection.execute(ITEMS_DDL)
        store.connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(f"k{index}", "pre", index) for index in range(25)],
        )
        assert feed(store).rows == []
        store.track(["items"])
        batch = feed(store)
        assert len(batch.rows) == 25
        assert all(
            change.state.alive and change.state.cells["name"].value == "pre"
            for change in batch.rows
        )
        assert store.capture() == 0
    finally:
        store.close()


def test_track_of_a_large_table_reports_progress_in_steps_and_keeps_seq_groups(
    tmp_path: Path,
) -> None:
    rows = 2 * BACKFILL_ROWS_PER_STEP + 1_234
    store = SqliteStore.open(tmp_path / "large.db")
    try:
        store.init()
        store.connection.execute(
            "CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b))"
        )
        store.connection.executemany(
            "INSERT INTO pairs VALUES (?, ?, 'x')",
            [
                (
                    f"k{index % 7}",
                    index,
                )
                for index in range(rows)
            ],
        )
        calls: list[tuple[str, int, int]] = []
        store.track(["pairs"], lambda *call: calls.append(call))
        total = rows
        assert calls[0] == ("pairs", 0, total)
        done = [call[1] for call in calls]
        assert done == sorted(done)
        assert len(calls) == 4  # the start, two full steps of 50,000, the end
        assert calls[-1] == ("pairs", total, total)
        shadow = store.connection.execute(
            "SELECT count(*), count(DISTINCT seq), max(seq) FROM _syncmesh_shadow_pairs"
        ).fetchone()
        assert shadow[0] == total  # every row joined the feed
        assert shadow[1] == -(-rows // BACKFILL_ROWS_PER_SEQ)  # 1,000 rows a seq
        assert store.head_seq() == shadow[2]
        biggest = store.connection.execute(
            "SELECT count(*) FROM _syncmesh_shadow_pairs GROUP BY seq ORDER BY 1 DESC LIMIT 1"
        ).fetchone()[0]
        assert biggest == BACKFILL_ROWS_PER_SEQ
    finally:
        store.close()


def test_a_row_with_a_null_key_does_not_wedge_capture(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "nullkey.db")
    try:
        store.init()
        store.connection.execute("CREATE TABLE p (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b))")
        store.connection.execute("INSERT INTO p VALUES (NULL, 0, 'before tracking')")
        store.track(["p"])  # left out of the backfill
        store.connection.execute("INSERT INTO p VALUES (NULL, 1, 'unaddressable')")
        store.connection.execute("INSERT INTO p VALUES ('ok', 1, 'synced')")
        assert store.capture() == 1  # the other write is stamped; the NULL key skipped
        assert store.capture() == 0  # and the log is empty: nothing left to wedge on
        assert [change.pk for change in feed(store).rows] == [("ok", 1)]
    finally:
        store.close()


def test_track_refuses_table_without_primary_key(store: SqliteStore) -> None:
    store.connection.execute("CREATE TABLE loose (a, b)")
    with pytest.raises(SchemaError, match="PRIMARY KEY"):
        store.track(["loose"])
    assert [spec.name for spec in store.specs()] == ["items"]


def test_track_refuses_missing_table_and_reserved_names(store: SqliteStore) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        store.track(["nope"])
    with pytest.raises(SchemaError, match="reserved"):
        store.track(["_syncmesh_state"])


def test_track_warns_about_an_integer_key_the_application_allocates(store: SqliteStore) -> None:
    # Not a rowid alias: SQLite never numbers it, so it is tracked with a
    # warning (an INTEGER PRIMARY KEY is refused: tests/test_integer_keys.py).
    store.connection.execute("CREATE TABLE counters (id INT PRIMARY KEY, n)")
    warnings = store.track(["counters"])
    assert len(warnings) == 1
    assert "integer primary key 'id' is not allocated by SQLite" in warnings[0]


def test_track_warns_about_unique_index_and_foreign_key(store: SqliteStore) -> None:
    store.connection.execute("CREATE TABLE owners (id TEXT PRIMARY KEY, email TEXT UNIQUE)")
    store.connection.execute(
        "CREATE TABLE pets (id TEXT PRIMARY KEY, owner TEXT REFERENCES owners (id), tag TEXT)"
    )
    store.connection.execute("CREATE UNIQUE INDEX pets_tag ON pets (tag)")
    owners = store.track(["owners"])
    assert len(owners) == 1
    assert "UNIQUE" in owners[0]
    pets = store.track(["pets"])
    assert any("UNIQUE" in warning and "pets_tag" in warning for warning in pets)
    assert any("FOREIGN KEY" in warning for warning in pets)


def test_track_is_idempotent(store: SqliteStore) -> None:
    store.connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    head = store.head_seq()
    assert store.track(["items"]) == []
    assert store.head_seq() == head  # no second backfill
    triggers = store.connection.execute(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
    ).fetchone()[0]
    assert triggers == 5  # insert, key change, delete, one per value column (2)
    store.connection.execute("INSERT INTO items VALUES ('b', 'banana', 2)")
    assert store.capture() == 1  # still captured once, not twice


def test_track_of_a_changed_table_reconciles_it(store: SqliteStore) -> None:
    """ADR 0013: `track` of a tracked table that changed takes the change (it refused before)."""
    store.connection.execute("ALTER TABLE items ADD COLUMN extra")
    assert store.track(["items"]) == []
    assert store.specs()[0].columns == ("id", "name", "qty", "extra")
    store.connection.execute("UPDATE items SET extra = 'x'")
    store.connection.execute("INSERT INTO items VALUES ('z', 'zed', 1, 'e')")
    store.capture()
    assert rows_by_key(feed(store))[("z",)].state.cells["extra"].value == "e"


def test_init_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "init.db"
    store = SqliteStore.open(path)
    try:
        site = store.init()
        incarnation = store.incarnation
        assert store.init() == site
        assert store.incarnation == incarnation
    finally:
        store.close()
    reopened = SqliteStore.open(path)
    try:
        assert reopened.site_id == site
        assert reopened.init() == site
    finally:
        reopened.close()


def test_reopened_store_keeps_capturing_and_its_clock_floor(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    store = SqliteStore.open(path)
    store.init()
    store.connection.execute(ITEMS_DDL)
    store.track(["items"])
    store.connection.execute("INSERT INTO items VALUES ('a', 'x', 1)")
    store.capture()
    last = store.clock.last
    store.close()
    reopened = SqliteStore.open(path)
    try:
        assert reopened.clock.last >= last
        reopened.connection.execute("UPDATE items SET qty = 2")
        assert reopened.capture() == 1
        change = rows_by_key(feed(reopened))[("a",)]
        assert change.state.cells["qty"].stamp.hlc > last
    finally:
        reopened.close()


# -- odd names and exact values, end to end -------------------------------------------


ODD_TABLE = 'we"ird'
# Braces in a key column once broke track() (str.format in the trigger builder).
ODD_DDL = (
    'CREATE TABLE "we""ird" ("{my id}" TEXT PRIMARY KEY, "it\'s" TEXT, "a b" INTEGER,'
    ' "sel""ect" BLOB)'
)


def test_odd_names_work_end_to_end(tmp_path: Path) -> None:
    left, right = SqliteStore.open(tmp_path / "l.db"), SqliteStore.open(tmp_path / "r.db")
    try:
        for store in (left, right):
            store.init()
            store.connection.execute(ODD_DDL)
            assert store.track([ODD_TABLE]) == []
        table = quote_identifier(ODD_TABLE)
        left.connection.execute(f"INSERT INTO {table} VALUES ('k 1', 'it''s ok', 1, x'00')")
        left.connection.execute(f"INSERT INTO {table} VALUES ('k\"2', NULL, 2, NULL)")
        left.capture()
        exchange(left, right)
        assert rows_with_types(right.connection, ODD_TABLE) == rows_with_types(
            left.connection, ODD_TABLE
        )
        right.connection.execute(f'UPDATE {table} SET "a b" = 3 WHERE "{{my id}}" = \'k 1\'')
        right.connection.execute(f'DELETE FROM {table} WHERE "{{my id}}" = \'k"2\'')
        right.capture()
        exchange(right, left)
        assert rows_with_types(left.connection, ODD_TABLE) == [
            (("k 1", "text"), ("it's ok", "text"), (3, "integer"), (b"\x00", "blob"))
        ]
        assert rows_with_types(right.connection, ODD_TABLE) == rows_with_types(
            left.connection, ODD_TABLE
        )
        left.connection.execute(f"UPDATE {table} SET \"{{my id}}\" = 'k''3'")  # key change
        left.capture()
        exchange(left, right)
        assert rows_with_types(right.connection, ODD_TABLE) == [
            (("k'3", "text"), ("it's ok", "text"), (3, "integer"), (b"\x00", "blob"))
        ]
    finally:
        left.close()
        right.close()


VALUES: list[SqlValue] = [
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    1.0,
    1.5,
    -2.5,
    1e308,
    -1e-308,
    5e-324,
    "",
    "1",
    "text",
    "\u00e9\U0001f600",
    "NUL\x00inside",
    b"",
    b"\x00",
    b"1",
    bytes(range(256)),
    None,
]
# The key is declared BLOB: any storage class goes in (`track` refuses a key with no type).
TYPED_DDL = (
    "CREATE TABLE vals (id BLOB PRIMARY KEY, v, i INTEGER, r REAL, t TEXT, b BLOB, n NUMERIC)"
)


def test_values_keep_storage_class_across_apply(tmp_path: Path) -> None:
    left, right = SqliteStore.open(tmp_path / "l.db"), SqliteStore.open(tmp_path / "r.db")
    try:
        for store in (left, right):
            store.init()
            store.connection.execute(TYPED_DDL)
            store.track(["vals"])
        rows: list[tuple[SqlValue, ...]] = [
            (f"v{index}", value, value, value, value, value, value)
            for index, value in enumerate(VALUES)
        ]
        # Keys of every storage class, in a key column of BLOB affinity.
        rows += [
            (1, 1, None, None, None, None, None),
            ("1", "1", None, None, None, None, None),
            (b"1", b"1", None, None, None, None, None),
            (2.5, 2.5, None, None, None, None, None),
        ]
        left.connection.executemany("INSERT INTO vals VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        left.capture()
        exchange(left, right, rows_max=7)
        exchange(left, right, rows_max=10_000)
        expected = rows_with_types(left.connection, "vals")
        assert rows_with_types(right.connection, "vals") == expected
        untyped = {row[0]: row[1] for row in expected}

        def stored(value: SqlValue) -> tuple[SqlValue, str]:
            index = next(
                index
                for index, candidate in enumerate(VALUES)
                if type(candidate) is type(value) and candidate == value
            )
            return untyped[(f"v{index}", "text")]

        assert stored(1) == (1, "integer")
        assert stored(1.0) == (1.0, "real")
        assert stored("1") == ("1", "text")
        assert stored(b"") == (b"", "blob")
        assert stored(None) == (None, "null")
        assert stored(2**63 - 1) == (2**63 - 1, "integer")
        assert stored(-(2**63)) == (-(2**63), "integer")
        assert stored(1e308) == (1e308, "real")
        assert stored("NUL\x00inside") == ("NUL\x00inside", "text")
        assert untyped[(1, "integer")] == (1, "integer")
        assert untyped[("1", "text")] == ("1", "text")
        assert untyped[(b"1", "blob")] == (b"1", "blob")
        assert untyped[(2.5, "real")] == (2.5, "real")
        # And back: an update made on the right keeps its class on the left.
        right.connection.execute("UPDATE vals SET v = x'' WHERE id = 'v0'")
        right.connection.execute("UPDATE vals SET v = 2.0 WHERE id = 1")
        right.capture()
        exchange(right, left)
        assert rows_with_types(left.connection, "vals") == rows_with_types(right.connection, "vals")
        assert left.connection.execute("SELECT typeof(v) FROM vals WHERE id = 'v0'").fetchone() == (
            "blob",
        )
        assert left.connection.execute("SELECT v, typeof(v) FROM vals WHERE id = 1").fetchone() == (
            2.0,
            "real",
        )
    finally:
        left.close()
        right.close()


# -- applied changes are not captured again -------------------------------------------


def test_applied_changes_are_not_captured_again(store: SqliteStore, peer: SqliteStore) -> None:
    store.connection.execute("INSERT INTO items VALUES ('a', 'apple', 1), ('b', 'banana', 2)")
    store.connection.execute("INSERT INTO items VALUES ('c', 'cherry', 3)")
    store.capture()
    store.connection.execute("UPDATE items SET qty = 10 WHERE id = 'a'")
    store.connection.execute("DELETE FROM items WHERE id = 'c'")
    store.capture()
    sent = rows_by_key(feed(store))
    peer_head = peer.head_seq()

    result = exchange(store, peer)
    assert result.applied_rows == 3
    assert pending_count(peer) == 0  # the apply did not trip the capture triggers
    assert peer.capture() == 0
    new_seqs = peer.connection.execute(
        "SELECT DISTINCT seq FROM _syncmesh_shadow_items WHERE seq > ?", (peer_head,)
    ).fetchall()
    assert new_seqs == [(peer.head_seq(),)]  # one seq group for the applied batch

    received = rows_by_key(feed(peer))
    assert set(received) == set(sent)
    for key, change in received.items():
        # The feed carries the origin's stamps, not new stamps of the peer's own.
        assert change.state.cl == sent[key].state.cl
        assert change.state.cl_stamp == sent[key].state.cl_stamp
        assert change.state.cl_stamp is not None
        assert change.state.cl_stamp.site_id == store.site_id
        for column, cell in change.state.cells.items():
            assert cell.stamp == sent[key].state.cells[column].stamp
            assert cell.stamp.site_id == store.site_id
    assert rows_with_types(peer.connection, "items") == rows_with_types(store.connection, "items")
    # The origin's own writes are not echoed back to it.
    assert peer.read_batch(0, store.vector(), 1_000).rows == []


def test_local_writes_pending_at_apply_time_are_stamped_as_local(
    store: SqliteStore, peer: SqliteStore
) -> None:
    store.connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
    store.capture()
    peer.connection.execute("INSERT INTO items VALUES ('z', 'zucchini', 9)")  # not captured
    exchange(store, peer)
    assert pending_count(peer) == 0
    changes = rows_by_key(feed(peer))
    z_stamp = changes[("z",)].state.cells["name"].stamp
    a_stamp = changes[("a",)].state.cells["name"].stamp
    assert z_stamp.site_id == peer.site_id
    assert a_stamp.site_id == store.site_id
    assert isinstance(z_stamp, Stamp)


def test_writes_by_another_connection_during_sync_are_captured(
    store: SqliteStore, peer: SqliteStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "b.db")
    try:
        with other:
            other.execute("INSERT INTO items VALUES ('o', 'other', 1)")
        store.connection.execute("INSERT INTO items VALUES ('a', 'apple', 1)")
        store.capture()
        exchange(store, peer)
        with other:
            other.execute("UPDATE items SET qty = 2 WHERE id = 'a'")
    finally:
        other.close()
    assert peer.capture() == 1
    change = rows_by_key(feed(peer))[("a",)]
    assert change.state.cells["qty"].stamp.site_id == peer.site_id
    assert change.state.cells["name"].stamp.site_id == store.site_id


def test_replace_that_deletes_a_row_by_unique_index_is_captured(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """REPLACE deletes a row colliding on a UNIQUE index without firing delete triggers.

    (SQLite fires them only with recursive_triggers on, a per-connection
    setting of the writer.)  The BEFORE triggers log such rows for a check.
    """
    for target in (store, peer):
        target.connection.execute("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE)")
        target.track(["users"])
    store.connection.execute("INSERT INTO users VALUES ('u1', 'x@example.org')")
    store.capture()
    exchange(store, peer)
    store.connection.execute("INSERT OR REPLACE INTO users VALUES ('u2', 'x@example.org')")
    store.connection.execute("INSERT OR IGNORE INTO users VALUES ('u3', 'x@example.org')")
    store.capture()
    exchange(store, peer)
    assert rows_with_types(store.connection, "users") == [
        (("u2", "text"), ("x@example.org", "text"))
    ]
    assert rows_with_types(peer.connection, "users") == rows_with_types(store.connection, "users")
    store.connection.execute("UPDATE OR REPLACE users SET email = 'y@example.org' WHERE id = 'u2'")
    store.connection.execute("INSERT INTO users VALUES ('u4', 'z@example.org')")
    store.connection.execute("UPDATE OR REPLACE users SET email = 'z@example.org' WHERE id = 'u2'")
    store.capture()
    exchange(store, peer)
    assert rows_with_types(peer.connection, "users") == [
        (("u2", "text"), ("z@example.org", "text"))
    ]


def test_a_huge_backlog_is_captured_in_several_groups(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """More log entries than one seq group takes are split, so no batch is unbounded."""
    total = CAPTURE_ENTRIES_PER_SEQ + 5_000
    with store.connection:
        store.connection.executemany(
            "INSERT INTO items VALUES (?, 'bulk', ?)", [(f"b{i:06d}", i) for i in range(total)]
        )
    assert store.capture() == total
    groups = store.connection.execute(
        "SELECT count(DISTINCT seq) FROM _syncmesh_shadow_items"
    ).fetchone()[0]
    assert groups >= 2
    first = feed(store, 0)
    assert first.row_count <= CAPTURE_ENTRIES_PER_SEQ  # one group at a time
    exchange_all(store, peer, rows_max=CAPTURE_ENTRIES_PER_SEQ)
    assert peer.connection.execute("SELECT count(*) FROM items").fetchone()[0] == total
