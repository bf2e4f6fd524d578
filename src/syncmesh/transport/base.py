"""The transport seam: what a node needs from any way of reaching its peers.

A transport does three things, and `syncmesh.node` sees only these types:

- a `Connector` dials a peer by its URL and returns a `Channel`, which
  carries the peer's verified identity (`peer_site`: the site named by its
  certificate, or None without TLS);
- a `Listener` accepts channels and hands each, with the identity of the
  peer that opened it (`PeerIdentity`), to a `ChannelHost` (the node), which
  admits it or answers with a typed `Refusal`;
- a `VerifyExchange` carries one verify request and its answer (verify and
  repair are request/answer, not a session), and the listener hands the
  requests it receives to a `VerifyHost`.

The WebSocket transport (`transport.websocket`) is the one a running node
uses; `transport.memory` is the same over asyncio queues, for tests.  A new
transport (NATS later) is a new module here plus the place that picks it
(`syncmesh.api.http.running_node`); node code does not change.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from syncmesh.errors import TransportError


class ClosedError(TransportError):
    """The peer closed the channel, or the link died (heartbeat lost)."""


class UnreachableError(TransportError):
    """Nothing was delivered: the peer could not be reached; `reason` says how."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(peer, f"cannot reach it: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who opened a channel or sent a request, as the transport verified it."""

    address: str  # where it comes from (host:port), for logs and statistics
    site: str | None  # the site its verified certificate names; None without TLS or name


class RefusalReason(enum.Enum):
    """Why a peer is turned away before it says anything."""

    SHUTTING_DOWN = "shutting down"
    TOO_MANY_CONNECTIONS = "too many connections"  # limits.inbound_sessions_max
    NOT_A_PEER = "not a peer"  # the certificate names no configured peer
    TOO_MANY_FROM_SITE = "too many connections from the site"  # limits.sessions_per_peer_max


@dataclass(frozen=True, slots=True)
class Refusal:
    """A peer turned away at admission; the transport renders it on its wire.

    `certificate` says what the peer's certificate names, for NOT_A_PEER
    ("names no site", "is for site 'x'").
    """

    reason: RefusalReason
    certificate: str = ""


class Channel(Protocol):
    """Whole binary frames both ways between two peers, for one session."""

    @property
    def peer(self) -> str:
        """The peer's address (the URL dialled, or host:port of who dialled in)."""
        ...

    @property
    def peer_site(self) -> str | None:
        """The site named by the peer's verified certificate; None without TLS."""
        ...

    async def send(self, frame: bytes) -> None: ...

    async def receive(self, timeout_s: float | None = None) -> bytes: ...

    async def close(self) -> None: ...


class Connector(Protocol):
    """Dials peers.  Raises TransportError when the peer cannot be reached."""

    async def dial(self, url: str) -> Channel: ...

    def verify_exchange(self, url: str, site: str | None) -> VerifyExchange:
        """An exchange with the node at `url`; with TLS it must prove to be `site`."""
        ...


class ChannelHost(Protocol):
    """What a listener hands an incoming channel to (the node).

    `open_channel` completes the transport's side of the connection (the
    WebSocket upgrade) and returns the channel; the host calls it only once
    it has admitted `peer`, and returns when the session is over.  A refused
    peer gets the `Refusal` back, for the transport to answer on its wire,
    and `open_channel` is never called.
    """

    async def serve_channel(
        self, peer: PeerIdentity, open_channel: Callable[[], Awaitable[Channel]]
    ) -> Refusal | None: ...


@dataclass(frozen=True, slots=True)
class VerifyAnswer:
    """A verify answer: `ok` False for a request the node cannot read (HTTP 400)."""

    ok: bool
    body: bytes


class VerifyHost(Protocol):
    """What a listener hands a verify request to (the node's verify server).

    `read_body` reads the request's body; the host calls it only once it
    has admitted `peer`.  It raises TransportError when the asker went away.
    """

    async def answer_verify(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | VerifyAnswer: ...


class VerifyExchange(Protocol):
    """The asking side of verify: one request, one answer, to one node.

    `post` returns the answer's status (200, or 400 for a request the node
    could not read, 403/503 for a refusal: the HTTP statuses, which the
    in-memory transport uses too) and body; TransportError when the node
    cannot be reached.  Used as an async context manager.
    """

    @property
    def url(self) -> str: ...

    async def __aenter__(self) -> VerifyExchange: ...

    async def __aexit__(self, *_exc: object) -> None: ...

    async def post(self, body: bytes) -> tuple[int, bytes]: ...


class FleetVerifyResponder(Protocol):
    """Answers verify requests that reach this site through the fleet (NATS request/reply).

    `serve` connects and subscribes on the site's verify subject, then hands
    each request, with the site it claims to be from (`PeerIdentity.site`),
    to `host`; it returns once subscribed and raises TransportError (a
    `FleetError`) when the servers cannot be reached.  `transport.nats_verify`.
    """

    async def serve(self, site_id: str, host: VerifyHost) -> None: ...

    async def close(self) -> None: ...


class FleetVerifyConnection(Protocol):
    """The asking side's connection to the fleet: an exchange with each site it asks."""

    def exchange(self, site_id: str) -> VerifyExchange: ...

    async def fleet_sites(self, marker_token: str) -> tuple[str, ...]:
        """The fleet's other sites: with messages, or only a state marker (`marker_token`)."""
        ...


class FleetVerifyAsker(Protocol):
    """Opens the asking side of verify with fleet sites (NATS request/reply).

    A node's periodic verify of fleet sites uses it (node.verify_server).
    `connect` returns an async context manager around one connection for
    `own_site` (the asker: the answers come to that site's inbox); entering
    it raises TransportError (a `FleetError`) when no server answers.
    `transport.nats_verify.NatsVerifyAsker`.
    """

    def connect(self, own_site: str) -> AbstractAsyncContextManager[FleetVerifyConnection]: ...


class Listener(Protocol):
    """Accepts channels and verify requests, and hands them to the node."""

    def serve(self, channels: ChannelHost, verify: VerifyHost) -> None: ...


# -- snapshot bootstrap (docs/adr/0016-snapshot-bootstrap.md) ----------------------------


@dataclass(frozen=True, slots=True)
class SnapshotOffer:
    """The node's answer to a snapshot request: `ok` with the snapshot's description.

    `body` is the node's JSON (the snapshot's id and `SnapshotInfo`), or,
    with `ok` False, the reason the node will not give one (HTTP 409).
    """

    ok: bool
    body: bytes


class SnapshotHost(Protocol):
    """What a listener hands snapshot requests to (the node's snapshot server).

    `offer_snapshot` takes a consistent snapshot for the joiner named in the
    request's body (read with `read_body` once `peer` is admitted);
    `snapshot_file` is the file of a snapshot offered to the same peer
    earlier, None if there is no such snapshot (expired, or never offered).
    """

    async def offer_snapshot(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | SnapshotOffer: ...

    def snapshot_file(self, peer: PeerIdentity, snapshot_id: str) -> Refusal | Path | None: ...


class SnapshotSource(Protocol):
    """The joining side: ask one node for a snapshot, then download its file.

    `request` returns the answer's status (200, 409 for a node that will not
    give one, 403/503 for a refusal) and body.  `download` writes the file
    to `target`, resuming after a broken connection from the bytes already
    there, and calls `progress(bytes_done)` as it goes; TransportError when
    it cannot finish.
    """

    @property
    def url(self) -> str: ...

    async def request(self, body: bytes) -> tuple[int, bytes]: ...

    async def download(
        self, snapshot_id: str, target: Path, size: int, progress: Callable[[int], None]
    ) -> None: ...
