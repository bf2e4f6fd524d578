"""Foreign-key orphans under merge (issue 14, part 7): each policy converges, no orphan left.

A parent deleted at one store while another adds a child to it leaves the
child pointing at nothing at both, once synced.  These tests run real
stores (real SQLite files) through `exchange`, as a session does per
batch, and check after every scenario that the stores hold the same rows
with the same stamps (their hash-tree roots) and, under `cascade` and
`set-null`, that `PRAGMA foreign_key_check` finds nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.errors import StoreError
from syncmesh.model import SqlValue
from syncmesh.store import OrphanPolicy
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange, exchange_all, rows_with_types

BASE_MS = 1_700_000_000_000
TABLES = ["authors", "books", "pages"]


def schema(on_delete: str = "", *, book_author_not_null: bool = False) -> list[str]:
    """Authors, their books, the books' pages: a chain of two foreign keys."""
    action = f" ON DELETE {on_delete}" if on_delete else ""
    not_null = " NOT NULL" if book_author_not_null else ""
    return [
        "CREATE TABLE authors (id TEXT PRIMARY KEY, name TEXT)",
        f"CREATE TABLE books (id TEXT PRIMARY KEY, author_id TEXT{not_null}"
        f" REFERENCES authors (id){action}, title TEXT)",
        "CREATE INDEX books_author ON books (author_id)",
        "CREATE TABLE pages (id TEXT PRIMARY KEY, book_id TEXT REFERENCES books (id), n INTEGER)",
        "CREATE INDEX pages_book ON pages (book_id)",
    ]


MakeStore = Callable[..., SqliteStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[SqliteStore] = []

    def make(
        name: str,
        *,
        policy: OrphanPolicy | None = None,
        ddl: list[str] | None = None,
        clock: ManualClock | None = None,
    ) -> SqliteStore:
        hybrid = HybridClock(clock or ManualClock(BASE_MS), drift_ms_max=60_000)
        store = SqliteStore.open(tmp_path / f"{name}.db", clock=hybrid, orphan_policy=policy)
        opened.append(store)
        store.init()
        for statement in ddl or schema():
            store.connection.execute(statement)
        store.track(TABLES)
        return store

    yield make
    for store in opened:
        store.close()


def write(store: SqliteStore, sql: str, *params: SqlValue) -> None:
    """A local write by the application, captured at once (as the node's capture loop would)."""
    store.connection.execute(sql, params)
    store.capture()


def sync_all(stores: list[SqliteStore], rows_max: int = 1_000) -> None:
    """Every store pulls from every other until nothing moves (twice round, for relays)."""
    for _ in range(3):
        for source in stores:
            for target in stores:
                if source is not target:
                    exchange_all(source, target, rows_max)


def dump(store: SqliteStore) -> dict[str, object]:
    roots = {name: summary.root() for name, summary in store.summaries(TABLES).items()}
    return {
        "rows": {table: rows_with_types(store.connection, table) for table in TABLES},
        "stamps": roots,
    }


def foreign_key_check(store: SqliteStore) -> list[tuple[object, ...]]:
    return [tuple(row) for row in store.connection.execute("PRAGMA foreign_key_check")]


def book(store: SqliteStore, key: str) -> tuple[SqlValue, ...] | None:
    row = store.connection.execute(
        "SELECT author_id, title FROM books WHERE id = ?", (key,)
    ).fetchone()
    return None if row is None else tuple(row)


def assert_converged(stores: list[SqliteStore]) -> None:
    first = dump(stores[0])
    for other in stores[1:]:
        assert dump(other) == first


def delete_parent_while_child_is_added(
    a: SqliteStore, b: SqliteStore, clocks: tuple[ManualClock, ManualClock], *, a_first: bool
) -> None:
    """a deletes author a1 while b adds book b1 to it; then both sync in the given order."""
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "INSERT INTO books VALUES ('b0', 'a1', 'old')")
    exchange_all(a, b)
    clocks[0].advance(10)
    clocks[1].advance(20)
    write(a, "DELETE FROM books WHERE author_id = 'a1'")  # the application cascades itself
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'new')")
    if a_first:
        exchange_all(a, b)
        exchange_all(b, a)
    else:
        exchange_all(b, a)
        exchange_all(a, b)
    exchange_all(a, b)
    exchange_all(b, a)


@pytest.mark.parametrize("a_first", [True, False])
@pytest.mark.parametrize("later", ["delete", "insert"])
def test_cascade_by_default_deletes_the_orphan_everywhere(
    make_store: MakeStore, a_first: bool, later: str
) -> None:
    clocks = (ManualClock(BASE_MS), ManualClock(BASE_MS))
    a = make_store("a", clock=clocks[0])
    b = make_store("b", clock=clocks[1])
    if later == "delete":
        clocks[0].advance(1_000)  # the delete carries the later stamp
    else:
        clocks[1].advance(1_000)  # the child's insert does
    delete_parent_while_child_is_added(a, b, clocks, a_first=a_first)
    assert book(a, "b1") is None
    assert book(b, "b1") is None
    assert foreign_key_check(a) == foreign_key_check(b) == []
    assert a.status().orphans == b.status().orphans == {}
    assert_converged([a, b])


@pytest.mark.parametrize("a_first", [True, False])
def test_declared_set_null_nulls_the_reference(make_store: MakeStore, a_first: bool) -> None:
    clocks = (ManualClock(BASE_MS), ManualClock(BASE_MS))
    a = make_store("a", clock=clocks[0], ddl=schema("SET NULL"))
    b = make_store("b", clock=clocks[1], ddl=schema("SET NULL"))
    delete_parent_while_child_is_added(a, b, clocks, a_first=a_first)
    assert book(a, "b1") == book(b, "b1") == (None, "new")
    assert foreign_key_check(a) == foreign_key_check(b) == []
    assert_converged([a, b])


@pytest.mark.parametrize("a_first", [True, False])
def test_configured_set_null_overrides_the_declared_action(
    make_store: MakeStore, a_first: bool
) -> None:
    policy = OrphanPolicy(tables={"books": "set-null"})
    clocks = (ManualClock(BASE_MS), ManualClock(BASE_MS))
    a = make_store("a", clock=clocks[0], policy=policy, ddl=schema("CASCADE"))
    b = make_store("b", clock=clocks[1], policy=policy, ddl=schema("CASCADE"))
    delete_parent_while_child_is_added(a, b, clocks, a_first=a_first)
    assert book(a, "b1") == book(b, "b1") == (None, "new")
    assert_converged([a, b])


@pytest.mark.parametrize("a_first", [True, False])
def test_keep_leaves_the_orphan_and_status_counts_it(make_store: MakeStore, a_first: bool) -> None:
    policy = OrphanPolicy(default="keep")
    clocks = (ManualClock(BASE_MS), ManualClock(BASE_MS))
    a = make_store("a", clock=clocks[0], policy=policy)
    b = make_store("b", clock=clocks[1], policy=policy)
    delete_parent_while_child_is_added(a, b, clocks, a_first=a_first)
    assert book(a, "b1") == book(b, "b1") == ("a1", "new")
    assert a.status().orphans == b.status().orphans == {"books": 1}
    assert len(foreign_key_check(a)) == 1
    assert_converged([a, b])


@pytest.mark.parametrize("order", ["abc", "cba", "bca"])
def test_three_stores_converge_with_a_relay(make_store: MakeStore, order: str) -> None:
    clocks = [ManualClock(BASE_MS) for _ in range(3)]
    a, b, c = (make_store(name, clock=clock) for name, clock in zip("abc", clocks, strict=True))
    stores = {"a": a, "b": b, "c": c}
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    sync_all([a, b, c])
    for clock in clocks:
        clock.advance(100)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'new')")
    write(b, "INSERT INTO pages VALUES ('p1', 'b1', 1)")
    # c hears of each write first, then relays: a's delete and b's book meet at c.
    first, second, third = (stores[name] for name in order)
    exchange_all(first, c) if first is not c else None
    exchange_all(second, c) if second is not c else None
    exchange_all(third, c) if third is not c else None
    exchange_all(c, a)
    exchange_all(c, b)
    sync_all([a, b, c])
    for store in (a, b, c):
        assert book(store, "b1") is None
        assert store.connection.execute("SELECT count(*) FROM pages").fetchone()[0] == 0
        assert foreign_key_check(store) == []
    assert_converged([a, b, c])


def test_grandchildren_cascade_too(make_store: MakeStore) -> None:
    clocks = (ManualClock(BASE_MS), ManualClock(BASE_MS))
    a = make_store("a", clock=clocks[0])
    b = make_store("b", clock=clocks[1])
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    exchange_all(a, b)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'new')")
    write(b, "INSERT INTO pages VALUES ('p1', 'b1', 1), ('p2', 'b1', 2)")
    exchange_all(a, b)  # b learns of the delete: b1 and its pages go
    exchange_all(b, a)
    exchange_all(a, b)
    for store in (a, b):
        assert book(store, "b1") is None
        assert store.connection.execute("SELECT count(*) FROM pages").fetchone()[0] == 0
        assert foreign_key_check(store) == []
    assert_converged([a, b])


def test_a_local_delete_of_a_parent_cascades_to_its_children(make_store: MakeStore) -> None:
    """The application deletes the parent with foreign keys off (the SQLite default)."""
    a = make_store("a")
    b = make_store("b")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one')")
    write(a, "INSERT INTO pages VALUES ('p1', 'b1', 1)")
    exchange_all(a, b)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    assert book(a, "b1") is None
    assert foreign_key_check(a) == []
    exchange_all(a, b)
    assert book(b, "b1") is None
    assert foreign_key_check(b) == []
    assert_converged([a, b])


def test_a_child_moved_away_before_its_parent_was_deleted_survives(
    make_store: MakeStore,
) -> None:
    """The feed may bring a parent's delete before the write that moved the child away.

    a moves b1 from a1 to a2, deletes a1, then edits b1 (which moves b1 to
    the feed's end).  b pulls one seq group at a time: it holds a1 deleted
    while b1 still names a1.  That is not an orphan anywhere; b must wait.
    """
    a = make_store("a")
    b = make_store("b")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann'), ('a2', 'Bob')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one')")
    exchange_all(a, b)
    write(a, "UPDATE books SET author_id = 'a2' WHERE id = 'b1'")
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(a, "UPDATE books SET title = 'one, revised' WHERE id = 'b1'")
    exchange(a, b, rows_max=1)
    assert book(b, "b1") == ("a1", "one")  # the delete came first; b1 waits
    assert b.status().orphans == {"books": 1}
    exchange_all(a, b, rows_max=1)
    exchange_all(b, a)
    assert book(a, "b1") == book(b, "b1") == ("a2", "one, revised")
    assert foreign_key_check(b) == []
    assert_converged([a, b])


def test_a_child_that_arrives_before_its_parent_is_not_an_orphan(make_store: MakeStore) -> None:
    a = make_store("a")
    b = make_store("b")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one')")
    write(a, "UPDATE authors SET name = 'Ann B.' WHERE id = 'a1'")  # a1 moves past b1
    exchange(a, b, rows_max=1)
    assert book(b, "b1") == ("a1", "one")
    exchange_all(a, b)
    assert book(b, "b1") == ("a1", "one")
    assert foreign_key_check(b) == []
    assert_converged([a, b])


def test_set_null_on_a_not_null_column_keeps_the_orphan_and_reports_it(
    make_store: MakeStore,
) -> None:
    policy = OrphanPolicy(tables={"books": "set-null"})
    ddl = schema(book_author_not_null=True)
    a = make_store("a", policy=policy, ddl=ddl)
    b = make_store("b", policy=policy, ddl=ddl)
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann'), ('a2', 'Bob')")
    exchange_all(a, b)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'kept'), ('b2', 'a2', 'fine')")
    exchange_all(b, a)
    exchange_all(a, b)
    assert book(a, "b1") == book(b, "b1") == ("a1", "kept")
    assert book(a, "b2") == ("a2", "fine")  # the rest of the batch applied
    status = a.status()
    assert status.orphans == {"books": 1}
    assert len(status.orphan_problems) == 1
    assert "'author_id' cannot be NULL" in status.orphan_problems[0]


def test_a_resolution_the_application_refuses_is_reported_and_the_rest_goes_on(
    make_store: MakeStore,
) -> None:
    a = make_store("a")
    b = make_store("b")
    for store in (a, b):
        store.connection.execute(
            "CREATE TRIGGER keep_b1 BEFORE DELETE ON books WHEN OLD.id = 'b1'"
            " BEGIN SELECT RAISE(ABORT, 'b1 is precious'); END"
        )
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    exchange_all(a, b)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'precious'), ('b2', 'a1', 'plain')")
    # b wrote the children: it resolves them when the delete arrives.
    exchange_all(a, b)
    assert book(b, "b1") == ("a1", "precious")
    assert book(b, "b2") is None
    problems = b.status().orphan_problems
    assert len(problems) == 1
    assert "b1 is precious" in problems[0]
    exchange_all(b, a)
    assert book(a, "b2") is None
    assert b.peer_cursor(a.site_id) is not None


def test_the_first_capture_resolves_orphans_left_from_before(
    make_store: MakeStore, tmp_path: Path
) -> None:
    """Orphans made while no resolution ran (an older syncmesh) are found at the next run."""
    a = make_store("a")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one')")
    # Behind the store's back: the delete is logged, but no orphan search runs.
    a.connection.execute("DELETE FROM authors WHERE id = 'a1'")
    from syncmesh.store.sqlite import capture

    with a.context.transaction():
        capture.capture_pending(a.context)
    assert book(a, "b1") == ("a1", "one")
    a.close()
    reopened = SqliteStore.open(tmp_path / "a.db")
    try:
        assert reopened.status().orphans == {"books": 1}
        reopened.capture()
        assert book(reopened, "b1") is None
        assert reopened.status().orphans == {}
    finally:
        reopened.close()


def test_a_foreign_key_to_an_untracked_table_is_counted_not_resolved(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "x.db")
    try:
        store.init()
        store.connection.execute("CREATE TABLE kinds (id TEXT PRIMARY KEY)")
        store.connection.execute(
            "CREATE TABLE things (id TEXT PRIMARY KEY, kind TEXT REFERENCES kinds (id))"
        )
        store.track(["things"])
        write(store, "INSERT INTO things VALUES ('t1', 'missing'), ('t2', NULL)")
        assert store.connection.execute("SELECT count(*) FROM things").fetchone()[0] == 2
        assert store.status().orphans == {"things": 1}
    finally:
        store.close()


def test_foreign_key_check_agrees_with_the_status_count(make_store: MakeStore) -> None:
    store = make_store("a", policy=OrphanPolicy(default="keep"))
    write(store, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(store, "INSERT INTO books VALUES ('b1', 'a1', 'x'), ('b2', 'a9', 'y'), ('b3', NULL, 'z')")
    write(store, "INSERT INTO pages VALUES ('p1', 'b1', 1), ('p2', 'b9', 2)")
    write(store, "DELETE FROM authors WHERE id = 'a1'")
    check = foreign_key_check(store)
    by_table: dict[str, int] = {}
    for row in check:
        by_table[str(row[0])] = by_table.get(str(row[0]), 0) + 1
    assert store.status().orphans == by_table == {"books": 2, "pages": 1}


def test_the_engine_connection_still_does_not_enforce_foreign_keys(
    make_store: MakeStore,
) -> None:
    store = make_store("a")
    assert store.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 0
    # An orphan written by the application with foreign keys on is refused by SQLite itself.
    app = sqlite3.connect(store.context.path)
    try:
        app.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            app.execute("INSERT INTO books VALUES ('b9', 'nobody', 'x')")
    finally:
        app.close()


# -- configuration ----------------------------------------------------------------


def test_tables_orphans_in_the_config_file_reaches_the_node_config(tmp_path: Path) -> None:
    from syncmesh.cli.config import load_settings, node_config, render

    path = tmp_path / "syncmesh.toml"
    path.write_text(
        '[node]\ndatabase = "app.db"\n\n[tables]\ntrack = ["books"]\n\n'
        '[tables.orphans]\ndefault = "keep"\nbooks = "cascade"\npages = "set-null"\n',
        encoding="utf-8",
    )
    values = load_settings(path, environ={})
    policy = node_config(values).orphan_policy
    assert policy == OrphanPolicy(default="keep", tables={"books": "cascade", "pages": "set-null"})
    assert policy.for_table("books") == "cascade"
    assert policy.for_table("authors") == "keep"
    rendered = render(values)
    assert '[tables.orphans]\ndefault = "keep"\nbooks = "cascade"\npages = "set-null"' in rendered


def test_the_default_orphan_policy_follows_the_declared_action(tmp_path: Path) -> None:
    from syncmesh.cli.config import load_settings, node_config

    path = tmp_path / "syncmesh.toml"
    path.write_text('[node]\ndatabase = "app.db"\n', encoding="utf-8")
    assert node_config(load_settings(path, environ={})).orphan_policy == OrphanPolicy("declared")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[tables.orphans]\nbooks = "delete"\n', "tables.orphans.books"),
        ('[tables]\norphans = "cascade"\n', "tables.orphans"),
    ],
)
def test_a_bad_orphan_policy_is_refused_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    from syncmesh.cli.config import load_settings
    from syncmesh.errors import ConfigError

    path = tmp_path / "syncmesh.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert named in str(raised.value)
    assert "cascade" in str(raised.value)


def test_rows_merged_by_repair_or_a_quarantine_retry_are_resolved_too(
    make_store: MakeStore,
) -> None:
    """Rows reach the tables by repair (syncmesh repair) and by retry, not only by batches."""
    a = make_store("a")
    b = make_store("b")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    exchange_all(a, b)
    write(b, "DELETE FROM authors WHERE id = 'a1'")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'by repair')")
    # The delete reaches a, which wrote the child, by repair.
    a.merge_repair_rows(b.site_id, b.rows_of("authors", [("a1",)]))
    assert book(a, "b1") is None
    assert foreign_key_check(a) == []

    # A child quarantined by a constraint, retried once the constraint allows it.
    a.connection.execute("CREATE UNIQUE INDEX books_title ON books (title)")
    write(a, "INSERT INTO authors VALUES ('a2', 'Bob')")
    write(a, "INSERT INTO books VALUES ('b2', 'a2', 'taken')")
    exchange_all(a, b)
    write(b, "INSERT INTO books VALUES ('b3', 'a2', 'same')")
    write(a, "INSERT INTO books VALUES ('b4', 'a2', 'same')")
    exchange_all(b, a)
    assert [entry["table"] for entry in a.quarantine()] == ["books"]  # b3: UNIQUE title
    write(a, "DELETE FROM books WHERE id = 'b4'")
    write(a, "DELETE FROM authors WHERE id = 'a2'")  # b2 cascades here at once
    assert book(a, "b2") is None
    assert a.retry_quarantine() == 1
    # Retried into a table where its author is gone: b wrote it, so b resolves it.
    assert book(a, "b3") == ("a2", "same")
    assert a.status().orphans == {"books": 1}
    exchange_all(a, b)
    exchange_all(b, a)
    assert book(a, "b3") is None
    assert foreign_key_check(a) == []


def test_a_foreign_key_spelled_in_another_case_is_resolved(make_store: MakeStore) -> None:
    """SQLite's names are case-insensitive; `REFERENCES AUTHORS (ID)` names `authors (id)`."""
    ddl = [
        "CREATE TABLE authors (id TEXT PRIMARY KEY, name TEXT)",
        "CREATE TABLE books (id TEXT PRIMARY KEY, Author_Id TEXT REFERENCES AUTHORS (ID),"
        " title TEXT)",
        "CREATE TABLE pages (id TEXT PRIMARY KEY, book_id TEXT REFERENCES Books, n INTEGER)",
    ]
    a = make_store("a", ddl=ddl)
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one')")
    write(a, "INSERT INTO pages VALUES ('p1', 'b1', 1)")
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    assert book(a, "b1") is None
    assert a.connection.execute("SELECT count(*) FROM pages").fetchone()[0] == 0


def test_an_orphan_problem_fixed_by_hand_leaves_the_status(make_store: MakeStore) -> None:
    policy = OrphanPolicy(tables={"books": "set-null"})
    ddl = schema(book_author_not_null=True)
    a = make_store("a", policy=policy, ddl=ddl)
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann'), ('a2', 'Bob')")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'one'), ('b2', 'a1', 'two')")
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    assert len(a.status().orphan_problems) == 2
    write(a, "UPDATE books SET author_id = 'a2' WHERE id = 'b1'")  # given another parent
    write(a, "DELETE FROM books WHERE id = 'b2'")
    status = a.status()
    assert status.orphan_problems == []
    assert status.orphans == {}


def test_a_resolution_that_rolls_back_the_whole_apply_does_not_stall_the_sync(
    make_store: MakeStore,
) -> None:
    """A trigger's RAISE(ROLLBACK) ends the apply's transaction: the batch applies on retry."""
    a = make_store("a")
    b = make_store("b")
    a.connection.execute(
        "CREATE TRIGGER no_deletes BEFORE DELETE ON books"
        " BEGIN SELECT RAISE(ROLLBACK, 'books are never deleted'); END"
    )
    write(b, "INSERT INTO authors VALUES ('a1', 'Ann')")
    exchange_all(b, a)
    write(b, "DELETE FROM authors WHERE id = 'a1'")
    # a's own children (it resolves them when the delete arrives); foreign keys off.
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'kept'), ('b2', 'a1', 'kept too')")
    with pytest.raises(StoreError, match="rolled back the whole apply transaction"):
        exchange(b, a)
    # Nothing of that batch was applied: a1 is still alive here.
    assert a.connection.execute("SELECT name FROM authors").fetchall() == [("Ann",)]
    exchange_all(b, a)  # the retry goes through: no resolution this run
    assert book(a, "b1") == ("a1", "kept")
    problems = a.status().orphan_problems
    assert len(problems) == 1
    assert "not resolved until the node restarts" in problems[0]
    assert a.status().orphans == {"books": 2}


def test_a_local_insert_of_a_child_of_a_deleted_parent_is_resolved_like_a_remote_one(
    make_store: MakeStore,
) -> None:
    """With foreign keys off, the application can write an orphan itself; every site would
    resolve it on arrival, so its own site does at capture.  A parent never seen is left."""
    a = make_store("a")
    b = make_store("b")
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    write(a, "INSERT INTO books VALUES ('b1', 'a1', 'late'), ('b2', 'nobody', 'dangling')")
    assert book(a, "b1") is None
    assert book(a, "b2") == ("nobody", "dangling")
    assert a.status().orphans == {"books": 1}
    exchange_all(a, b)
    assert book(b, "b1") is None
    assert_converged([a, b])


def test_composite_keys_on_both_sides_in_any_column_order(tmp_path: Path) -> None:
    """A parent keyed (isbn, lang) referenced as (lang, isbn); a child keyed by its parent."""
    ddl = [
        "CREATE TABLE editions (isbn TEXT, lang TEXT, title TEXT, PRIMARY KEY (isbn, lang))",
        "CREATE TABLE prints (l TEXT, i TEXT, run INTEGER, PRIMARY KEY (i, l, run),"
        " FOREIGN KEY (l, i) REFERENCES editions (lang, isbn))",
    ]
    stores = []
    try:
        for name in ("a", "b"):
            store = SqliteStore.open(tmp_path / f"{name}.db")
            store.init()
            for statement in ddl:
                store.connection.execute(statement)
            store.track(["editions", "prints"])
            stores.append(store)
        a, b = stores
        write(a, "INSERT INTO editions VALUES ('978', 'en', 'x'), ('978', 'de', 'y')")
        exchange_all(a, b)
        write(a, "DELETE FROM editions WHERE isbn = '978' AND lang = 'en'")
        write(b, "INSERT INTO prints VALUES ('en', '978', 1), ('de', '978', 1)")
        exchange_all(b, a)
        exchange_all(a, b)  # b, which wrote the prints, resolves the orphan
        exchange_all(b, a)
        for store in stores:
            assert store.connection.execute("SELECT l, i, run FROM prints").fetchall() == [
                ("de", "978", 1)
            ]
            assert foreign_key_check(store) == []
        assert rows_with_types(a.connection, "prints") == rows_with_types(b.connection, "prints")
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize("receiver", ["deleter", "third"])
def test_a_child_of_a_reinserted_parent_that_arrives_before_the_reinsert_survives(
    make_store: MakeStore, receiver: str
) -> None:
    """Issue 12: a parent's key reused after its delete must not cost the new life's children.

    a deletes a1; b learns it, inserts a1 again (a new life), adds b1 to
    it, then edits a1, which moves a1 past b1 in b's feed.  A node holding
    only the delete (a itself, or c that heard of it from a) then receives
    b1 first: its parent is dead there, and b1's stamps are newer than the
    delete, exactly as for a child written concurrently with the delete.
    It must not cascade b1: the write is acknowledged under a live parent,
    and the re-insert is on its way.  Only b, which wrote b1, knows under
    which life it did.
    """
    clocks = [ManualClock(BASE_MS) for _ in range(3)]
    a, b, c = (make_store(name, clock=clock) for name, clock in zip("abc", clocks, strict=True))
    write(a, "INSERT INTO authors VALUES ('a1', 'Ann')")
    sync_all([a, b, c])
    for clock in clocks:
        clock.advance(100)
    write(a, "DELETE FROM authors WHERE id = 'a1'")
    exchange_all(a, b)
    exchange_all(a, c)
    for clock in clocks:
        clock.advance(100)
    write(b, "INSERT INTO authors VALUES ('a1', 'Ann again')")
    write(b, "INSERT INTO books VALUES ('b1', 'a1', 'new life')")
    write(b, "UPDATE authors SET name = 'Ann, again' WHERE id = 'a1'")  # a1 moves past b1
    target = a if receiver == "deleter" else c
    exchange(b, target, rows_max=1)
    assert book(target, "b1") == ("a1", "new life"), "b1 came first and waits for a1"
    assert target.status().orphans == {"books": 1}
    sync_all([a, b, c])
    for store in (a, b, c):
        assert book(store, "b1") == ("a1", "new life")
        assert foreign_key_check(store) == []
    assert_converged([a, b, c])
