"""Tombstone collection with real node processes and the sqlite3 shell (issue 16, ADR 0015).

Three `syncmesh serve` processes, b and c dialling a.  The application's
writes and every look at the files go through the sqlite3 shell, as an
operator would.  A node that is offline holds collection back; `syncmesh
forget` (the real command, on a file a node serves) lets it move at every
node, through gossip; the forgotten node, back with its stale rows, is
refused with the fix, and no deleted row comes back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nodeproc import Cluster, make_db, run_cli, wait_converged, wait_for
from tests.test_multiprocess import sqlite3_shell

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
FAST = {"SYNCMESH_LIFECYCLE_INTERVAL_S": "0.3"}
TIMEOUT_S = 30.0


def shell(path: Path, sql: str) -> str:
    """`sql` through the sqlite3 command-line shell; its output."""
    result = subprocess.run(
        [sqlite3_shell(), "-bail", "-cmd", ".timeout 10000", str(path), sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"sqlite3 {path} {sql!r}: {result.stderr}"
    assert not result.stderr, f"sqlite3 {path} {sql!r} complained: {result.stderr}"
    return result.stdout.strip()


def tombstones(path: Path) -> int:
    return int(shell(path, "SELECT count(*) FROM _syncmesh_shadow_items WHERE cl % 2 = 0"))


def ids(path: Path) -> str:
    return shell(path, "SELECT group_concat(id, ',') FROM (SELECT id FROM items ORDER BY id)")


@pytest.mark.multiprocess
def test_offline_node_holds_back_forget_moves_on_returning_node_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    paths = [make_db(tmp_path / f"{name}.db", SCHEMA) for name in "abc"]
    a_db, b_db, c_db = paths
    a = cluster.node("a", env=FAST)
    b = cluster.node("b", peers=[a], env=FAST)
    c = cluster.node("c", peers=[a], env=FAST)
    cluster.start(a, b, c)
    c_site = c.status()["site_id"]

    shell(a_db, "INSERT INTO items VALUES ('k1', 'one'), ('k2', 'two'), ('k3', 'three')")
    wait_converged(paths, "items", TIMEOUT_S, check=lambda d: len(d) == 3, describe=cluster.logs)

    # Deleted while everyone is there: collected everywhere.
    shell(b_db, "DELETE FROM items WHERE id = 'k3'")
    wait_for(
        lambda: (
            all(tombstones(path) == 0 for path in paths)
            and all(ids(path) == "k1,k2" for path in paths)
        ),
        TIMEOUT_S,
        "the tombstone of k3 collected at every node",
    )

    # c goes offline; a delete now waits for it.
    c.stop()
    shell(b_db, "DELETE FROM items WHERE id = 'k1'")
    wait_for(lambda: ids(a_db) == "k2", TIMEOUT_S, "the delete of k1 at a")
    rounds = a.status()["lifecycle"]["rounds"]
    wait_for(
        lambda: a.status()["lifecycle"]["rounds"] >= rounds + 3,
        TIMEOUT_S,
        "three more collection rounds at a",
    )
    assert tombstones(a_db) == 1, "c does not hold the delete of k1: a keeps the tombstone"
    assert tombstones(b_db) == 1
    lifecycle = a.status()["store"]["lifecycle"]
    assert lifecycle["holding_back"] == c_site
    assert lifecycle["tombstones_waiting"] == 1
    metrics = a.open_url("/metrics", 5.0).read().decode()
    assert "syncmesh_tombstones_waiting 1.0" in metrics
    assert f'syncmesh_holding_back_ms{{site="{c_site}"}}' in metrics

    # forget, on the file a serves: a moves on, and b hears of it by gossip.
    result = run_cli("forget", str(a_db), c_site)
    assert f"site {c_site} forgotten" in result.stdout
    wait_for(
        lambda: tombstones(a_db) == 0 and tombstones(b_db) == 0,
        TIMEOUT_S,
        "the tombstone of k1 collected at a and b after the forget",
    )
    assert c_site in b.status()["store"]["lifecycle"]["forgotten"]

    # c comes back with its stale live row of k1: refused, with the fix.
    assert ids(c_db) == "k1,k2"
    c.start()
    c.wait_for_log("was forgotten", TIMEOUT_S)
    a.wait_for_log(f"refused site {c_site}", TIMEOUT_S)
    assert "new identity on an empty database file" in c.log_text()
    assert ids(a_db) == "k2"
    assert ids(b_db) == "k2"
    assert tombstones(a_db) == 0
