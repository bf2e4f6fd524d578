"""A recovered restore stays recovered (issue 12, found by the chaos `restore` fault).

`syncmesh chaos --seed 4 --schedules 1 --nodes 3 --duration 6 --faults
restore,kill,reset,pause,isolate --adversarial unique,negzero,fk` did not
quiesce within 90 s under load: the restored node got its lost writes back
and left restore mode, then started it again on the next HELLO, with a new
incarnation, over and over.  It wrote nothing after recovering, so every
peer's vector entry for it stayed at a lost write's stamp, and that stamp
lies in the gap its file recorded for the run that lost it: the restore
check called it lost again.  Leaving restore mode now closes the gaps up
to the recovered floor (`vector._close_gaps_below`).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 5_000
DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


def open_store(path: Path, clock: ManualClock) -> SqliteStore:
    return SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=DRIFT_MS_MAX))


def write(store: SqliteStore, sql: str) -> None:
    store.connection.execute(sql)
    store.capture()


def test_restore_fault_a_recovered_node_that_writes_nothing_more_stays_recovered(
    tmp_path: Path,
) -> None:
    """Goal: after getting its lost writes back, a restored node that writes nothing
    more is not taken for restored again by the peer that still claims those writes."""
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    stores = {}
    for name, clock in (("a", clock_a), ("b", clock_b)):
        store = open_store(tmp_path / f"{name}.db", clock)
        store.init()
        store.connection.execute(DDL)
        store.track(["items"])
        stores[name] = store
    a, b = stores["a"], stores["b"]
    write(a, "INSERT INTO items VALUES ('k1', 'before the copy', 1)")
    exchange_all(a, b)
    copy = sqlite3.connect(tmp_path / "copy.db")
    a.connection.backup(copy)
    copy.close()
    clock_a.advance(1_000)
    write(a, "INSERT INTO items VALUES ('k2', 'lost by the restore', 2)")
    exchange_all(a, b)
    a.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'a.db'}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "copy.db", tmp_path / "a.db")
    clock_a.advance(1_000)
    a = open_store(tmp_path / "a.db", clock_a)
    try:
        write(a, "INSERT INTO items VALUES ('k3', 'before any peer said hello', 3)")
        assert a.note_peer_vector(b.vector(), b.held_claims()), "b's claim shows the restore"
        b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
        exchange_all(b, a)  # k2 comes back; b's vector reaches the floor
        assert not a.restoring()
        exchange_all(a, b)
        incarnation = a.incarnation
        for _ in range(3):  # the next sessions, with nothing written in between
            assert not a.note_peer_vector(b.vector(), b.held_claims())
            exchange_all(b, a)
            exchange_all(a, b)
        assert (a.incarnation, a.restoring()) == (incarnation, False)
        names = "SELECT id, name FROM items ORDER BY id"
        assert a.connection.execute(names).fetchall() == b.connection.execute(names).fetchall()
        assert [key for key, _name in a.connection.execute(names)] == ["k1", "k2", "k3"]
    finally:
        a.close()
        b.close()
