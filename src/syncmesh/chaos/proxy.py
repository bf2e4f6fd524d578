"""TCP proxies on 127.0.0.1 that put network faults between two nodes.

One `LinkProxy` stands on each link of the cluster: the dialling node is
given the proxy's address as its peer URL, and the proxy forwards to the
listening node.  Each of the two directions has its own `DirectionFaults`
(delay with jitter, a bandwidth cap, stalls, a one-way blackout), and the
link as a whole can be cut (a partition: connections are reset and new ones
refused), reset once a number of bytes has passed (mid-batch), or made to
duplicate and reorder WebSocket frames (redelivery).

Everything random is drawn from the `random.Random` the harness passes in,
so a schedule is reproducible from its seed; only the kernel's scheduling
of the real processes is not.  No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CHUNK_BYTES = 16 * 1024
STALL_POLL_S = 0.01
OPCODE_BINARY = 0x2


@dataclass(slots=True)
class DirectionFaults:
    """What happens to bytes flowing one way through a link."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # each chunk's delay is delay_ms +- uniform(jitter_ms)
    bandwidth_bytes_per_s: float = 0.0  # 0: unlimited
    blackout: bool = False  # one-way loss: nothing is delivered until it lifts
    stall_probability: float = 0.0  # lossy: a chunk waits as for a retransmission ...
    stall_ms_max: float = 0.0  # ... up to this long
    duplicate_probability: float = 0.0  # a binary WebSocket frame is delivered twice
    reorder_probability: float = 0.0  # a binary frame is held back behind the next one

    def clear(self) -> None:
        """Back to a clean direction (the heal)."""
        for name, value in _CLEAN.items():
            setattr(self, name, value)


_CLEAN = {name: getattr(DirectionFaults(), name) for name in DirectionFaults.__slots__}


@dataclass(slots=True)
class LinkCounters:
    connections: int = 0
    refused: int = 0  # connections turned away while the link was cut
    resets: int = 0
    bytes_forwarded: int = 0
    frames_duplicated: int = 0
    frames_reordered: int = 0


@dataclass(slots=True, eq=False)  # identity: one per TCP connection
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class LinkProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, with faults.

    `forward` faults apply to bytes from the dialler to the listener,
    `backward` to the replies.
    """

    def __init__(self, name: str, target_port: int, rng: random.Random) -> None:
        self.name = name
        self.target_port = target_port
        self.forward = DirectionFaults()
        self.backward = DirectionFaults()
        self.counters = LinkCounters()
        self._rng = rng
        self._cut = False
        self._reset_after_bytes: int | None = None
        # Connections accepted while this is set cut their stream into WebSocket
        # frames from the first byte, so frames can be duplicated or reordered.
        self.frame_mode = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        if self._server is not None:
            await self._server.wait_closed()

    # -- link-wide faults ---------------------------------------------------------

    @property
    def cut(self) -> bool:
        return self._cut

    def set_cut(self, cut: bool) -> None:
        """Partition the link (reset what is open, refuse new connections) or heal it."""
        self._cut = cut
        if cut:
            self._reset_all()

    def reset_after(self, byte_count: int) -> None:
        """Reset the open connections once `byte_count` more bytes have passed."""
        self._reset_after_bytes = byte_count

    def heal(self) -> None:
        self._cut = False
        self._reset_after_bytes = None
        self.forward.clear()
        self.backward.clear()

    def _reset_all(self) -> None:
        for connection in list(self._connections):
            self._reset(connection)

    def _reset(self, connection: _Connection) -> None:
        """Close both sockets with a TCP RST, as a dying middlebox would."""
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self.counters.resets += 1
        for writer in (connection.client, connection.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in connection.tasks:
            task.cancel()

    # -- forwarding ---------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.counters.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()  # the node behind us is down: so is the link
            return
        self.counters.connections += 1
        connection = _Connection(writer, up_writer)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pump(connection, reader, up_writer, self.forward)),
            asyncio.create_task(self._pump(connection, up_reader, writer, self.backward)),
        ]
        if self.cut:  # cut while we dialled the node
            self._reset(connection)
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        self._connections.discard(connection)
        for end in (writer, up_writer):
            end.transport.abort()

    async def _pump(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        faults: DirectionFaults,
    ) -> None:
        """Read chunks, schedule their delivery, deliver them in order.

        Reading and delivering are two tasks joined by a queue, so a delay
        postpones the bytes without throttling the reader (as a long pipe
        would); order is kept, as TCP keeps it.
        """
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        frames = _FrameSplitter() if self.frame_mode else None

        async def read() -> None:
            last_due = 0.0
            try:
                while chunk := await reader.read(CHUNK_BYTES):
                    for piece in self._shape(frames, chunk, faults):
                        jitter = self._rng.uniform(-faults.jitter_ms, faults.jitter_ms)
                        due = time.monotonic() + max(0.0, faults.delay_ms + jitter) / 1000
                        last_due = max(last_due, due)
                        queue.put_nowait((last_due, piece))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait(None)

        reading = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                due, piece = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                # The harness flips plain flags; polling them keeps the faults data.
                while faults.blackout:  # noqa: ASYNC110
                    await asyncio.sleep(STALL_POLL_S)
                if faults.stall_probability and self._rng.random() < faults.stall_probability:
                    await asyncio.sleep(self._rng.uniform(0, faults.stall_ms_max) / 1000)
                if faults.bandwidth_bytes_per_s:
                    await asyncio.sleep(len(piece) / faults.bandwidth_bytes_per_s)
                writer.write(piece)
                await writer.drain()
                self.counters.bytes_forwarded += len(piece)
                if self._reset_after_bytes is not None:
                    self._reset_after_bytes -= len(piece)
                    if self._reset_after_bytes <= 0:
                        self._reset_after_bytes = None
                        self._reset(connection)
                        return
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        except (ConnectionError, OSError):
            self._reset(connection)
        finally:
            reading.cancel()

    def _shape(
        self, frames: _FrameSplitter | None, chunk: bytes, faults: DirectionFaults
    ) -> list[bytes]:
        """The pieces to deliver for `chunk`: itself, or whole frames duplicated/reordered."""
        if frames is None:
            return [chunk]
        out: list[bytes] = []
        for piece, opcode in frames.feed(chunk):
            if opcode == OPCODE_BINARY and frames.held is None:
                if self._rng.random() < faults.reorder_probability:
                    frames.held = piece  # delivered right after the next frame
                    self.counters.frames_reordered += 1
                    continue
                if self._rng.random() < faults.duplicate_probability:
                    out.append(piece)
                    self.counters.frames_duplicated += 1
            out.append(piece)
            if frames.held is not None and opcode is not None:
                out.append(frames.held)
                frames.held = None
        return out


class _FrameSplitter:
    """Cuts a WebSocket byte stream (after the HTTP upgrade) into whole frames (RFC 6455).

    A connection whose HTTP head is no WebSocket upgrade (a verify request, a
    snapshot download over the same link) passes through whole: its body is
    no frames, and read as frames it was held back for good (a frame length
    read from msgpack bytes), so every verify over a link that had a
    `duplicate` or `reorder` fault hung and the anti-entropy of that pair
    never ran (`--seed 800 --only 31 --topology chain`, held-write).
    """

    def __init__(self) -> None:
        self.held: bytes | None = None
        self._buffer = b""
        self._in_http = True
        self._passthrough = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, int | None]]:
        """Whole pieces: (bytes, opcode), opcode None for the HTTP head and plain HTTP."""
        if self._passthrough:
            return [(chunk, None)]
        self._buffer += chunk
        pieces: list[tuple[bytes, int | None]] = []
        if self._in_http:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return pieces
            head = self._buffer[: end + 4]
            pieces.append((head, None))
            self._buffer = self._buffer[end + 4 :]
            self._in_http = False
            if not _is_websocket_head(head):
                self._passthrough = True
                if self._buffer:
                    pieces.append((self._buffer, None))
                self._buffer = b""
                return pieces
        while (size := _frame_size(self._buffer)) is not None and len(self._buffer) >= size:
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            pieces.append((frame, frame[0] & 0x0F))
        return pieces


def _is_websocket_head(head: bytes) -> bool:
    """An HTTP head that starts a WebSocket: the upgrade request, or its 101 answer."""
    lowered = head.lower()
    return b"upgrade: websocket" in lowered or lowered.startswith(b"http/1.1 101")


def _frame_size(buffer: bytes) -> int | None:
    """The size of the frame at the head of `buffer`, or None if its header is incomplete."""
    if len(buffer) < 2:
        return None
    masked = buffer[1] & 0x80
    length = buffer[1] & 0x7F
    header = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length = int.from_bytes(buffer[2:4], "big")
        header = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length = int.from_bytes(buffer[2:10], "big")
        header = 10
    return header + (4 if masked else 0) + length
