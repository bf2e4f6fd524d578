"""Tombstone collection on a NATS fleet (issues 15 and 16, docs/adr/0017-fleet-claims.md).

Real `syncmesh serve --nats` processes on the module's real 3-server
JetStream cluster (tests/nats_cluster.py), all on 127.0.0.1; writes and
every look at the files go through the sqlite3 shell.  Fleet sites send no
vectors: each puts a claim of what it holds on the state stream, and a
node counts a claim once it applied the claimant's chain as far as the
claim says.  Collection rounds run every 0.3 s here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from syncmesh.clock import pack
from syncmesh.model import Cell, ChangeBatch, RowChange, RowState, Stamp
from syncmesh.protocol import Batch, encode
from tests.nats_cluster import NatsCluster
from tests.nodeproc import Cluster, NodeProcess, make_db, run_cli, wait_converged, wait_for
from tests.test_lifecycle_multiprocess import ids, shell, tombstones
from tests.test_nats import (
    FAST_STATUS,
    SCHEMA,
    describe,
    fleet_name,
    make_small_stream,
    publish_one_by_one,
    site_id,
)

pytestmark = pytest.mark.multiprocess

FAST = {**FAST_STATUS, "SYNCMESH_LIFECYCLE_INTERVAL_S": "0.3"}
TIMEOUT_S = 45.0


def fleet_node(
    cluster: Cluster,
    name: str,
    servers: NatsCluster,
    fleet: str,
    *,
    peers: list[NodeProcess] | None = None,
) -> NodeProcess:
    db = make_db(cluster.directory / f"{name}.db", SCHEMA)
    nats_args = [arg for url in servers.urls for arg in ("--nats", url)]
    return cluster.node(
        name, db, extra_args=(*nats_args, "--cluster", fleet), env=FAST, peers=peers or []
    )


def lifecycle(node: NodeProcess) -> dict[str, Any]:
    found = node.status()["lifecycle"]
    assert isinstance(found, dict)
    return found


def store_lifecycle(node: NodeProcess) -> dict[str, Any]:
    found = node.status()["store"]["lifecycle"]
    assert isinstance(found, dict)
    return found


def stale_dropped(path: Path) -> int:
    return int(shell(path, "SELECT stale_dropped FROM _syncmesh_lifecycle"))


def wait_rounds(node: NodeProcess, rounds: int) -> None:
    start = lifecycle(node)["rounds"]
    wait_for(
        lambda: lifecycle(node)["rounds"] >= start + rounds,
        TIMEOUT_S,
        f"{rounds} more collection rounds at {node.name}",
    )


def test_a_fleet_collects_a_delete_once_every_site_holds_it_and_an_offline_site_holds_back(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: fleet sites collect tombstones on causal stability, as WebSocket meshes do.

    Method: three fleet sites, no WebSocket peer.  A delete made while all
    three run is collected at all three (each publishes a claim).  Then c
    stops: a delete made now must stay at a and b (c's last claim predates
    it) while rounds go by, with status naming c; `syncmesh forget` of c on
    a's file reaches b through a's claim, and both collect.
    """
    fleet = fleet_name()
    a, b, c = (fleet_node(cluster, name, nats_cluster, fleet) for name in "abc")
    cluster.start(a, b, c)
    nodes = [a, b, c]
    paths = [node.db for node in nodes]
    shell(a.db, "INSERT INTO items VALUES ('k1', 'one', 1), ('k2', 'two', 2), ('k3', 'three', 3)")
    wait_converged(
        paths,
        "items",
        TIMEOUT_S,
        check=lambda rows: len(rows) == 3,
        describe=describe(cluster, nats_cluster),
    )
    shell(b.db, "DELETE FROM items WHERE id = 'k3'")
    wait_for(
        lambda: all(ids(path) == "k1,k2" and tombstones(path) == 0 for path in paths),
        TIMEOUT_S,
        "the tombstone of k3 collected at every site",
        describe(cluster, nats_cluster),
    )
    for node in nodes:
        assert lifecycle(node)["collected"] >= 1, lifecycle(node)
        assert node.status()["fleet"]["claims_published"] >= 1
    with a.open_url("/metrics", timeout_s=5) as response:
        metrics = response.read().decode()
    assert f'syncmesh_fleet_claims_published_total{{stream="SYNCMESH_{fleet.upper()}"}}' in metrics

    c_site = site_id(c)
    c.stop()
    shell(b.db, "DELETE FROM items WHERE id = 'k1'")
    wait_for(lambda: ids(a.db) == "k2", TIMEOUT_S, "the delete of k1 at a")
    wait_rounds(a, 5)
    wait_rounds(b, 2)
    assert tombstones(a.db) == 1, "c does not hold the delete of k1: a keeps its tombstone"
    assert tombstones(b.db) == 1
    assert c_site in lifecycle(a)["held_back"], lifecycle(a)
    assert store_lifecycle(a)["tombstones_waiting"] == 1
    shown = run_cli("status", str(a.db), check=False).stdout
    assert "fleet collection" in shown
    assert c_site in shown

    result = run_cli("forget", str(a.db), c_site)
    assert f"site {c_site} forgotten" in result.stdout
    wait_for(
        lambda: tombstones(a.db) == 0 and tombstones(b.db) == 0,
        TIMEOUT_S,
        "the tombstone of k1 collected at a and b after the forget",
        describe(cluster, nats_cluster),
    )
    assert c_site in store_lifecycle(b)["forgotten"], "b learned the forget from a's claim"
    assert ids(a.db) == "k2"
    assert ids(b.db) == "k2"


def test_a_stale_copy_from_the_state_stream_does_not_bring_a_collected_row_back(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: no resurrection when an old state-stream copy arrives after the collection.

    The state stream keeps each site's latest copy of each of its *own*
    rows: a's insert of k1 stays there as a live copy after b deleted k1
    (the tombstone is b's, so a publishes nothing new of the row).  Method:
    a small changes stream (4 messages); a inserts k1, b deletes it, both
    collect the tombstone.  b stops; a publishes 6 more messages, so the
    stream drops a's messages past b's position: b restarts with a gap and
    bootstraps a's rows from the state stream, stale k1 copy included.  The
    copy must be dropped (rule 1: its causal length was stamped below b's
    horizon, which the fleet's collection ceiling keeps above every life a
    collected delete ended), counted in `stale_dropped`, and k1 stay gone
    at both sites.
    """
    fleet = fleet_name()
    asyncio.run(make_small_stream(nats_cluster, fleet, messages_max=4))
    a, b = (fleet_node(cluster, name, nats_cluster, fleet) for name in "ab")
    cluster.start(a, b)
    shell(a.db, "INSERT INTO items VALUES ('k1', 'from a', 1)")
    wait_for(lambda: ids(b.db) == "k1", TIMEOUT_S, "a's insert at b")
    shell(b.db, "DELETE FROM items WHERE id = 'k1'")
    wait_for(
        lambda: all(ids(p) == "" and tombstones(p) == 0 for p in (a.db, b.db)),
        TIMEOUT_S,
        "the tombstone of k1 collected at a and b",
        describe(cluster, nats_cluster),
    )
    assert stale_dropped(b.db) == 0
    b.stop()
    publish_one_by_one(
        cluster,
        nats_cluster,
        a,
        [f"INSERT INTO items VALUES ('n{index}', 'later', {index})" for index in range(6)],
    )
    b.start().wait_until_ready()
    wait_for(
        lambda: b.status()["fleet"]["bootstraps"] >= 1,
        TIMEOUT_S,
        "b to close its gap from the state stream",
        describe(cluster, nats_cluster),
    )
    wait_converged(
        [a.db, b.db],
        "items",
        TIMEOUT_S,
        check=lambda rows: len(rows) == 6,
        describe=describe(cluster, nats_cluster),
    )
    assert "k1" not in ids(b.db).split(",")
    assert stale_dropped(b.db) >= 1, "the stale copy of k1 reached b and was dropped"
    wait_rounds(a, 2)
    assert "k1" not in ids(a.db).split(",")


def test_a_fleet_node_with_a_websocket_peer_collects_with_it_and_waits_for_a_replica(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a node on the fleet and on WebSocket collects only what all its members hold.

    Method: m and f are fleet sites and m also dials f over WebSocket (a
    fleet site in session speaks for itself twice: its session's vector and
    its claim count together); a delete at f is collected at both.  Then a
    local replica r, WebSocket only, dials m: r's vector cannot say what it
    holds of the fleet's sites (the stream carries no vector, docs/adr/0017),
    so a delete at f is not collected at m and m's status names r; after
    `syncmesh forget r` at m it is.  No deleted row comes back anywhere.
    """
    fleet = fleet_name()
    f = fleet_node(cluster, "f", nats_cluster, fleet)
    cluster.start(f)
    m = fleet_node(cluster, "m", nats_cluster, fleet, peers=[f])
    cluster.start(m)
    shell(f.db, "INSERT INTO items VALUES ('k1', 'one', 1), ('k2', 'two', 2), ('k3', 'three', 3)")
    wait_converged([f.db, m.db], "items", TIMEOUT_S, check=lambda rows: len(rows) == 3)
    shell(f.db, "DELETE FROM items WHERE id = 'k3'")
    wait_for(
        lambda: all(ids(p) == "k1,k2" and tombstones(p) == 0 for p in (f.db, m.db)),
        TIMEOUT_S,
        "the tombstone of k3 collected at f and m",
        describe(cluster, nats_cluster),
    )

    r_db = make_db(cluster.directory / "r.db", SCHEMA)
    r = cluster.node("r", r_db, peers=[m], env=FAST)
    cluster.start(r)
    wait_for(lambda: ids(r.db) == "k1,k2", TIMEOUT_S, "r to sync with m")
    r_site = r.status()["site_id"]
    shell(f.db, "DELETE FROM items WHERE id = 'k1'")
    wait_for(
        lambda: ids(m.db) == "k2" and ids(r.db) == "k2", TIMEOUT_S, "the delete of k1 at m and r"
    )
    wait_rounds(m, 5)
    assert tombstones(m.db) == 1, "r cannot say it holds f's delete: m keeps the tombstone"
    assert r_site in lifecycle(m)["held_back"], lifecycle(m)
    result = run_cli("forget", str(m.db), r_site)
    assert f"site {r_site} forgotten" in result.stdout
    wait_for(
        lambda: tombstones(m.db) == 0 and tombstones(f.db) == 0,
        TIMEOUT_S,
        "the tombstone of k1 collected at m after forgetting r",
        describe(cluster, nats_cluster),
    )
    for path in (f.db, m.db):
        assert ids(path) == "k2"


async def _publish_as(
    servers: NatsCluster, subject: str, body: bytes, headers: dict[str, str]
) -> None:
    client = await nats.connect(servers=servers.urls)
    try:
        await client.jetstream().publish(subject, body, headers=headers)
    finally:
        await client.close()


def _message_of(site: str, incarnation: str, from_seq: int, to_seq: int, key: str) -> bytes:
    """A BATCH of one row that `site` inserted, as its publish loop would put it."""
    stamp = Stamp(pack(int(time.time() * 1000), 0), site)
    row = RowChange("items", (key,), RowState(1, stamp, {"name": Cell(f"from {site}", stamp)}))
    batch = ChangeBatch.of_rows(
        incarnation, from_seq, to_seq, to_seq, None, [row], {"items": ("name", "qty")}
    )
    return encode(Batch(batch))


def test_a_claim_that_overtakes_the_batches_it_follows_waits_for_them(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a site's claim counts only once its batches before it are applied here.

    A claim travels on the state stream, the batches on the changes stream:
    a node can read a site's claim before the batch the site published just
    before it.  Counted at once, the claim raises the node's horizon for
    that site's writes past a row still on its way, and rule 1 then drops
    that row as a collected one: a lost write.  Method: the test plays a
    fleet site M (raw publishes on its subjects): its first message (seq
    0..5) is applied at a; a inserts and deletes k1 (its tombstone waits
    for M).  The test publishes M's claim (it holds everything up to now,
    its chain up to seq 10), then, only after some rounds, M's message
    5..10 with a row z stamped before the claim.  Until that message is
    applied a must not collect (status says why); then it collects, and z
    is at a.
    """
    fleet = fleet_name()
    a = fleet_node(cluster, "a", nats_cluster, fleet)
    cluster.start(a)
    wait_for(
        lambda: a.status()["fleet"]["state"] == "streaming",
        TIMEOUT_S,
        "a streaming (the streams made)",
    )
    m_site, incarnation = uuid.uuid4().hex, uuid.uuid4().hex
    changes = f"syncmesh.{fleet}.changes.{m_site}"
    headers = {"Syncmesh-Site": m_site, "Syncmesh-Incarnation": incarnation}
    asyncio.run(
        _publish_as(
            nats_cluster, changes, _message_of(m_site, incarnation, 0, 5, "m0"), {**headers}
        )
    )
    wait_for(lambda: ids(a.db) == "m0", TIMEOUT_S, "M's first message at a")
    shell(a.db, "INSERT INTO items VALUES ('k1', 'one', 1)")
    shell(a.db, "DELETE FROM items WHERE id = 'k1'")
    late_row = _message_of(m_site, incarnation, 5, 10, "z")  # stamped now: before the claim
    time.sleep(0.01)
    now = pack(int(time.time() * 1000), 0)
    claim = {
        "published": 10,
        "held": {m_site: now, site_id(a): now},
        "gone": [],
        "cl_floor": 0,
        "horizon": {},
    }
    asyncio.run(
        _publish_as(
            nats_cluster,
            f"syncmesh.{fleet}.state.{m_site}.members",
            json.dumps(claim).encode(),
            headers,
        )
    )
    wait_for(
        lambda: "claims what it holds as of its seq 10" in lifecycle(a)["held_back"],
        TIMEOUT_S,
        "a to read M's claim and wait for M's chain",
        describe(cluster, nats_cluster),
    )
    wait_rounds(a, 5)
    assert tombstones(a.db) == 1, "M's claim must wait for M's message 5..10"
    asyncio.run(_publish_as(nats_cluster, changes, late_row, headers))
    wait_for(
        lambda: tombstones(a.db) == 0,
        TIMEOUT_S,
        "a to collect k1 once M's chain reached the claim",
        describe(cluster, nats_cluster),
    )
    assert ids(a.db) == "m0,z", "M's row z, stamped below its claim, was kept"
    assert stale_dropped(a.db) == 0


def test_a_site_on_the_stream_that_has_published_no_message_yet_holds_collection_back(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a fleet site counts as a member from its first step on the stream.

    A site's first step on the stream is its state marker; its first
    message can come much later (its connection lost before it published,
    as `syncmesh chaos --transport nats --seed 1 --only 1` met under load:
    n1's marker at 0.17 s, then 12 s cut off while writing).  A node that
    knew the fleet's sites only by their messages and by claims it lists now
    and then did not know such a site, took itself and the others for the
    whole fleet and collected deletes; the site's insert of a deleted key,
    made while cut off (a concurrent first insert, `cl` 1, stamped by a site
    with no horizon here), then came back alive at the collector, deleted
    everywhere else (a lost delete).  Method: a streams and has listed the
    claims; the test plays site N: its marker only.  a inserts and deletes
    k1: the tombstone must stay while rounds go by, status naming N.  N's
    first message (its own insert of k1) must lose to the tombstone; once
    N's claim says it holds a's writes, a collects and k1 stays deleted.
    """
    fleet = fleet_name()
    a = fleet_node(cluster, "a", nats_cluster, fleet)
    cluster.start(a)
    wait_for(lambda: a.status()["fleet"]["state"] == "streaming", TIMEOUT_S, "a streaming")
    wait_rounds(a, 2)  # a's first claim read, which lists the claims, is over
    n_site, incarnation = uuid.uuid4().hex, uuid.uuid4().hex
    headers = {"Syncmesh-Site": n_site, "Syncmesh-Incarnation": incarnation}
    asyncio.run(
        _publish_as(
            nats_cluster,
            f"syncmesh.{fleet}.state.{n_site}.complete",
            b"",
            {**headers, "Syncmesh-To": "0"},
        )
    )
    shell(a.db, "INSERT INTO items VALUES ('k1', 'one', 1)")
    shell(a.db, "DELETE FROM items WHERE id = 'k1'")
    wait_rounds(a, 6)
    assert tombstones(a.db) == 1, "N may hold k1 alive: a keeps its tombstone"
    held_back = lifecycle(a)["held_back"]
    assert f"fleet site {n_site} has put no claim on the stream" in held_back, held_back
    asyncio.run(
        _publish_as(
            nats_cluster,
            f"syncmesh.{fleet}.changes.{n_site}",
            _message_of(n_site, incarnation, 0, 5, "k1"),
            headers,
        )
    )
    wait_for(
        lambda: any(
            site["site_id"] == n_site and site["messages_applied"] >= 1
            for site in a.status()["fleet"]["sites"]
        ),
        TIMEOUT_S,
        "N's first message applied at a",
        describe(cluster, nats_cluster),
    )
    assert ids(a.db) == "", "N's insert of k1 lost to the tombstone"
    now = pack(int(time.time() * 1000), 0)
    claim = {
        "published": 5,
        "held": {n_site: now, site_id(a): now},
        "gone": [],
        "cl_floor": 0,
        "horizon": {},
    }
    asyncio.run(
        _publish_as(
            nats_cluster,
            f"syncmesh.{fleet}.state.{n_site}.members",
            json.dumps(claim).encode(),
            headers,
        )
    )
    wait_for(
        lambda: tombstones(a.db) == 0,
        TIMEOUT_S,
        "a to collect k1 once N's claim says it holds the delete",
        describe(cluster, nats_cluster),
    )
    wait_rounds(a, 2)
    assert ids(a.db) == ""


def test_collection_waits_for_the_lives_a_delete_ended_so_a_reread_stream_brings_none_back(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a fleet node collects a delete only once rule 1 covers every life it ended.

    The stream is read again from its start when a table is tracked (or
    the file was restored): old batches then arrive after a collection.
    Rule 1 drops such a row when its causal length was stamped at or below
    the horizon of its stamping site; per-origin stability alone (the
    deleter's writes held everywhere) would record a horizon for the
    inserter below its insert when some site is known to hold the
    inserter's writes only up to before that insert.  Method: the test
    plays fleet site I: its message (seq 0..5) inserts k1 at a; a deletes
    k1; I's claim says it holds all of a's writes, and its own only up to a
    stamp below the insert (a claim's mark is taken before the read, so a
    write captured in between is published above it: an honest claim).  a
    must keep the tombstone (status naming I), and after `syncmesh track`
    makes it read the stream again, k1 must still be deleted.  Once I's
    next claim covers the insert, a collects, and k1 stays deleted.
    """
    fleet = fleet_name()
    db = make_db(cluster.directory / "a.db", SCHEMA)
    shell(db, "CREATE TABLE extra (id TEXT PRIMARY KEY, v TEXT)")
    nats_args = [arg for url in nats_cluster.urls for arg in ("--nats", url)]
    a = cluster.node("a", db, extra_args=(*nats_args, "--cluster", fleet), env=FAST)
    cluster.start(a)
    wait_for(lambda: a.status()["fleet"]["state"] == "streaming", TIMEOUT_S, "a streaming")
    i_site, incarnation = uuid.uuid4().hex, uuid.uuid4().hex
    headers = {"Syncmesh-Site": i_site, "Syncmesh-Incarnation": incarnation}
    before_insert = pack(int(time.time() * 1000), 0)
    time.sleep(0.01)
    asyncio.run(
        _publish_as(
            nats_cluster,
            f"syncmesh.{fleet}.changes.{i_site}",
            _message_of(i_site, incarnation, 0, 5, "k1"),
            headers,
        )
    )
    wait_for(lambda: ids(a.db) == "k1", TIMEOUT_S, "I's insert of k1 at a")
    shell(a.db, "DELETE FROM items WHERE id = 'k1'")

    def claim(own: int) -> None:
        body = {
            "published": 5,
            "held": {i_site: own, site_id(a): pack(int(time.time() * 1000), 0)},
            "gone": [],
            "cl_floor": 0,
            "horizon": {},
        }
        asyncio.run(
            _publish_as(
                nats_cluster,
                f"syncmesh.{fleet}.state.{i_site}.members",
                json.dumps(body).encode(),
                headers,
            )
        )

    claim(before_insert)
    wait_for(
        lambda: (
            f"writes of site {i_site} only up to stamp {before_insert}" in lifecycle(a)["held_back"]
        ),
        TIMEOUT_S,
        "a to name I's writes as what holds it back",
        describe(cluster, nats_cluster),
    )
    wait_rounds(a, 3)
    assert tombstones(a.db) == 1, "the life k1's delete ended is not covered: no collection"
    assert run_cli("track", str(a.db), "extra").returncode == 0
    a.wait_for_log("reading the stream again", TIMEOUT_S)
    wait_for(
        lambda: (
            a.status()["fleet"]["state"] == "streaming"
            and a.status()["fleet"]["consumer_pending"] == 0
        ),
        TIMEOUT_S,
        "a to read the stream again to its end",
    )
    wait_rounds(a, 3)
    assert ids(a.db) == "", "I's insert read again lost to the tombstone"
    claim(pack(int(time.time() * 1000), 0))
    wait_for(lambda: tombstones(a.db) == 0, TIMEOUT_S, "a to collect k1 once I's claim covers it")
    assert ids(a.db) == ""


def test_relayed_writes_of_a_replica_hold_collection_back_at_the_fleet_sites_until_forgotten(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a relayed replica's writes never let a fleet site collect unsafely.

    Method: a and b are fleet sites; r, on no stream, dials a and inserts
    a row, which a relays onto the stream (docs/adr/0014, relaying).  No
    claim says what any site holds of r, so a delete at b must keep its
    tombstone at b while rounds go by, with b's status naming r; after
    `syncmesh forget r` at b (what an operator does for a replica gone for
    good) it is collected there: r alone held it back.  No deleted row
    comes back anywhere.
    """
    fleet = fleet_name()
    a, b = (fleet_node(cluster, name, nats_cluster, fleet) for name in "ab")
    cluster.start(a, b)
    r = cluster.node("r", make_db(cluster.directory / "r.db", SCHEMA), peers=[a], env=FAST)
    cluster.start(r)
    shell(b.db, "INSERT INTO items VALUES ('k1', 'one', 1), ('k2', 'two', 2)")
    shell(r.db, "INSERT INTO items VALUES ('r1', 'from r', 3)")
    paths = [a.db, b.db, r.db]
    wait_converged(
        paths,
        "items",
        TIMEOUT_S,
        check=lambda rows: len(rows) == 3,
        describe=describe(cluster, nats_cluster),
    )
    r_site = r.status()["site_id"]
    shell(b.db, "DELETE FROM items WHERE id = 'k1'")
    wait_for(
        lambda: all(ids(path) == "k2,r1" for path in paths),
        TIMEOUT_S,
        "the delete of k1 everywhere",
        describe(cluster, nats_cluster),
    )
    wait_rounds(b, 5)
    assert tombstones(b.db) == 1, "nobody claims to hold r's writes: b keeps its tombstone"

    def held_back_by_r() -> bool:
        # a's claim of b's delete travels on its own schedule (one a round,
        # once a's publish loop has a mark): until it arrives, b names a as
        # what holds it back; then r, whom no claim ever covers.  The
        # tombstone stays all along.
        assert tombstones(b.db) == 1, "b collected k1 while nobody claims r's writes"
        return r_site in lifecycle(b)["held_back"]

    wait_for(
        held_back_by_r,
        TIMEOUT_S,
        "b to name r as what holds it back",
        describe(cluster, nats_cluster),
    )
    wait_rounds(b, 3)
    assert tombstones(b.db) == 1, "nobody claims to hold r's writes: b keeps its tombstone"
    result = run_cli("forget", str(b.db), r_site)
    assert f"site {r_site} forgotten" in result.stdout
    wait_for(
        lambda: tombstones(b.db) == 0,
        TIMEOUT_S,
        "the tombstone of k1 collected at b after forgetting r",
        describe(cluster, nats_cluster),
    )
    for path in paths:
        assert ids(path) == "k2,r1"


def test_a_websocket_replica_of_a_fleet_site_that_collected_is_admitted_after_a_restart(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a WebSocket replica that joined a fleet site after the site collected
    tombstones keeps syncing across its own restart (found by a new operator).

    Method: fleet sites a and b; b inserts two rows and deletes one; a collects
    the tombstone (its horizon has rows); r, empty, dials a and gets the live
    row; r stops and starts again; a row b writes then must reach r.  Before,
    the admission check compared r's vector with the pass's frontier, on a
    fleet b's claimed mark, a stamp past b's last write that no vector
    reaches: r was refused as one that slept past the horizon.
    """
    fleet = fleet_name()
    a, b = (fleet_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    shell(b.db, "INSERT INTO items VALUES ('k1', 'kept', 1), ('k2', 'x', 2)")
    shell(b.db, "DELETE FROM items WHERE id = 'k2'")
    wait_for(
        lambda: (
            int(shell(a.db, "SELECT count(*) FROM _syncmesh_horizon")) > 0 and tombstones(a.db) == 0
        ),
        TIMEOUT_S,
        "a to collect b's tombstone",
        describe(cluster, nats_cluster),
    )
    r = cluster.node("r", make_db(cluster.directory / "r.db", SCHEMA), peers=[a], env=FAST)
    cluster.start(r)
    wait_for(lambda: ids(r.db) == "k1", TIMEOUT_S, "the live row at r")
    r.stop()
    cluster.start(r)
    shell(b.db, "INSERT INTO items VALUES ('k3', 'after the restart', 3)")
    wait_for(
        lambda: ids(r.db) == "k1,k3",
        TIMEOUT_S,
        "b's new row at r after r's restart",
        describe(cluster, nats_cluster),
    )
