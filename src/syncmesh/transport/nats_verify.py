"""Verify and repair over NATS request/reply (core NATS, not JetStream).

A site that syncs only through a fleet stream has no URL a peer can reach,
so verify (syncmesh.node.verify) cannot use `POST /sync/v1/verify`.  Here
the same requests and answers travel as core NATS messages:

- a node on a fleet answers on `syncmesh.<cluster>.verify.<its site id>`
  (`NatsVerifyResponder`, started by the node next to its fleet link);
- the asker (`NatsVerifyExchange`, from `NatsVerifyConnection`: the CLI)
  publishes each request there with a reply subject in its own inbox,
  `syncmesh.<cluster>.inbox.<its site id>.<random>`, and the header
  `Syncmesh-Site` naming its site id.

**Who asks.** The responder hands the claimed site id to the node
(`PeerIdentity.site`), which admits only a site it knows on the fleet and
gives it that site's rights (`[peers.<site id>]`, ADR 0008).  The claim
is tied to the NATS user by the reply subject: the responder answers
only when the reply subject lies in the claimed site's inbox, and the
server's permissions (docs/nats.md) let each site subscribe to its own
inbox only, so a site that claims another's id never reads the answer
(and a push it sends in that name is refused before it is read).

**Big messages.** A request or an answer larger than what the
connection's server accepts (`max_payload`) travels as parts: each part
carries `Syncmesh-Part: <index>/<count>`, in order (NATS keeps the order
of one publisher's messages on one subject).  The responder holds at most
`PARTIAL_REQUESTS_MAX` unfinished requests, each for at most
`PARTIAL_REQUEST_TTL_S` and `frame_bytes_max` bytes, answers
`ANSWERS_IN_FLIGHT_MAX` requests at once and refuses (503) a request
beyond `ANSWERS_WAITING_MAX` waiting ones.

**Status.** Each answer carries `Syncmesh-Status`, the HTTP status the
WebSocket transport would have sent (200, 400, 403, 503), so that
`VerifyClient` treats both transports alike.  A request nobody listens
to is answered by the server itself ("no responders"): the site is not
running, or not on this fleet.

This module imports `nats`, as `transport.nats` does; both are the NATS
extra's (pyproject.toml's import contracts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from syncmesh.transport.base import (
    PeerIdentity,
    Refusal,
    RefusalReason,
    UnreachableError,
    VerifyHost,
)
from syncmesh.transport.nats import (
    REQUEST_DEADLINE_S,
    STATE_SUFFIX,
    STREAM_PREFIX,
    SUBJECT_ROOT,
    NatsAuth,
    api_error_text,
    bounded,
    close_client,
    shown,
    tls_context,
    valid_cluster_name,
)
from syncmesh.transport.stream import FleetError

log = logging.getLogger(__name__)

HEADER_SITE = "Syncmesh-Site"  # the asker's site id (the claim the reply subject backs)
HEADER_PART = "Syncmesh-Part"  # "<index>/<count>", from 1
HEADER_STATUS = "Syncmesh-Status"  # the answer's HTTP-like status
NO_RESPONDERS_STATUS = "503"  # the server's own answer when nobody subscribes
# Room left in each part for its subject, reply subject and headers.
PART_OVERHEAD_BYTES = 1_024
ANSWER_TIMEOUT_S = 120.0  # as the HTTP exchange: a deep verify of a big table takes a while
PART_TIMEOUT_S = 30.0  # between the parts of one answer
CONNECT_TIMEOUT_S = 5  # whole seconds: nats-py's connect and flush take ints
CONNECT_ROUNDS = 1  # the asker tries each server this many times more, then gives up
PARTIAL_REQUESTS_MAX = 16  # unfinished multi-part requests the responder holds
PARTIAL_REQUEST_TTL_S = 60.0  # an unfinished request is dropped after this
ANSWERS_IN_FLIGHT_MAX = 4  # requests answered at once (each may read the store)
ANSWERS_WAITING_MAX = 64  # whole requests held for an answer; more are refused (503)

REFUSAL_STATUS: dict[RefusalReason, tuple[int, str]] = {
    RefusalReason.SHUTTING_DOWN: (503, "the node is shutting down"),
    RefusalReason.TOO_MANY_CONNECTIONS: (503, "too many requests"),
    RefusalReason.NOT_A_PEER: (403, "{certificate}"),
    RefusalReason.TOO_MANY_FROM_SITE: (503, "too many requests from your site"),
}


def verify_subject(cluster: str, site_id: str) -> str:
    """Where the node of `site_id` answers verify requests."""
    return f"{SUBJECT_ROOT}.{cluster}.verify.{site_id}"


def inbox_prefix(cluster: str, site_id: str) -> str:
    """The reply subjects of `site_id`'s requests lie under this (its NATS user's only inbox)."""
    return f"{SUBJECT_ROOT}.{cluster}.inbox.{site_id}."


def parts_of(body: bytes, part_bytes: int) -> list[bytes]:
    """`body` cut into parts of at most `part_bytes` (one empty part for an empty body)."""
    assert part_bytes > 0
    return [body[start : start + part_bytes] for start in range(0, len(body), part_bytes)] or [b""]


def part_header(index: int, count: int) -> str:
    return f"{index}/{count}"


def parse_part(value: str | None) -> tuple[int, int] | None:
    """(index, count) of a `Syncmesh-Part` header; None when it is missing or malformed."""
    if value is None:
        return (1, 1)
    index, separator, count = value.partition("/")
    if not separator or not index.isdigit() or not count.isdigit():
        return None
    parsed = (int(index), int(count))
    return parsed if 1 <= parsed[0] <= parsed[1] else None


async def _connect(
    servers: tuple[str, ...],
    name: str,
    auth: NatsAuth,
    *,
    reconnect: bool,
    failures: list[str] | None = None,
) -> Client:
    """A connection to one of `servers`; FleetError naming the last failure when none answers.

    nats-py tries the servers again and again inside `connect` (it stops
    only after `max_reconnect_attempts` > 0 rounds), so a round is allowed
    here and the whole attempt is bounded in time.
    """
    failures = [] if failures is None else failures

    async def note_error(error: Exception) -> None:
        """nats-py logs a traceback per asynchronous error by default; keep the text."""
        failures.append(f"{type(error).__name__}: {error}")
        log.debug("nats verify connection: %s", failures[-1])

    connecting = nats.connect(
        servers=list(servers),
        name=name,
        user_credentials=auth.credentials or None,
        tls=tls_context(auth),
        connect_timeout=CONNECT_TIMEOUT_S,
        allow_reconnect=True,
        max_reconnect_attempts=-1 if reconnect else CONNECT_ROUNDS,
        reconnect_time_wait=1 if reconnect else 0,
        error_cb=note_error,
    )
    try:
        return await bounded(
            connecting, "connect", shown(servers), CONNECT_TIMEOUT_S * (CONNECT_ROUNDS + 1)
        )
    except (nats.errors.Error, OSError, FleetError) as exc:
        reason = failures[-1] if failures else f"{type(exc).__name__}: {exc}"
        raise FleetError(shown(servers), f"cannot connect: {reason}") from exc


def _part_bytes(client: Client) -> int:
    return max(1, int(client.max_payload) - PART_OVERHEAD_BYTES)


# -- the asking side ----------------------------------------------------------------------


class NatsVerifyConnection:
    """One NATS connection of the asking side (the CLI), for one or more sites' exchanges.

    `site_id` is the asker's own (the local file's): its requests' reply
    subjects lie in that site's inbox, which its NATS user may read.
    """

    def __init__(
        self,
        servers: tuple[str, ...],
        cluster: str,
        site_id: str,
        *,
        auth: NatsAuth | None = None,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        assert servers, "at least one NATS server URL"
        assert valid_cluster_name(cluster), cluster
        self.servers = servers
        self.cluster = cluster
        self.site_id = site_id
        self._auth = auth or NatsAuth()
        self._answer_timeout_s = answer_timeout_s
        self._client: Client | None = None
        # The client's asynchronous errors: a subscription the server refused
        # (permissions) arrives this way.
        self._errors: list[str] = []

    async def __aenter__(self) -> NatsVerifyConnection:
        self._client = await _connect(
            self.servers,
            f"syncmesh verify {self.site_id}",
            self._auth,
            reconnect=False,
            failures=self._errors,
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    def _connected(self) -> Client:
        assert self._client is not None, "use `async with` around the connection"
        return self._client

    async def fleet_sites(self, marker_token: str) -> tuple[str, ...]:
        """The sites the fleet knows: subjects of the changes stream, markers of the state stream.

        `marker_token` is the state stream's token of a site's marker
        (`node.fleet.STATE_MARKER`).  FleetError when neither stream exists.
        """
        js = self._connected().jetstream(timeout=CONNECT_TIMEOUT_S)
        prefix = f"{SUBJECT_ROOT}.{self.cluster}."
        stream = STREAM_PREFIX + self.cluster.upper()
        found: set[str] = set()
        missing = 0
        for name, subjects, position in (
            (stream, prefix + "changes.*", 2),
            (stream + STATE_SUFFIX, f"{prefix}state.*.{marker_token}", 2),
        ):
            try:
                info = await bounded(
                    js.stream_info(name, subjects_filter=subjects), "stream info", name
                )
            except nats.js.errors.NotFoundError:
                missing += 1
                continue
            except (nats.errors.Error, OSError) as exc:
                raise FleetError(name, f"cannot read the stream: {api_error_text(exc)}") from exc
            for subject in info.state.subjects or {}:
                tokens = subject.split(".")
                if len(tokens) > position + 1:
                    found.add(tokens[position + 1])
        if missing == 2:
            raise FleetError(stream, f"no such stream: is {self.cluster!r} the fleet's cluster?")
        found.discard(self.site_id)
        return tuple(sorted(found))

    def exchange(self, site_id: str) -> NatsVerifyExchange:
        return NatsVerifyExchange(
            self._connected(),
            self.cluster,
            self.site_id,
            site_id,
            self._answer_timeout_s,
            self._errors,
        )


class NatsVerifyAsker:
    """Opens a node's connections for verifying fleet sites (`transport.FleetVerifyAsker`).

    One connection per periodic verify: it is rare (one site per
    `sync.verify_interval_s`), and a connection held open between rounds
    would only be one more client on the servers.
    """

    def __init__(
        self, servers: tuple[str, ...], cluster: str, *, auth: NatsAuth | None = None
    ) -> None:
        assert servers, "at least one NATS server URL"
        assert valid_cluster_name(cluster), cluster
        self._servers = servers
        self._cluster = cluster
        self._auth = auth

    def connect(self, own_site: str) -> NatsVerifyConnection:
        return NatsVerifyConnection(self._servers, self._cluster, own_site, auth=self._auth)


class NatsVerifyExchange:
    """Verify requests to the node of one site, over NATS (`transport.VerifyExchange`)."""

    def __init__(
        self,
        client: Client,
        cluster: str,
        own_site: str,
        site_id: str,
        answer_timeout_s: float,
        errors: list[str] | None = None,
    ) -> None:
        self._client = client
        self._errors = [] if errors is None else errors
        self._own_site = own_site
        self._site = site_id
        self._subject = verify_subject(cluster, site_id)
        self._inbox = inbox_prefix(cluster, own_site)
        self._answer_timeout_s = answer_timeout_s

    @property
    def url(self) -> str:
        """What reports and errors name: the site and its subject."""
        return f"site {self._site} (nats {self._subject})"

    async def __aenter__(self) -> NatsVerifyExchange:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        reply = self._inbox + uuid.uuid4().hex
        answers: asyncio.Queue[Msg] = asyncio.Queue()
        try:
            subscription = await bounded(
                self._client.subscribe(reply, cb=answers.put), "subscribe", reply
            )
            try:
                # Subscribed at the server before we ask: no answer can pass us by.
                seen = len(self._errors)
                await _settled_at_server(self._client)
                self._check_subscribed(reply, self._errors[seen:])
                parts = parts_of(body, _part_bytes(self._client))
                for index, part in enumerate(parts, 1):
                    await self._client.publish(
                        self._subject,
                        part,
                        reply=reply,
                        headers={
                            HEADER_SITE: self._own_site,
                            HEADER_PART: part_header(index, len(parts)),
                        },
                    )
                return await self._answer(answers)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
        except (nats.errors.Error, OSError, FleetError) as exc:
            raise UnreachableError(self.url, f"{type(exc).__name__}: {exc}") from exc

    def _check_subscribed(self, reply: str, errors: list[str]) -> None:
        """UnreachableError when the server refused our subscription to our own inbox.

        The answer could never reach us: the NATS user is not this site's
        (it may not read `syncmesh.<cluster>.inbox.<site id>.>`).
        """
        for error in errors:
            if "permissions violation" in error.lower() and reply in error:
                raise UnreachableError(
                    self.url,
                    f"the NATS server does not let this user read the inbox of site"
                    f" {self._own_site} ({self._inbox}>): use that site's NATS user"
                    " (docs/nats.md, Permissions)",
                )

    async def _answer(self, answers: asyncio.Queue[Msg]) -> tuple[int, bytes]:
        received: list[bytes] = []
        status = 0
        timeout_s = self._answer_timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(answers.get(), timeout_s)
            except TimeoutError as exc:
                what = "did not answer" if not received else "stopped answering"
                raise UnreachableError(
                    self.url,
                    f"site {self._site} {what} on {self._subject} within {timeout_s:g} s",
                ) from exc
            headers = msg.headers or {}
            no_responders = headers.get("Status") == NO_RESPONDERS_STATUS
            if not received and HEADER_STATUS not in headers and no_responders:
                raise UnreachableError(
                    self.url,
                    f"no node answers on {self._subject}: site {self._site} is not"
                    " running, or not on this fleet (cluster)",
                )
            part = parse_part(headers.get(HEADER_PART))
            if part is None or part[0] != len(received) + 1:
                raise UnreachableError(
                    self.url, f"an answer part out of order ({headers.get(HEADER_PART)!r})"
                )
            if not received:
                status_text = headers.get(HEADER_STATUS, "")
                status = int(status_text) if status_text.isdigit() else 502
            received.append(msg.data)
            if part[0] == part[1]:
                return status, b"".join(received)
            timeout_s = PART_TIMEOUT_S


# -- the answering side ----------------------------------------------------------------------


@dataclass(slots=True)
class _Partial:
    """The parts of one request received so far."""

    site: str
    count: int
    started: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class NatsVerifyResponder:
    """Answers verify requests on this site's subject (`transport.FleetVerifyResponder`)."""

    def __init__(
        self,
        servers: tuple[str, ...],
        cluster: str,
        *,
        auth: NatsAuth | None = None,
        frame_bytes_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert servers, "at least one NATS server URL"
        assert valid_cluster_name(cluster), cluster
        self._servers = servers
        self._cluster = cluster
        self._auth = auth or NatsAuth()
        self._frame_bytes_max = frame_bytes_max
        self._clock = clock
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._partial: dict[str, _Partial] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(ANSWERS_IN_FLIGHT_MAX)
        self.subject = ""

    async def serve(self, site_id: str, host: VerifyHost) -> None:
        """Connect and subscribe; FleetError when the servers cannot be reached.

        Answers until `close`; the client reconnects (and subscribes again)
        by itself after a lost connection.
        """
        self.subject = verify_subject(self._cluster, site_id)
        client = await _connect(
            self._servers, f"syncmesh verify answers {site_id}", self._auth, reconnect=True
        )
        self._client = client

        async def received(msg: Msg) -> None:
            self._receive(client, host, msg)

        try:
            self._subscription = await bounded(
                client.subscribe(self.subject, cb=received), "subscribe", self.subject
            )
            await _settled_at_server(client)
        except (nats.errors.Error, OSError, FleetError) as exc:
            await self.close()
            raise FleetError(self.subject, f"cannot subscribe: {exc}") from exc
        log.info("answering verify requests on %s", self.subject)

    async def close(self) -> None:
        for task in list(self._answering):
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    def _receive(self, client: Client, host: VerifyHost, msg: Msg) -> None:
        """One part of a request: kept until its request is whole, then answered in a task."""
        headers = msg.headers or {}
        reply = msg.reply
        site = headers.get(HEADER_SITE, "")
        if not reply:
            log.info("a verify request on %s without a reply subject: dropped", self.subject)
            return
        self._expire_partial()
        part = parse_part(headers.get(HEADER_PART))
        refused = self._refusal(reply, site, part)
        if refused:
            self._partial.pop(reply, None)
            self._spawn(self._send(client, reply, 400, refused.encode()))
            return
        assert part is not None
        index, count = part
        partial = self._partial.get(reply)
        if partial is None:
            if index != 1 or len(self._partial) >= PARTIAL_REQUESTS_MAX:
                text = "a request's first part is missing" if index != 1 else "too many requests"
                self._spawn(self._send(client, reply, 503 if index == 1 else 400, text.encode()))
                return
            partial = _Partial(site, count, self._clock())
            self._partial[reply] = partial
        elif index != len(partial.parts) + 1 or count != partial.count or site != partial.site:
            del self._partial[reply]
            self._spawn(self._send(client, reply, 400, b"request parts out of order"))
            return
        partial.parts.append(msg.data)
        partial.size += len(msg.data)
        if partial.size > self._frame_bytes_max:
            del self._partial[reply]
            text = f"request larger than {self._frame_bytes_max} bytes (limits.message_bytes_max)"
            self._spawn(self._send(client, reply, 400, text.encode()))
            return
        if index < count:
            return
        del self._partial[reply]
        if len(self._answering) >= ANSWERS_WAITING_MAX:
            self._spawn(self._send(client, reply, 503, b"too many requests"))
            return
        body = b"".join(partial.parts)
        self._spawn(self._answer(client, host, reply, site, body))

    def _refusal(self, reply: str, site: str, part: tuple[int, int] | None) -> str:
        """Why a request part cannot be taken, or ""."""
        if not site or "." in site or "*" in site or ">" in site:
            return f"a verify request needs the {HEADER_SITE} header: your site id"
        if not reply.startswith(inbox_prefix(self._cluster, site)):
            return (
                f"the reply subject is not in the inbox of site {site}"
                f" ({inbox_prefix(self._cluster, site)}*)"
            )
        if part is None:
            return f"a malformed {HEADER_PART} header"
        return ""

    def _expire_partial(self) -> None:
        now = self._clock()
        for reply in [
            reply
            for reply, partial in self._partial.items()
            if now - partial.started > PARTIAL_REQUEST_TTL_S
        ]:
            log.info("an unfinished verify request from %s expired", self._partial[reply].site)
            del self._partial[reply]

    def _spawn(self, work: object) -> None:
        assert asyncio.iscoroutine(work)
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(
        self, client: Client, host: VerifyHost, reply: str, site: str, body: bytes
    ) -> None:
        async def read_body() -> bytes:
            return body

        async with self._slots:
            peer = PeerIdentity(address=f"nats site {site}", site=site)
            try:
                answer = await host.answer_verify(peer, read_body)
            except Exception:  # a bug must not end the answering of every other request
                log.exception("answering a verify request from site %s failed", site)
                await self._send(client, reply, 500, b"internal error")
                return
            if isinstance(answer, Refusal):
                status, text = REFUSAL_STATUS[answer.reason]
                await self._send(
                    client, reply, status, text.format(certificate=answer.certificate).encode()
                )
                return
            await self._send(client, reply, 200 if answer.ok else 400, answer.body)

    async def _send(self, client: Client, reply: str, status: int, body: bytes) -> None:
        parts = parts_of(body, _part_bytes(client))
        try:
            for index, part in enumerate(parts, 1):
                await client.publish(
                    reply,
                    part,
                    headers={
                        HEADER_STATUS: str(status),
                        HEADER_PART: part_header(index, len(parts)),
                    },
                )
        except (nats.errors.Error, OSError) as exc:
            log.info("could not answer a verify request on %s: %s", reply, exc)


async def _settled_at_server(client: Client) -> None:
    """Return once the server has processed every command sent before (a SUB: its
    permission error, if any, has then reached the error callback).

    One flush is not enough: nats-py writes a flush's PING straight to the
    socket, ahead of commands still in its pending buffer (the SUB), so the
    PONG can come back before the server saw the SUB.  The first flush also
    sends the buffer; the second PING goes out behind it (found by a flaky
    test under load: an impostor's refused subscription was not seen, and
    its request went out).
    """
    for _round in range(2):
        await bounded(client.flush(timeout=CONNECT_TIMEOUT_S), "flush", "nats", REQUEST_DEADLINE_S)
