"""Two live files with one site id, against a restart of one file (issue 12, defect 7).

tests/test_integrity_nodes.py has the defect's reproduction (two copies
meeting through a hub are told, at ERROR, how to fix it).  Here: the rule
that tells a twin from a restart (`IdentityGuard`, on a fake clock), the
HELLO field on the wire (optional both ways), the health verdict and the
fix end to end on real processes, and a restart of one file while the hub
still holds the dead process's session, which must not be called a twin.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from syncmesh.errors import ProtocolError
from syncmesh.node.identity import IdentityGuard, Verdict
from syncmesh.protocol import PROTOCOL_VERSION, Hello
from syncmesh.protocol.codec import decode, encode
from tests.helpers import sqlite3_shell as shell
from tests.nodeproc import Cluster, NodeProcess, make_db, query, run_cli, wait_for

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
SYNC_S = 40.0  # a healthy cluster takes milliseconds; twins take a grace of heartbeats
TWIN_TEXT = "two live database files have site id"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def guard() -> tuple[IdentityGuard, FakeClock]:
    clock = FakeClock()
    return IdentityGuard(grace_s=10.0, window_s=20.0, now=clock), clock


# -- the rule ----------------------------------------------------------------


def test_a_restart_whose_old_session_ends_within_the_grace_is_admitted() -> None:
    identities, clock = guard()
    assert identities.check("s", "old", None) is Verdict.ADMIT
    assert identities.check("s", "new", "old") is Verdict.DUPLICATE  # the old one still held
    clock.now_s += 9.0
    assert identities.check("s", "new", "old") is Verdict.DUPLICATE
    clock.now_s += 0.5  # the heartbeat ended the dead process's session
    assert identities.check("s", "new", None) is Verdict.ADMIT
    assert identities.twins() == []


def test_two_instances_alive_beyond_the_grace_are_twins_until_one_stops() -> None:
    identities, clock = guard()
    assert identities.check("s", "original", None) is Verdict.ADMIT
    assert identities.check("s", "copy", "original") is Verdict.DUPLICATE
    clock.now_s += 10.0
    assert identities.check("s", "copy", "original") is Verdict.TWIN
    assert identities.twins() == ["s"]
    # Both keep dialling: both are refused, whichever comes first.
    clock.now_s += 5.0
    assert identities.check("s", "original", None) is Verdict.TWIN
    assert identities.check("s", "copy", None) is Verdict.TWIN
    # The copy is stopped (and given a new site id): the original alone comes back.
    clock.now_s += 15.0
    assert identities.check("s", "original", None) is Verdict.TWIN  # copy seen 15 s ago
    clock.now_s += 6.0
    assert identities.check("s", "original", None) is Verdict.ADMIT
    assert identities.twins() == []


def test_one_process_dialling_twice_and_peers_without_an_instance_are_duplicates() -> None:
    identities, clock = guard()
    assert identities.check("s", "one", None) is Verdict.ADMIT
    clock.now_s += 60.0
    assert identities.check("s", "one", "one") is Verdict.DUPLICATE
    assert identities.check("s", "", "one") is Verdict.DUPLICATE  # a peer before the field
    assert identities.check("s", "two", "") is Verdict.DUPLICATE
    assert identities.twins() == []


def test_the_grace_counts_from_the_same_newcomer() -> None:
    identities, clock = guard()
    identities.check("s", "held", None)
    identities.check("s", "first restart", "held")
    clock.now_s += 11.0
    # Another process than the one first turned away: its own grace starts now.
    assert identities.check("s", "second restart", "held") is Verdict.DUPLICATE
    clock.now_s += 5.0
    assert identities.check("s", "second restart", "held") is Verdict.DUPLICATE


# -- the wire -----------------------------------------------------------------


def hello(instance: str) -> Hello:
    return Hello(
        PROTOCOL_VERSION, "site-a", "inc", "fp", ("items",), 3, {"site-a": 5}, {}, instance
    )


def test_hello_carries_the_instance() -> None:
    decoded = decode(encode(hello("run-1")))
    assert isinstance(decoded, Hello)
    assert decoded.instance == "run-1"


def test_a_hello_without_an_instance_still_decodes_and_none_is_sent_when_empty() -> None:
    frame = encode(hello(""))
    assert b"run" not in frame  # an older peer sees exactly the HELLO it knows
    decoded = decode(frame)
    assert isinstance(decoded, Hello)
    assert decoded.instance == ""


def test_a_hello_with_a_bad_instance_is_refused_by_name() -> None:
    frame = encode(hello("x"))
    assert frame[:1] == b"\x00"  # flag 0: the msgpack map follows, uncompressed
    plain = msgpack.unpackb(frame[1:], raw=False)
    plain["run"] = 7
    with pytest.raises(ProtocolError, match="'run'"):
        decode(b"\x00" + msgpack.packb(plain, use_bin_type=True))


# -- real processes -----------------------------------------------------------


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        print(cluster.logs())  # pytest shows it only when the test failed


def logs(*nodes: NodeProcess) -> str:
    return "\n".join(f"--- {node.name}\n{node.log_tail()}" for node in nodes)


def ids(db: Path) -> set[str]:
    return {row[0] for row in query(db, "SELECT id FROM items")}


@pytest.mark.multiprocess
def test_twins_show_in_health_and_the_fix_lets_all_rows_sync(
    nodes: Cluster, tmp_path: Path
) -> None:
    hub = nodes.node("hub", make_db(tmp_path / "hub.db", SCHEMA))
    original = make_db(tmp_path / "a.db", SCHEMA)
    copy = tmp_path / "a-copy.db"
    shutil.copy(original, copy)
    shell(original, "INSERT INTO items VALUES ('from original', 'x', 1)")
    shell(copy, "INSERT INTO items VALUES ('from copy', 'y', 2)")
    a = nodes.node("a", original, peers=[hub])
    twin = nodes.node("twin", copy, peers=[hub])
    nodes.start(hub, a, twin)

    def all_unhealthy_for_it() -> bool:
        return all(
            any(TWIN_TEXT in reason for reason in node.health()[1]["reasons"])
            for node in (hub, a, twin)
        )

    wait_for(
        all_unhealthy_for_it,
        SYNC_S,
        "the twin in every node's health",
        describe=lambda: logs(hub, a, twin),
    )
    for node in (hub, a, twin):
        code, document = node.health()
        assert code == 503, document
        assert not document["ok"], document
        assert any("init --new-site-id" in reason for reason in document["reasons"]), document
    hub_errors = [line for line in hub.log_text().splitlines() if TWIN_TEXT in line]
    assert hub_errors, logs(hub)
    assert all("ERROR" in line for line in hub_errors), hub_errors

    # The fix the message names: stop the copy, give it a new identity, start it again.
    # (Rows either copy wrote under the shared id before the fix are the damage
    # this refusal limits, not repairs: whichever reached the hub first, the
    # other's is taken for a write the hub already holds.  Re-stamping the
    # copy's rows would belong to the store's `init --new-site-id`; not done.)
    twin.stop()
    run_cli("init", "--new-site-id", str(copy))
    twin.start().wait_until_ready()
    shell(copy, "INSERT INTO items VALUES ('copy, after the fix', 'z', 3)")
    shell(original, "INSERT INTO items VALUES ('original, after the fix', 'w', 4)")
    after = {"copy, after the fix", "original, after the fix"}
    wait_for(
        lambda: all(after <= ids(db) for db in (hub.db, original, copy)),
        SYNC_S * 2,  # the hub refuses the original until the copy's retries stop
        "both new rows everywhere once the copy has its own site id",
        describe=lambda: f"{[ids(db) for db in (hub.db, original, copy)]}\n{logs(hub, a, twin)}",
    )
    wait_for(
        lambda: hub.health()[1]["ok"], SYNC_S, "the hub healthy again", describe=lambda: logs(hub)
    )
    assert not nodes.internal_errors()


class HalfOpenForwarder:
    """A TCP forwarder that, when the dialling side dies, leaves the other side open.

    It plays a network that lost the dead process's FIN: the listening node
    still holds a session with a process that is gone, until its heartbeat
    finds out.  Threads and blocking sockets on 127.0.0.1; bounded by the
    test's own deadlines (every socket is closed at `close`).
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, closes_sink: bool) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                break
            with contextlib.suppress(OSError):
                sink.sendall(chunk)
        if closes_sink:
            # Upstream closed: pass it on.  The other way round (the dialler
            # died) is the lost FIN: upstream is left open and unanswered.
            with contextlib.suppress(OSError):
                sink.close()

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.mark.multiprocess
def test_a_restart_while_the_hub_holds_the_dead_process_session_is_not_a_twin(
    nodes: Cluster, tmp_path: Path
) -> None:
    # A long heartbeat on the hub: it pings 12 s after the last frame received
    # (a's own pings come every 5 s) and gives up 6 s later, so the dead
    # session lasts 13-18 s after the kill: longer than a restart takes, and
    # shorter than the grace (1.5 x 12 + 2 s from the restarted node's first HELLO).
    hub = nodes.node(
        "hub", make_db(tmp_path / "hub.db", SCHEMA), env={"SYNCMESH_PEERS_HEARTBEAT_S": "12"}
    )
    nodes.start(hub)
    forwarder = HalfOpenForwarder(hub.port)
    try:
        a = nodes.node(
            "a", make_db(tmp_path / "a.db", SCHEMA), peers=[f"http://127.0.0.1:{forwarder.port}"]
        )
        nodes.start(a)
        shell(a.db, "INSERT INTO items VALUES ('before', 'x', 1)")
        wait_for(
            lambda: ids(hub.db) == {"before"},
            SYNC_S,
            "the first row at the hub",
            describe=lambda: logs(hub, a),
        )
        a.kill()
        a.start().wait_until_ready()
        shell(a.db, "INSERT INTO items VALUES ('after', 'y', 2)")
        wait_for(
            lambda: ids(hub.db) == {"before", "after"},
            SYNC_S,
            "the restarted node's row at the hub",
            describe=lambda: logs(hub, a),
        )
    finally:
        forwarder.close()
    # The restart met the dead process's session (else this test shows nothing) ...
    assert "from another process of that site id" in hub.log_text(), logs(hub)
    # ... and was not taken for a twin.
    for node in (hub, a):
        assert TWIN_TEXT not in node.log_text(), logs(hub, a)
    assert hub.health()[1]["ok"], hub.health()
    assert not nodes.internal_errors()


@pytest.mark.multiprocess
def test_a_copy_made_before_the_first_write_is_refused_through_two_hubs(
    nodes: Cluster, tmp_path: Path
) -> None:
    """Goal: twins that never meet one node are still told, with the fix (issue 12, defect 7).

    Method: a.db is initialised and copied before anyone writes to it, and
    before `init --new-site-id` is run on the copy.  a dials hub, the copy
    dials hub2, hub2 dials hub: the two files never meet the same node, so
    only vectors carry one's writes to the other.  a writes after both
    started: its stamp reaches the copy through both hubs as a claim on the
    copy's site id beyond anything the copy wrote in its run.  Before, the
    copy took that for a restore, adopted a's row as its own lost write and
    said nothing.  Now the copy refuses at ERROR, naming the fix, and the hub
    it refused shows it in its health; after the fix both files sync.
    """
    hub = nodes.node("hub", make_db(tmp_path / "hub.db", SCHEMA))
    hub2 = nodes.node("hub2", make_db(tmp_path / "hub2.db", SCHEMA), peers=[hub])
    original = make_db(tmp_path / "a.db", SCHEMA)
    copy = tmp_path / "a-copy.db"
    shutil.copy(original, copy)  # after init, before the first write
    a = nodes.node("a", original, peers=[hub])
    twin = nodes.node("twin", copy, peers=[hub2])
    nodes.start(hub, hub2, a, twin)
    shell(original, "INSERT INTO items VALUES ('from original', 'x', 1)")
    wait_for(
        lambda: any(
            "init --new-site-id" in line and "ERROR" in line
            for line in twin.log_text().splitlines()
        ),
        SYNC_S,
        "the copy to be refused, at ERROR, with the fix",
        describe=lambda: logs(hub, hub2, a, twin),
    )
    assert "from original" not in ids(copy), "the copy took the original's row for its own"
    wait_for(
        lambda: any(TWIN_TEXT in reason for reason in hub2.health()[1]["reasons"]),
        SYNC_S,
        "the refused hub to show the shared site id in its health",
        describe=lambda: logs(hub2),
    )

    twin.stop()
    run_cli("init", "--new-site-id", str(copy))
    twin.start().wait_until_ready()
    shell(copy, "INSERT INTO items VALUES ('copy, after the fix', 'z', 3)")
    every = {"from original", "copy, after the fix"}
    wait_for(
        lambda: all(every <= ids(db) for db in (hub.db, hub2.db, original, copy)),
        SYNC_S * 2,
        "both files' rows everywhere once the copy has its own site id",
        describe=lambda: f"{[ids(db) for db in (original, copy)]}\n{logs(hub, hub2, a, twin)}",
    )
    assert not nodes.internal_errors()


def test_a_node_that_dials_itself_is_told_so_not_to_re_identify_a_copy(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a peer URL that leads back to the node itself (a typo of a new user) is named
    as such in the log, the status and `syncmesh status`'s exit 2; the old message called
    the file a copy and advised `syncmesh init --new-site-id`, which cannot help."""
    make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node("a")
    a.peers = (a.url,)
    cluster.start(a)

    def last_error() -> str:
        return " ".join(str(peer.get("last_error") or "") for peer in a.status()["peers"])

    wait_for(lambda: "dialled itself" in last_error(), SYNC_S, "a's refusal", describe=cluster.logs)
    result = run_cli("status", str(a.db), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "this node dialled itself" in result.stderr
    for text in (last_error(), result.stdout, result.stderr, a.log_text()):
        assert "new-site-id" not in text
        assert "is a copy" not in text
