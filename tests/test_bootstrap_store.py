"""Snapshot bootstrap on real SQLite files: what a snapshot holds, and installing it (ADR 0016).

Each test names the property it checks: the copy is trimmed to what the
joiner may receive, and no freed page carries the rest; the joiner keeps
the source's vector, membership, horizons and cl floor, takes the new site
id and continues the source's feed from the snapshot's head; a damaged
transfer is refused; the joiner holds collection back from the moment it
asks; a refused site's file is moved aside with its unsynced writes listed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.errors import StoreError
from syncmesh.node.bootstrap import joiner_site
from syncmesh.store.open import install_snapshot, take_snapshot
from syncmesh.store.records import SnapshotInfo
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000
SECRET = "a value only the source may see"


def _open(path: Path, clock: ManualClock | None = None) -> SqliteStore:
    store = SqliteStore.open(
        path, clock=HybridClock(clock or ManualClock(BASE_MS), drift_ms_max=60_000)
    )
    store.init()
    return store


def _source(path: Path) -> SqliteStore:
    """notes and memos tracked, private not; a collected delete in notes."""
    store = _open(path)
    connection = store.connection
    connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body)")
    connection.execute("CREATE TABLE memos (id TEXT PRIMARY KEY, body)")
    connection.execute("CREATE TABLE private (id TEXT PRIMARY KEY, body)")
    store.track(["notes", "memos"])
    connection.execute("INSERT INTO notes VALUES ('k1', 'one'), ('k2', 'two')")
    connection.execute("INSERT INTO memos VALUES ('m', ?)", (SECRET,))
    connection.execute("INSERT INTO private VALUES ('p', ?)", (SECRET,))
    store.capture()
    connection.execute("DELETE FROM notes WHERE id = 'k1'")
    store.capture()
    assert store.collect_all() == 1, "alone in its cluster, the delete is stable at once"
    return store


def _tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_schema")}


def test_snapshot_holds_only_what_the_joiner_may_receive(tmp_path: Path) -> None:
    source = _source(tmp_path / "a.db")
    source.close()
    info = take_snapshot(tmp_path / "a.db", tmp_path / "snap.db", lambda table: table == "notes")
    assert info.tables == ("notes",)
    tables = _tables(tmp_path / "snap.db")
    assert "notes" in tables
    assert "_syncmesh_shadow_notes" in tables
    assert not tables & {"memos", "private", "_syncmesh_shadow_memos", "_syncmesh_log_memos"}
    # Dropped tables leave no trace in the file's pages either.
    assert SECRET.encode() not in (tmp_path / "snap.db").read_bytes()
    assert info.bytes == (tmp_path / "snap.db").stat().st_size


def test_joiner_keeps_the_sources_state_under_a_new_site(tmp_path: Path) -> None:
    source = _source(tmp_path / "a.db")
    new_site = uuid.uuid4().hex
    source.register_joiner(new_site)
    source_site, source_vector, head = source.site_id, source.vector(), source.head_seq()
    source_status = source.status().lifecycle
    assert source_status is not None
    source.close()

    info = take_snapshot(tmp_path / "a.db", tmp_path / "snap.db")
    assert (info.source_site, info.vector, info.head_seq) == (source_site, source_vector, head)
    report = install_snapshot(tmp_path / "snap.db", tmp_path / "b.db", new_site, info, "url")
    assert (report.site_id, report.source_site, report.side_file) == (new_site, source_site, "")
    assert report.tables == ("memos", "notes")
    assert not (tmp_path / "snap.db").exists()

    joined = _open(tmp_path / "b.db")
    try:
        assert joined.site_id == new_site
        assert joined.vector() == source_vector
        cursor = joined.peer_cursor(source_site)
        assert cursor is not None
        assert (cursor.cursor, cursor.incarnation, cursor.address) == (
            head,
            info.source_incarnation,
            "url",
        )
        status = joined.status().lifecycle
        assert status is not None
        assert status.cl_floor == source_status.cl_floor == 2
        assert set(status.members) == {source_site, new_site}
        assert joined.membership().horizon == {source_site: source_vector[source_site]}
        rows = joined.connection.execute("SELECT id, body FROM notes").fetchall()
        assert rows == [("k2", "two")]
        assert joined.conflicts() == []
        # A new write is the joiner's own, stamped above everything it copied.
        joined.connection.execute("INSERT INTO notes VALUES ('k3', 'three')")
        joined.capture()
        assert joined.head_seq() > head
        assert joined.vector()[new_site] > max(source_vector.values())
    finally:
        joined.close()


def test_a_damaged_snapshot_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    _source(tmp_path / "a.db").close()
    info = take_snapshot(tmp_path / "a.db", tmp_path / "snap.db")
    data = bytearray((tmp_path / "snap.db").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "snap.db").write_bytes(bytes(data))
    (tmp_path / "b.db").write_bytes(b"the old file")
    with pytest.raises(StoreError, match="does not match the checksum"):
        install_snapshot(tmp_path / "snap.db", tmp_path / "b.db", uuid.uuid4().hex, info)
    assert (tmp_path / "b.db").read_bytes() == b"the old file"


def test_a_non_syncmesh_file_gives_no_snapshot(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "plain.db")) as connection:
        connection.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
    with pytest.raises(StoreError, match="not a syncmesh file"):
        take_snapshot(tmp_path / "plain.db", tmp_path / "snap.db")


def test_the_joiner_holds_collection_back_from_its_request(tmp_path: Path) -> None:
    """A delete made after the snapshot waits for the joiner: its copy has the row alive."""
    clock = ManualClock(BASE_MS)
    held = _open(tmp_path / "held.db", clock)
    free = _open(tmp_path / "free.db", clock)
    for store in (held, free):
        store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body)")
        store.track(["notes"])
        store.connection.execute("INSERT INTO notes VALUES ('k', 'x')")
        store.capture()
    held.register_joiner(uuid.uuid4().hex)
    for store in (held, free):
        clock.advance(10)
        store.connection.execute("DELETE FROM notes WHERE id = 'k'")
        store.capture()
    try:
        assert free.collect_all() == 1, "without a joiner the delete is stable at once"
        assert held.collect_all() == 0, "the joiner's copy has k alive: its tombstone stays"
        status = held.status().lifecycle
        assert status is not None
        assert status.tombstones_waiting == 1
    finally:
        held.close()
        free.close()


def test_a_refused_sites_file_is_moved_aside_with_its_unsynced_writes(tmp_path: Path) -> None:
    clock = ManualClock(BASE_MS)
    a = _open(tmp_path / "a.db", clock)
    b = _open(tmp_path / "b.db", clock)
    for store in (a, b):
        store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body)")
        store.track(["notes"])
    b.connection.execute("INSERT INTO notes VALUES ('synced', 'b')")
    b.capture()
    exchange_all(b, a)
    clock.advance(10)
    b.connection.execute("INSERT INTO notes VALUES ('unsynced', 'b')")
    b.connection.execute("UPDATE notes SET body = 'changed' WHERE id = 'synced'")
    b.capture()
    b.close()
    a.close()
    # A write while no node ran: captured as the site's own by the move aside.
    with contextlib.closing(sqlite3.connect(tmp_path / "b.db")) as connection:
        connection.execute("INSERT INTO notes VALUES ('offline', 'b')")
        connection.commit()

    info = take_snapshot(tmp_path / "a.db", tmp_path / "snap.db")
    report = install_snapshot(tmp_path / "snap.db", tmp_path / "b.db", uuid.uuid4().hex, info)
    assert report.unsynced == {"notes": 3}
    side = Path(report.side_file)
    assert side.name.startswith("b.db.before-join-")
    with contextlib.closing(sqlite3.connect(side)) as connection:
        listed = connection.execute("SELECT table_name, pk FROM _syncmesh_unsynced").fetchall()
        kept = connection.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    assert sorted((table, json.loads(pk)) for table, pk in listed) == [
        ("notes", ["offline"]),
        ("notes", ["synced"]),
        ("notes", ["unsynced"]),
    ]
    assert kept == [("offline", "b"), ("synced", "changed"), ("unsynced", "b")]
    with contextlib.closing(sqlite3.connect(tmp_path / "b.db")) as connection:
        rows = connection.execute("SELECT id, body FROM notes").fetchall()
    assert rows == [("synced", "b")], "nothing of the old file is merged"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[]", "names no site id"),
        (b'{"site": "ABC"}', "names no site id"),
        (b'{"site": 7}', "names no site id"),
    ],
)
def test_a_snapshot_request_names_a_site_id(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        joiner_site(body)


def test_a_snapshot_description_is_checked() -> None:
    good = SnapshotInfo("a", "i", 5, {"a": 5}, ("t",), 10, "ff")
    assert SnapshotInfo.from_json(json.loads(json.dumps(good.as_json()))) == good
    with pytest.raises(ValueError, match="not readable"):
        SnapshotInfo.from_json({"source_site": "a"})
    with pytest.raises(ValueError, match="negative"):
        SnapshotInfo.from_json({**good.as_json(), "bytes": -1})
    with pytest.raises(ValueError, match="not a JSON object"):
        SnapshotInfo.from_json([1])


def test_writes_not_captured_yet_are_the_sources_not_the_joiners(tmp_path: Path) -> None:
    """A copy with a write still in the capture log would have the joiner stamp it as its own."""
    source = _source(tmp_path / "a.db")
    source.connection.execute("INSERT INTO notes VALUES ('pending', 'p')")  # not captured
    with pytest.raises(StoreError, match="never captured"):
        take_snapshot(tmp_path / "a.db", tmp_path / "snap.db")
    captures: list[int] = []
    info = take_snapshot(
        tmp_path / "a.db", tmp_path / "snap.db", capture=lambda: captures.append(source.capture())
    )
    assert captures == [1], "the serving node captured once, then the copy was taken"
    source_site = source.site_id
    source.close()
    install_snapshot(tmp_path / "snap.db", tmp_path / "b.db", uuid.uuid4().hex, info)
    joined = _open(tmp_path / "b.db")
    try:
        assert joined.capture() == 0, "nothing for the joiner to capture as its own"
        (writer,) = joined.connection.execute(
            "SELECT s.site_id FROM _syncmesh_shadow_notes AS sh"
            " JOIN _syncmesh_sites AS s ON s.ordinal = sh.cl_site WHERE sh.k0 = 'pending'"
        ).fetchone()
        assert writer == source_site
    finally:
        joined.close()
