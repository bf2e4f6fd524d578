"""The NATS JetStream fleet transport, end to end: real `syncmesh serve` processes on a
real 3-server JetStream cluster (tests/nats_cluster.py), all on 127.0.0.1.

Writes go in through the sqlite3 shell, as users make them; every wait is a
deadline loop on a state.  One NATS cluster serves the whole module; each
test has its own syncmesh cluster name, so its own stream.
(docs/adr/0014-nats-stream-model.md, docs/nats.md)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from syncmesh.api.http import websocket_connector
from syncmesh.clock import pack
from syncmesh.model import Cell, ChangeBatch, RowChange, RowState, Stamp
from syncmesh.node import Node
from syncmesh.node.config import FleetConfig, NodeConfig
from syncmesh.protocol import Batch, encode
from syncmesh.transport.nats import ACK_PENDING_MAX, ACK_WAIT_S, CONSUMER_PREFIX, JetStreamLink
from syncmesh.transport.stream import FleetError, PublishReceipt
from tests.helpers import sqlite3_shell, wait_until
from tests.nats_cluster import NatsCluster, NatsServer
from tests.nodeproc import (
    HOST,
    Cluster,
    NodeProcess,
    free_port,
    make_db,
    query,
    row_count,
    run_cli,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.multiprocess

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
CONVERGE_S = 60.0  # a deadline for states, generous for a loaded CI machine
_names = itertools.count(1)


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


def test_a_site_with_a_mistyped_cluster_name_is_told_it_made_a_new_fleet(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: `--cluster shop` beside an existing fleet `shops` is not a silent fleet of one.

    The node made a stream of its own, streamed, healthy, alone, and logged
    nothing of it: an operator read `streaming`, `health ok` and no sites.
    Method: a site on fleet F, a second site on F (the stream exists: no
    word of a new fleet), then a site on F + "x" through `serve --nats
    --cluster`: its log must warn that it made a new stream and name F.
    """
    fleet = fleet_name()
    first = nats_node(cluster, "a", nats_cluster, fleet)
    cluster.start(first)
    first.wait_for_log(f"created stream SYNCMESH_{fleet.upper()}", CONVERGE_S)
    second = nats_node(cluster, "b", nats_cluster, fleet)
    typo = nats_node(cluster, "typo", nats_cluster, fleet + "x")
    cluster.start(second, typo)
    typo.wait_for_log(f"created stream SYNCMESH_{fleet.upper()}X", CONVERGE_S)
    wait_for(lambda: fleet_of(second)["state"] == "streaming", CONVERGE_S, "b to stream")
    (line,) = [line for line in typo.log_text().splitlines() if "created stream SYNCMESH_" in line]
    assert " WARNING " in line, line
    assert f"no site of fleet '{fleet}x' was on these servers before" in line, line
    assert f"'{fleet}'" in line, line
    assert "its cluster name is wrong (--cluster, transport.nats.cluster)" in line, line
    assert "created stream" not in second.log_text(), second.log_tail()


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
    others = {site_id(nodes[1]), site_id(nodes[2])}
    wait_for(
        lambda: (
            {site["site_id"] for site in fleet_of(nodes[0])["sites"]} == others
            and all(site["lag_ms"] == 0 for site in fleet_of(nodes[0])["sites"])
        ),
        CONVERGE_S,
        "a's status to list b and c on the stream, caught up",
        describe(cluster, nats_cluster),
    )
    with nodes[0].open_url("/metrics", timeout_s=5) as response:
        metrics = response.read().decode()
    stream = f'stream="SYNCMESH_{fleet.upper()}"'
    assert f"syncmesh_fleet_up{{{stream}}} 1.0" in metrics
    for other in sorted(others):
        assert f'syncmesh_fleet_site_lag_seconds{{site="{other}",{stream}}} 0.0' in metrics
    assert f"syncmesh_fleet_consumer_pending{{{stream}}}" in metrics
    shown = run_cli("status", str(nodes[0].db))
    assert f"SYNCMESH_{fleet.upper()}" in shown.stdout
    assert "fleet sites" in shown.stdout
    for other in sorted(others):
        assert other in shown.stdout


def test_a_stopped_node_catches_up_from_the_stream(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a site that was down reads what the others wrote meanwhile from the stream.

    Method: a and b converge; b stops (SIGTERM); a writes 200 rows in 20
    transactions and b's file is checked to lack them; b starts again and
    must end with every row, its consumer with nothing pending.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('first', 'x', 0)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    b.stop()
    for batch in range(20):
        values = ", ".join(f"('r{batch}-{row}', 'n', {row})" for row in range(10))
        sqlite3_shell(a.db, f"INSERT INTO items VALUES {values}")
    wait_for(
        lambda: fleet_of(a)["published_rows"] >= 201,
        CONVERGE_S,
        "a to publish its 201 rows",
        describe(cluster, nats_cluster),
    )
    assert row_count(b.db, "items") == 1
    b.start().wait_until_ready()
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 201,
        describe=describe(cluster, nats_cluster),
    )
    wait_for(
        lambda: fleet_of(b)["consumer_pending"] == 0 and fleet_of(b)["sites"][0]["lag_ms"] == 0,
        CONVERGE_S,
        "b's consumer to have nothing pending",
        describe(cluster, nats_cluster),
    )


def test_a_node_killed_while_applying_restarts_without_skipping(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: SIGKILL during a catch-up loses and skips nothing (position in the apply's commit).

    Method: b is down while a publishes 3,000 rows as many small messages
    (`--batch-rows 20`); b starts, is killed with SIGKILL as soon as its
    status shows it applying (part of the backlog applied), and starts
    again.  b must end with every row; its stored position for a (the
    cursor in `_syncmesh_peers`) must equal where a's chain ends, and no
    gap may be reported.  The kill lands at a random point of the apply
    loop, inside a transaction or between one and its ack.
    """
    fleet = fleet_name()
    a = nats_node(cluster, "a", nats_cluster, fleet, extra=("--batch-rows", "20"))
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a)
    for batch in range(30):
        values = ", ".join(f"('r{batch}-{row}', 'n', {row})" for row in range(100))
        sqlite3_shell(a.db, f"INSERT INTO items VALUES {values}")
    wait_for(
        lambda: fleet_of(a)["published_rows"] >= 3000,
        CONVERGE_S,
        "a to publish 3,000 rows",
        describe(cluster, nats_cluster),
    )
    b.start().wait_until_ready()
    wait_for(
        lambda: 0 < row_count(b.db, "items") < 3000,
        CONVERGE_S,
        "b to be part-way through the backlog",
        describe(cluster, nats_cluster),
    )
    b.kill()
    assert row_count(b.db, "items") < 3000
    b.start().wait_until_ready()
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 3000,
        describe=describe(cluster, nats_cluster),
    )
    key = f"nats/{fleet}/{site_id(a)}"
    wait_for(
        lambda: (
            query(b.db, "SELECT cursor FROM _syncmesh_peers WHERE site_id = ?", (key,))
            == [(fleet_of(a)["published_seq"],)]
        ),
        CONVERGE_S,
        "b's stored position to reach the end of a's chain",
        describe(cluster, nats_cluster),
    )
    assert fleet_of(b)["gaps"] == []
    assert run_cli("status", str(b.db)).returncode == 0


def test_messages_delivered_to_a_killed_process_are_not_taken_for_a_gap(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: after a crash, messages the dead process fetched and never acked are no gap.

    Found by `syncmesh chaos --transport nats --seed 1 --nodes 3 --duration 6`
    (a `kill`): the durable consumer redelivers what the killed process had
    fetched only after its ack wait (30 s), and delivers newer messages first,
    so the restarted node met a message of a site past its position, logged
    a gap at ERROR, was unhealthy and bootstrapped from the state stream,
    although the stream held every message.  Method: a publishes three
    messages; b's durable consumer is made as the node makes it and its first
    message fetched and left unacked (as by a process killed before its
    ack); then b starts.  It must apply all three from the stream in order,
    well before the redelivery, with no gap reported and no bootstrap.
    """
    fleet = fleet_name()
    a = nats_node(cluster, "a", nats_cluster, fleet)
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a)
    publish_one_by_one(
        cluster,
        nats_cluster,
        a,
        [f"INSERT INTO items VALUES ('r{index}', 'n', {index})" for index in range(3)],
    )
    asyncio.run(_fetch_without_ack(nats_cluster, fleet, site_id(b)))
    started = time.monotonic()
    b.start().wait_until_ready()
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 3,
        describe=describe(cluster, nats_cluster),
    )
    assert time.monotonic() - started < ACK_WAIT_S, "b waited for the redelivery"
    status = fleet_of(b)
    assert status["gaps"] == []
    assert status["bootstraps"] == 0, status
    assert "fleet stream gap" not in b.log_text()
    (position,) = [site for site in status["sites"] if site["site_id"] == site_id(a)]
    assert position["messages_applied"] == 3
    assert position["cursor"] == fleet_of(a)["published_seq"]


async def _fetch_without_ack(servers: NatsCluster, fleet: str, site: str) -> None:
    """Make `site`'s durable consumer as the node does; fetch its first message, no ack."""
    client = await nats.connect(servers=servers.urls)
    try:
        subject = f"syncmesh.{fleet}.changes.*"
        durable = CONSUMER_PREFIX + site
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=ACK_PENDING_MAX,
            filter_subject=subject,
        )
        # The cluster's meta leader may answer 503 for a moment while it is busy
        # (the running node polls the stream): the node retries such calls too.
        subscription = None
        for attempt in range(10):
            try:
                subscription = await client.jetstream().pull_subscribe(
                    subject, durable=durable, stream=f"SYNCMESH_{fleet.upper()}", config=config
                )
                break
            except nats.js.errors.ServiceUnavailableError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        assert subscription is not None
        (fetched,) = await subscription.fetch(1, timeout=10)
        assert fetched.headers is not None
        assert fetched.headers["Syncmesh-From"] == "0"  # a's first message, left unacked
    finally:
        await client.close()


def test_a_forged_origin_is_refused_and_the_rest_applies(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: rows on a site's subject that claim another site's writes never apply.

    Method: a and b run; the test publishes, as a third site F on F's own
    subject, one honest row (all stamps F's), one row whose cell claims a
    write of site a, and one delete claimed for site a.  b must apply the
    honest row, refuse the two forged ones (counted in its status, logged),
    and keep syncing: a later write at a still reaches b.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('victim', 'kept', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    forger, victim = uuid.uuid4().hex, site_id(a)
    stamp = pack(int(time.time() * 1000), 0)
    own, claimed = Stamp(stamp, forger), Stamp(stamp + 1, victim)
    rows = [
        RowChange("items", ("honest",), RowState(1, own, {"name": Cell("ok", own)})),
        RowChange("items", ("forged",), RowState(1, own, {"name": Cell("x", claimed)})),
        RowChange("items", ("victim",), RowState(2, claimed, {})),
    ]
    batch = ChangeBatch.of_rows(
        uuid.uuid4().hex, 0, stamp + 1, stamp + 1, None, rows, {"items": ("name", "qty")}
    )
    asyncio.run(_publish_raw(nats_cluster, fleet, forger, encode(Batch(batch))))
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'honest'") == [("ok",)],
        CONVERGE_S,
        "b to apply the honest row",
        describe(cluster, nats_cluster),
    )
    assert query(b.db, "SELECT id FROM items WHERE id = 'forged'") == []
    assert query(b.db, "SELECT name FROM items WHERE id = 'victim'") == [("kept",)]
    forged = next(site for site in fleet_of(b)["sites"] if site["site_id"] == forger)
    assert forged["foreign_rows_refused"] == 2
    assert "claim another origin" in b.log_text()
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('after', 'still flowing', 2)")
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'after'") == [("still flowing",)],
        CONVERGE_S,
        "a's next write to reach b",
        describe(cluster, nats_cluster),
    )


def test_rows_on_a_relay_subject_that_claim_a_fleet_sites_write_are_refused(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a relay subject carries only writes of sites off the stream; forgeries never apply.

    Method: b runs and publishes a row; the test publishes, as fleet site F
    on F's own subject, one row (F is then on the stream), then, on the
    relay subject of a site R, one honest relayed row (every stamp of a
    site X that is not on the stream) and three forged ones: a cell
    claiming F's write, a delete of b's row claimed for b, and a row
    claiming R's own write (R's writes belong on R's own subject).  b must
    apply the honest row, refuse the three (counted under R in
    `fleet.relays` and in /metrics, logged at ERROR), and keep its row.
    """
    fleet = fleet_name()
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(b)
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('b-row', 'kept', 1)")
    wait_for(
        lambda: fleet_of(b)["published_messages"] >= 1,
        CONVERGE_S,
        "b to publish its row",
        describe(cluster, nats_cluster),
    )
    fleet_site, relayer, off_stream = (uuid.uuid4().hex for _ in range(3))
    stamp = pack(int(time.time() * 1000), 0)
    columns: dict[str, tuple[str, ...]] = {"items": ("name", "qty")}
    of_f = Stamp(stamp, fleet_site)
    f_rows = [RowChange("items", ("f-row",), RowState(1, of_f, {"name": Cell("f", of_f)}))]
    f_batch = ChangeBatch.of_rows(uuid.uuid4().hex, 0, stamp, stamp, None, f_rows, columns)
    asyncio.run(_publish_raw(nats_cluster, fleet, fleet_site, encode(Batch(f_batch))))
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'f-row'") == [("f",)],
        CONVERGE_S,
        "b to apply F's row",
        describe(cluster, nats_cluster),
    )
    of_x, of_r = Stamp(stamp + 1, off_stream), Stamp(stamp + 1, relayer)
    claimed_f, claimed_b = Stamp(stamp + 2, fleet_site), Stamp(stamp + 2, site_id(b))
    rows = [
        RowChange("items", ("relayed",), RowState(1, of_x, {"name": Cell("ok", of_x)})),
        RowChange("items", ("forged-f",), RowState(1, of_x, {"name": Cell("x", claimed_f)})),
        RowChange("items", ("b-row",), RowState(2, claimed_b, {})),
        RowChange("items", ("forged-r",), RowState(1, of_r, {"name": Cell("y", of_r)})),
    ]
    batch = ChangeBatch.of_rows(uuid.uuid4().hex, 0, stamp + 2, stamp + 2, None, rows, columns)
    asyncio.run(_publish_raw(nats_cluster, fleet, f"relay-{relayer}", encode(Batch(batch))))
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'relayed'") == [("ok",)],
        CONVERGE_S,
        "b to apply the honest relayed row",
        describe(cluster, nats_cluster),
    )
    assert query(b.db, "SELECT id FROM items WHERE id IN ('forged-f', 'forged-r')") == []
    assert query(b.db, "SELECT name FROM items WHERE id = 'b-row'") == [("kept",)]
    at_b = fleet_of(b)
    assert [(relay["site_id"], relay["foreign_rows_refused"]) for relay in at_b["relays"]] == [
        (relayer, 3)
    ]
    assert relayer not in {site["site_id"] for site in at_b["sites"]}
    assert at_b["foreign_rows_refused"] == 3
    assert f"on the relay subject of site {relayer} that claim a write of a site on" in (
        b.log_text()
    )
    stream = f'stream="SYNCMESH_{fleet.upper()}"'
    with b.open_url("/metrics", timeout_s=5) as response:
        metrics = response.read().decode()
    assert f'syncmesh_fleet_relay_rows_refused_total{{relayer="{relayer}",{stream}}} 3.0' in (
        metrics
    )


async def _publish_raw(servers: NatsCluster, fleet: str, site: str, frame: bytes) -> None:
    client = await nats.connect(servers=servers.urls)
    try:
        await client.jetstream().publish(
            f"syncmesh.{fleet}.changes.{site}",
            frame,
            headers={"Nats-Msg-Id": uuid.uuid4().hex},
        )
    finally:
        await client.close()


def publish_one_by_one(
    cluster: Cluster, servers: NatsCluster, node: NodeProcess, statements: list[str]
) -> None:
    """Each statement a transaction of its own, published as a message before the next."""
    for index, statement in enumerate(statements):
        sqlite3_shell(node.db, statement)
        published = index + 1
        wait_for(
            lambda: fleet_of(node)["published_messages"] >= published,  # noqa: B023 (waited on here)
            CONVERGE_S,
            f"{node.name} to publish message {published}",
            describe(cluster, servers),
        )


# An insert, an update and a delete that the small stream drops before b reads them.
GAP_WRITES = [
    "INSERT INTO items VALUES ('r0', 'n', 0)",
    "INSERT INTO items VALUES ('r1', 'n', 1)",
    "UPDATE items SET qty = 99, name = 'updated' WHERE id = 'r0'",
    "INSERT INTO items VALUES ('r2', 'n', 2)",
    "DELETE FROM items WHERE id = 'r1'",
    *(f"INSERT INTO items VALUES ('r{index}', 'n', {index})" for index in range(3, 8)),
]


def test_a_gap_is_closed_from_the_compacted_state_stream(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a new site whose position falls below what the stream retains bootstraps.

    Method: the operator made the changes stream with a limit of 3
    messages; a publishes 10 transactions (inserts, an update, a delete),
    one message each, while b has not started.  b starts with only the
    NATS addresses: the stream has dropped a's first messages (a gap), so b
    must take a's rows from the compacted state stream (one message per
    row), end equal to a, say so in its status (the site's `bootstrap`,
    `bootstraps`) and log, report no gap, and be healthy; a restart must
    not find the gap again (the position moved past it).
    """
    fleet = fleet_name()
    asyncio.run(make_small_stream(nats_cluster, fleet, messages_max=3))
    a = nats_node(cluster, "a", nats_cluster, fleet)
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a)
    publish_one_by_one(cluster, nats_cluster, a, GAP_WRITES)
    b.start().wait_until_ready()
    rows = wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda dump: len(dump) == 7,  # r0..r7 less the deleted r1
        describe=describe(cluster, nats_cluster),
    )
    assert (("r0", "text"), ("updated", "text"), (99, "integer")) in rows
    assert query(b.db, "SELECT id FROM items WHERE id = 'r1'") == []
    wait_for(
        lambda: fleet_of(b)["bootstraps"] == 1,
        CONVERGE_S,
        "b to count the bootstrap",
        describe(cluster, nats_cluster),
    )
    fleet_status = fleet_of(b)
    assert fleet_status["gaps"] == []
    (site,) = fleet_status["sites"]
    assert site["site_id"] == site_id(a)
    assert site["gap"] == ""
    assert site["bootstrap"].startswith(
        f"bootstrapped from the compacted state stream SYNCMESH_{fleet.upper()}_STATE"
    )
    assert site["cursor"] == fleet_of(a)["published_seq"]
    log_text = b.log_text()
    assert "ERROR syncmesh.node.fleet: fleet stream gap" in log_text  # found, then closed
    assert f"site {site_id(a)} bootstrapped from the compacted state stream" in log_text
    wait_for(lambda: b.health()[0] == 200, CONVERGE_S, "b to be healthy")
    # Writes after the bootstrap continue the chain from the position it took.
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('after', 'n', 100)")
    wait_for(
        lambda: query(b.db, "SELECT id FROM items WHERE id = 'after'") == [("after",)],
        CONVERGE_S,
        "a's next write to reach b",
        describe(cluster, nats_cluster),
    )
    b.stop()
    b.start().wait_until_ready()
    wait_for(
        lambda: fleet_of(b)["state"] == "streaming" and fleet_of(b)["sites"],
        CONVERGE_S,
        "b back on the stream",
    )
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('after-restart', 'n', 101)")
    wait_for(
        lambda: query(b.db, "SELECT id FROM items WHERE id = 'after-restart'") != [],
        CONVERGE_S,
        "a's write after b's restart to reach b",
        describe(cluster, nats_cluster),
    )
    # The status loop has looked at the stream since the restart: still no gap.
    wait_for(lambda: fleet_of(b)["stream_first_seq"] > 0, CONVERGE_S, "b's status loop")
    assert fleet_of(b)["gaps"] == []
    assert b.health()[0] == 200


def test_a_gap_in_a_relay_chain_is_closed_from_the_relayers_state_copies(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a relay chain whose start the stream dropped is bootstrapped, never skipped.

    Method: the changes stream keeps 3 messages; c, on no stream, dials a;
    c makes 6 transactions (inserts, an update, a delete), each relayed by
    a as a message of its own, before b starts.  b must find a gap in a's
    relay chain, close it from a's relay copies on the state stream, end
    equal to c, say so under `fleet.relays`, and be healthy.
    """
    fleet = fleet_name()
    asyncio.run(make_small_stream(nats_cluster, fleet, messages_max=3))
    a = nats_node(cluster, "a", nats_cluster, fleet)
    cluster.start(a)
    c = cluster.node("c", make_db(cluster.directory / "c.db", SCHEMA), peers=[a])
    cluster.start(c)
    writes = [
        "INSERT INTO items VALUES ('r0', 'n', 0)",
        "INSERT INTO items VALUES ('r1', 'n', 1)",
        "UPDATE items SET qty = 99, name = 'updated' WHERE id = 'r0'",
        "INSERT INTO items VALUES ('r2', 'n', 2)",
        "DELETE FROM items WHERE id = 'r1'",
        "INSERT INTO items VALUES ('r3', 'n', 3)",
    ]
    for index, statement in enumerate(writes):
        sqlite3_shell(c.db, statement)
        wait_for(
            lambda: fleet_of(a)["relayed_messages"] >= index + 1,  # noqa: B023 (waited on here)
            CONVERGE_S,
            f"a to relay c's transaction {index + 1}",
            describe(cluster, nats_cluster),
        )
    b = nats_node(cluster, "b", nats_cluster, fleet)
    b.start().wait_until_ready()
    rows = wait_converged(
        [c.db, a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda dump: len(dump) == 3,  # r0, r2, r3
        describe=describe(cluster, nats_cluster),
    )
    assert (("r0", "text"), ("updated", "text"), (99, "integer")) in rows
    # (a has a state marker and no message of its own: b counts merging its
    # empty state as a bootstrap too, hence "at least one".)
    wait_for(
        lambda: fleet_of(b)["bootstraps"] >= 1 and not fleet_of(b)["gaps"],
        CONVERGE_S,
        "b to close the gap of a's relay chain",
        describe(cluster, nats_cluster),
    )
    (relay,) = fleet_of(b)["relays"]
    assert relay["site_id"] == site_id(a)
    assert relay["bootstrap"].startswith(
        f"bootstrapped from the compacted state stream SYNCMESH_{fleet.upper()}_STATE"
    )
    assert relay["cursor"] == fleet_of(a)["relayed_seq"]
    assert relay["gap"] == ""
    assert relay["bootstrap_rows"] >= 3  # r0, r2, r3 (and r1's delete, if it counts)
    log_text = b.log_text()
    assert f"fleet stream gap: the relay chain of site {site_id(a)}" in log_text
    assert f"the relay chain of site {site_id(a)} bootstrapped from the compacted" in log_text
    wait_for(lambda: b.health()[0] == 200, CONVERGE_S, "b to be healthy")


def test_a_site_with_no_message_left_in_the_stream_is_not_skipped(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a site all of whose messages the stream dropped still reaches a new site.

    Method: the changes stream keeps 3 messages in all; a publishes 2, then
    c publishes 5, so none of a's is left.  b starts with only the NATS
    addresses: no message names a, so only the state stream can tell b of
    it.  b must hold a's and c's rows, and say for a that it merged its
    state with no message left (status and log); a's next write must
    then reach b and give a a position (a gap closed the ordinary way).
    """
    fleet = fleet_name()
    asyncio.run(make_small_stream(nats_cluster, fleet, messages_max=3))
    a = nats_node(cluster, "a", nats_cluster, fleet)
    c = nats_node(cluster, "c", nats_cluster, fleet)
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a, c)
    publish_one_by_one(
        cluster, nats_cluster, a, [f"INSERT INTO items VALUES ('a{i}', 'n', {i})" for i in range(2)]
    )
    publish_one_by_one(
        cluster, nats_cluster, c, [f"INSERT INTO items VALUES ('c{i}', 'n', {i})" for i in range(5)]
    )
    b.start().wait_until_ready()
    wait_for(
        lambda: row_count(b.db, "items") == 7,
        CONVERGE_S,
        "b to hold a's and c's rows",
        describe(cluster, nats_cluster),
    )
    sites = {site["site_id"]: site for site in fleet_of(b)["sites"]}
    assert sites[site_id(a)]["bootstrap"].startswith("merged from the compacted state stream"), (
        sites
    )
    assert "no message of the site is left" in sites[site_id(a)]["bootstrap"]
    assert f"site {site_id(a)} has a state in" in b.log_text()
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-later', 'n', 9)")
    wait_for(
        lambda: query(b.db, "SELECT id FROM items WHERE id = 'a-later'") == [("a-later",)],
        CONVERGE_S,
        "a's next write to reach b",
        describe(cluster, nats_cluster),
    )
    wait_for(
        lambda: any(
            site["site_id"] == site_id(a) and site["cursor"] == fleet_of(a)["published_seq"]
            for site in fleet_of(b)["sites"]
        ),
        CONVERGE_S,
        "b to take a position on a's chain",
        describe(cluster, nats_cluster),
    )
    assert fleet_of(b)["gaps"] == []


def test_a_gap_the_state_stream_cannot_close_stays_reported(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a gap the state stream cannot close is never skipped in silence.

    Method: as above, but a's messages in the state stream (its rows and
    its "complete" marker) are purged before b starts.  b must report the
    gap: in its status (`fleet.gaps`, naming a and why the bootstrap could
    not close it), as a 503 from /v1/health, and in its log at ERROR.  The
    rows of the messages the stream still holds do arrive; a restart
    reports the gap again.
    """
    fleet = fleet_name()
    asyncio.run(make_small_stream(nats_cluster, fleet, messages_max=3))
    a = nats_node(cluster, "a", nats_cluster, fleet)
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a)
    publish_one_by_one(cluster, nats_cluster, a, GAP_WRITES)
    asyncio.run(_purge_state(nats_cluster, fleet, site_id(a)))
    b.start().wait_until_ready()
    wait_for(
        lambda: query(b.db, "SELECT id FROM items WHERE id = 'r7'") == [("r7",)],
        CONVERGE_S,
        "b to merge the rows the stream still holds",
        describe(cluster, nats_cluster),
    )
    wait_for(
        lambda: any("holds no complete state" in gap for gap in fleet_of(b)["gaps"]),
        CONVERGE_S,
        "b to report why the gap stays open",
        describe(cluster, nats_cluster),
    )
    gaps = fleet_of(b)["gaps"]
    assert len(gaps) == 1, gaps
    assert site_id(a) in gaps[0]
    assert fleet_of(b)["bootstraps"] == 0
    code, health = b.health()
    assert code == 503
    assert any("fleet stream gap" in reason for reason in health["reasons"]), health
    assert "ERROR syncmesh.node.fleet: fleet stream gap" in b.log_text()
    assert f"ERROR syncmesh.node.fleet: fleet: cannot close the gap of site {site_id(a)}" in (
        b.log_text()
    )
    assert query(b.db, "SELECT id FROM items WHERE id = 'r0'") == []  # dropped, not here
    # The position stayed before the gap: a restart finds it again, from the stream.
    b.stop()
    b.start().wait_until_ready()
    wait_for(
        lambda: len(fleet_of(b)["gaps"]) == 1,
        CONVERGE_S,
        "b to report the gap again after a restart",
        describe(cluster, nats_cluster),
    )
    assert b.health()[0] == 503


async def _purge_state(servers: NatsCluster, fleet: str, site: str) -> None:
    client = await nats.connect(servers=servers.urls)
    try:
        await client.jetstream().purge_stream(
            f"SYNCMESH_{fleet.upper()}_STATE", subject=f"syncmesh.{fleet}.state.{site}.>"
        )
    finally:
        await client.close()


def test_a_websocket_peer_off_the_stream_syncs_with_the_fleet_through_its_node(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a node's WebSocket-only peer reaches every fleet site, and they reach it.

    Method: a and b share only the stream; c is on no stream and dials a
    over WebSocket (a local replica).  Through the sqlite3 shell: a row
    written at c must reach b (a relays it on its relay subject), a row
    written at b must reach c (through a), and an update at c of b's row
    must reach b; then all three files are equal.  a's status counts what it
    relayed; b's lists a's relay chain, caught up, nothing refused; both
    in /metrics; `verify --all` verifies no relay chain as a site.  Then c
    joins the stream itself: a relays none of its next write, which reaches
    b on c's own chain.  (Before the relay, c's writes stopped at a.)
    """
    fleet, a, b, c = _fleet_with_a_replica(cluster, nats_cluster, SCHEMA)
    sqlite3_shell(c.db, "INSERT INTO items VALUES ('from-c', 'over websocket', 1)")
    _wait_relayed(cluster, nats_cluster, b, "over websocket")
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('from-b', 'over nats', 2)")
    wait_for(
        lambda: query(c.db, "SELECT name FROM items WHERE id = 'from-b'") == [("over nats",)],
        CONVERGE_S,
        "b's write to reach c through a",
        describe(cluster, nats_cluster),
    )
    sqlite3_shell(c.db, "UPDATE items SET qty = 77 WHERE id = 'from-b'")
    wait_converged(
        [a.db, b.db, c.db],
        "items",
        CONVERGE_S,
        check=lambda rows: (
            len(rows) == 2 and (("from-b", "text"), ("over nats", "text"), (77, "integer")) in rows
        ),
        describe=describe(cluster, nats_cluster),
    )
    relayer = site_id(a)
    at_a = fleet_of(a)
    assert at_a["relay_subject"] == f"syncmesh.{fleet}.changes.relay-{relayer}"
    assert at_a["relayed_rows"] >= 2  # c's insert and c's update
    wait_for(
        lambda: (
            [
                (relay["site_id"], relay["lag_ms"], relay["foreign_rows_refused"])
                for relay in fleet_of(b)["relays"]
            ]
            == [(relayer, 0, 0)]
        ),
        CONVERGE_S,
        "b's status to list a's relay chain, caught up, nothing refused",
        describe(cluster, nats_cluster),
    )
    at_b = fleet_of(b)
    # a wrote nothing of its own: no chain of a's own, and its relay chain is no site.
    assert at_b["sites"] == []
    assert at_b["foreign_rows_refused"] == 0
    assert at_b["gaps"] == []
    (relay,) = at_b["relays"]
    assert relay["rows_applied"] >= 2
    # b has no WebSocket peer: what it got on a's relay chain is not relayed again.
    assert (at_b["relayed_messages"], at_b["relayed_rows"]) == (0, 0)
    assert fleet_of(a)["relays"] == []
    stream = f'stream="SYNCMESH_{fleet.upper()}"'
    with a.open_url("/metrics", timeout_s=5) as response:
        assert f"syncmesh_fleet_relayed_rows_total{{{stream}}}" in response.read().decode()
    with b.open_url("/metrics", timeout_s=5) as response:
        metrics = response.read().decode()
    assert f'syncmesh_fleet_relay_lag_seconds{{relayer="{relayer}",{stream}}} 0.0' in metrics
    assert f'syncmesh_fleet_relay_rows_refused_total{{relayer="{relayer}",{stream}}} 0.0' in (
        metrics
    )
    assert c.status()["peers"][0]["state"] == "streaming"
    # `verify --all` takes the fleet's sites from the stream's subjects: a relay
    # chain's subject names no site to verify.
    nats_args = [arg for url in nats_cluster.urls for arg in ("--nats", url)]
    verified = run_cli("verify", str(b.db), *nats_args, "--cluster", fleet, "--all", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert relayer in verified.stdout
    assert "relay-" not in verified.stdout + verified.stderr

    # c joins the stream itself (same file, same site id, still dialling a):
    # once a has seen c's own chain, c's writes are c's to publish, not a's.
    c_site, relayed_before = site_id(c), fleet_of(a)["relayed_rows"]
    c.stop()
    c_on_stream = cluster.node(
        "c-on-stream",
        c.db,
        peers=[a],
        extra_args=(*nats_args, "--cluster", fleet),
        env=FAST_STATUS,
    )
    cluster.start(c_on_stream)
    wait_for(
        lambda: c_site in {site["site_id"] for site in fleet_of(a)["sites"]},
        CONVERGE_S,
        "a to see c's own chain on the stream",
        describe(cluster, nats_cluster),
    )
    sqlite3_shell(c.db, "INSERT INTO items VALUES ('c-on-stream', 'own chain', 3)")
    wait_converged(
        [a.db, b.db, c.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 3,
        describe=describe(cluster, nats_cluster),
    )
    assert fleet_of(a)["relayed_rows"] == relayed_before, "c's new write is not relayed"
    assert c_site in {site["site_id"] for site in fleet_of(b)["sites"]}
    assert fleet_of(b)["foreign_rows_refused"] == 0


def test_a_websocket_replica_a_column_behind_is_relayed_to_the_fleet(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a WebSocket replica whose vector its fleet node does not adopt (it lacks a
    column the node tracks: a rolling migration not yet run there, ADR 0013) still has
    its writes relayed to the fleet.

    Method: a and b share the stream; c dials a over WebSocket and its `items`
    lacks the `qty` column.  A row written at c through the sqlite3 shell must
    reach b (a relays it).  Before, the relay loop waited for a vector naming c,
    which a adopts only once c has every column: c's writes stopped at a.
    """
    _, a, b, c = _fleet_with_a_replica(
        cluster, nats_cluster, "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
    )
    sqlite3_shell(c.db, "INSERT INTO items VALUES ('from-c', 'column behind')")
    _wait_relayed(cluster, nats_cluster, b, "column behind")
    assert fleet_of(a)["relayed_rows"] >= 1


def _fleet_with_a_replica(
    cluster: Cluster, nats_cluster: NatsCluster, replica_schema: str
) -> tuple[str, NodeProcess, NodeProcess, NodeProcess]:
    """(fleet, a, b, c): a and b on one fleet, c a WebSocket replica of a on no stream."""
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    c = cluster.node("c", make_db(cluster.directory / "c.db", replica_schema), peers=[a])
    cluster.start(c)
    return fleet, a, b, c


def _wait_relayed(
    cluster: Cluster, nats_cluster: NatsCluster, reader: NodeProcess, name: str
) -> None:
    """Until the row 'from-c' that the replica wrote reads `name` at `reader`."""
    wait_for(
        lambda: query(reader.db, "SELECT name FROM items WHERE id = 'from-c'") == [(name,)],
        CONVERGE_S,
        f"c's write to reach {reader.name} through a's relay",
        describe(cluster, nats_cluster),
    )


async def make_small_stream(servers: NatsCluster, fleet: str, *, messages_max: int) -> None:
    client = await nats.connect(servers=servers.urls)
    try:
        await client.jetstream().add_stream(
            StreamConfig(
                name=f"SYNCMESH_{fleet.upper()}",
                subjects=[f"syncmesh.{fleet}.changes.*"],
                num_replicas=3,
                max_msgs=messages_max,
            )
        )
    finally:
        await client.close()


async def test_a_retried_publish_is_stored_once(nats_cluster: NatsCluster) -> None:
    """Goal: a publish repeated with its message id (its ack was lost) is stored once.

    Method: the link publishes one frame, then the same frame with the same
    message id again, as the fleet's publisher does when an ack does not
    arrive; the second receipt must say duplicate, at the same stream
    sequence, and the site's subject must hold one message.
    """
    link = JetStreamLink(tuple(nats_cluster.urls), fleet_name(), replicas=3)
    site = uuid.uuid4().hex
    await link.open(site)
    try:
        headers = {"Syncmesh-From": "0", "Syncmesh-To": "5"}
        first = await link.publish(site, b"frame", message_id=f"{site}:i:0:5", headers=headers)
        again = await link.publish(site, b"frame", message_id=f"{site}:i:0:5", headers=headers)
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.stream_seq == first.stream_seq
        position = await link.position()
        assert position.messages == 1
        last = await link.last_message(link.subject_of(site))
        assert last is not None
        assert last.stream_seq == first.stream_seq
        assert last.headers["Nats-Msg-Id"] == f"{site}:i:0:5"
    finally:
        await link.close()


class AckLostLink:
    """A JetStreamLink whose first publish lands in the stream but whose ack is lost."""

    def __init__(self, inner: JetStreamLink) -> None:
        self.inner = inner
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(
        self, site_id: str, data: bytes, *, message_id: str, headers: Mapping[str, str]
    ) -> PublishReceipt:
        receipt = await self.inner.publish(site_id, data, message_id=message_id, headers=headers)
        if self.lost == 0:
            self.lost += 1
            raise FleetError("nats", "publish failed: timeout (injected: the ack was lost)")
        return receipt


async def test_the_publisher_retries_with_the_same_message_id(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    """Goal: when a publish's ack is lost, the node publishes again and the stream keeps one.

    Method: a node runs in this process with a link whose first publish
    reaches the stream but raises as if its ack were lost; one write
    through the sqlite3 shell.  The node must retry (publish_retries 1),
    the stream must answer "duplicate" (publish_duplicates 1), and the
    node's subject must hold exactly one message.
    """
    fleet = fleet_name()
    db = make_db(tmp_path / "a.db", SCHEMA)
    config = NodeConfig(
        database_path=str(db),
        listen_port=0,
        fleet=FleetConfig(servers=tuple(nats_cluster.urls), cluster=fleet),
    )
    link = AckLostLink(JetStreamLink(tuple(nats_cluster.urls), fleet))
    node = Node(config, connector=websocket_connector(config), fleet_link=link)
    await node.start()
    try:
        sqlite3_shell(db, "INSERT INTO items VALUES ('x', 'once', 1)")
        assert node.fleet is not None
        fleet_node = node.fleet
        await wait_until(
            lambda: fleet_node.statistics().published_messages == 1,
            CONVERGE_S,
            "the node to publish its write",
        )
        statistics = fleet_node.statistics()
        assert (statistics.publish_retries, statistics.publish_duplicates) == (1, 1)
        position = await link.inner.position()
        assert position.messages == 1
    finally:
        await node.stop()


def test_sites_converge_while_one_nats_server_is_down(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: losing one of the three servers loses nothing; the sites keep syncing.

    Method: a and b converge; one nats-server (the one both were told of
    first) is killed with SIGKILL; a and b write 50 rows each through the
    sqlite3 shell; both files must end equal with all 101 rows.  The server
    is started again afterwards, with its store, for the next tests.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('before', 'x', 0)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    victim = nats_cluster.servers[0]
    victim.stop()
    try:
        for node in (a, b):
            values = ", ".join(f"('{node.name}{row}', 'n', {row})" for row in range(50))
            sqlite3_shell(node.db, f"INSERT INTO items VALUES {values}")
        wait_converged(
            [a.db, b.db],
            "items",
            CONVERGE_S * 2,
            check=lambda rows: len(rows) == 101,
            describe=describe(cluster, nats_cluster),
        )
    finally:
        victim.start()
        nats_cluster.wait_ready()


def test_tracking_a_table_reads_the_stream_again_without_a_false_gap(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a table tracked while the node runs gets the rows the stream already carried.

    Method: a tracks `items` and `extra`; b has both tables but tracks only
    `items`.  a writes to both; b gets the `items` row.  Then `syncmesh
    track b.db extra` runs beside the running node: the store resets every
    position to 0 (ADR 0013), so b must read the stream again from its
    start (logged), end with a's `extra` rows, and take a's next message
    without reporting a gap.
    """
    fleet = fleet_name()
    extra = "CREATE TABLE extra (id TEXT PRIMARY KEY, v TEXT)"
    a_db = make_db(cluster.directory / "a.db", [SCHEMA, extra])
    b_db = make_db(cluster.directory / "b.db", SCHEMA)
    sqlite3_shell(b_db, extra)
    nats_args = [arg for url in nats_cluster.urls for arg in ("--nats", url)]
    a, b = (
        cluster.node(name, db, extra_args=(*nats_args, "--cluster", fleet), env=FAST_STATUS)
        for name, db in (("a", a_db), ("b", b_db))
    )
    cluster.start(a, b)
    sqlite3_shell(
        a.db, "INSERT INTO extra VALUES ('e1', 'one'); INSERT INTO extra VALUES ('e2', 'two')"
    )
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('i1', 'x', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    assert row_count(b.db, "extra") == 0
    assert run_cli("track", str(b.db), "extra").returncode == 0
    wait_converged(
        [a.db, b.db],
        "extra",
        CONVERGE_S,
        check=lambda rows: len(rows) == 2,
        describe=describe(cluster, nats_cluster),
    )
    b.wait_for_log("reading the stream again")
    wait_for(
        lambda: fleet_of(b)["state"] == "streaming" and fleet_of(b)["consumer_pending"] == 0,
        CONVERGE_S,
        "b to read the stream to its end again",
        describe(cluster, nats_cluster),
    )
    # a's next message continues its chain past b's reset position: no gap.
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('i2', 'after', 2)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 2)
    assert fleet_of(b)["gaps"] == []
    # (b's health may say "quarantine is growing": the extra rows waited there.)
    assert not any("fleet" in reason for reason in b.health()[1]["reasons"])


def test_a_database_restored_from_an_older_copy_reads_the_stream_again(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a file restored from a backup gets back what its consumer had already acked.

    Method: b applies a's first row and stops; its file is copied (the
    backup); b runs again and applies 30 more rows of a; b stops and the
    backup is put back.  The durable consumer on the server has acked the
    30 rows, the file has not applied them: b must see that, read the
    stream again (logged), and end with all 31 rows, without a gap.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('first', 'x', 0)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    b.stop()
    backup = cluster.directory / "b-backup.db"
    shutil.copyfile(b.db, backup)
    b.start().wait_until_ready()
    values = ", ".join(f"('r{row}', 'n', {row})" for row in range(30))
    sqlite3_shell(a.db, f"INSERT INTO items VALUES {values}")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 31)
    b.stop()
    shutil.copyfile(backup, b.db)
    assert row_count(b.db, "items") == 1
    b.start().wait_until_ready()
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 31,
        describe=describe(cluster, nats_cluster),
    )
    assert "restored from an older copy" in b.log_text()
    assert fleet_of(b)["gaps"] == []


PASSWORD = "pw-9d1e7c"  # a NATS user's password, given in the --nats URL
WRONG_PASSWORD = "pw-wrong-41b0"


def test_a_password_in_the_nats_url_is_shown_nowhere(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: `--nats nats://USER:PASSWORD@HOST:PORT` keeps the password out of logs and status.

    nats-py takes a user's password in the URL (docs/nats.md's server
    configuration gives each site a user and password), and the node
    printed the URL as given: in every log line naming the servers, in
    `/v1/status` (`fleet.servers`, read by the dashboard) and in `syncmesh
    status`.  Method: a nats-server with one user; a node with the right
    password streams, and one with a wrong password fails to connect; the
    password appears in neither log, nor in the status, nor in the CLI's
    view, while the user and the host do.
    """
    server = NatsServer("auth", tmp_path / "auth", free_port(), free_port())
    (server.directory / "jetstream").mkdir(parents=True)
    config = server.directory / "server.conf"
    config.write_text(
        f'listen: "{HOST}:{server.client_port}"\n'
        f'jetstream {{ store_dir: "{server.directory / "jetstream"}" }}\n'
        f'authorization {{ user: shop, password: "{PASSWORD}" }}\n',
        encoding="utf-8",
    )
    server.start(config)
    try:
        address = f"{HOST}:{server.client_port}"
        fleet = fleet_name()
        nodes = []
        for name, password in (("a", PASSWORD), ("wrong", WRONG_PASSWORD)):
            db = make_db(cluster.directory / f"{name}.db", SCHEMA)
            nodes.append(
                cluster.node(
                    name,
                    db,
                    extra_args=("--nats", f"nats://shop:{password}@{address}", "--cluster", fleet),
                    env={**FAST_STATUS, "SYNCMESH_TRANSPORT_NATS_REPLICAS": "1"},
                )
            )
        a, wrong = nodes
        cluster.start(a, wrong)
        wait_for(lambda: fleet_of(a)["state"] == "streaming", CONVERGE_S, "a to stream")
        wrong.wait_for_log("Authorization Violation", CONVERGE_S)
        shown = f"nats://shop:***@{address}"
        assert fleet_of(a)["servers"] == [shown]
        assert fleet_of(wrong)["servers"] == [shown]
        view = run_cli("status", str(a.db)).stdout
        assert shown in view, view
        for node in (a, wrong):
            # What the node wrote (the harness's first line is the command it ran).
            written = "\n".join(
                line for line in node.log_text().splitlines() if not line.startswith("==== ")
            )
            assert shown in written, node.log_tail()
            for secret in (PASSWORD, WRONG_PASSWORD):
                assert secret not in written, node.log_tail()
                assert secret not in json.dumps(node.status()), node.status()
        assert PASSWORD not in view, view
    finally:
        server.stop()
