"""The NATS fleet never stalls in silence (issue 15): every call into nats-py is bounded,
a cancelled fleet loop stops, and status and health say when the fleet does not move.

Real components only: the 3-server JetStream cluster of tests/nats_cluster.py,
real `syncmesh serve` processes, and a loopback proxy of the test's own
(`FreezableProxy`) that freezes a link (no byte moves either way, nothing is
closed) and resumes it.  Every wait is a deadline loop on a state; the
bounds below are hang guards, not speed checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncmesh.transport.nats import (
    CLOSE_DEADLINE_S,
    REQUEST_DEADLINE_S,
    JetStreamLink,
    bounded,
)
from syncmesh.transport.stream import FleetError
from tests.helpers import sqlite3_shell
from tests.nats_cluster import FreezableProxy, NatsCluster, NatsServer
from tests.nodeproc import (
    HOST,
    Cluster,
    NodeProcess,
    free_port,
    make_db,
    query,
    run_cli,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.multiprocess

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
CONVERGE_S = 60.0  # a deadline for states, generous for a loaded CI machine
HANG_GUARD_S = 3 * REQUEST_DEADLINE_S  # a bounded call that takes longer than this hangs
RACE_RUNS = 3_000  # task groups in the race test; each ends within milliseconds when sound
HEALTH_WINDOW_S = "2"  # health.peer_down_s_max of the nodes here: reasons show quickly
SETUP_FETCH_S = 20.0  # the first fetch of a new consumer, while its leader is elected
_names = itertools.count(1)


@pytest.fixture
def proxy(nats_cluster: NatsCluster) -> Iterator[FreezableProxy]:
    link = FreezableProxy(nats_cluster.servers[0].client_port).start()
    try:
        yield link
    finally:
        link.close()


def fleet_name() -> str:
    return f"s{os.getpid()}-{next(_names)}"


# -- the link: bounded calls, cancellations that arrive -----------------------------


class PublishFailed(Exception):
    """The publish loop's failure, as the test makes it."""


async def test_loops_cancelled_by_their_task_group_stop(nats_cluster: NatsCluster) -> None:
    """Goal: when one fleet loop fails, its task group ends: the other loops stop.

    The CI stall of issue 15: the publish loop failed, its task group
    cancelled the consume and status loops, and one of them ran on,
    because nats-py's request (`asyncio.wait_for` on Python 3.11) drops a
    cancellation that arrives in the same turn of the loop as its reply;
    the group never ended and nothing was logged.  Method: the fleet's
    shape on a real link, again and again: a task group of two loops of
    `position()` calls (the status loop's request pair) and a publish
    loop that fails after one request of its own, so that the
    cancellations meet replies in flight.  Each group must end with the
    failure within the hang guard.  Without our own bound around
    nats-py's calls one group in 30 to 200 hung here (a loop left
    "cancelling" and running); the runs are many so that the race is met.
    """
    link = JetStreamLink(tuple(nats_cluster.urls), fleet_name(), replicas=3)
    await link.open(uuid.uuid4().hex)

    async def status_loop() -> None:
        while True:
            await link.position()

    async def failing_publish_loop() -> None:
        await link.position()
        raise PublishFailed

    async def one_group() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(failing_publish_loop())
            group.create_task(status_loop())
            group.create_task(status_loop())

    try:
        for run in range(RACE_RUNS):
            group = asyncio.create_task(one_group())
            done, _ = await asyncio.wait({group}, timeout=HANG_GUARD_S)
            if not done:
                group.cancel()  # (another loop may swallow this one too: the link closes below)
                raise AssertionError(f"run {run}: a loop ran on after its group was cancelled")
            error = group.exception()
            assert isinstance(error, ExceptionGroup), error
            assert error.subgroup(PublishFailed) is not None, error
    finally:
        await link.close()


async def _first_delivery(link: JetStreamLink) -> Any:
    """The one message published, fetched before the link freezes.

    Under load a cluster may still be electing the new consumer's leader:
    JetStream then answers a fetch with 503 (ServiceUnavailable, a
    FleetError here) for a moment, which the fleet's consume loop rides out
    by fetching again (CI, once).  So does this set-up, within a bound.
    """
    deadline = asyncio.get_running_loop().time() + SETUP_FETCH_S
    while True:
        try:
            deliveries = await link.fetch(1, 5.0)
        except FleetError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        if deliveries:
            (delivery,) = deliveries
            return delivery
        assert asyncio.get_running_loop().time() <= deadline, "the message was never delivered"


async def test_every_link_operation_is_bounded_on_a_frozen_link(
    nats_cluster: NatsCluster, proxy: FreezableProxy
) -> None:
    """Goal: on a link that stops moving, each operation ends with a FleetError naming it.

    Method: a JetStreamLink through the proxy opens, publishes one message
    and fetches it; the proxy freezes.  Then each operation must end
    within the hang guard: the requests with a FleetError that names what
    failed, `fetch` with nothing delivered, `close` quietly.  A second link
    opened through the frozen proxy must fail to connect, with a FleetError,
    instead of trying for ever (nats-py's connect with unlimited reconnects).
    """
    fleet = fleet_name()
    site = uuid.uuid4().hex
    link = JetStreamLink((proxy.url,), fleet, replicas=3, connect_timeout_s=1.0)
    await link.open(site)
    await link.publish(site, b"frame", message_id=f"{site}:i:0:1", headers={})
    delivery = await _first_delivery(link)
    proxy.freeze()
    subject = link.subject_of(site)
    operations: dict[str, Any] = {
        "publish": lambda: link.publish(site, b"x", message_id=f"{site}:i:1:2", headers={}),
        "state publish": lambda: link.publish_state(site, [("t", b"x")], headers={}),
        "get last message": lambda: link.last_message(subject),
        "get message": lambda: link.next_message(subject, 1),
        "state": lambda: link.last_state(site, "complete"),
        "read the stream's state": link.position,
        "stream info": lambda: link.state_sites("complete"),
        "read": lambda: link.read_state(site),
        "ack": delivery.ack,
        "nak": lambda: delivery.nak(1.0),
    }
    async with asyncio.timeout(HANG_GUARD_S):  # all at once: each is bounded alone
        outcomes = await asyncio.gather(
            *(operation() for operation in operations.values()), return_exceptions=True
        )
        assert await link.fetch(1, 1.0) == []
    failures = {
        name: str(outcome)
        for name, outcome in zip(operations, outcomes, strict=True)
        if isinstance(outcome, FleetError)
    }
    unexpected = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert all(isinstance(outcome, FleetError) for outcome in unexpected), unexpected
    async with asyncio.timeout(CLOSE_DEADLINE_S + HANG_GUARD_S):
        await link.close()
    # nak is a plain publish: it leaves the client's buffer and waits for no answer.
    assert set(failures) == set(operations) - {"nak"}, failures
    for text in failures.values():  # the stream, then the operation
        assert text.startswith(f"SYNCMESH_{fleet.upper()}"), text
    assert "publish failed" in failures["publish"]
    assert "state publish failed" in failures["state publish"]
    assert "ack failed" in failures["ack"]
    assert "cannot read the stream's state" in failures["read the stream's state"]
    fresh = JetStreamLink((proxy.url,), fleet, replicas=3, connect_timeout_s=1.0)
    with pytest.raises(FleetError, match="cannot connect: connect: no answer within"):
        async with asyncio.timeout(HANG_GUARD_S * 2):
            await fresh.open(site)
    proxy.resume()


async def test_connecting_where_no_server_answers_ends_with_a_fleet_error() -> None:
    """Goal: the first connect gives up; it does not retry for ever.

    nats-py's connect with unlimited reconnects (which the link needs once
    connected) tried a refused address again and again, never returning.
    Method: a link to a loopback port nothing listens on must raise a
    FleetError that says it cannot connect, within the hang guard.
    """
    link = JetStreamLink((f"nats://127.0.0.1:{free_port()}",), fleet_name(), connect_timeout_s=1.0)
    with pytest.raises(FleetError, match="cannot connect: "):
        async with asyncio.timeout(HANG_GUARD_S):
            await link.open(uuid.uuid4().hex)
    assert not link.connected


async def test_a_refused_connect_names_the_refusal_not_a_silence() -> None:
    """Goal: an operator with a wrong --nats port reads why the node cannot connect.

    The error that reached `last_error` and the log was "connect: no answer
    within 14 s": it sends one looking for a server that hangs, when nothing
    listens on the port.  nats-py's own error (the refusal) is known by then.
    Method: a link to a loopback port nothing listens on; its FleetError
    must name the refusal and how long it tried.
    """
    link = JetStreamLink((f"nats://127.0.0.1:{free_port()}",), fleet_name(), connect_timeout_s=1.0)
    with pytest.raises(FleetError) as raised:
        async with asyncio.timeout(HANG_GUARD_S):
            await link.open(uuid.uuid4().hex)
    reason = raised.value.reason
    assert reason.startswith("cannot connect: ConnectionRefusedError"), reason
    assert "tried for" in reason, reason
    assert "no answer" not in reason, reason


# -- the node: status and health tell the truth --------------------------------------


def proxied_node(
    cluster: Cluster, name: str, url: str, fleet: str, servers: NatsCluster | None = None
) -> NodeProcess:
    """A `serve --nats` node on `url` alone (or on every server of `servers`)."""
    db = make_db(cluster.directory / f"{name}.db", SCHEMA)
    urls = servers.urls if servers is not None else [url]
    nats_args = [arg for address in urls for arg in ("--nats", address)]
    return cluster.node(
        name,
        db,
        extra_args=(*nats_args, "--cluster", fleet),
        env={
            "SYNCMESH_TRANSPORT_NATS_STATUS_INTERVAL_S": "0.2",
            "SYNCMESH_HEALTH_PEER_DOWN_S_MAX": HEALTH_WINDOW_S,
        },
    )


def fleet_reasons(node: NodeProcess) -> list[str]:
    code, health = node.health()
    return [reason for reason in health["reasons"] if "fleet" in reason] if code != 200 else []


def describe(cluster: Cluster, servers: NatsCluster) -> Any:
    return lambda: cluster.logs() + "\n" + servers.logs()


def test_a_link_that_freezes_while_streaming_makes_the_node_unhealthy_then_recovers(
    cluster: Cluster, nats_cluster: NatsCluster, proxy: FreezableProxy
) -> None:
    """Goal: writes that cannot reach the stream turn health red; they arrive after.

    Method: a reaches NATS only through the proxy, b directly; both stream
    and converge on one row.  The proxy freezes; a writes a row through the
    sqlite3 shell.  a's health must turn non-ok with a fleet reason (our
    writes have not reached the stream, or the stream out of reach) and
    the row must not be at b.  The proxy resumes: the row must reach b,
    and a's health must be ok again.
    """
    fleet = fleet_name()
    a = proxied_node(cluster, "a", proxy.url, fleet)
    b = proxied_node(cluster, "b", proxy.url, fleet, nats_cluster)
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('before', 'x', 0)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    wait_for(lambda: a.health()[0] == 200, CONVERGE_S, "a healthy", describe(cluster, nats_cluster))
    proxy.freeze()
    try:
        sqlite3_shell(a.db, "INSERT INTO items VALUES ('frozen', 'written meanwhile', 1)")
        wait_for(
            lambda: any("our writes have not reached" in r for r in fleet_reasons(a)),
            CONVERGE_S,
            "a's health to say its writes do not reach the stream",
            describe(cluster, nats_cluster),
        )
        assert query(b.db, "SELECT id FROM items WHERE id = 'frozen'") == []
        assert a.status()["fleet"]["publish_waiting_since_ms"] > 0
    finally:
        proxy.resume()
    wait_for(
        lambda: (
            query(b.db, "SELECT name FROM items WHERE id = 'frozen'") == [("written meanwhile",)]
        ),
        CONVERGE_S,
        "a's write to reach b after the link resumed",
        describe(cluster, nats_cluster),
    )
    wait_for(
        lambda: a.health()[0] == 200,
        CONVERGE_S,
        "a healthy again",
        describe(cluster, nats_cluster),
    )
    fleet_status = a.status()["fleet"]
    assert fleet_status["state"] == "streaming"
    assert fleet_status["publish_waiting_since_ms"] == 0


def test_a_node_whose_link_freezes_as_it_starts_never_says_streaming(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a fleet that connected but whose publish side never started is not "streaming".

    Method: a's proxy freezes itself the first time a asks for a stream
    message (the publish loop's first request, after the link opened: the
    moment the CI stall began).  While frozen, a's status must never say
    "streaming" (it says starting, connecting or backoff), its metrics must
    say `syncmesh_fleet_up 0`, and its health must turn non-ok with the
    fleet out of reach.  After the proxy resumes, a and b must converge
    on a write at each, and a must say streaming.
    """
    fleet = fleet_name()
    frozen = FreezableProxy(
        nats_cluster.servers[0].client_port, freeze_on=b"$JS.API.STREAM.MSG.GET."
    ).start()
    try:
        b = proxied_node(cluster, "b", frozen.url, fleet, nats_cluster)
        cluster.start(b)
        a = proxied_node(cluster, "a", frozen.url, fleet)
        cluster.start(a)
        sqlite3_shell(a.db, "INSERT INTO items VALUES ('from-a', 'x', 1)")
        sqlite3_shell(b.db, "INSERT INTO items VALUES ('from-b', 'y', 2)")
        assert frozen.triggered.wait(CONVERGE_S), "a never asked for a stream message"
        states: set[str] = set()

        def unhealthy_while_never_streaming() -> bool:
            states.add(a.status()["fleet"]["state"])
            assert "streaming" not in states, states
            return any("out of reach" in reason for reason in fleet_reasons(a))

        wait_for(
            unhealthy_while_never_streaming,
            CONVERGE_S,
            "a's health to say the fleet stream is out of reach",
            describe(cluster, nats_cluster),
        )
        assert states <= {"starting", "connecting", "backoff"}, states
        with a.open_url("/metrics", timeout_s=5) as response:
            metrics = response.read().decode()
        assert f'syncmesh_fleet_up{{stream="SYNCMESH_{fleet.upper()}"}} 0.0' in metrics
        frozen.resume()
        wait_converged(
            [a.db, b.db],
            "items",
            CONVERGE_S,
            check=lambda rows: len(rows) == 2,
            describe=describe(cluster, nats_cluster),
        )
        wait_for(
            lambda: a.status()["fleet"]["state"] == "streaming" and a.health()[0] == 200,
            CONVERGE_S,
            "a streaming and healthy",
            describe(cluster, nats_cluster),
        )
    finally:
        frozen.close()


def test_a_fleet_node_collects_no_tombstone_of_a_delete_not_on_the_stream_yet(
    cluster: Cluster, nats_cluster: NatsCluster, proxy: FreezableProxy
) -> None:
    """Goal: a delete made while the stream is out of reach is not collected before it is sent.

    Found by `syncmesh chaos --transport nats --seed 3 --only 1 --nodes 3
    --duration 6` (a node killed, then its fleet kept off the stream by a
    server killed and paused): the node, holding no other site's stamps yet,
    took itself for its only member and collected the tombstones of its own
    deletes, which had never reached the stream.  Its deletes and the writes
    they followed were lost, and another site's older insert of the key came
    back everywhere (`lost-write`, `resurrection`).  Method: b inserts r1 and
    publishes it; a starts with its only server behind a frozen proxy,
    inserts r1 and deletes it (a causal length above b's insert), and runs
    tombstone collection rounds every 0.3 s meanwhile; a must collect
    nothing.  Once the proxy resumes, r1 must be deleted at both.
    """
    fleet = fleet_name()
    b = proxied_node(cluster, "b", proxy.url, fleet, nats_cluster)
    cluster.start(b)
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('r1', 'from b', 1)")
    wait_for(
        lambda: b.status()["fleet"]["published_messages"] >= 1,
        CONVERGE_S,
        "b to publish its insert",
        describe(cluster, nats_cluster),
    )
    proxy.freeze()
    try:
        db = make_db(cluster.directory / "a.db", SCHEMA)
        a = cluster.node(
            "a",
            db,
            extra_args=("--nats", proxy.url, "--cluster", fleet),
            env={
                "SYNCMESH_TRANSPORT_NATS_STATUS_INTERVAL_S": "0.2",
                "SYNCMESH_LIFECYCLE_INTERVAL_S": "0.3",
            },
        )
        cluster.start(a)
        sqlite3_shell(a.db, "INSERT INTO items VALUES ('r1', 'from a', 2)")
        sqlite3_shell(a.db, "DELETE FROM items WHERE id = 'r1'")
        wait_for(
            lambda: a.status()["lifecycle"]["rounds"] >= 5,
            CONVERGE_S,
            "a to run collection rounds while off the stream",
            describe(cluster, nats_cluster),
        )
        assert a.status()["fleet"]["state"] != "streaming"
        assert a.status()["lifecycle"]["collected"] == 0, a.status()["lifecycle"]
    finally:
        proxy.resume()
    wait_for(
        lambda: any(
            site["messages_applied"] >= 1 and site["site_id"] == query(a.db, SITE_SQL)[0][0]
            for site in b.status()["fleet"]["sites"]
        ),
        CONVERGE_S,
        "b to apply a's messages",
        describe(cluster, nats_cluster),
    )
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: rows == [],
        describe=describe(cluster, nats_cluster),
    )


SITE_SQL = "SELECT site_id FROM _syncmesh_sites WHERE ordinal = 0"


def test_a_node_whose_only_server_went_away_says_reconnecting_not_streaming(
    cluster: Cluster, nats_server: NatsServer
) -> None:
    """Goal: while the NATS client has lost its server, status never says streaming.

    Method: a node on one nats-server streams; the server stops.  Before
    any call of the fleet fails (they are bounded at several seconds), the
    client knows it is disconnected: the state must read "reconnecting",
    with `syncmesh_fleet_up` 0, never "streaming" from then on until the
    server is back; then it streams again and a row written meanwhile is
    published.
    """
    fleet = fleet_name()
    a = proxied_node(cluster, "a", nats_server.url, fleet)
    a.env["SYNCMESH_TRANSPORT_NATS_REPLICAS"] = "1"
    cluster.start(a)
    wait_for(lambda: fleet_state(a) == "streaming", CONVERGE_S, "a streaming", cluster.logs)
    nats_server.stop()
    try:
        wait_for(
            lambda: fleet_state(a) != "streaming", CONVERGE_S, "a to stop streaming", cluster.logs
        )
        seen = {fleet_state(a)}

        def gave_up() -> bool:
            seen.add(fleet_state(a))
            return "backoff" in seen or "connecting" in seen

        wait_for(
            gave_up,
            CONVERGE_S,
            "a's fleet to give up on its link",
            cluster.logs,
        )
        assert "reconnecting" in seen, seen
        assert "streaming" not in seen, seen
        with a.open_url("/metrics", timeout_s=5) as response:
            assert f'syncmesh_fleet_up{{stream="SYNCMESH_{fleet.upper()}"}} 0.0' in (
                response.read().decode()
            )
        sqlite3_shell(a.db, "INSERT INTO items VALUES ('meanwhile', 'x', 1)")
    finally:
        nats_server.start()
    wait_for(
        lambda: fleet_state(a) == "streaming" and a.status()["fleet"]["published_rows"] >= 1,
        CONVERGE_S,
        "a streaming again, its row published",
        cluster.logs,
    )


def test_a_single_server_refusing_three_replicas_makes_the_node_unhealthy_at_once_with_the_fix(
    cluster: Cluster, nats_server: NatsServer
) -> None:
    """Goal: the first thing a new user tries, `serve --nats` against one
    `nats-server -js`, with the default 3 replicas, is refused by the server.
    No retry fixes that, so health says so at once (not after the minute of
    grace an outage gets), naming the setting that fixes it; with it set,
    the node streams and is healthy (new-user report: /v1/health said ok
    while the server answered every stream creation with an error, and the
    log gave the server's words without the fix).

    Method: a real single nats-server; a node with the defaults; its health
    must be 503 within 20 s (the outage grace is 60 s) with a reason naming
    `transport.nats.replicas = 1`, and its status `configuration_error`.  The
    node restarts with SYNCMESH_TRANSPORT_NATS_REPLICAS=1: it streams, its
    health is ok and the error is gone.
    """
    fleet = fleet_name()
    a = proxied_node(cluster, "a", nats_server.url, fleet)
    cluster.start(a)
    deadline_s = 20.0

    def refused() -> bool:
        code, body = a.health()
        return code == 503 and any(
            "transport.nats.replicas = 1" in reason for reason in body["reasons"]
        )

    wait_for(refused, deadline_s, "a's health to name the replicas setting", cluster.logs)
    assert "SYNCMESH_TRANSPORT_NATS_REPLICAS=1" in a.status()["fleet"]["configuration_error"]
    assert fleet_state(a) != "streaming"
    a.stop()
    a.env["SYNCMESH_TRANSPORT_NATS_REPLICAS"] = "1"
    cluster.start(a)
    wait_for(lambda: fleet_state(a) == "streaming", CONVERGE_S, "a streaming", cluster.logs)
    wait_for(lambda: a.health()[0] == 200, CONVERGE_S, "a healthy", cluster.logs)
    assert a.status()["fleet"]["configuration_error"] == ""


def fleet_state(node: NodeProcess) -> str:
    return str(node.status()["fleet"]["state"])


async def test_a_call_that_fails_as_its_caller_is_cancelled_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Goal: a bounded call that ends with an error just as its caller is cancelled (the
    fleet's task group stopping its loops) leaves no "Task exception was never
    retrieved" traceback in the log: the test harness takes any traceback a node
    logs for a bug, and CI failed on exactly this (a `get_last_msg` NotFoundError).

    Method: the caller is cancelled in the loop turn after the call failed,
    before the caller resumed; the call's task is then collected.
    """
    failed = asyncio.Event()

    async def fails() -> None:
        failed.set()
        raise ValueError("no message found")

    async def caller() -> None:
        await bounded(fails(), "get last message", "STREAM", 5.0)

    for _attempt in range(20):
        waiting = asyncio.create_task(caller())
        await failed.wait()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, ValueError):
            await waiting
        failed.clear()
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_server_without_jetstream_is_named_as_such(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: `--nats` at a nats-server without JetStream says that, not a bare 503.

    An operator who starts `nats-server` without `-js` (or gives the site's
    account no `jetstream: enabled`) read `cannot read the stream: nats:
    ServiceUnavailableError: code=None err_code=None description='None'` in
    the node's `last_error` and from `syncmesh verify`.  Method: a real
    nats-server with no JetStream; a `serve --nats` node's `fleet.last_error`
    and `syncmesh verify --all`'s error must both say to enable JetStream.
    """
    server = NatsServer("plain", tmp_path / "plain", free_port(), free_port())
    server.directory.mkdir(parents=True)
    config = server.directory / "server.conf"
    config.write_text(f'listen: "{HOST}:{server.client_port}"\n', encoding="utf-8")
    server.start(config)
    try:
        url = f"nats://{HOST}:{server.client_port}"
        fleet = fleet_name()
        node = proxied_node(cluster, "a", url, fleet)
        cluster.start(node)
        wanted = "no JetStream answers on these servers"
        wait_for(
            lambda: wanted in node.status()["fleet"]["last_error"],
            CONVERGE_S,
            "the node to say the servers have no JetStream",
        )
        assert "enable JetStream" in node.status()["fleet"]["last_error"]
        assert "code=None" not in node.status()["fleet"]["last_error"]
        verify = run_cli(
            "verify", str(node.db), "--nats", url, "--cluster", fleet, "--all", check=False
        )
        assert verify.returncode == 2, verify
        assert f"{wanted} (503, no responders): enable JetStream" in verify.stderr, verify
    finally:
        server.stop()
