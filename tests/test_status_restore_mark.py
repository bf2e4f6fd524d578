"""`syncmesh status FILE` shows the NATS restore check's mark as what it is, not as a peer.

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
