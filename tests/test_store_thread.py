"""Only the store thread calls SQLite once a node bound it (docs/adr/0005-one-store-thread.md).

One sqlite3 connection used by two threads deadlocks the process: a thread
reading a row's columns waits for the connection's mutex while holding
Python's GIL, and the store thread, holding the mutex in the middle of a
statement, waits for the GIL to run one of the engine's SQL functions (the
digests).  A node hung like that for good in `syncmesh chaos` (rolling
migrations under load): its event loop read its site id from SQLite while
answering a verify, `/metrics` did on every scrape.  The site id and the
incarnation now come from memory, and any other call from a thread that is
not the store's fails at once, naming the thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from syncmesh.errors import StoreError
from syncmesh.store.sqlite import SqliteStore

T = TypeVar("T")


def _tracked(path: Path) -> SqliteStore:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    store = SqliteStore.open(path)
    store.init()
    store.track(["items"])
    return store


def test_a_bound_store_refuses_sqlite_calls_from_another_thread_and_names_it(
    tmp_path: Path,
) -> None:
    """Goal: once bound to its thread, the store fails a call from any other thread
    with an error naming that thread, and still serves its own thread.

    Method: a store bound to a one-thread executor (as a node's worker is);
    from the test's thread `head_seq` must raise StoreError naming the thread
    and ADR 0005; on the executor's thread a capture and `head_seq` work.
    """
    store = _tracked(tmp_path / "a.db")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store") as worker:

        def on_store_thread(function: Callable[[], T]) -> T:
            return worker.submit(function).result()

        on_store_thread(store.bind_thread)
        with pytest.raises(
            StoreError, match=r"thread 'MainThread', not the store thread"
        ) as caught:
            store.head_seq()
        assert "adr/0005" in str(caught.value)
        with sqlite3.connect(tmp_path / "a.db") as connection:
            connection.execute("INSERT INTO items VALUES ('k1', 'one')")
        on_store_thread(store.capture)
        assert on_store_thread(store.head_seq) > 0
    store.close()  # from another thread once the store thread has ended


def test_the_site_id_and_incarnation_are_read_from_memory_on_any_thread(
    tmp_path: Path,
) -> None:
    """Goal: what every event loop path asks of the store (site id, incarnation)
    needs no SQLite call, so status, verify and /metrics cannot touch the connection.

    Method: a store bound to another thread; from the test's thread the site
    id and incarnation must be those in the file; after a restore renews the
    incarnation (on the store thread), the new one, and after a renewal that
    rolled back, the file's.
    """
    path = tmp_path / "a.db"
    store = _tracked(path)
    with sqlite3.connect(path) as connection:
        site, incarnation = connection.execute(
            "SELECT site_id, incarnation FROM _syncmesh_state"
        ).fetchone()
    with ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(store.bind_thread).result()
        assert (store.site_id, store.incarnation) == (site, incarnation)
        assert threading.current_thread() is threading.main_thread()

        def renew_then_fail() -> None:
            with store.context.transaction():
                store.context.connection.execute(
                    "UPDATE _syncmesh_state SET incarnation = 'renewed'"
                )
                store.context.note_incarnation("renewed")
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            worker.submit(renew_then_fail).result()
        assert store.incarnation == incarnation, "a rolled-back renewal is not kept"

        def renew() -> None:
            with store.context.transaction():
                store.context.connection.execute(
                    "UPDATE _syncmesh_state SET incarnation = 'renewed'"
                )
                store.context.note_incarnation("renewed")

        worker.submit(renew).result()
        assert store.incarnation == "renewed"
    store.close()
