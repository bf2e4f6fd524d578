"""The transport seam: `Node` over the in-memory transport, admission, typed refusals.

The WebSocket transport is tested where users meet it (tests/test_node.py,
test_tls.py, test_hostile_sync_port.py, the multi-process tests); here the
same `Node` runs on `transport.memory`, which shows that node code needs
nothing of WebSockets, and the pure pieces of the seam are tested alone.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest

from syncmesh.clock import SystemClock
from syncmesh.errors import RefusedError, TransportError
from syncmesh.node import Node, NodeConfig
from syncmesh.node.admission import Admitted, admit
from syncmesh.node.config import PeerConfig
from syncmesh.node.session import DuplicateSession, refused_by_peer
from syncmesh.node.verify import VerifyClient, verify
from syncmesh.protocol import Refuse, decode, encode
from syncmesh.protocol.messages import DUPLICATE_SESSION_PREFIX
from syncmesh.transport import (
    Channel,
    ClosedError,
    PeerIdentity,
    Refusal,
    RefusalReason,
    TlsFiles,
    VerifyAnswer,
)
from syncmesh.transport.memory import MemoryNetwork, channel_pair
from tests.helpers import wait_until
from tests.memory_nodes import memory_config, memory_nodes, memory_url
from tests.test_node import TIMEOUT_S, converged, execute, make_db

NAMES = ("a", "b", "c")


async def _streaming_peers(node: Node) -> int:
    return sum(peer.state == "streaming" for peer in (await node.statistics()).peers)


async def test_three_nodes_converge_through_the_in_memory_transport(tmp_path: Path) -> None:
    """Goal: `Node`, unchanged, syncs a full mesh of three over the in-memory transport.

    Method: three real SQLite files; a dials b and c, b dials c, all over
    one `MemoryNetwork` (no socket is opened).  Each node takes writes of
    its own, and an update of a row written elsewhere; all three must end
    with the same rows, every node streaming with both others, and verify
    (over the in-memory exchange) must find a and c identical.
    """
    paths = {name: make_db(tmp_path / f"{name}.db") for name in NAMES}
    configs = {
        name: memory_config(paths[name], *(other for other in NAMES if other > name))
        for name in NAMES
    }
    network = MemoryNetwork()
    async with memory_nodes(network, configs) as nodes:
        for index, name in enumerate(NAMES):
            await asyncio.to_thread(
                execute,
                paths[name],
                "INSERT INTO items VALUES (?, ?, ?)",
                f"from-{name}",
                name,
                index,
            )
        await wait_until(lambda: converged(*paths.values(), rows=3), TIMEOUT_S, "three to converge")
        await asyncio.to_thread(
            execute, paths["c"], "UPDATE items SET qty = 42 WHERE id = 'from-a'"
        )
        await wait_until(lambda: converged(*paths.values(), rows=3), TIMEOUT_S, "the update")
        for name, node in nodes.items():
            assert await _streaming_peers(node) == 2, name
        exchange = network.connector().verify_exchange(memory_url("c"), None)
        node_a = nodes["a"]
        async with VerifyClient(exchange) as client:
            report = await verify(node_a.store, node_a.store_call, client, ["items"], settle_s=0.05)
        assert report.identical, report.as_json()
        assert report.peer_site == nodes["c"].store.site_id


async def test_a_dialler_refused_at_admission_learns_the_reason(tmp_path: Path) -> None:
    """Goal: a refusal is a value the transport renders; the dialler sees its reason.

    Method: a listener whose host refuses every channel; dialling it raises
    a TransportError naming the status and reason; a verify request gets
    the refusal's status.
    """

    class Refusing:
        async def serve_channel(
            self, peer: PeerIdentity, open_channel: Callable[[], Awaitable[Channel]]
        ) -> Refusal | None:
            return Refusal(RefusalReason.TOO_MANY_FROM_SITE)

        async def answer_verify(
            self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
        ) -> Refusal | VerifyAnswer:
            return Refusal(RefusalReason.NOT_A_PEER, certificate="names no site")

    network = MemoryNetwork()
    host = Refusing()
    network.listener("memory://x").serve(host, host)
    with pytest.raises(TransportError, match="429 refused \\(too many connections"):
        await network.connector().dial("memory://x")
    async with network.connector().verify_exchange("memory://x", None) as exchange:
        status, _ = await exchange.post(b"\x80")
    assert status == 403
    with pytest.raises(TransportError, match="nobody listens there"):
        await network.connector().dial("memory://nowhere")


async def test_memory_channels_carry_frames_and_the_end_both_ways() -> None:
    """Goal: a memory channel behaves as a link: frames in order, then the close, both ends."""
    dialled, accepted = channel_pair(PeerIdentity("d", "site-d"), PeerIdentity("l", "site-l"))
    assert (dialled.peer_site, accepted.peer_site) == ("site-l", "site-d")
    await dialled.send(b"one")
    await dialled.send(b"two")
    assert [await accepted.receive(), await accepted.receive()] == [b"one", b"two"]
    with pytest.raises(TransportError, match="no message within"):
        await accepted.receive(timeout_s=0.01)
    await accepted.close()
    with pytest.raises(ClosedError):
        await dialled.receive()
    with pytest.raises(ClosedError):
        await dialled.send(b"three")


def _tls_config(**overrides: object) -> NodeConfig:
    return NodeConfig(
        database_path="unused.db",
        tls=TlsFiles(cert="c.pem", key="k.pem", ca="ca.pem"),
        peers=(PeerConfig(name="b"),),
        inbound_sessions_max=3,
        sessions_per_peer_max=1,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("site", "stopping", "inbound", "expected"),
    [
        ("b", True, {}, Refusal(RefusalReason.SHUTTING_DOWN)),
        ("b", False, {"": 3}, Refusal(RefusalReason.TOO_MANY_CONNECTIONS)),
        (None, False, {}, Refusal(RefusalReason.NOT_A_PEER, certificate="names no site")),
        ("z", False, {}, Refusal(RefusalReason.NOT_A_PEER, certificate="is for site 'z'")),
        ("b", False, {"b": 1}, Refusal(RefusalReason.TOO_MANY_FROM_SITE)),
        ("b", False, {"": 2}, Admitted(PeerConfig(name="b"))),
        # A verify request holds no connection: the connection limits do not apply.
        ("b", False, None, Admitted(PeerConfig(name="b"))),
    ],
)
def test_admission_with_tls_admits_configured_sites_within_their_limits(
    site: str | None, stopping: bool, inbound: dict[str, int] | None, expected: object
) -> None:
    verdict = admit(
        PeerIdentity("10.0.0.9:4000", site), _tls_config(), stopping=stopping, inbound=inbound
    )
    assert verdict == expected


def test_admission_without_tls_admits_anyone_within_the_connection_limit() -> None:
    config = NodeConfig(database_path="unused.db", inbound_sessions_max=2)
    anyone = PeerIdentity("127.0.0.1:4000", None)
    assert admit(anyone, config, stopping=False, inbound={"": 1}) == Admitted(None)
    assert admit(anyone, config, stopping=False, inbound={"": 2}) == Refusal(
        RefusalReason.TOO_MANY_CONNECTIONS
    )


def test_a_refusal_received_from_a_peer_is_typed_by_its_wire_text() -> None:
    """Goal: "already in a session" is a `DuplicateSession` value, any other a plain refusal.

    Method: REFUSE messages through the wire codec, as a session receives
    them; the node's refusal of a second session is worded with the prefix
    that types it.
    """
    received = [
        decode(encode(Refuse(reason)))
        for reason in (f"{DUPLICATE_SESSION_PREFIX} with site 1", "schema mismatch")
    ]
    assert all(isinstance(message, Refuse) for message in received)
    duplicate_message, other_message = cast(list[Refuse], received)
    assert duplicate_message.duplicate_session
    assert not other_message.duplicate_session
    duplicate = refused_by_peer("peer x refused the session", duplicate_message)
    other = refused_by_peer("peer x refused the session", other_message)
    assert isinstance(duplicate, DuplicateSession)
    assert str(duplicate) == "peer x refused the session: already in a session with site 1"
    assert type(other) is RefusedError


class DayAheadClock:
    """The system's time, one day ahead: far enough that no real clock read passes for it."""

    DAY_MS = 86_400_000

    def now_ms(self) -> int:
        return SystemClock().now_ms() + self.DAY_MS


async def test_the_node_reads_wall_time_only_from_its_injected_clock(tmp_path: Path) -> None:
    """Goal: the times a node reports come from the clock it was given, not the system's.

    Method: two nodes whose injected clock runs a day ahead sync a row; the
    peer's last batch time, the throughput history's buckets and the
    metrics' age of the last batch must all be on the injected clock's day.
    """
    paths = {name: make_db(tmp_path / f"{name}.db") for name in ("a", "b")}
    configs = {"a": memory_config(paths["a"], "b"), "b": memory_config(paths["b"])}
    clock = DayAheadClock()
    async with memory_nodes(MemoryNetwork(), configs, physical_clock=clock) as nodes:
        await asyncio.to_thread(execute, paths["b"], "INSERT INTO items VALUES ('k', 'x', 1)")
        await wait_until(lambda: converged(*paths.values(), rows=1), TIMEOUT_S, "the row to arrive")
        system_now_ms = SystemClock().now_ms()
        batch_ms = max(peer.last_batch_ms for peer in (await nodes["a"].statistics()).peers)
        assert batch_ms > system_now_ms + clock.DAY_MS // 2
        newest = nodes["a"].throughput_samples()[-1]
        assert newest.start_ms > system_now_ms + clock.DAY_MS // 2


# (owner, function): a call reads the wall clock.  The owner is the last name
# before the call (`time.time_ns()`, `datetime.datetime.now(...)`).
WALL_TIME_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}
# These read the wall clock only when called without a timestamp.
WALL_TIME_CALLS_WITHOUT_ARGUMENTS = {("time", "gmtime"), ("time", "localtime"), ("time", "ctime")}
# The one reader of the wall clock that everything else is given (or builds).
WALL_TIME_READERS = {"clock/hlc.py"}
# chaos/ is the test harness: it times faults and histories by the machine's clock.
WALL_TIME_EXEMPT_PACKAGES = {"chaos"}


def wall_time_reads(source: str) -> list[int]:
    """The lines of `source` that call a function reading the wall clock directly."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        owner_name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        call = (owner_name, node.func.attr)
        if call in WALL_TIME_CALLS or (
            call in WALL_TIME_CALLS_WITHOUT_ARGUMENTS and not node.args and not node.keywords
        ):
            found.append(node.lineno)
    return found


def test_the_wall_time_check_finds_what_it_looks_for() -> None:
    source = (
        "time.time_ns()\n"
        "datetime.datetime.now(datetime.UTC)\n"
        "time.gmtime()\n"
        "time.gmtime(at_ms / 1000)\n"
        "time.monotonic()\n"
        "date.today()\n"
    )
    assert wall_time_reads(source) == [1, 2, 3, 6]


def test_no_module_outside_the_clock_reads_wall_time_directly() -> None:
    """Goal: one clock.  Wall time in src/ comes only from an injected `PhysicalClock`.

    Method: no call of time.time(), time.time_ns(), datetime.now()/utcnow()/
    today() or an argument-less time.gmtime() anywhere in src/syncmesh but
    `SystemClock` (clock/hlc.py) and the chaos harness; node, api, transport,
    protocol and store use the clock they are given, the CLI a `SystemClock`.
    Monotonic timers for timeouts and durations are fine.
    """
    package = Path(__file__).parent.parent / "src" / "syncmesh"
    found = []
    for source in sorted(package.rglob("*.py")):
        relative = source.relative_to(package).as_posix()
        if relative in WALL_TIME_READERS or relative.split("/")[0] in WALL_TIME_EXEMPT_PACKAGES:
            continue
        found += [f"{relative}:{line}" for line in wall_time_reads(source.read_text())]
    assert found == []
