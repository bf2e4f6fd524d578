"""A `Channel` moves whole binary frames between two peers; here, over a WebSocket.

The session logic (syncmesh.node.session) sees only `Channel`, so another
transport (an in-memory pair for tests, NATS later) fits behind the same
three methods.  WebSocket is the choice (docs/adr/0003-websocket-sessions.md)
because a site behind NAT can dial out and still receive changes on the same
long-lived connection, and aiohttp serves and dials it in one library, with
ping/pong heartbeats that close a dead link.
"""

from __future__ import annotations

import ssl
from typing import Protocol

import aiohttp
from aiohttp import web

from syncmesh.errors import TransportError
from syncmesh.transport.tls import site_name_of

SYNC_PATH = "/sync/v1"


class ClosedError(TransportError):
    """The peer closed the channel, or the link died (heartbeat lost)."""


class Channel(Protocol):
    async def send(self, frame: bytes) -> None: ...

    async def receive(self, timeout_s: float | None = None) -> bytes: ...

    async def close(self) -> None: ...


class WebSocketChannel:
    """Either end of a WebSocket: the server's response or the client's connection."""

    def __init__(
        self,
        socket: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        peer: str,
        session: aiohttp.ClientSession | None = None,
        peer_site: str | None = None,
    ) -> None:
        self._socket = socket
        self._peer = peer
        self._session = session
        # The site named by the peer's verified certificate (TLS), else None.
        self.peer_site = peer_site
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def response(self) -> web.StreamResponse:
        """The server side's WebSocket response, for the aiohttp handler to return."""
        assert isinstance(self._socket, web.WebSocketResponse)
        return self._socket

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, frame: bytes) -> None:
        if self._socket.closed:
            raise ClosedError(self._peer, "connection closed")
        try:
            await self._socket.send_bytes(frame)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ClosedError(self._peer, f"send failed: {exc}") from exc
        self.bytes_sent += len(frame)

    async def receive(self, timeout_s: float | None = None) -> bytes:
        try:
            message = await self._socket.receive(timeout=timeout_s)
        except TimeoutError as exc:
            raise TransportError(self._peer, f"no message within {timeout_s} s") from exc
        if message.type == aiohttp.WSMsgType.BINARY:
            data: bytes = message.data
            self.bytes_received += len(data)
            return data
        if message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise ClosedError(self._peer, "connection closed by peer")
        if message.type == aiohttp.WSMsgType.ERROR:
            raise ClosedError(self._peer, f"connection failed: {self._socket.exception()}")
        raise ClosedError(self._peer, f"unexpected {message.type.name} message")

    async def close(self) -> None:
        try:
            await self._socket.close()
        finally:
            if self._session is not None:
                await self._session.close()


async def dial(
    url: str,
    *,
    heartbeat_s: float,
    frame_bytes_max: int,
    connect_timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketChannel:
    """Open a sync channel to the node at `url` (http://host:port, or https:// with TLS).

    With `ssl_context` the server must present a certificate of the cluster
    CA; the site it names is the channel's `peer_site`, for the caller to
    check before it says anything.
    """
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
    )
    try:
        socket = await session.ws_connect(
            url.rstrip("/") + SYNC_PATH,
            heartbeat=heartbeat_s,
            max_msg_size=frame_bytes_max,
            autoping=True,
            ssl=ssl_context if ssl_context is not None else True,
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        reason = str(exc) or type(exc).__name__
        if ssl_context is None:  # aiohttp names its TLS default even for plain http
            reason = reason.replace(" ssl:default", "")
        raise TransportError(url, f"cannot connect: {reason}") from exc
    except BaseException:
        await session.close()
        raise
    peer_site = site_name_of(socket.get_extra_info("peercert")) if ssl_context else None
    return WebSocketChannel(socket, url, session, peer_site)


async def accept(
    request: web.Request, *, heartbeat_s: float, frame_bytes_max: int
) -> WebSocketChannel:
    """Accept a sync channel dialled in by a peer.

    Raises TransportError when the peer is gone before the upgrade is
    answered (a reset or a cut link: routine on a WAN, not a bug).
    """
    socket = web.WebSocketResponse(heartbeat=heartbeat_s, max_msg_size=frame_bytes_max)
    address = peer_address(request)
    try:
        await socket.prepare(request)
    except ConnectionError as exc:
        raise TransportError(address, f"gone during the WebSocket upgrade ({exc})") from exc
    return WebSocketChannel(socket, address, peer_site=peer_site(request))


def peer_address(request: web.Request) -> str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peername[0]}:{peername[1]}" if peername else "unknown"


def peer_site(request: web.Request) -> str | None:
    """The site named by the client's verified certificate, or None (no TLS, no name)."""
    if request.transport is None:
        return None
    return site_name_of(request.transport.get_extra_info("peercert"))
