"""The WebSocket transport: sync channels over a WebSocket, verify over HTTP POST.

This is the only module that knows aiohttp's WebSocket and client sides.
The session logic (syncmesh.node.session) sees only `Channel`, and the
node only the Protocols of `transport.base`.  WebSocket is the choice
(docs/adr/0003-websocket-sessions.md) because a site behind NAT can dial
out and still receive changes on the same long-lived connection, and
aiohttp serves and dials it in one library, with ping/pong heartbeats that
close a dead link.

- `WebSocketConnector` dials `GET /sync/v1` and opens verify exchanges
  (`HttpVerifyExchange`, `POST /sync/v1/verify`), with TLS when configured.
- `HttpSnapshotSource` and `WebSocketListener.serve_snapshots`: snapshot
  bootstrap over HTTP (`POST /sync/v1/snapshot` for a description, `GET
  /sync/v1/snapshot/ID` for the file, with Range requests to resume),
  admitted like verify (docs/adr/0016-snapshot-bootstrap.md).
- `WebSocketListener` adds those two routes to the node's aiohttp
  application (`syncmesh.api.http` serves it, with the status API) and
  hands each peer to the node's `ChannelHost` and `VerifyHost`.  A refusal
  becomes its HTTP status and text here: the wire text is this module's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from syncmesh.errors import TransportError
from syncmesh.transport.base import (
    Channel,
    ChannelHost,
    ClosedError,
    PeerIdentity,
    Refusal,
    RefusalReason,
    SnapshotHost,
    UnreachableError,
    VerifyHost,
)
from syncmesh.transport.failures import connect_failure
from syncmesh.transport.tls import TlsFiles, client_context, client_context_for_site, site_name_of

log = logging.getLogger(__name__)

SYNC_PATH = "/sync/v1"
VERIFY_PATH = SYNC_PATH + "/verify"
VERIFY_CONTENT_TYPE = "application/msgpack"
VERIFY_TIMEOUT_S = 120.0
# A node's periodic verify of a peer: an answer that sends nothing for this
# long is given up, so that one connection a network left hanging does not
# hold the anti-entropy of that pair for the whole `VERIFY_TIMEOUT_S` (a
# chaos schedule's repair waited 92 s on one; the next round asks again).
PERIODIC_VERIFY_READ_TIMEOUT_S = 15.0
SNAPSHOT_PATH = SYNC_PATH + "/snapshot"
SNAPSHOT_CONTENT_TYPE = "application/json"
# Taking a snapshot of a large file takes seconds (the copy, VACUUM, the checksum).
SNAPSHOT_REQUEST_TIMEOUT_S = 600.0
# A read that stalls this long is a broken connection: resume from what we have.
SNAPSHOT_READ_TIMEOUT_S = 60.0
SNAPSHOT_ATTEMPTS_MAX = 5
SNAPSHOT_CHUNK_BYTES = 1 << 20


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
        self._peer_site = peer_site
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

    @property
    def peer_site(self) -> str | None:
        return self._peer_site

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


# -- the dialling side ------------------------------------------------------------------


class WebSocketConnector:
    """Dials peers' sync WebSockets and opens verify exchanges, over TLS with `tls`."""

    def __init__(
        self,
        *,
        heartbeat_s: float,
        frame_bytes_max: int,
        connect_timeout_s: float,
        tls: TlsFiles | None = None,
    ) -> None:
        self._heartbeat_s = heartbeat_s
        self._frame_bytes_max = frame_bytes_max
        self._connect_timeout_s = connect_timeout_s
        self._tls = tls
        self._ssl = None if tls is None else client_context(tls)

    async def dial(self, url: str) -> WebSocketChannel:
        return await dial(
            url,
            heartbeat_s=self._heartbeat_s,
            frame_bytes_max=self._frame_bytes_max,
            connect_timeout_s=self._connect_timeout_s,
            ssl_context=self._ssl,
        )

    def verify_exchange(self, url: str, site: str | None) -> HttpVerifyExchange:
        """An exchange with the node at `url`; with TLS its certificate must name `site`."""
        context = None
        if self._tls is not None and site is not None:
            context = client_context_for_site(self._tls, site)
        return HttpVerifyExchange(url, ssl=context, read_timeout_s=PERIODIC_VERIFY_READ_TIMEOUT_S)

    def snapshot_source(self, url: str, site: str | None) -> HttpSnapshotSource:
        """Snapshot bootstrap from the node at `url`; with TLS its certificate must name `site`."""
        context = None
        if self._tls is not None:
            context = (
                client_context(self._tls)
                if site is None
                else client_context_for_site(self._tls, site)
            )
        return HttpSnapshotSource(url, ssl=context)


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
        raise TransportError(url, connect_failure(url, exc)) from exc
    except BaseException:
        await session.close()
        raise
    peer_site = site_name_of(socket.get_extra_info("peercert")) if ssl_context else None
    return WebSocketChannel(socket, url, session, peer_site)


class HttpVerifyExchange:
    """Verify requests to one node, `POST /sync/v1/verify`, on one pooled HTTP client.

    With TLS, pass a context from `transport.client_context_for_site`: the
    node's certificate must then name the site meant, as a dialler checks
    the peer it reached, so another member of the cluster cannot answer
    (and feed a repair) in its place.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl: Any = None,
        timeout_s: float = VERIFY_TIMEOUT_S,
        read_timeout_s: float | None = None,
    ) -> None:
        """`read_timeout_s`: give up when the answer sends nothing for this long."""
        self._url = url.rstrip("/") + VERIFY_PATH
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._url

    async def __aenter__(self) -> HttpVerifyExchange:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None, "use `async with` around the exchange"
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": VERIFY_CONTENT_TYPE},
                ssl=self._ssl,
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UnreachableError(self._url, connect_failure(self._url, exc)) from exc


class HttpSnapshotSource:
    """A snapshot from one node: `POST /sync/v1/snapshot`, then `GET .../ID` with resume."""

    def __init__(self, url: str, *, ssl: Any = None) -> None:
        self._base = url.rstrip("/")
        self._ssl = ssl

    @property
    def url(self) -> str:
        """The node's URL (as dialled for sync)."""
        return self._base

    @property
    def _endpoint(self) -> str:
        return self._base + SNAPSHOT_PATH

    async def request(self, body: bytes) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=SNAPSHOT_REQUEST_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    self._endpoint,
                    data=body,
                    headers={"Content-Type": SNAPSHOT_CONTENT_TYPE},
                    ssl=self._ssl if self._ssl is not None else True,
                ) as response,
            ):
                return response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UnreachableError(self._endpoint, connect_failure(self._endpoint, exc)) from exc

    async def download(
        self, snapshot_id: str, target: Path, size: int, progress: Callable[[int], None]
    ) -> None:
        """The file into `target`; after a broken connection, again from where it broke."""
        failures: list[str] = []
        while len(failures) < SNAPSHOT_ATTEMPTS_MAX:
            done = await asyncio.to_thread(_size_of, target)
            if done >= size:
                return
            try:
                await self._download_from(snapshot_id, target, done, progress)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures.append(connect_failure(self._endpoint, exc))
                log.info("snapshot download from %s broke (%s); resuming", self._base, failures[-1])
                await asyncio.sleep(min(5.0, 0.5 * len(failures)))
        raise TransportError(
            self._endpoint, f"the snapshot download failed {len(failures)} times: {failures[-1]}"
        )

    async def _download_from(
        self, snapshot_id: str, target: Path, done: int, progress: Callable[[int], None]
    ) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=SNAPSHOT_READ_TIMEOUT_S)
        headers = {"Range": f"bytes={done}-"} if done else {}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(
                f"{self._endpoint}/{snapshot_id}",
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
            ) as response,
        ):
            if response.status not in (200, 206):
                text = (await response.text())[:500]
                raise TransportError(self._endpoint, f"HTTP {response.status}: {text}")
            if done and response.status != 206:
                done = 0  # the node sent the whole file again: start over
            # A copy of a database: only its owner may read it.
            await asyncio.to_thread(target.touch, mode=0o600)
            with target.open("r+b") as file:
                file.seek(done)
                file.truncate()
                async for chunk in response.content.iter_chunked(SNAPSHOT_CHUNK_BYTES):
                    file.write(chunk)
                    done += len(chunk)
                    progress(done)


def _size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# -- the listening side -----------------------------------------------------------------


# A refusal on the wire, per path: (status, text).  The texts are the wire
# format: peers' operators read them in their logs.
SYNC_REFUSALS: dict[RefusalReason, tuple[int, str]] = {
    RefusalReason.SHUTTING_DOWN: (503, "node is shutting down"),
    RefusalReason.TOO_MANY_CONNECTIONS: (503, "too many connections"),
    RefusalReason.NOT_A_PEER: (403, "certificate {certificate}: not a peer here"),
    RefusalReason.TOO_MANY_FROM_SITE: (429, "too many connections from your site"),
}
VERIFY_REFUSALS: dict[RefusalReason, tuple[int, str]] = {
    **SYNC_REFUSALS,
    RefusalReason.NOT_A_PEER: (403, "your certificate is not a peer's here"),
}


def refusal_response(refusal: Refusal, texts: dict[RefusalReason, tuple[int, str]]) -> web.Response:
    status, text = texts[refusal.reason]
    return web.Response(status=status, text=text.format(certificate=refusal.certificate))


class WebSocketListener:
    """Serves `GET /sync/v1` and `POST /sync/v1/verify` on an aiohttp application."""

    def __init__(self, app: web.Application, *, heartbeat_s: float, frame_bytes_max: int) -> None:
        self._app = app
        self._heartbeat_s = heartbeat_s
        self._frame_bytes_max = frame_bytes_max

    def serve(self, channels: ChannelHost, verify: VerifyHost) -> None:
        async def sync_route(request: web.Request) -> web.StreamResponse:
            return await self._serve_channel(channels, request)

        async def verify_route(request: web.Request) -> web.StreamResponse:
            return await _answer_verify(verify, request)

        self._app.router.add_get(SYNC_PATH, sync_route)
        self._app.router.add_post(VERIFY_PATH, verify_route)

    def serve_snapshots(self, host: SnapshotHost) -> None:
        """Add the snapshot routes: a description on POST, the file (with Range) on GET."""

        async def offer_route(request: web.Request) -> web.StreamResponse:
            return await _offer_snapshot(host, request)

        async def file_route(request: web.Request) -> web.StreamResponse:
            found = host.snapshot_file(identity_of(request), request.match_info["id"])
            if isinstance(found, Refusal):
                return refusal_response(found, VERIFY_REFUSALS)
            if found is None or not found.exists():
                return web.Response(status=404, text="no such snapshot (expired?): ask again")
            return web.FileResponse(found, chunk_size=SNAPSHOT_CHUNK_BYTES)

        self._app.router.add_post(SNAPSHOT_PATH, offer_route)
        self._app.router.add_get(SNAPSHOT_PATH + "/{id}", file_route)

    async def _serve_channel(self, host: ChannelHost, request: web.Request) -> web.StreamResponse:
        opened: list[WebSocketChannel] = []

        async def open_channel() -> Channel:
            channel = await accept(
                request, heartbeat_s=self._heartbeat_s, frame_bytes_max=self._frame_bytes_max
            )
            opened.append(channel)
            return channel

        try:
            refusal = await host.serve_channel(identity_of(request), open_channel)
        except TransportError as exc:
            if opened:
                raise
            log.info("%s", exc)
            raise web.HTTPBadRequest(text=str(exc)) from None  # nobody is left to read it
        if refusal is not None:
            return refusal_response(refusal, SYNC_REFUSALS)
        assert opened, "the host admitted the peer, so it opened the channel"
        return opened[0].response


def _body_reader(request: web.Request, peer: PeerIdentity) -> Callable[[], Awaitable[bytes]]:
    """The request's body, read when the host asks; TransportError if the asker went away."""

    async def read_body() -> bytes:
        try:
            return await request.read()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise TransportError(peer.address, f"request cut short: {exc}") from exc

    return read_body


async def _answer_verify(host: VerifyHost, request: web.Request) -> web.StreamResponse:
    peer = identity_of(request)
    read_body = _body_reader(request, peer)

    try:
        answer = await host.answer_verify(peer, read_body)
    except TransportError as exc:
        # The asker went away mid-request (a partition, a reset): nobody to answer.
        log.info("a verify request from %s was cut short: %s", peer.address, exc)
        return web.Response(status=400, text="request cut short")
    if isinstance(answer, Refusal):
        return refusal_response(answer, VERIFY_REFUSALS)
    return web.Response(
        status=200 if answer.ok else 400, body=answer.body, content_type=VERIFY_CONTENT_TYPE
    )


async def _offer_snapshot(host: SnapshotHost, request: web.Request) -> web.StreamResponse:
    peer = identity_of(request)
    read_body = _body_reader(request, peer)

    try:
        answer = await host.offer_snapshot(peer, read_body)
    except TransportError as exc:
        log.info("a snapshot request from %s was cut short: %s", peer.address, exc)
        return web.Response(status=400, text="request cut short")
    if isinstance(answer, Refusal):
        return refusal_response(answer, VERIFY_REFUSALS)
    if not answer.ok:
        return web.Response(status=409, body=answer.body, content_type="text/plain")
    return web.Response(status=200, body=answer.body, content_type=SNAPSHOT_CONTENT_TYPE)


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


def identity_of(request: web.Request) -> PeerIdentity:
    return PeerIdentity(peer_address(request), peer_site(request))


def peer_address(request: web.Request) -> str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peername[0]}:{peername[1]}" if peername else "unknown"


def peer_site(request: web.Request) -> str | None:
    """The site named by the client's verified certificate, or None (no TLS, no name)."""
    if request.transport is None:
        return None
    return site_name_of(request.transport.get_extra_info("peercert"))
