"""The WAL a node leaves behind is bounded (issue 16: a node that ran for a year is as cheap
as one that started yesterday).

SQLite reuses its write-ahead log after a checkpoint but never makes it smaller, unless
the connection that resets it has a `journal_size_limit`.  A long read (a report, a
backup, a slow peer's feed) keeps checkpoints from finishing, so a burst of writes
meanwhile grows the WAL to the burst's size, for good.  The store's connection sets the
limit: once the reader is gone, the store's next writes shrink the WAL back.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.opening import WAL_SIZE_LIMIT_BYTES


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_wal_shrinks_back_after_a_burst_that_a_long_read_made_it_grow(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = SqliteStore.open(path)
    writer = sqlite3.connect(path, isolation_level=None)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        store.init()
        store.connection.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB)")
        store.track(["t"])
        # A long read holds its snapshot: no checkpoint can finish meanwhile.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()
        body = os.urandom(4_000)
        for batch in range(40):  # about 16 MB of rows, each transaction captured
            writer.execute("BEGIN")
            writer.executemany(
                "INSERT INTO t VALUES (?, ?)",
                [(f"k{batch}-{index}", body) for index in range(100)],
            )
            writer.execute("COMMIT")
            store.capture()
        grown = _wal_bytes(path)
        assert grown > 2 * WAL_SIZE_LIMIT_BYTES, grown  # the burst grew it
        reader.execute("COMMIT")
        # The node goes on capturing the application's writes, small ones now.
        for index in range(40):
            writer.execute("INSERT INTO t VALUES (?, ?)", (f"after{index}", body))
            store.capture()
        assert _wal_bytes(path) <= WAL_SIZE_LIMIT_BYTES + 1_000_000, (grown, _wal_bytes(path))
        assert store.connection.execute("PRAGMA journal_size_limit").fetchone()[0] == (
            WAL_SIZE_LIMIT_BYTES
        )
    finally:
        reader.close()
        writer.close()
        store.close()
