"""Issue 14, part 5 in the store: keys SQLite allocates are refused unless the user opts in.

An INTEGER PRIMARY KEY written at two sites gives unrelated rows the same
id, and the merge joins them (the last test shows it).  `track` refuses
such a table with the fix, takes it with the opt-in (kept in the table's
`_syncmesh_tables.spec`), and a table tracked before the refusal keeps
syncing and is named in `status().warnings` and in the log at every open.
The command line, `config check`, `serve` and a real Django model are in
tests/test_integer_keys_cli.py; the dashboard in tests/test_dashboard.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.errors import SchemaError
from syncmesh.store.sqlite import SqliteStore, integer_keys
from syncmesh.store.sqlite.integer_keys import SPEC_FIELD
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000

# Each a table `t` whose keys SQLite allocates at each site.
ALLOCATED = {
    "integer primary key": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    "autoincrement": "CREATE TABLE t (id integer PRIMARY KEY AUTOINCREMENT, v TEXT)",
    # What Django 5.2's migrate creates for the default AutoField/BigAutoField.
    "django": 'CREATE TABLE "t" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "v" text)',
    # What SQLAlchemy 2's create_all makes of `id: Mapped[int] = mapped_column(primary_key=True)`.
    "sqlalchemy": "CREATE TABLE t (id INTEGER NOT NULL, v VARCHAR, PRIMARY KEY (id))",
    # A table constraint with DESC is still an alias (only the column form is not).
    "table constraint desc": "CREATE TABLE t (id INTEGER, v TEXT, PRIMARY KEY (id DESC))",
    # An alias ignores its DEFAULT: the rowid is allocated all the same.
    "alias with random default": "CREATE TABLE t (id INTEGER PRIMARY KEY DEFAULT (random()), v)",
    # Not aliases, but every site computes the same values.
    "int key, constant default": "CREATE TABLE t (id INT PRIMARY KEY DEFAULT 0, v TEXT)",
    "int key, time default": (
        "CREATE TABLE t (id BIGINT PRIMARY KEY DEFAULT (strftime('%s', 'now')), v TEXT)"
    ),
}
# Each a table `t` whose keys the application (or a random default) picks.
NOT_ALLOCATED = {
    "int": "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)",
    "bigint": "CREATE TABLE t (id BIGINT NOT NULL PRIMARY KEY, v TEXT)",
    "integer primary key desc": "CREATE TABLE t (id INTEGER PRIMARY KEY DESC, v TEXT)",
    "without rowid": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID",
    "random default": "CREATE TABLE t (id INT PRIMARY KEY DEFAULT (random()), v TEXT)",
    "composite": "CREATE TABLE t (site TEXT, n INTEGER, v TEXT, PRIMARY KEY (site, n))",
    "text": "CREATE TABLE t (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))), v)",
}


def open_store(path: Path, ms: int = BASE_MS) -> SqliteStore:
    store = SqliteStore.open(path, clock=HybridClock(ManualClock(ms), drift_ms_max=60_000))
    store.init()
    return store


def make_file(path: Path, *ddl: str, ms: int = BASE_MS) -> SqliteStore:
    with sqlite3.connect(path) as connection:
        for statement in ddl:
            connection.execute(statement)
    connection.close()
    return open_store(path, ms)


def tracked_specs(store: SqliteStore) -> dict[str, dict[str, object]]:
    return {
        str(name): json.loads(spec)
        for name, spec in store.connection.execute("SELECT name, spec FROM _syncmesh_tables")
    }


def track_as_before_the_refusal(store: SqliteStore, tables: list[str]) -> None:
    """Leave `tables` tracked as a version without the refusal left them: no opt-in field."""
    store.track(tables, allow_integer_keys=tables)
    for table in tables:
        store.connection.execute(
            f"UPDATE _syncmesh_tables SET spec = json_remove(spec, '$.{SPEC_FIELD}')"
            " WHERE name = ?",
            (table,),
        )
    assert all(SPEC_FIELD not in spec for spec in tracked_specs(store).values())


@pytest.mark.parametrize("ddl", ALLOCATED.values(), ids=ALLOCATED.keys())
def test_track_refuses_a_key_sqlite_allocates_with_the_fix(tmp_path: Path, ddl: str) -> None:
    store = make_file(tmp_path / "app.db", ddl)
    with pytest.raises(SchemaError) as refused:
        store.track(["t"])
    message = str(refused.value)
    assert message.startswith("table 't': its primary key 'id' is ")
    assert "merges their unrelated rows into one" in message
    assert "UUIDField(primary_key=True, default=uuid.uuid4, editable=False)" in message
    assert "String(36), primary_key=True, default=lambda: str(uuid.uuid4())" in message
    assert f"syncmesh track {tmp_path / 'app.db'} t --allow-integer-keys" in message
    assert '[tables] allow_integer_keys = ["t"]' in message
    # Nothing of the table is tracked, and it has no triggers.
    assert tracked_specs(store) == {}
    triggers = store.connection.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'")
    assert triggers.fetchone()[0] == 0


def test_the_refusal_says_autoincrement_when_the_table_has_it(tmp_path: Path) -> None:
    store = make_file(tmp_path / "app.db", ALLOCATED["django"])
    with pytest.raises(SchemaError, match="is an INTEGER PRIMARY KEY AUTOINCREMENT, which"):
        store.track(["t"])


@pytest.mark.parametrize("ddl", NOT_ALLOCATED.values(), ids=NOT_ALLOCATED.keys())
def test_keys_sqlite_does_not_allocate_are_tracked(tmp_path: Path, ddl: str) -> None:
    store = make_file(tmp_path / "app.db", ddl)
    store.track(["t"])
    assert list(tracked_specs(store)) == ["t"]
    assert store.status().warnings == []


def test_a_refused_table_refuses_the_whole_track_call(tmp_path: Path) -> None:
    notes = NOT_ALLOCATED["text"].replace(" t ", " notes ")
    store = make_file(tmp_path / "app.db", ALLOCATED["integer primary key"], notes)
    with pytest.raises(SchemaError, match="table 't'"):
        store.track(["notes", "t"])
    assert tracked_specs(store) == {}


def test_the_opt_in_tracks_the_table_and_is_kept_with_it(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = make_file(
        path, ALLOCATED["integer primary key"], ALLOCATED["autoincrement"].replace(" t ", " u ")
    )
    # The opt-in is per table: naming one does not let the other through.
    with pytest.raises(SchemaError, match="table 'u'"):
        store.track(["t", "u"], allow_integer_keys=["t"])
    assert store.track(["t"], allow_integer_keys=["t"]) == []
    assert tracked_specs(store)["t"][SPEC_FIELD] is True
    assert store.status().warnings == []
    store.connection.execute("INSERT INTO t (v) VALUES ('written')")
    assert store.capture() == 1
    store.close()
    reopened = open_store(path)
    assert not [w for w in reopened.tracked_table_warnings() if "INTEGER PRIMARY KEY" in w]
    assert reopened.status().warnings == []
    # Tracking it again, with or without the flag, keeps the opt-in.
    reopened.track(["t"])
    assert tracked_specs(reopened)["t"][SPEC_FIELD] is True


def test_the_opt_in_is_recorded_only_for_keys_sqlite_allocates(tmp_path: Path) -> None:
    store = make_file(tmp_path / "app.db", NOT_ALLOCATED["int"])
    store.track(["t"], allow_integer_keys=["t"])
    assert SPEC_FIELD not in tracked_specs(store)["t"]


def test_a_table_tracked_before_the_refusal_keeps_syncing_and_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.db"
    store = make_file(path, ALLOCATED["integer primary key"])
    track_as_before_the_refusal(store, ["t"])
    store.close()
    with caplog.at_level("WARNING", logger="syncmesh.store.sqlite.tracking"):
        store = open_store(path)
    assert "INTEGER PRIMARY KEY" not in caplog.text, "opening says nothing (serve says it)"
    logged = [w for w in store.tracked_table_warnings() if "INTEGER PRIMARY KEY" in w]
    assert len(logged) == 1, logged
    assert logged[0].startswith("tracked table 't': its primary key 'id' is an INTEGER PRIMARY KEY")
    assert "was tracked before syncmesh refused such keys and keeps syncing" in logged[0]
    assert f"syncmesh track {path} t --allow-integer-keys" in logged[0]
    assert [warning[:40] for warning in store.status().warnings] == [
        "table 't': its primary key 'id' is an IN"
    ]
    # It keeps syncing: `track` again (as `serve` does with [tables] track) is not refused ...
    store.track(["t"])
    store.connection.execute("INSERT INTO t (v) VALUES ('still captured')")
    assert store.capture() == 1
    assert len(store.status().warnings) == 1
    # ... and the opt-in, given for the tracked table, ends the warning for good.
    store.track(["t"], allow_integer_keys=["t"])
    assert store.status().warnings == []
    store.close()
    assert open_store(path).status().warnings == []


def test_a_dropped_table_with_an_int_key_is_not_called_an_integer_primary_key(
    tmp_path: Path,
) -> None:
    # Its stored spec says INT: without the table, SQLite has no "pk" index to show.
    store = make_file(tmp_path / "app.db", NOT_ALLOCATED["int"])
    store.track(["t"])
    store.connection.execute("DROP TABLE t")
    assert integer_keys.warnings(store.context) == []


def test_why_two_sites_inserting_id_1_lose_a_row_and_move_its_children(tmp_path: Path) -> None:
    """The reason for the refusal: each site's first book gets id 1, and the merge makes them one.

    Both sites opt in (wrongly: both write), insert a book and a review of
    it, and sync both ways.  Every site ends with one book; the other book
    is gone everywhere, and its review now points at the book that stayed.
    """
    schema = (
        "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)",
        "CREATE TABLE reviews (id TEXT PRIMARY KEY, book_id INTEGER, body TEXT)",
    )
    a = make_file(tmp_path / "a.db", *schema)
    b = make_file(tmp_path / "b.db", *schema, ms=BASE_MS + 1_000)  # b's insert wins
    for store, title, review in ((a, "Dune", "a-review"), (b, "Emma", "b-review")):
        store.track(["books", "reviews"], allow_integer_keys=["books"])
        store.connection.execute("INSERT INTO books (title) VALUES (?)", (title,))
        book_id = store.connection.execute("SELECT last_insert_rowid()").fetchone()[0]
        assert book_id == 1
        store.connection.execute(
            "INSERT INTO reviews VALUES (?, ?, ?)", (review, book_id, f"about {title}")
        )
        store.capture()
    exchange_all(a, b)
    exchange_all(b, a)
    for store in (a, b):
        assert store.connection.execute("SELECT id, title FROM books").fetchall() == [(1, "Emma")]
        assert store.connection.execute(
            "SELECT body, title FROM reviews JOIN books ON books.id = book_id ORDER BY body"
        ).fetchall() == [("about Dune", "Emma"), ("about Emma", "Emma")]
