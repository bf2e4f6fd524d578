"""A tracked table altered behind the engine's back is reported, and syncing goes on."""

from __future__ import annotations

from pathlib import Path

from syncmesh.store.sqlite import SqliteStore
from tests.helpers import exchange_all


def _store(path: Path) -> SqliteStore:
    store = SqliteStore.open(path)
    store.init()
    store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    store.track(["items"])
    return store


def test_an_added_column_is_reported_until_reconciled_and_then_syncs(tmp_path: Path) -> None:
    a, b = _store(tmp_path / "a.db"), _store(tmp_path / "b.db")
    try:
        assert a.schema_problems() == []
        a.connection.execute("ALTER TABLE items ADD COLUMN extra TEXT")
        [problem] = a.schema_problems()
        assert "'items' was altered after it was tracked" in problem
        assert "has not caught up with it yet" in problem
        assert "column 'extra' added" in problem
        assert a.status().schema_problems == [problem]
        a.connection.execute("INSERT INTO items VALUES ('k', 'still syncs', 'synced too')")
        assert a.reconcile_schema() == ["table 'items': column 'extra' added"]
        assert a.schema_problems() == []
        b.connection.execute("ALTER TABLE items ADD COLUMN extra TEXT")
        b.reconcile_schema()
        exchange_all(a, b)
        assert b.connection.execute("SELECT id, name, extra FROM items").fetchall() == [
            ("k", "still syncs", "synced too")
        ]
    finally:
        a.close()
        b.close()
