"""Hostile bytes on the sync port of a real node process.

A raw client speaks WebSocket by hand (RFC 6455) so it can send what no
well-behaved library would: truncated frames, a header announcing an
enormous frame, another protocol version, random bytes; it can also reset
the connection in the middle of the upgrade.  A real peer that stops
reading (SIGSTOP) and a client that never finishes its request head (slow
loris) must not stall anyone else.  Each time the node answers with a
refusal or closes the session, stays up, logs no internal error, keeps
serving its other peers, and its file is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncmesh.protocol import PROTOCOL_VERSION, Hello, Refuse, decode, encode
from tests.nodeproc import (
    HOST,
    Cluster,
    NodeProcess,
    make_db,
    row_count,
    table_dump,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.multiprocess

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
SOCKET_TIMEOUT_S = 10.0
CONVERGE_S = 60.0
OPCODE_BINARY, OPCODE_CLOSE = 0x2, 0x8


class RawPeer:
    """A WebSocket client written out by hand, for bytes no library would send."""

    def __init__(self, port: int, *, upgrade: bool = True) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S)
        self._buffer = b""
        if upgrade:
            self.sock.sendall(upgrade_request(port))
            head = self._read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head

    def send_frame(self, payload: bytes, *, announced: int | None = None) -> None:
        """One masked binary frame; `announced` overrides the length in its header."""
        self.sock.sendall(frame(payload, announced=announced))

    def receive(self) -> tuple[int, bytes] | None:
        """The next frame from the node, or None once the connection is closed."""
        try:
            header = self._read_exactly(2)
            length = header[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read_exactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_exactly(8))[0]
            return header[0] & 0x0F, self._read_exactly(length)
        except (ConnectionError, EOFError):
            return None

    def answers(self) -> list[str]:
        """What the node said before it closed: refusal reasons, then 'close'."""
        said = []
        while (message := self.receive()) is not None:
            opcode, payload = message
            if opcode == OPCODE_CLOSE:
                said.append("close")
                break
            if opcode == OPCODE_BINARY:
                decoded = decode(payload)
                said.append(
                    decoded.reason if isinstance(decoded, Refuse) else type(decoded).__name__
                )
        return said

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def _read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        end = self._buffer.index(marker) + len(marker)
        data, self._buffer = self._buffer[:end], self._buffer[end:]
        return data


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /sync/v1 HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(payload: bytes, *, announced: int | None = None) -> bytes:
    length = len(payload) if announced is None else announced
    if length < 126:
        header = struct.pack("!BB", 0x80 | OPCODE_BINARY, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | OPCODE_BINARY, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | OPCODE_BINARY, 0x80 | 127, length)
    mask = os.urandom(4)
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def hello(version: int = PROTOCOL_VERSION) -> bytes:
    return encode(Hello(version, "f" * 32, "i" * 32, "fingerprint", ("items",), 0, {}))


def file_digest(path: Path) -> str:
    return hashlib.sha256(repr(table_dump(path, "items")).encode()).hexdigest()


@pytest.fixture
def target(cluster: Cluster, tmp_path: Path) -> Iterator[NodeProcess]:
    """A running node holding a few rows; at the end: healthy, no internal error, file intact."""
    db = make_db(tmp_path / "target.db", SCHEMA)
    write_rows(db, 10)
    node = cluster.node("target", db)
    cluster.start(node)
    before = file_digest(db)
    yield node
    assert node.is_running(), node.log_tail()
    assert node.status()["site_id"]
    assert cluster.internal_errors() == []
    assert file_digest(db) == before, "a refused message changed the database"


def write_rows(path: Path, count: int, *, prefix: str = "row", width: int = 8) -> None:
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(f"{prefix}-{i}", "x" * width, i) for i in range(count)],
        )
    connection.close()


def test_truncated_frames_get_a_refusal_or_a_close(target: NodeProcess) -> None:
    whole = hello()
    for cut in (1, 2, len(whole) // 2, len(whole) - 1):
        peer = RawPeer(target.port)
        assert peer.receive() is not None  # the node's HELLO
        peer.send_frame(whole[:cut])
        answers = peer.answers()
        assert answers[0].startswith("bad HELLO"), answers
        assert answers[-1] == "close"
        peer.close()
    # A frame cut short on the wire: the header promises more than ever comes.
    peer = RawPeer(target.port)
    peer.receive()
    peer.sock.sendall(frame(whole, announced=len(whole) + 100)[: len(whole)])
    peer.close()


def test_a_frame_announcing_more_than_the_limit_is_refused_unread(target: NodeProcess) -> None:
    peer = RawPeer(target.port)
    peer.receive()
    peer.sock.sendall(frame(b"", announced=1 << 40)[:14])  # header and mask only
    answers = peer.answers()  # closes at once: it does not wait for a terabyte
    assert answers in ([], ["close"]), answers
    peer.close()


def test_another_protocol_version_is_refused_by_name(target: NodeProcess) -> None:
    peer = RawPeer(target.port)
    peer.receive()
    peer.send_frame(hello(PROTOCOL_VERSION + 1))
    answers = peer.answers()
    assert "version" in answers[0], answers
    peer.close()
    peer = RawPeer(target.port)
    peer.receive()
    peer.send_frame(bytes([0]) + msgpack.packb({"t": "hello", "v": "one"}))
    assert peer.answers()[0].startswith("bad HELLO")
    peer.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=st.binary(max_size=300))
def test_random_frames_get_a_refusal_or_a_close(target: NodeProcess, payload: bytes) -> None:
    peer = RawPeer(target.port)
    peer.receive()
    peer.send_frame(payload)
    answers = peer.answers()
    assert answers == [] or answers[-1] == "close" or answers[0].startswith("bad"), answers
    peer.close()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_random_bytes_instead_of_http_are_turned_away(target: NodeProcess, garbage: bytes) -> None:
    peer = RawPeer(target.port, upgrade=False)
    peer.sock.sendall(garbage + b"\r\n\r\n")
    peer.sock.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := peer.sock.recv(65536):
        reply += chunk
    assert reply == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:80]
    peer.close()


def test_a_reset_during_the_upgrade_is_no_internal_error(target: NodeProcess) -> None:
    for _ in range(30):
        peer = RawPeer(target.port, upgrade=False)
        peer.sock.sendall(upgrade_request(target.port))
        peer.reset()
    # The fixture's teardown fails the test if the node logged a traceback.


def test_a_verify_request_cut_short_is_no_internal_error(target: NodeProcess) -> None:
    """A peer reset in the middle of a verify request body: the node logs it, no traceback."""
    for _ in range(20):
        peer = RawPeer(target.port, upgrade=False)
        peer.sock.sendall(
            b"POST /sync/v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/msgpack\r\nContent-Length: 100000\r\n\r\n" + b"\x82" * 100
        )
        peer.reset()
    # The fixture's teardown fails the test if the node logged a traceback.


def test_a_peer_that_stops_reading_stalls_nobody_else(cluster: Cluster, tmp_path: Path) -> None:
    hub_db = make_db(tmp_path / "hub.db", SCHEMA)
    hub = cluster.node("hub", hub_db)
    cluster.start(hub)
    stuck = cluster.node("stuck", make_db(tmp_path / "stuck.db", SCHEMA), peers=[hub])
    healthy = cluster.node("healthy", make_db(tmp_path / "healthy.db", SCHEMA), peers=[hub])
    cluster.start(stuck, healthy)
    wait_converged([hub_db, stuck.db, healthy.db], "items", CONVERGE_S)
    stuck.pause()  # it stops reading: the hub's sends to it pile up in the socket buffers
    loris = RawPeer(hub.port, upgrade=False)
    loris.sock.sendall(b"GET /sync/v1 HTTP/1.1\r\nHost: ")  # and never finishes
    rows = 4_000
    write_rows(hub_db, rows, prefix="big", width=2_000)  # 8 MB: more than the buffers hold
    wait_converged([hub_db, healthy.db], "items", CONVERGE_S)
    assert row_count(healthy.db, "items") == rows

    def stuck_session_closed() -> bool:
        return (
            not any(
                peer["state"] == "streaming" and not peer["dialed"]
                for peer in hub.status()["peers"]
            )
            or len([p for p in hub.status()["peers"] if p["state"] == "streaming"]) == 1
        )

    wait_for(stuck_session_closed, CONVERGE_S, "the hub to drop the peer that stopped reading")
    loris.close()
    stuck.resume()
    wait_converged([hub_db, stuck.db, healthy.db], "items", CONVERGE_S)
    assert cluster.internal_errors() == []
