"""`syncmesh status FILE` shows a fleet node's restore check mark and positions, not as peers.

A fleet node keeps the mark of its restore check (`nats-own/<cluster>/<site>`,
node/fleet_restore.py) in the peers' cursor table of its file.  A real
`syncmesh serve --nats` on a real nats-server writes it; once the node has
stopped, the real CLI reads the file.  It listed the mark as a peer "never
heard", with a lag "not known yet", and `--max-lag` called the file
unhealthy for it (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.nats_cluster import NatsServer
from tests.nodeproc import Cluster, make_db, query, run_cli, wait_for
from tests.test_lifecycle_multiprocess import shell

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
FLEET = "marks"
TIMEOUT_S = 30.0


@pytest.mark.multiprocess
def test_status_of_a_file_shows_the_restore_mark_apart_from_its_peers(
    cluster: Cluster, nats_server: NatsServer, tmp_path: Path
) -> None:
    db = make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node(
        "a",
        db,
        extra_args=("--nats", nats_server.url, "--cluster", FLEET),
        env={"SYNCMESH_TRANSPORT_NATS_REPLICAS": "1"},
    )
    cluster.start(a)
    site = a.status()["site_id"]
    shell(db, "INSERT INTO items VALUES ('k1', 'published on the fleet')")
    mark_key = f"nats-own/{FLEET}/{site}"
    wait_for(
        lambda: bool(query(db, "SELECT 1 FROM _syncmesh_peers WHERE site_id = ?", (mark_key,))),
        TIMEOUT_S,
        "the restore check's mark in a's file",
    )
    a.stop()

    shown = run_cli("status", str(db))
    assert "nats-own/" not in shown.stdout, shown.stdout
    assert "none yet" in shown.stdout, shown.stdout  # a has no peer
    assert f"own fleet subject syncmesh.{FLEET}.changes.{site}" in shown.stdout, shown.stdout

    document = json.loads(run_cli("status", str(db), "--json").stdout)
    assert document["peers"] == [], document["peers"]
    [mark] = document["fleet_restore_checks"]
    assert mark["cluster"] == FLEET
    assert mark["site_id"] == site
    assert mark["stream_seq"] >= 1

    bounded = run_cli("status", str(db), "--max-lag", "3600", check=False)
    assert bounded.returncode == 0, bounded.stdout + bounded.stderr


@pytest.mark.multiprocess
def test_status_of_a_file_shows_fleet_positions_apart_from_its_peers(
    cluster: Cluster, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Goal: a stopped fleet node's file shows how far each site's chain is applied as
    a fleet site, not as a peer: a position's `cursor` is a chain seq and its `head_seq`
    a stream sequence, so as a peer it got a made-up lag, and `--max-lag` judged the
    file by it.

    Method: a and b on one fleet; b writes, a applies it; both stop; the real CLI
    reads a's file (tables and JSON) and its health against `--max-lag`.
    """
    nodes = []
    for name in ("a", "b"):
        nodes.append(
            cluster.node(
                name,
                make_db(tmp_path / f"{name}.db", SCHEMA),
                extra_args=("--nats", nats_server.url, "--cluster", FLEET),
                env={"SYNCMESH_TRANSPORT_NATS_REPLICAS": "1"},
            )
        )
    a, b = nodes
    cluster.start(a, b)
    site_b = b.status()["site_id"]
    shell(b.db, "INSERT INTO items VALUES ('k1', 'written at b')")
    wait_for(
        lambda: query(a.db, "SELECT name FROM items") == [("written at b",)],
        TIMEOUT_S,
        "b's row at a",
    )
    a.stop()
    b.stop()

    shown = run_cli("status", str(a.db))
    assert "fleet sites" in shown.stdout, shown.stdout
    assert site_b in shown.stdout, shown.stdout
    assert f"nats/{FLEET}/" not in shown.stdout, shown.stdout  # no cursor key as a peer

    document = json.loads(run_cli("status", str(a.db), "--json").stdout)
    assert document["peers"] == [], document["peers"]
    positions = {entry["site_id"]: entry for entry in document["fleet_positions"]}
    assert site_b in positions, positions
    assert positions[site_b]["cluster"] == FLEET
    assert positions[site_b]["chain_seq"] > 0
    assert positions[site_b]["stream_seq"] >= 1
    assert positions[site_b]["applied_rows"] >= 1

    bounded = run_cli("status", str(a.db), "--max-lag", "1", check=False)
    assert bounded.returncode == 0, bounded.stdout + bounded.stderr
