"""Issue 12's guards at the store, beyond phase 1's reproductions of the defects.

"Every write the apply makes is checked": a write SQLite skips without an
error is undone and quarantined with its reason, never recorded as done;
and the feed never ships a row whose values it did not read from the
table.  Real files, plain SQL as a user writes it, `exchange` through the
wire codec as a session does.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000

MakeStore = Callable[[str, str], SqliteStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[SqliteStore] = []

    def make(name: str, ddl: str) -> SqliteStore:
        clock = HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
        store = SqliteStore.open(tmp_path / f"{name}.db", clock=clock)
        opened.append(store)
        store.init()
        store.connection.executescript(ddl)
        store.track(["items"])
        return store

    yield make
    for store in opened:
        store.close()


def ids(store: SqliteStore) -> list[str]:
    return [row[0] for row in store.connection.execute("SELECT id FROM items ORDER BY id")]


def test_a_write_skipped_by_on_conflict_ignore_is_quarantined_with_its_reason(
    make_store: MakeStore,
) -> None:
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, e TEXT UNIQUE ON CONFLICT IGNORE, v)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    a.connection.execute("INSERT INTO items VALUES ('a', 'x', 1)")
    a.capture()
    b.connection.execute("INSERT INTO items VALUES ('b', 'x', 2)")
    b.connection.execute("INSERT INTO items VALUES ('c', 'y', 3)")
    b.capture()
    exchange_all(b, a)
    assert ids(a) == ["a", "c"]  # 'c' still flows: one bad row stops nothing
    [entry] = a.quarantine()
    assert entry["pk"] == "'b'"
    assert "changes() = 0" in str(entry["reason"])
    # Nothing of 'b' is claimed or relayed: a third store gets no row of NULLs.
    c = make_store("c", ddl)
    exchange_all(a, c)
    assert ids(c) == ["a", "c"]


def unique_collision(make_store: MakeStore) -> tuple[SqliteStore, SqliteStore]:
    """a and b, each with a row of its own holding the UNIQUE value 'x': a's row is
    refused at b once a's feed reaches it."""
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, e TEXT UNIQUE, v)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    a.connection.execute("INSERT INTO items VALUES ('a', 'x', 1)")
    a.capture()
    b.connection.execute("INSERT INTO items VALUES ('b', 'x', 2)")
    b.capture()
    return a, b


def test_a_row_refused_again_by_a_repair_is_kept_once_in_the_quarantine(
    make_store: MakeStore,
) -> None:
    """The periodic verify's repair fetches, at every round, the row a constraint keeps
    out here (it differs from the peer's): each fetch was one more quarantine entry,
    so the quarantine grew for ever and its counts lied.  One entry per row state."""
    a, b = unique_collision(make_store)
    exchange_all(a, b)
    [entry] = b.quarantine()
    assert entry["pk"] == "'a'"
    for _round in range(3):
        result = b.merge_repair_rows(a.site_id, a.rows_of("items", [("a",)]))
        # Its key waits in the quarantine: the repair leaves it to the retry.
        assert (result.applied_rows, result.quarantined_rows) == (0, 0)
    assert len(b.quarantine()) == 1
    assert b.status().quarantined_rows == 1
    # Once the collision is gone, the one entry settles it.
    b.connection.execute("DELETE FROM items WHERE id = 'b'")
    b.capture()
    assert b.retry_quarantine() == 1
    assert ids(b) == ["a"]
    assert b.quarantine() == []


def test_a_row_the_retry_refuses_again_for_the_same_reason_is_warned_of_once(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The node retries the quarantine every second: each retry took a row out,
    tried it, refused it again and warned again, two lines a second for as long as
    the collision lasted (a chaos log held hundreds), burying the first warning.
    Refused again for the same reason, it is logged at DEBUG; a new reason warns."""
    a, b = unique_collision(make_store)
    caplog.set_level(logging.DEBUG, logger="syncmesh.store.sqlite.quarantine")
    exchange_all(a, b)
    for _retry in range(3):
        assert b.retry_quarantine() == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "quarantined a row of items ('a')" in warnings[0].getMessage()
    assert sum("still quarantined" in r.getMessage() for r in caplog.records) == 3
    assert len(b.quarantine()) == 1


def test_the_feed_holds_back_an_alive_row_whose_user_row_is_absent(
    make_store: MakeStore,
) -> None:
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    a.connection.execute("INSERT INTO items VALUES ('gone', 'n'), ('kept', 'k')")
    a.capture()
    # What an older version's unchecked apply left behind: the row deleted
    # without its log entry (the triggers are quiet while `applying` is set).
    a.connection.execute("UPDATE _syncmesh_state SET applying = 1")
    a.connection.execute("DELETE FROM items WHERE id = 'gone'")
    a.connection.execute("UPDATE _syncmesh_state SET applying = 0")
    exchange_all(a, b)
    assert b.connection.execute("SELECT id, name FROM items").fetchall() == [("kept", "k")]
    problems = a.status().row_problems
    assert len(problems) == 1
    assert "'items'" in problems[0]
    assert "'gone'" in problems[0]
    assert "absent" in problems[0]


def typed_rows(store: SqliteStore) -> list[tuple[object, ...]]:
    """`items` with each value's storage class and exact bytes (hex)."""
    return [
        tuple(row)
        for row in store.connection.execute(
            "SELECT typeof(id), hex(id), typeof(name), hex(name) FROM items ORDER BY id"
        )
    ]


def test_text_that_is_not_utf8_syncs_with_its_bytes_in_keys_and_values(
    make_store: MakeStore,
) -> None:
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    a.connection.execute("INSERT INTO items VALUES (CAST(X'E9' AS TEXT), 'bad key')")
    a.connection.execute("INSERT INTO items VALUES ('bad value', CAST(X'61E962' AS TEXT))")
    a.connection.execute("INSERT INTO items VALUES ('good', 'after them')")
    a.capture()
    b.connection.execute("INSERT INTO items VALUES ('from b', 'to a')")
    b.capture()
    exchange_all(a, b)
    exchange_all(b, a)
    assert typed_rows(a) == typed_rows(b)
    assert ("text", "E9", "text", "626164206B6579") in typed_rows(b)
    assert ("text", "6261642076616C7565", "text", "61E962") in typed_rows(b)
    # An update of the bad row travels too, and a third store gets it by relay.
    a.connection.execute("UPDATE items SET name = CAST(X'FF' AS TEXT) WHERE id = 'good'")
    a.capture()
    c = make_store("c", ddl)
    exchange_all(a, b)
    exchange_all(b, c)
    assert typed_rows(c) == typed_rows(a)
    assert ("text", "676F6F64", "text", "FF") in typed_rows(c)


def test_a_failed_read_leaves_the_connection_clean_while_its_error_is_kept(
    make_store: MakeStore, tmp_path: Path
) -> None:
    """Defect 8's root: a read that fails mid-statement must not pin an old snapshot.

    A row that Python cannot build after SQLite stepped to it (here a strict
    UTF-8 text_factory, as sqlite3's default is, meeting a TEXT value that is
    not UTF-8) leaves the statement active in the failed frames; the error
    is kept alive, as a node keeps it (logs, futures, link state).
    """
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    a.connection.execute("INSERT INTO items VALUES ('bad', CAST(X'E9' AS TEXT))")
    a.capture()
    lenient = a.connection.text_factory
    a.connection.text_factory = lambda raw: raw.decode("utf-8")
    failures: list[Exception] = []
    try:
        a.read_batch(0, b.vector(), 1_000)
    except Exception as exc:
        failures.append(exc)
    finally:
        a.connection.text_factory = lenient
    assert failures, "the row did not make the read fail"
    outside = sqlite3.connect(tmp_path / "a.db", timeout=10.0)
    try:
        outside.execute("UPDATE items SET name = 'fixed by hand' WHERE id = 'bad'")
        outside.commit()
    finally:
        outside.close()
    assert a.capture() == 1, "the store reads an old snapshot"
    exchange_all(a, b)
    assert b.connection.execute("SELECT name FROM items").fetchall() == [("fixed by hand",)]


def test_track_warns_of_every_feature_that_changes_what_the_apply_writes(
    tmp_path: Path,
) -> None:
    store = SqliteStore.open(
        tmp_path / "w.db", clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
    )
    try:
        store.init()
        store.connection.executescript(
            """
            CREATE TABLE items (id BLOB PRIMARY KEY, e TEXT UNIQUE ON CONFLICT IGNORE);
            CREATE TRIGGER items_skip BEFORE INSERT ON items WHEN NEW.e = ''
            BEGIN SELECT RAISE(IGNORE); END;
            CREATE TABLE plain (id TEXT PRIMARY KEY, v);
            """
        )
        warnings = " ".join(store.track(["items"]))
        assert "ON CONFLICT IGNORE" in warnings
        assert "'items_skip' can RAISE(IGNORE)" in warnings
        assert "'id' is declared 'BLOB', which has no fixed affinity" in warnings
        assert store.track(["plain"]) == []
    finally:
        store.close()


def test_tables_tracked_before_are_checked_again(tmp_path: Path) -> None:
    """Goal: a table tracked by a version without the checks (or changed since) is checked
    again: `tracked_table_warnings` names the feature, for `serve` to say at start (once:
    the store's open no longer logs it, or every `status` repeated it; new-user report;
    the serve side: tests/test_newcomer.py)."""
    path = tmp_path / "old.db"
    store = SqliteStore.open(path, clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000))
    store.init()
    store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, v)")
    assert store.track(["items"]) == []
    # As tracked by a version without the checks: the trigger came later.
    store.connection.execute(
        "CREATE TRIGGER items_skip BEFORE INSERT ON items WHEN NEW.v IS NULL"
        " BEGIN SELECT RAISE(IGNORE); END"
    )
    store.close()
    reopened = SqliteStore.open(path, clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000))
    try:
        warnings = reopened.tracked_table_warnings()
    finally:
        reopened.close()
    assert any("trigger 'items_skip' can RAISE(IGNORE)" in warning for warning in warnings)
