"""The capture loop's wake-up: inotify, and the SQLite change notifier built on it."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.watch import FileWatcher

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@linux_only
async def test_a_commit_to_the_file_sets_the_event(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE t (a)")
    watcher = FileWatcher(str(path))
    assert watcher.start()
    try:
        watcher.event.clear()
        connection.execute("INSERT INTO t VALUES (1)")
        await asyncio.wait_for(watcher.event.wait(), timeout=5)
    finally:
        watcher.close()
        connection.close()
    assert not watcher.available


@linux_only
async def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    watcher = FileWatcher(str(tmp_path / "app.db"))
    assert watcher.start()
    try:
        (tmp_path / "other.db").write_bytes(b"x")
        (tmp_path / "app.db.log").write_bytes(b"x")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watcher.event.wait(), timeout=0.2)
        (tmp_path / "app.db-wal").write_bytes(b"x")
        await asyncio.wait_for(watcher.event.wait(), timeout=5)
    finally:
        watcher.close()


async def test_a_missing_directory_means_polling_only(tmp_path: Path) -> None:
    watcher = FileWatcher(str(tmp_path / "gone" / "app.db"))
    assert not watcher.start()
    assert not watcher.available
    watcher.close()  # harmless


@linux_only
async def test_the_sqlite_change_notifier_sees_another_connections_commit(tmp_path: Path) -> None:
    """The capture loop's view through the seam: `changed()` is the truth, the hint wakes it."""
    path = tmp_path / "app.db"
    store = SqliteStore.open(path)
    store.init()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (a)")
    notifier = store.change_notifier()
    try:
        assert notifier.start()  # hints on Linux
        assert notifier.changed()  # the first look
        assert not notifier.changed()
        notifier.clear_hint()
        writer.execute("INSERT INTO t VALUES (1)")
        await asyncio.wait_for(notifier.wait_hint(), timeout=5)
        assert notifier.changed()
        assert not notifier.changed()
    finally:
        notifier.close()
        writer.close()
        store.close()
