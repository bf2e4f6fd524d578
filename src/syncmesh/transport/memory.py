"""An in-memory transport: channels over asyncio queues, in one event loop.

For tests where real sockets add nothing: nodes on one `MemoryNetwork`
dial each other by URL (`memory://NAME`), each end sees the other's site
as a verified identity would (`peer_site`), and the node cannot tell it
from the WebSocket transport.  Admission, refusals and verify run through
the same host Protocols as over WebSockets; a refusal comes back to the
dialler as a TransportError naming the reason and the HTTP-style status.

    network = MemoryNetwork()
    node = Node(config, connector=network.connector(site="a"))
    network.listener("memory://a", site="a").serve(node, node.verify_server)
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from syncmesh.errors import TransportError
from syncmesh.transport.base import (
    Channel,
    ChannelHost,
    ClosedError,
    PeerIdentity,
    Refusal,
    RefusalReason,
    UnreachableError,
    VerifyHost,
)

FRAMES_QUEUED_MAX = 64  # frames one end may send ahead of the other's reading
# Statuses as the WebSocket transport answers them, so both read alike.
REFUSAL_STATUS = {
    RefusalReason.SHUTTING_DOWN: 503,
    RefusalReason.TOO_MANY_CONNECTIONS: 503,
    RefusalReason.NOT_A_PEER: 403,
    RefusalReason.TOO_MANY_FROM_SITE: 429,
}
_CLOSED = b""  # the end-of-channel marker in a queue (frames are never empty)


class MemoryChannel:
    """One end of an in-memory channel."""

    def __init__(self, peer: str, peer_site: str | None) -> None:
        self._peer = peer
        self._peer_site = peer_site
        # Frames the other end sent us; the other end, once paired.
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue(FRAMES_QUEUED_MAX)
        self.other: MemoryChannel | None = None
        self.is_closed = False  # this end closed (by us, or by the other end's close)

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def peer_site(self) -> str | None:
        return self._peer_site

    async def send(self, frame: bytes) -> None:
        assert frame, "a frame is never empty"
        other = self.other
        if self.is_closed or other is None or other.is_closed:
            raise ClosedError(self._peer, "connection closed")
        await other.inbox.put(frame)

    async def receive(self, timeout_s: float | None = None) -> bytes:
        if self.is_closed and self.inbox.empty():
            raise ClosedError(self._peer, "connection closed")
        try:
            async with asyncio.timeout(timeout_s):
                frame = await self.inbox.get()
        except TimeoutError as exc:
            raise TransportError(self._peer, f"no message within {timeout_s} s") from exc
        if frame == _CLOSED:
            self.inbox.put_nowait(_CLOSED)  # every later receive sees the end too
            raise ClosedError(self._peer, "connection closed by peer")
        return frame

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        _put_end(self.inbox)
        if self.other is not None:
            self.other.is_closed = True
            _put_end(self.other.inbox)


def _put_end(inbox: asyncio.Queue[bytes]) -> None:
    """Mark a queue's end; a full queue drops its oldest frame, as a cut link would."""
    if inbox.full():
        inbox.get_nowait()
    inbox.put_nowait(_CLOSED)


def channel_pair(
    dialler: PeerIdentity, listener: PeerIdentity
) -> tuple[MemoryChannel, MemoryChannel]:
    """(the dialler's end, the listener's end); each names the other as its peer."""
    dialled = MemoryChannel(listener.address, listener.site)
    accepted = MemoryChannel(dialler.address, dialler.site)
    dialled.other, accepted.other = accepted, dialled
    return dialled, accepted


@dataclass(slots=True)
class _Listening:
    site: str | None
    channels: ChannelHost
    verify: VerifyHost
    tasks: set[asyncio.Task[Refusal | None]] = field(default_factory=set)


class MemoryNetwork:
    """The URLs that nodes listen on, in one process; dial one to reach its node."""

    def __init__(self) -> None:
        self._listening: dict[str, _Listening] = {}
        self._numbers = itertools.count(1)

    def listener(self, url: str, *, site: str | None = None) -> MemoryListener:
        """A listener at `url`; `site` is what diallers see as its certificate's site."""
        return MemoryListener(self, url, site)

    def connector(self, *, site: str | None = None) -> MemoryConnector:
        """A connector whose channels name `site` to the nodes they reach."""
        return MemoryConnector(self, site)

    def listen(self, url: str, listening: _Listening) -> None:
        assert url not in self._listening, f"{url} is already listened on"
        self._listening[url] = listening

    def unlisten(self, url: str) -> None:
        """Stop accepting at `url` (channels already open stay open)."""
        self._listening.pop(url, None)

    def reach(self, url: str) -> _Listening:
        listening = self._listening.get(url.rstrip("/"))
        if listening is None:
            raise UnreachableError(url, "nobody listens there")
        return listening

    def new_address(self) -> str:
        return f"memory-{next(self._numbers)}"


class MemoryListener:
    def __init__(self, network: MemoryNetwork, url: str, site: str | None) -> None:
        self._network = network
        self._url = url.rstrip("/")
        self._site = site

    def serve(self, channels: ChannelHost, verify: VerifyHost) -> None:
        self._network.listen(self._url, _Listening(self._site, channels, verify))


class MemoryConnector:
    def __init__(self, network: MemoryNetwork, site: str | None) -> None:
        self._network = network
        self._site = site

    async def dial(self, url: str) -> Channel:
        listening = self._network.reach(url)
        dialler = PeerIdentity(self._network.new_address(), self._site)
        dialled, accepted = channel_pair(dialler, PeerIdentity(url, listening.site))
        opened = asyncio.Event()

        async def open_channel() -> Channel:
            opened.set()
            return accepted

        # The listener's side runs on as a task for the session's lifetime,
        # as the WebSocket handler does in the server.
        task = asyncio.get_running_loop().create_task(
            listening.channels.serve_channel(dialler, open_channel)
        )
        listening.tasks.add(task)
        task.add_done_callback(listening.tasks.discard)
        waiting = asyncio.ensure_future(opened.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not opened.is_set():
            refusal = task.result()  # raises what the host raised
            assert refusal is not None, "a host that admits opens the channel"
            raise TransportError(
                url,
                f"cannot connect: {REFUSAL_STATUS[refusal.reason]}"
                f" refused ({refusal.reason.value})",
            )
        return dialled

    def verify_exchange(self, url: str, site: str | None) -> MemoryVerifyExchange:
        return MemoryVerifyExchange(self._network, url, self._site, expected_site=site)


class MemoryVerifyExchange:
    """Verify requests handed straight to the node at `url`'s `VerifyHost`."""

    def __init__(
        self,
        network: MemoryNetwork,
        url: str,
        site: str | None,
        *,
        expected_site: str | None = None,
    ) -> None:
        self._network = network
        self._url = url
        self._site = site
        self._expected_site = expected_site

    @property
    def url(self) -> str:
        return self._url

    async def __aenter__(self) -> MemoryVerifyExchange:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        listening = self._network.reach(self._url)
        if self._expected_site is not None and listening.site != self._expected_site:
            raise UnreachableError(
                self._url, f"its site is {listening.site!r}, not {self._expected_site!r}"
            )

        async def read_body() -> bytes:
            return body

        asker = PeerIdentity(self._network.new_address(), self._site)
        answer = await listening.verify.answer_verify(asker, read_body)
        if isinstance(answer, Refusal):
            return REFUSAL_STATUS[answer.reason], answer.reason.value.encode()
        return (200 if answer.ok else 400), answer.body
