"""A restored node's lost write, held by a peer though none of its claims covered it.

Found by `RestoreMachine` (tests/test_integrity_restore_stateful.py) once its
pulls filtered as a session does (issue 12).  Two ways a peer holds a write
that its vector and HELLO's `held` leave out: a batch cut short of the
sender's head carries no vector, and a batch stamped beyond the drift limit
is quarantined and its vector entries are not merged, also after a retry
applies the rows.  If the writes' site then has its file replaced by a copy
older than them, the peer's HELLO claimed nothing beyond the copy, the
restore check saw nothing, and since a session leaves the peer's own writes
out unless the peer asks for them (`Session._filter_vector`), the restored
node never got the write back, though every other node held it.  The fix:
such a batch, and a retry, raise `_syncmesh_seen` to the stamps they hold,
which HELLO's `held` carries (`vector.note_stamps_held`;
docs/adr/0006-restore-detection.md, "Writes no vector claims").
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore
from syncmesh.transport.memory import MemoryNetwork
from tests.helpers import ManualClock, exchange_all, wait_until
from tests.memory_nodes import memory_config, memory_nodes
from tests.test_node import execute, make_db

BASE_MS = 1_700_000_000_000
HLC_MAX = (1 << 63) - 1  # a filter entry: every write of that site is held (session.py)


def open_store(path: Path, clock: ManualClock) -> SqliteStore:
    return SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=60_000))


def new_store(path: Path, clock: ManualClock) -> SqliteStore:
    store = open_store(path, clock)
    store.init()
    store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    store.track(["notes"])
    return store


def session_filter(receiver: SqliteStore) -> dict[str, int]:
    """What a sender filters by (`Session._filter_vector`): the receiver's PULL vector,
    and all of the receiver's own writes unless its PULL asked for them (restoring)."""
    vector = receiver.vector()
    if not receiver.restoring():
        vector[receiver.site_id] = HLC_MAX
    return vector


def put_back(copy: Path, target: Path) -> None:
    """Replace a stopped node's file by `copy` (its WAL and shared memory go too)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, target)


def ids(store: SqliteStore) -> set[str]:
    return {row[0] for row in store.connection.execute("SELECT id FROM notes")}


def test_a_write_held_only_from_a_batch_cut_short_reveals_the_restore(tmp_path: Path) -> None:
    """Goal: a peer holding a restored node's write only from a batch cut short of the
    node's head still makes the node detect its restore, and sends the write back.

    Method: n and p sync; n's file is copied; n writes `lost` and `later` (two
    captures, two seq groups); p pulls one row of n's feed (the batch stops
    before n's head: no vector); n is stopped and its file replaced by the
    copy.  Then p says HELLO (n runs the restore check with p's vector and
    `held`, as `Session._start_pull` does) and sends n its feed as a session
    does: n must detect the restore, ask for its own writes and get `lost`.
    """
    clock_n, clock_p = ManualClock(BASE_MS), ManualClock(BASE_MS)
    n = new_store(tmp_path / "n.db", clock_n)
    p = new_store(tmp_path / "p.db", clock_p)
    exchange_all(n, p)
    exchange_all(p, n)
    copy = sqlite3.connect(tmp_path / "copy.db")
    n.connection.backup(copy)
    copy.close()
    for key in ("lost", "later"):
        clock_n.advance(1)
        n.connection.execute("INSERT INTO notes VALUES (?, 'x')", (key,))
        n.capture()

    cursor = p.peer_cursor(n.site_id)
    assert cursor is not None
    cut = n.read_batch(cursor.cursor, session_filter(p), rows_max=1)
    assert cut.vector is None  # cut short of n's head: no vector claims `lost`
    p.apply_batch(n.site_id, cut)
    assert ids(p) == {"lost"}

    # n stops; its file is replaced by the copy; it starts again later.
    n.close()
    put_back(tmp_path / "copy.db", tmp_path / "n.db")
    clock_n.advance(1_000)
    n = open_store(tmp_path / "n.db", clock_n)
    try:
        assert ids(n) == set()
        # p's HELLO, checked as Session._start_pull does.
        assert n.note_peer_vector(p.vector(), p.held_claims()), "the restore went unnoticed"
        assert n.restoring()
        # p's send loop, filtering by n's PULL (restoring: own writes wanted).
        stored = n.peer_cursor(p.site_id)
        assert stored is not None
        n.apply_batch(p.site_id, p.read_batch(stored.cursor, session_filter(n), 100))
        assert ids(n) == {"lost"}
    finally:
        n.close()
        p.close()


def test_a_write_held_after_a_drift_quarantine_reveals_the_restore(tmp_path: Path) -> None:
    """Goal: a peer that refused a restored node's write for clock drift, and applied it
    once its clock caught up, still makes the node detect its restore.

    Method: p's clock runs 100 s behind n's (beyond the 60 s drift limit).  n's
    file is copied; n writes `lost`; p pulls it and quarantines it (from the
    future), so p's vector and `held` leave it out.  n is stopped and its file
    replaced by the copy; p's clock catches up and p's retry applies `lost`.
    Then p says HELLO and sends n its feed as a session does: n must detect
    the restore and get `lost` back (found by `RestoreMachine`: without this,
    only n lacked `lost`, for good).
    """
    clock_n, clock_p = ManualClock(BASE_MS), ManualClock(BASE_MS)
    n = new_store(tmp_path / "n.db", clock_n)
    p = new_store(tmp_path / "p.db", clock_p)
    exchange_all(n, p)
    exchange_all(p, n)
    copy = sqlite3.connect(tmp_path / "copy.db")
    n.connection.backup(copy)
    copy.close()
    clock_p.set(BASE_MS - 100_000)
    clock_n.advance(1)
    n.connection.execute("INSERT INTO notes VALUES ('lost', 'x')")
    n.capture()

    cursor = p.peer_cursor(n.site_id)
    assert cursor is not None
    batch = n.read_batch(cursor.cursor, session_filter(p), rows_max=100)
    assert batch.vector is not None  # it reaches n's head ...
    assert p.apply_batch(n.site_id, batch).drift_refused_rows == 1  # ... but waits
    assert ids(p) == set()

    n.close()
    put_back(tmp_path / "copy.db", tmp_path / "n.db")
    clock_n.advance(1_000)
    clock_p.set(clock_n.now_ms())  # p's clock caught up: the row applies
    assert p.retry_quarantine() == 1
    assert ids(p) == {"lost"}
    n = open_store(tmp_path / "n.db", clock_n)
    try:
        assert n.note_peer_vector(p.vector(), p.held_claims()), "the restore went unnoticed"
        stored = n.peer_cursor(p.site_id)
        assert stored is not None
        n.apply_batch(p.site_id, p.read_batch(stored.cursor, session_filter(n), 100))
        assert ids(n) == {"lost"}
    finally:
        n.close()
        p.close()


class OffsetClock:
    """The machine's clock moved by `offset_ms` (settable): a node whose clock runs behind."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


def node_holds(path: Path, key: str) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        found = connection.execute("SELECT 1 FROM items WHERE id = ?", (key,)).fetchone()
        return found is not None


def quarantined(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[0])


async def test_nodes_a_restored_node_gets_back_a_write_its_peer_held_in_a_drift_quarantine(
    tmp_path: Path,
) -> None:
    """Goal: as above, with real nodes (sessions, the capture loop, the quarantine retry).

    Method: p's clock runs 100 s behind.  n's file is copied; n writes `lost`;
    p quarantines it (from the future).  n is stopped and its file replaced by
    the copy; p's clock is put right, and its retry applies `lost`.  n starts
    again: it must detect the restore from p's HELLO and get `lost` back.
    """
    schema = "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER)"
    n_db = make_db(tmp_path / "n.db", schema)
    p_db = make_db(tmp_path / "p.db", schema)
    shutil.copy(n_db, tmp_path / "copy.db")
    behind = OffsetClock(-100_000)
    network = MemoryNetwork()
    p_config = memory_config(p_db, quarantine_retry_s=0.2)
    async with memory_nodes(network, {"p": p_config}, physical_clock=behind):
        async with memory_nodes(network, {"n": memory_config(n_db, "p")}):
            execute(n_db, "INSERT INTO items VALUES ('lost', 1)")
            await wait_until(lambda: quarantined(p_db) == 1, 20.0, "p to quarantine n's write")
        put_back(tmp_path / "copy.db", n_db)
        behind.offset_ms = 0
        await wait_until(lambda: node_holds(p_db, "lost"), 20.0, "p's retry to apply n's write")
        async with memory_nodes(network, {"n": memory_config(n_db, "p")}):
            await wait_until(
                lambda: node_holds(n_db, "lost"),
                20.0,
                "the restored node to get back the write p held",
            )
