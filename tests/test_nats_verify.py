"""Verify and repair over NATS request/reply (transport.nats_verify, node.fleet_verify).

Real `syncmesh serve --nats` processes on a real 3-server JetStream cluster
(tests/nats_cluster.py), the real command line, rows changed through the
sqlite3 shell; the transport's parts and timeouts against a real
nats-server with a small `max_payload`.  All on 127.0.0.1.  (docs/nats.md,
"Verify and repair over NATS")
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from syncmesh.errors import ConfigError, SyncError
from syncmesh.node.config import FleetConfig, NodeConfig, PeerConfig
from syncmesh.node.verify import VerifyClient
from syncmesh.protocol.verify import (
    FetchRequest,
    RootsRequest,
    VerifyRequest,
    encode_request,
    refusal_detail,
)
from syncmesh.transport.base import PeerIdentity, Refusal, UnreachableError, VerifyAnswer
from syncmesh.transport.nats_verify import (
    HEADER_PART,
    HEADER_SITE,
    HEADER_STATUS,
    NatsVerifyConnection,
    NatsVerifyResponder,
    inbox_prefix,
    verify_subject,
)
from syncmesh.transport.stream import FleetError
from tests.helpers import sqlite3_shell
from tests.nats_cluster import NatsCluster, NatsServer
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
from tests.test_nats import (
    CONVERGE_S,
    FAST_STATUS,
    SCHEMA,
    describe,
    fleet_name,
    fleet_of,
    nats_node,
    site_id,
)

SMALL_PAYLOAD_BYTES = 4_096  # the test server's max_payload: bodies above it travel in parts


def nats_args(servers: NatsCluster, fleet: str) -> list[str]:
    return [*(arg for url in servers.urls for arg in ("--nats", url)), "--cluster", fleet]


def verify_cli(
    command: str, db: Path, servers: NatsCluster, fleet: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(command, str(db), *nats_args(servers, fleet), *args, check=False)


def wait_known(node: NodeProcess, others: set[str], cluster: Cluster, servers: NatsCluster) -> None:
    """Until `node`'s fleet lists `others`: who it admits as askers over the fleet."""
    wait_for(
        lambda: others <= {site["site_id"] for site in fleet_of(node)["sites"]},
        CONVERGE_S,
        f"{node.name}'s fleet to know {sorted(others)}",
        describe(cluster, servers),
    )


@pytest.mark.multiprocess
def test_fleet_sites_verify_and_repair_over_nats(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a site reachable only through the fleet is verified and repaired from the CLI.

    Method: two `serve --nats` sites converge; `verify --site` over NATS
    says identical (exit 0); a row vanishes from b behind the engine's
    back (user row and shadow row, with capture off, in one transaction),
    so no stream will ever bring it back; `verify --deep` names it (exit
    1), `repair --deep` pushes it to b, verify again exit 0 and b's file
    has the row.
    `--all` gives one report per site.  With b stopped, verify names the
    site and its subject and exits 2.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-1', 'from a', 1), ('a-2', 'two', 2)")
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('b-1', 'from b', 3)")
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 3,
        describe=describe(cluster, nats_cluster),
    )
    site_a, site_b = site_id(a), site_id(b)
    wait_known(b, {site_a}, cluster, nats_cluster)

    same = verify_cli("verify", a.db, nats_cluster, fleet, "--site", site_b, "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    report = json.loads(same.stdout)["sites"][site_b]
    assert report["identical"] is True
    assert report["peer_site"] == site_b
    assert report["round_trips"] == 1

    sqlite3_shell(
        b.db,
        "BEGIN; UPDATE _syncmesh_state SET applying = 1;"
        " DELETE FROM items WHERE id = 'a-2';"
        " DELETE FROM _syncmesh_shadow_items WHERE k0 = 'a-2';"
        " UPDATE _syncmesh_state SET applying = 0; COMMIT;",
    )
    # The running node's hash trees did not see it: --deep reads both tables.
    differ = verify_cli(
        "verify", a.db, nats_cluster, fleet, "--site", site_b, "--deep", "--settle", "0.1"
    )
    assert differ.returncode == 1, differ.stdout + differ.stderr
    assert "1 rows differ" in differ.stdout
    assert "'a-2'" in differ.stdout
    assert f"fleet '{fleet}' over NATS" in differ.stdout

    fixed = verify_cli("repair", a.db, nats_cluster, fleet, "--site", site_b, "--deep", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    repaired = json.loads(fixed.stdout)["sites"][site_b]
    assert repaired["pushed_rows"] == 1
    assert repaired["identical"] is True
    assert query(b.db, "SELECT name FROM items WHERE id = 'a-2'") == [("two",)]
    again = verify_cli("verify", a.db, nats_cluster, fleet, "--all")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("identical") == 1
    assert site_b in again.stdout

    b.stop()
    down = verify_cli("verify", a.db, nats_cluster, fleet, "--site", site_b)
    assert down.returncode == 2
    assert f"syncmesh.{fleet}.verify.{site_b}" in down.stderr
    assert f"site {site_b} is not running" in down.stderr


@pytest.mark.multiprocess
def _fleet_with_a_row_gone_at_b(
    cluster: Cluster, nats_cluster: NatsCluster, **a_env: str
) -> tuple[str, NodeProcess, NodeProcess, NodeProcess]:
    """The fleet's name, and a, b and c on it (each writes, so each knows the others from the
    stream), a verifying one site every 0.3 s (the one verified longest ago).
    They converge; b stops, a row vanishes from b's file behind the engine's
    back (user row and shadow row), b starts again (its hash trees are read
    from the file): no stream will ever bring the row back."""
    fleet = fleet_name()
    every = {
        **FAST_STATUS,
        "SYNCMESH_SYNC_VERIFY_INTERVAL_S": "0.3",
        "SYNCMESH_SYNC_VERIFY_SETTLE_S": "0.05",
        **a_env,
    }
    a = cluster.node(
        "a",
        make_db(cluster.directory / "a.db", SCHEMA),
        extra_args=tuple(nats_args(nats_cluster, fleet)),
        env=every,
    )
    b, c = (nats_node(cluster, name, nats_cluster, fleet) for name in "bc")
    cluster.start(a, b, c)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-1', 'from a', 1), ('a-2', 'two', 2)")
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('b-1', 'from b', 4)")
    sqlite3_shell(c.db, "INSERT INTO items VALUES ('c-1', 'from c', 3)")
    _four_rows_everywhere(cluster, nats_cluster, a, b, c)
    b.stop()
    sqlite3_shell(
        b.db,
        "BEGIN; UPDATE _syncmesh_state SET applying = 1;"
        " DELETE FROM items WHERE id = 'a-2';"
        " DELETE FROM _syncmesh_shadow_items WHERE k0 = 'a-2';"
        " UPDATE _syncmesh_state SET applying = 0; COMMIT;",
    )
    cluster.start(b)
    return fleet, a, b, c


def _four_rows_everywhere(cluster: Cluster, nats_cluster: NatsCluster, *nodes: NodeProcess) -> None:
    wait_converged(
        [node.db for node in nodes],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 4,
        describe=describe(cluster, nats_cluster),
    )


def _fleet_site(node: NodeProcess, site: str) -> dict[str, Any]:
    listed = [entry for entry in fleet_of(node)["sites"] if entry["site_id"] == site]
    return listed[0] if listed else {}


def _verified(node: NodeProcess, site: str, **expected: object) -> bool:
    entry = _fleet_site(node, site)
    return bool(entry.get("verified_ms")) and all(
        entry[key] == value for key, value in expected.items()
    )


@pytest.mark.multiprocess
def test_a_node_verifies_its_fleet_sites_in_turn_and_shows_a_divergence(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: the periodic verify covers fleet sites, and status, /metrics and the
    command line show what it found; with `sync.verify_repair = false` it only
    reports, and `syncmesh repair --site` merges.

    Method: a row vanishes from b's file behind the engine's back
    (`_fleet_with_a_row_gone_at_b`).  a's status must show b with 1
    divergent row and c identical, its /metrics the fleet site gauges,
    `syncmesh status` the line; the row stays missing at b (nothing
    repaired); after `syncmesh repair --site b` the next round says b is
    identical.
    """
    fleet, a, b, c = _fleet_with_a_row_gone_at_b(
        cluster, nats_cluster, SYNCMESH_SYNC_VERIFY_REPAIR="false"
    )
    site_b, site_c = site_id(b), site_id(c)
    wait_for(
        lambda: (
            _verified(a, site_b, verify_identical=False, verify_divergent_rows=1)
            and _verified(a, site_c, verify_identical=True)
        ),
        CONVERGE_S,
        "a's periodic verify to find b's missing row and c identical",
        describe(cluster, nats_cluster),
    )
    assert _fleet_site(a, site_b)["verify_error"] == ""
    assert _fleet_site(a, site_b)["verify_repaired_rows_total"] == 0
    assert query(b.db, "SELECT name FROM items WHERE id = 'a-2'") == []
    metrics = a.open_url("/metrics", 5.0).read().decode()
    assert re.search(
        rf'syncmesh_fleet_site_verify_divergent_rows{{[^}}]*site="{site_b}"[^}}]*}} 1\.0', metrics
    ), metrics
    assert re.search(
        rf'syncmesh_fleet_site_verify_identical{{[^}}]*site="{site_c}"[^}}]*}} 1\.0', metrics
    ), metrics
    shown = run_cli("status", "--url", a.url, check=False)
    assert f"verified against {site_b}" in shown.stdout, shown.stdout
    assert "1 rows differ" in shown.stdout, shown.stdout

    fixed = verify_cli("repair", a.db, nats_cluster, fleet, "--site", site_b)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert query(b.db, "SELECT name FROM items WHERE id = 'a-2'") == [("two",)]
    wait_for(
        lambda: _verified(a, site_b, verify_identical=True, verify_divergent_rows=0),
        CONVERGE_S,
        "a's next verify of b to say identical",
        describe(cluster, nats_cluster),
    )


@pytest.mark.multiprocess
def test_the_periodic_verify_of_a_fleet_site_repairs_what_no_stream_brings(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: anti-entropy over the fleet: a row no stream will ever bring back is
    merged by the periodic verify (`sync.verify_repair`, on by default), once
    each side holds what the other held (nothing in flight), and status says so.

    Method: a row vanishes from b's file behind the engine's back
    (`_fleet_with_a_row_gone_at_b`); a, verifying every 0.3 s with the
    defaults, must put it back at b by itself, count it in
    `verify_repaired_rows_total` and in /metrics, and its next verify of b
    must say identical.  Every site ends with the same rows.
    """
    _fleet, a, b, c = _fleet_with_a_row_gone_at_b(cluster, nats_cluster)
    site_b = site_id(b)
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'a-2'") == [("two",)],
        CONVERGE_S,
        "a's periodic verify to put a-2 back at b",
        describe(cluster, nats_cluster),
    )
    wait_for(
        lambda: (
            _verified(a, site_b, verify_identical=True)
            and _fleet_site(a, site_b)["verify_repaired_rows_total"] >= 1
        ),
        CONVERGE_S,
        "a's status to count the repaired row and its next verify of b to say identical",
        describe(cluster, nats_cluster),
    )
    assert _fleet_site(a, site_b)["verify_waiting"] == ""
    metrics = a.open_url("/metrics", 5.0).read().decode()
    assert re.search(r"syncmesh_fleet_site_verify_repaired_rows_total\{[^}]*\} [1-9]", metrics), (
        metrics
    )
    assert "repaired: 0 of the peer's rows merged here, 1 of ours there" in a.log_text()
    _four_rows_everywhere(cluster, nats_cluster, a, b, c)


@pytest.mark.multiprocess
def test_bad_fleet_input_is_one_line_and_exit_2(
    cluster: Cluster, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Goal: an unknown site, no fleet settings or no server: one clear line each, exit 2."""
    fleet = fleet_name()
    a = nats_node(cluster, "a", nats_cluster, fleet)
    cluster.start(a)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-1', 'x', 1)")
    wait_for(
        lambda: fleet_of(a)["published_messages"] >= 1,
        CONVERGE_S,
        "a to publish",
        describe(cluster, nats_cluster),
    )
    stranger = uuid.uuid4().hex
    unknown = verify_cli("verify", a.db, nats_cluster, fleet, "--site", stranger)
    assert unknown.returncode == 2
    assert f"site {stranger} is not a site of fleet '{fleet}' (it knows none)" in unknown.stderr

    no_fleet = run_cli("verify", str(a.db), "--site", stranger, check=False)
    assert no_fleet.returncode == 2
    assert "no fleet: give --nats URL" in no_fleet.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text('[node]\nlisten = "127.0.0.1:0"\n', encoding="utf-8")
    no_servers = run_cli("verify", str(a.db), "--config", str(plain), "--all", check=False)
    assert no_servers.returncode == 2
    assert f"{plain} has no [transport.nats] servers" in no_servers.stderr
    neither = run_cli("verify", str(a.db), "--nats", nats_cluster.urls[0], check=False)
    assert neither.returncode == 2
    assert "give --site SITE_ID (one or more) or --all" in neither.stderr
    not_an_id = verify_cli("verify", a.db, nats_cluster, fleet, "--site", "shop12")
    assert not_an_id.returncode == 2
    assert "--site 'shop12' is not a site id" in not_an_id.stderr

    nobody = f"nats://{HOST}:{free_port()}"
    down = run_cli("verify", str(a.db), "--nats", nobody, "--all", check=False)
    assert down.returncode == 2
    assert f"{nobody}: cannot connect" in down.stderr
    for result in (unknown, no_fleet, no_servers, neither, not_an_id, down):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.multiprocess
def test_table_rights_and_who_asks_keep_their_meaning_over_nats(
    cluster: Cluster, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Goal: over NATS, as over HTTP, an asker learns only the tables it may read.

    Method: b's configuration gives site a (`[peers.<a's site id>]`) only
    `items`; both track `secrets` too.  a's verify lists `secrets` as not
    shared (exit 1) and `--table items` is identical; a fetch of `secrets`
    is refused by name.  A site id the fleet does not know is refused
    (403), and a request whose reply subject is not in the claimed site's
    inbox is refused before it is read.
    """
    fleet = fleet_name()
    tables = [
        "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)",
        "CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT)",
    ]
    a_db = make_db(cluster.directory / "a.db", tables)
    b_db = make_db(cluster.directory / "b.db", tables)
    site_a = str(query(a_db, "SELECT site_id FROM _syncmesh_sites WHERE ordinal = 0")[0][0])
    config = tmp_path / "b.toml"
    config.write_text(f'[peers.{site_a}]\nreceive = ["items"]\n', encoding="utf-8")
    a = cluster.node("a", a_db, extra_args=nats_args(nats_cluster, fleet))
    b = cluster.node(
        "b", b_db, extra_args=(*nats_args(nats_cluster, fleet), "--config", str(config))
    )
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-1', 'x', 1)")
    sqlite3_shell(
        b.db, "INSERT INTO items VALUES ('b-1', 'y', 2); INSERT INTO secrets VALUES ('s', 'z')"
    )
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 2,
        describe=describe(cluster, nats_cluster),
    )
    site_b = site_id(b)
    wait_known(b, {site_a}, cluster, nats_cluster)

    everything = verify_cli("verify", a.db, nats_cluster, fleet, "--site", site_b, "--json")
    assert everything.returncode == 1, everything.stdout + everything.stderr
    report = json.loads(everything.stdout)["sites"][site_b]
    assert report["not_shared"] == ["secrets"]
    assert report["divergent_rows"] == 0
    items = verify_cli("verify", a.db, nats_cluster, fleet, "--site", site_b, "--table", "items")
    assert items.returncode == 0, items.stdout + items.stderr

    async def ask(own_site: str, request: VerifyRequest) -> tuple[int, bytes]:
        async with NatsVerifyConnection(tuple(nats_cluster.urls), fleet, own_site) as connection:
            return await connection.exchange(site_b).post(encode_request(request))

    status, body = asyncio.run(ask(site_a, FetchRequest({"secrets": [("s",)]})))
    assert (status, refusal_detail(body)) == (400, "table 'secrets' is not shared with you here")
    stranger = uuid.uuid4().hex
    status, body = asyncio.run(ask(stranger, RootsRequest({"items": 0}, False, "")))
    assert status == 403
    assert f"site {stranger} is not a site this node knows on the fleet" in body.decode()

    async def forged() -> tuple[str, str]:
        client = await nats.connect(servers=nats_cluster.urls)
        try:
            reply = inbox_prefix(fleet, "elsewhere") + uuid.uuid4().hex
            answers: asyncio.Queue[Msg] = asyncio.Queue()
            await client.subscribe(reply, cb=answers.put)
            await client.publish(
                verify_subject(fleet, site_b),
                b"",
                reply=reply,
                headers={HEADER_SITE: site_a, HEADER_PART: "1/1"},
            )
            msg = await asyncio.wait_for(answers.get(), CONVERGE_S)
            return (msg.headers or {}).get(HEADER_STATUS, ""), msg.data.decode()
        finally:
            await client.close()

    status_text, text = asyncio.run(forged())
    assert status_text == "400"
    assert f"the reply subject is not in the inbox of site {site_a}" in text


# -- the transport alone, on one nats-server with a small max_payload ----------------------


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    server = NatsServer("small", tmp_path / "small", free_port(), free_port())
    server.directory.mkdir(parents=True)
    config = server.directory / "server.conf"
    config.write_text(
        f'listen: "{HOST}:{server.client_port}"\nmax_payload: {SMALL_PAYLOAD_BYTES}\n',
        encoding="utf-8",
    )
    server.start(config)
    try:
        wait_for(lambda: _answers(server.url), CONVERGE_S, "the small nats-server")
        yield server.url
    finally:
        server.stop()


def _answers(url: str) -> bool:
    async def probe() -> None:
        client = await nats.connect(servers=[url], connect_timeout=1, allow_reconnect=False)
        await client.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


class _Host:
    """A VerifyHost that answers each body with `answer(body)`, after `delay_s`."""

    def __init__(self, answer: Callable[[bytes], bytes], delay_s: float = 0.0) -> None:
        self._answer = answer
        self._delay_s = delay_s
        self.askers: list[str | None] = []

    async def answer_verify(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | VerifyAnswer:
        self.askers.append(peer.site)
        body = await read_body()
        await asyncio.sleep(self._delay_s)
        return VerifyAnswer(True, self._answer(body))


async def _round_trip(url: str, host: _Host, body: bytes, timeout_s: float) -> tuple[int, bytes]:
    asker, answerer = uuid.uuid4().hex, uuid.uuid4().hex
    responder = NatsVerifyResponder((url,), "parts", frame_bytes_max=1 << 20)
    await responder.serve(answerer, host)
    try:
        async with NatsVerifyConnection(
            (url,), "parts", asker, answer_timeout_s=timeout_s
        ) as connection:
            return await connection.exchange(answerer).post(body)
    finally:
        await responder.close()


def test_requests_and_answers_larger_than_max_payload_travel_in_parts(small_server: str) -> None:
    """Goal: a big table's request or answer does not fail on the server's max_payload."""
    body = bytes(range(256)) * 40  # 10,240 bytes: three parts of a 4 KiB payload
    host = _Host(lambda asked: asked[::-1] * 5)  # 51,200 bytes back: thirteen parts
    status, answer = asyncio.run(_round_trip(small_server, host, body, CONVERGE_S))
    assert status == 200
    assert answer == body[::-1] * 5
    assert len(host.askers) == 1


def test_a_request_nobody_answers_in_time_names_the_site_and_subject(small_server: str) -> None:
    host = _Host(lambda asked: asked, delay_s=5.0)
    with pytest.raises(UnreachableError, match=r"did not answer on syncmesh\.parts\.verify\."):
        asyncio.run(_round_trip(small_server, host, b"roots", 0.5))


def test_a_verify_client_over_nats_names_the_site_it_could_not_reach(small_server: str) -> None:
    async def attempt() -> None:
        async with NatsVerifyConnection((small_server,), "parts", uuid.uuid4().hex) as connection:
            absent = uuid.uuid4().hex
            async with VerifyClient(connection.exchange(absent)) as client:
                await client.call(RootsRequest({}, False, "x"))

    with pytest.raises(SyncError, match=r"not running, or not on this fleet"):
        asyncio.run(attempt())


def test_an_unreachable_server_is_a_fleet_error() -> None:
    nobody = f"nats://{HOST}:{free_port()}"

    async def attempt() -> None:
        async with NatsVerifyConnection((nobody,), "parts", uuid.uuid4().hex):
            pass

    with pytest.raises(FleetError, match="cannot connect"):
        asyncio.run(attempt())


def test_rights_without_tls_are_taken_only_for_a_fleet_site_by_its_id() -> None:
    """Without TLS a peer's name is a claim; a fleet site's id is backed by its NATS user."""
    fleet = FleetConfig(servers=("nats://127.0.0.1:4222",))
    site = uuid.uuid4().hex
    items_only = frozenset({"items"})

    def config(name: str, on_fleet: bool, url: str = "") -> NodeConfig:
        return NodeConfig(
            database_path="app.db",
            fleet=fleet if on_fleet else None,
            peers=(PeerConfig(name=name, url=url, receive=items_only),),
        )

    assert config(site, on_fleet=True).check_exposure() == []
    for refused in (
        config(site, on_fleet=False),
        config("shop12", on_fleet=True),
        config(site, on_fleet=True, url="http://127.0.0.1:7402"),
    ):
        with pytest.raises(ConfigError, match="per-peer rights"):
            refused.check_exposure()


# -- the permissions docs/nats.md documents for verify, on a real server --------------------

SITE_A, SITE_B = "a" * 32, "b" * 32


def _site_user(name: str, site: str) -> str:
    """A site's NATS user with the verify lines of docs/nats.md's permissions (cluster `shops`)."""
    return (
        f"{{ user: {name}, password: {name}-secret, permissions: {{\n"
        '  publish: { allow: ["syncmesh.shops.verify.*"] }\n'
        f'  subscribe: {{ allow: ["_INBOX.>", "syncmesh.shops.verify.{site}",'
        f' "syncmesh.shops.inbox.{site}.>"] }}\n'
        "  allow_responses: { max: 1000 }\n"
        "} }\n"
    )


@pytest.fixture
def permissioned_server(tmp_path: Path) -> Iterator[str]:
    """One nats-server with two site users and a small max_payload; yields its host:port."""
    server = NatsServer("permissions", tmp_path / "permissions", free_port(), free_port())
    server.directory.mkdir(parents=True)
    config = server.directory / "server.conf"
    config.write_text(
        f'listen: "{HOST}:{server.client_port}"\nmax_payload: {SMALL_PAYLOAD_BYTES}\n'
        "accounts { SYNCMESH { users: [\n"
        + _site_user("sitea", SITE_A)
        + _site_user("siteb", SITE_B)
        + "] } }\n",
        encoding="utf-8",
    )
    server.start(config)
    address = f"{HOST}:{server.client_port}"
    try:
        wait_for(
            lambda: _answers(f"nats://sitea:sitea-secret@{address}"),
            CONVERGE_S,
            "the nats-server with permissions",
        )
        yield address
    finally:
        server.stop()


def test_the_documented_permissions_let_a_site_verify_another_in_parts(
    permissioned_server: str,
) -> None:
    """Goal: docs/nats.md's permissions carry a multi-part answer and stop an impostor.

    Method: b's node answers as user siteb; user sitea asks as site a and
    gets a 51,200-byte answer in parts through `allow_responses`; user
    sitea claiming site b's id cannot read b's inbox, and is told so at
    once (not after a timeout).
    """
    as_a = f"nats://sitea:sitea-secret@{permissioned_server}"
    as_b = f"nats://siteb:siteb-secret@{permissioned_server}"
    host = _Host(lambda asked: asked[::-1] * 5)
    body = bytes(range(256)) * 40

    async def run() -> tuple[int, bytes, str]:
        responder = NatsVerifyResponder((as_b,), "shops", frame_bytes_max=1 << 20)
        await responder.serve(SITE_B, host)
        try:
            async with NatsVerifyConnection((as_a,), "shops", SITE_A) as connection:
                status, answer = await connection.exchange(SITE_B).post(body)
            async with NatsVerifyConnection(
                (as_a,), "shops", SITE_B, answer_timeout_s=CONVERGE_S
            ) as impostor:
                try:
                    await impostor.exchange(SITE_B).post(body)
                except UnreachableError as exc:
                    return status, answer, str(exc)
                return status, answer, "answered"
        finally:
            await responder.close()

    status, answer, impostor = asyncio.run(run())
    assert (status, answer) == (200, body[::-1] * 5)
    assert host.askers == [SITE_A]
    assert f"does not let this user read the inbox of site {SITE_B}" in impostor


@pytest.mark.multiprocess
def test_the_periodic_verify_waits_for_a_fleet_site_still_catching_up(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: rows in flight on the stream are no divergence: while a fleet site
    still applies a backlog, the verify gives no verdict that rows differ (the
    rows are the stream's to deliver) and repairs none, and its status says the
    verify waits.

    Method: a (verifying every 0.2 s, re-reading differences after 0.02 s,
    so that the backlog's rows hold still through the re-reads) and b on one
    fleet; b stops, a inserts 20,000 rows, b starts and reads them from the
    stream.  Until b holds them all, a's status is polled: no verdict given
    after b's restart may say that rows differ, no row may be repaired, and
    at least once the verify of b must wait for b to catch up (without the
    per-origin gate, the rows b had not applied yet were reported as
    divergent and pushed to it as a repair).  Both end with the same rows,
    and the first verdict after it says identical.
    """
    fleet = fleet_name()
    a = cluster.node(
        "a",
        make_db(cluster.directory / "a.db", SCHEMA),
        extra_args=tuple(nats_args(nats_cluster, fleet)),
        env={
            **FAST_STATUS,
            "SYNCMESH_SYNC_VERIFY_INTERVAL_S": "0.2",
            "SYNCMESH_SYNC_VERIFY_SETTLE_S": "0.02",
        },
    )
    b = nats_node(cluster, "b", nats_cluster, fleet)
    cluster.start(a, b)
    sqlite3_shell(b.db, "INSERT INTO items VALUES ('b-1', 'from b', 1)")
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('a-0', 'from a', 0)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 2)
    site_b = site_id(b)
    wait_for(
        lambda: _verified(a, site_b, verify_identical=True),
        CONVERGE_S,
        "a's first verify of b to say identical",
        describe(cluster, nats_cluster),
    )
    verdict_before = _fleet_site(a, site_b)["verified_ms"]
    b.stop()
    sqlite3_shell(
        a.db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
        " INSERT INTO items SELECT 'bulk-' || i, 'row ' || i, i FROM n;",
    )
    cluster.start(b)
    waits_seen: set[str] = set()

    def b_has_everything() -> bool:
        entry = _fleet_site(a, site_b)
        assert entry.get("verify_repaired_rows_total", 0) == 0, entry
        if entry.get("verified_ms", 0) > verdict_before:
            assert entry["verify_identical"] is not False, entry
            assert entry["verify_divergent_rows"] == 0, entry
        if entry.get("verify_waiting"):
            waits_seen.add(entry["verify_waiting"])
        return query(b.db, "SELECT count(*) FROM items") == [(20_002,)]

    wait_for(b_has_everything, 3 * CONVERGE_S, "b to read a's 20,000 rows from the stream")
    assert any("the site still lacks writes this node held" in seen for seen in waits_seen), (
        waits_seen
    )
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 20_002)
    wait_for(
        lambda: (
            _verified(a, site_b, verify_identical=True)
            and _fleet_site(a, site_b)["verified_ms"] > verdict_before
        ),
        CONVERGE_S,
        "a's first verify of b after the backlog to say identical",
        describe(cluster, nats_cluster),
    )
