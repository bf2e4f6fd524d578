"""Snapshot bootstrap with real node processes, the real CLI and the sqlite3 shell (ADR 0016).

`syncmesh join NEW.db --from URL` copies a serving node's file at one point
of its feed while the application keeps writing to it through the sqlite3
shell; the joined file is then served as an ordinary member and converges.
A forgotten site, refused on return, re-joins the same way: its old file is
moved aside with its unsynced writes listed, and no deleted row comes back.
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from tests.nodeproc import Cluster, make_db, run_cli, user_tables, wait_converged, wait_for
from tests.test_lifecycle_multiprocess import FAST, ids, shell, tombstones

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
TIMEOUT_S = 30.0
WRITES_MAX = 1_000  # the background writer's inserts, at most
WRITES_S_MAX = 30.0  # and its time, at most
WRITE_PAUSE_S = 0.01  # between two inserts: a steady stream, not a burst
ROWS_BEFORE = 2_000


class ShellWriter:
    """Inserts rows into a file through the sqlite3 shell until stopped (bounded)."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + WRITES_S_MAX
        while not self._stop.is_set() and self.written < WRITES_MAX:
            if time.monotonic() > deadline:
                break
            shell(self.path, f"INSERT INTO items VALUES ('{self.prefix}{self.written:04d}', 'w')")
            self.written += 1
            self._stop.wait(WRITE_PAUSE_S)

    def __enter__(self) -> ShellWriter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WRITES_S_MAX + 30)


@pytest.mark.multiprocess
def test_join_from_snapshot_while_writes_continue(cluster: Cluster, tmp_path: Path) -> None:
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    # An application table that is not tracked: it stays on a's machine.
    shell(a_db, "CREATE TABLE private (id TEXT PRIMARY KEY, secret TEXT)")
    shell(a_db, "INSERT INTO private VALUES ('p', 'not for peers')")
    shell(
        a_db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)"
        " INSERT INTO items SELECT printf('r%04d', i), 'before' FROM n",
    )
    a = cluster.node("a")
    cluster.start(a)
    a_site = a.status()["site_id"]
    b_db = tmp_path / "b.db"

    with ShellWriter(a_db, "w") as writer:
        wait_for(lambda: writer.written >= 5, TIMEOUT_S, "the writer under way")
        result = run_cli("join", str(b_db), "--from", a.url)
        during = writer.written
        shell(a_db, "DELETE FROM items WHERE id IN ('r0001', 'r0002')")
        wait_for(lambda: writer.written >= during + 5, TIMEOUT_S, "writes after the join")
    assert "joined as site" in result.stdout
    assert f"from a snapshot of site {a_site}" in result.stdout
    assert writer.written < WRITES_MAX, "the writer was still writing when the join ended"
    assert stat.S_IMODE(b_db.stat().st_mode) == 0o600
    assert user_tables(b_db) == ["items"], "untracked tables are not in the snapshot"
    # The copy is one point of a's feed: at least the rows from before the writer.
    assert int(shell(b_db, "SELECT count(*) FROM items WHERE name = 'before'")) == ROWS_BEFORE

    metrics = a.open_url("/metrics", 5.0).read().decode()
    assert "syncmesh_snapshots_served_total 1.0" in metrics
    assert a.status()["snapshots"]["taken"] == 1

    b = cluster.node("b", db=b_db, peers=[a])
    cluster.start(b)
    b_site = b.status()["site_id"]
    assert b_site != a_site
    shell(b_db, "INSERT INTO items VALUES ('from-b', 'b')")
    dump = wait_converged(
        [a_db, b_db],
        "items",
        TIMEOUT_S,
        check=lambda rows: len(rows) == ROWS_BEFORE - 2 + writer.written + 1,
        describe=cluster.logs,
    )
    keys = {row[0][0] for row in dump}
    assert "from-b" in keys
    assert not keys & {"r0001", "r0002"}, "rows deleted after the snapshot are gone at b too"
    # b continued a's feed from the snapshot's point instead of reading it all
    # (a replay would bring at least the rows from before).
    peer = b.peer(a_site)
    assert peer is not None
    assert peer["rows_in"] <= writer.written + 2 < ROWS_BEFORE
    assert not cluster.internal_errors()


@pytest.mark.multiprocess
def test_forgotten_site_rejoins_by_snapshot_without_deleted_rows(
    cluster: Cluster, tmp_path: Path
) -> None:
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    a = cluster.node("a", env=FAST)
    b = cluster.node("b", peers=[a], env=FAST)
    cluster.start(a, b)
    b_site = b.status()["site_id"]
    shell(a_db, "INSERT INTO items VALUES ('k1', 'one'), ('k2', 'two'), ('k3', 'three')")
    wait_converged([a_db, b_db], "items", TIMEOUT_S, check=lambda rows: len(rows) == 3)

    # b goes away; k1 is deleted, b is forgotten, and the tombstone collected.
    b.stop()
    shell(a_db, "DELETE FROM items WHERE id = 'k1'")
    shell(b_db, "INSERT INTO items VALUES ('offline', 'written while away')")
    run_cli("forget", str(a_db), b_site)
    wait_for(lambda: tombstones(a_db) == 0, TIMEOUT_S, "k1's tombstone collected at a")

    # b returns with its live k1: refused, with the way back.
    b.start()
    b.wait_for_log("was forgotten", TIMEOUT_S)
    b.stop()
    assert ids(b_db) == "k1,k2,k3,offline"

    result = run_cli("join", str(b_db), "--from", a.url)
    assert "joined as site" in result.stdout
    side_files = sorted(tmp_path.glob("b.db.before-join-*"))
    assert len(side_files) == 1, result.stdout
    side = side_files[0]
    assert f"kept at {side}" in result.stdout
    assert "1 of its own writes never reached the cluster" in result.stdout
    # The operator finds them with the sqlite3 shell; the old rows are all there.
    assert shell(side, "SELECT table_name, pk FROM _syncmesh_unsynced") == 'items|["offline"]'
    assert ids(side) == "k1,k2,k3,offline"

    b.start()
    b.wait_until_ready()
    new_site = b.status()["site_id"]
    assert new_site != b_site
    shell(a_db, "INSERT INTO items VALUES ('k4', 'after')")
    wait_converged(
        [a_db, b_db],
        "items",
        TIMEOUT_S,
        check=lambda rows: [row[0][0] for row in rows] == ["k2", "k3", "k4"],
        describe=cluster.logs,
    )
    assert b.peer(a.status()["site_id"]) is not None
    assert not cluster.internal_errors()
