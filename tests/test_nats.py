"""The NATS JetStream fleet transport, end to end: real `syncmesh serve` processes on a
real 3-server JetStream cluster (tests/nats_cluster.py), all on 127.0.0.1.

Writes go in through the sqlite3 shell, as users make them; every wait is a
deadline loop on a state.  One NATS cluster serves the whole module; each
test has its own syncmesh cluster name, so its own stream.
(docs/adr/0014-nats-stream-model.md, docs/nats.md)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import sqlite3_shell
from tests.nats_cluster import NatsCluster
from tests.nodeproc import (
    Cluster,
    NodeProcess,
    make_db,
    query,
    wait_converged,
)

pytestmark = pytest.mark.multiprocess

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
CONVERGE_S = 30.0
_names = itertools.count(1)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    servers = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    try:
        yield servers
    finally:
        print(servers.logs())  # shown when a test failed
        servers.stop()


def fleet_name() -> str:
    """A syncmesh cluster name of its own for each test: its own stream."""
    return f"t{os.getpid()}-{next(_names)}"


def nats_node(
    cluster: Cluster, name: str, servers: NatsCluster, fleet: str, *, extra: tuple[str, ...] = ()
) -> NodeProcess:
    db = make_db(cluster.directory / f"{name}.db", SCHEMA)
    nats_args = [arg for url in servers.urls for arg in ("--nats", url)]
    return cluster.node(
        name, db, extra_args=(*nats_args, "--cluster", fleet, *extra), env=FAST_STATUS
    )


# The stream's state and gaps are read every 0.2 s instead of 2 s, so that
# the tests that wait on status do not wait on the default interval.
FAST_STATUS = {"SYNCMESH_TRANSPORT_NATS_STATUS_INTERVAL_S": "0.2"}


def fleet_of(node: NodeProcess) -> dict[str, Any]:
    fleet = node.status()["fleet"]
    assert isinstance(fleet, dict), node.status()
    return fleet


def site_id(node: NodeProcess) -> str:
    (row,) = query(node.db, "SELECT site_id FROM _syncmesh_sites WHERE ordinal = 0")
    return str(row[0])


def describe(cluster: Cluster, servers: NatsCluster) -> Any:
    return lambda: cluster.logs() + "\n" + servers.logs()


def test_three_nodes_converge_through_the_stream(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: three sites that share only a NATS cluster hold the same rows.

    Method: three `serve --nats` nodes, no WebSocket peer between them;
    inserts and an update at each through the sqlite3 shell; every file
    must end equal, and each node's status must show the stream it uses.
    """
    fleet = fleet_name()
    nodes = [nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b", "c")]
    cluster.start(*nodes)
    for index, node in enumerate(nodes):
        sqlite3_shell(
            node.db,
            f"INSERT INTO items VALUES ('{node.name}-1', 'from {node.name}', {index});"
            f" INSERT INTO items VALUES ('{node.name}-2', 'two', {index * 10});",
        )
    sqlite3_shell(nodes[1].db, "UPDATE items SET qty = 99 WHERE id = 'b-2'")
    dump = wait_converged(
        [node.db for node in nodes],
        "items",
        CONVERGE_S,
        check=lambda rows: (
            len(rows) == 6 and (("b-2", "text"), ("two", "text"), (99, "integer")) in rows
        ),
        describe=describe(cluster, nats_cluster),
    )
    assert len(dump) == 6
    fleet_status = fleet_of(nodes[0])
    assert fleet_status["stream"] == f"SYNCMESH_{fleet.upper()}"
    assert fleet_status["subject"] == f"syncmesh.{fleet}.changes.{site_id(nodes[0])}"
    assert fleet_status["state"] == "streaming"
    assert fleet_status["published_messages"] >= 1
