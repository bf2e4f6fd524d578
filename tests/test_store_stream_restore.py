"""The store's side of a restore found on a fleet stream (ADR 0014, "A site restored
from a backup"): `stream_scan_floor`, `note_stream_claims`, `own_writes_back`.

Real SQLite files and a manual clock; the stream is played by the site's own feed
(what its publisher puts on its subject: its own rows, `origin.own_rows`).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from syncmesh.clock import HybridClock
from syncmesh.model import ChangeBatch
from syncmesh.node.origin import own_rows, own_stamp_max
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock

BASE_MS = 1_700_000_000_000
DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


def open_store(path: Path, clock: ManualClock) -> SqliteStore:
    return SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=5_000))


def write(store: SqliteStore, sql: str) -> None:
    store.connection.execute(sql)
    store.capture()


def backup(store: SqliteStore, to: Path) -> None:
    copy = sqlite3.connect(to)
    store.connection.backup(copy)
    copy.close()


def put_back(copy: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, path)


def published(store: SqliteStore, after: int = 0) -> ChangeBatch:
    """What the site's publisher would put on its subject after `after`: its own rows."""
    batch = store.read_batch(after, {}, 1_000)
    return own_rows(batch, store.site_id)


def new_site(path: Path, clock: ManualClock) -> SqliteStore:
    store = open_store(path, clock)
    store.init()
    store.connection.execute(DDL)
    store.track(["items"])
    return store


def test_a_restore_found_on_the_stream_recovers_and_the_next_restart_finds_nothing(
    tmp_path: Path,
) -> None:
    """Goal: the claims of the lost run's messages start restore mode with a new
    incarnation; merging them back and `own_writes_back` ends it with our entry
    covering the writes made meanwhile, so that a restart reading the same messages
    (and the new ones) detects nothing."""
    clock = ManualClock(BASE_MS)
    path = tmp_path / "a.db"
    a = new_site(path, clock)
    write(a, "INSERT INTO items VALUES ('k1', 'before the copy', 1)")
    backup(a, tmp_path / "copy.db")
    clock.advance(1_000)
    write(a, "INSERT INTO items VALUES ('k2', 'lost', 2)")
    lost = published(a)  # the lost run's message (whole feed: what its chain holds)
    lost_claim = own_stamp_max(lost, a.site_id)
    old_incarnation = a.incarnation
    a.close()
    put_back(tmp_path / "copy.db", path)
    clock.advance(1_000)
    a = open_store(path, clock)
    try:
        write(a, "INSERT INTO items VALUES ('k3', 'written to the restored file', 3)")
        floor = a.stream_scan_floor()
        assert floor < lost_claim < a.head_seq()  # the new write passed the lost one
        assert a.note_stream_claims([lost_claim], old_incarnation, lost.to_seq)
        assert a.restoring()
        assert a.incarnation != old_incarnation
        assert a.stream_scan_floor() <= floor
        assert not a.own_writes_back(lost_claim - 1)  # below the floor: not all back
        a.merge_repair_rows(a.site_id, lost)
        assert a.own_writes_back(lost_claim)
        assert not a.restoring()
        rows = a.connection.execute("SELECT id FROM items ORDER BY id").fetchall()
        assert rows == [("k1",), ("k2",), ("k3",)]
        # Our entry covers k3's stamp too (captured in restore mode, held).
        assert a.vector()[a.site_id] >= own_stamp_max(published(a), a.site_id)
        recovered = a.incarnation
        claims = [lost_claim, own_stamp_max(published(a), a.site_id)]
    finally:
        a.close()
    clock.advance(1_000)
    a = open_store(path, clock)
    try:
        assert not a.note_stream_claims(claims, recovered, a.head_seq())
        assert (a.restoring(), a.incarnation) == (False, recovered)
    finally:
        a.close()


def test_a_copy_taken_while_restoring_does_not_continue_the_chain_of_its_incarnation(
    tmp_path: Path,
) -> None:
    """Goal: a copy made in restore mode keeps its incarnation on detection, so a chain
    of that incarnation ending past its head (the lost run's) renews it: new messages
    must not repeat the lost run's ids and slices.  Another incarnation's chain, or
    one that ends within the head, renews nothing."""
    clock = ManualClock(BASE_MS)
    path = tmp_path / "a.db"
    a = new_site(path, clock)
    write(a, "INSERT INTO items VALUES ('k1', 'one', 1)")
    first_stamp = a.vector()[a.site_id]
    a.close()
    clock.advance(1_000)
    a = open_store(path, clock)
    write(a, "INSERT INTO items VALUES ('k2', 'two', 2)")
    # A claim inside the gap between the two runs: restore mode, new incarnation.
    assert a.note_peer_vector({a.site_id: first_stamp + 1})
    assert a.restoring()
    restoring_incarnation = a.incarnation
    backup(a, tmp_path / "copy.db")
    clock.advance(1_000)
    write(a, "INSERT INTO items VALUES ('k3', 'three', 3)")
    chain_end = a.head_seq()
    a.close()
    put_back(tmp_path / "copy.db", path)
    clock.advance(1_000)
    a = open_store(path, clock)
    try:
        assert a.restoring()
        assert a.incarnation == restoring_incarnation
        assert chain_end > a.head_seq()
        a.note_stream_claims([], "another incarnation", chain_end)
        assert a.incarnation == restoring_incarnation
        a.note_stream_claims([], restoring_incarnation, a.head_seq())
        assert a.incarnation == restoring_incarnation
        a.note_stream_claims([], restoring_incarnation, chain_end)
        assert a.incarnation != restoring_incarnation
        write(a, "INSERT INTO items VALUES ('k4', 'after', 4)")
        assert a.head_seq() > chain_end  # new seqs follow the lost chain's end
    finally:
        a.close()


def test_a_never_restored_file_detects_nothing_from_its_own_messages(tmp_path: Path) -> None:
    """Goal: no false restore: every own stamp a file published, handed back as the
    stream's claims after restarts, detects nothing and keeps the incarnation."""
    clock = ManualClock(BASE_MS)
    path = tmp_path / "a.db"
    a = new_site(path, clock)
    claims = []
    try:
        for run in range(3):
            write(a, f"INSERT INTO items VALUES ('r{run}', 'n', {run})")
            claims.append(own_stamp_max(published(a), a.site_id))
            a.close()
            clock.advance(1_000)
            a = open_store(path, clock)
            incarnation = a.incarnation
            assert not a.note_stream_claims(claims, incarnation, a.head_seq())
            assert (a.restoring(), a.incarnation) == (False, incarnation)
    finally:
        a.close()
