"""The NATS JetStream fleet transport: the only module that imports `nats` (nats-py).

`JetStreamLink` implements `transport.stream.FleetLink` over one NATS
connection (docs/adr/0014-nats-stream-model.md):

- one stream per syncmesh cluster, `SYNCMESH_<CLUSTER>`, holding the
  subjects `syncmesh.<cluster>.changes.<site id>`; made with file storage
  and `replicas` copies if it does not exist (an operator may make it
  first with their own limits: an existing stream is used as it is);
- publishes with a `Nats-Msg-Id`, so the stream stores a retried publish
  once (within its duplicate window);
- a durable pull consumer per site, `syncmesh_<site id>`, on
  `syncmesh.<cluster>.changes.*`, explicit acks: redelivery, ack waits
  and the number of unacknowledged messages are JetStream's;
- a second, compacted stream, `SYNCMESH_<CLUSTER>_STATE`, subjects
  `syncmesh.<cluster>.state.<site id>.<token>`, at most one message per
  subject: a site's latest copy of each of its rows, from which a node
  whose position fell below the changes stream's first message bootstraps.

nats-py is an optional extra (`pip install syncmesh[nats]`); importing
this module without it raises ImportError, which the caller that picks
the transport (`syncmesh.api.http`) turns into a ConfigError naming the
extra.  Every client error leaves here as a `FleetError` (`from exc`): nats-py's
own, and the `OSError`s it lets through (asyncio's `TimeoutError` among them).

Every call into nats-py runs under a deadline of our own (`bounded`), a
little above nats-py's own timeout for that call, in a task of its own:
the caller waits on `asyncio.wait`, never on nats-py's awaits.  Two
reasons (issue 15, the fleet that stalled in CI): nats-py can wait without
a bound (its initial connect with `max_reconnect_attempts=-1` retries
forever when no server answers; a close, or a flush when its buffer is
full, waits on a socket that no longer moves), and on Python 3.11 its
`asyncio.wait_for` swallows a cancellation that arrives in the same turn of
the loop as the reply, so a fleet loop cancelled by its task group kept
running and the group never ended, in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import urllib.parse
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from syncmesh.errors import ConfigError
from syncmesh.transport.stream import (
    Delivery,
    FleetError,
    PublishReceipt,
    StoredMessage,
    StreamPosition,
)

log = logging.getLogger(__name__)

# A cluster name is a subject token and part of the stream's name.
CLUSTER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SUBJECT_ROOT = "syncmesh"
STREAM_PREFIX = "SYNCMESH_"
CONSUMER_PREFIX = "syncmesh_"
DUPLICATE_WINDOW_S = 120.0  # a retried publish within this is stored once
ACK_WAIT_S = 30.0  # a delivered message not acked within this is delivered again
ACK_PENDING_MAX = 1_000  # delivered, unacknowledged messages per consumer (flow control)
REQUEST_TIMEOUT_S = 5.0  # one JetStream API request or publish
STATE_SUFFIX = "_STATE"  # the compacted stream: SYNCMESH_<CLUSTER>_STATE
# JetStream's error code for "replicas > 1 not supported in non-clustered mode".
REPLICAS_UNSUPPORTED = 10074
STATE_PUBLISH_CONCURRENCY = 256  # state publishes awaited together (pipelined requests)
STATE_FETCH_MESSAGES = 512  # messages per fetch while reading a site's state
STATE_FETCH_WAIT_S = 2.0
STATE_READER_IDLE_S = 60.0  # the server drops a reader's consumer left idle this long
# Our own deadlines, a little above nats-py's timeout for the same call: nats-py's
# answer (its TimeoutError, with its words) comes first when it keeps its bound.
DEADLINE_MARGIN_S = 2.0
REQUEST_DEADLINE_S = REQUEST_TIMEOUT_S + DEADLINE_MARGIN_S  # one request, or one group of them
CLOSE_DEADLINE_S = 5.0  # closing a connection (it flushes first, on a socket that may not move)
RECONNECT_WAIT_S = 1  # nats-py's pause before it tries the same server again

T = TypeVar("T")


def valid_cluster_name(name: str) -> bool:
    return CLUSTER_NAME_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsAuth:
    """How to prove who we are to NATS: a credentials file, and/or TLS files."""

    credentials: str = ""  # a NATS .creds file (JWT and NKey seed)
    tls_ca: str = ""  # the CA that signed the servers' certificates
    tls_cert: str = ""  # our client certificate and key (mutual TLS), optional
    tls_key: str = ""


def tls_context(auth: NatsAuth) -> ssl.SSLContext | None:
    """The client TLS context `auth` describes, or None for plain connections."""
    if not (auth.tls_ca or auth.tls_cert):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if auth.tls_ca:
            context.load_verify_locations(cafile=auth.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("transport.nats.tls_ca", f"cannot load {auth.tls_ca}: {exc}") from exc
    if auth.tls_cert:
        try:
            context.load_cert_chain(auth.tls_cert, auth.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "transport.nats.tls_cert", f"cannot load the certificate and key: {exc}"
            ) from exc
    return context


class _JetStreamDelivery:
    """A `Delivery` over a nats-py message."""

    def __init__(self, msg: Msg, message: StoredMessage, stream: str) -> None:
        self._msg = msg
        self._message = message
        self._stream = stream

    @property
    def message(self) -> StoredMessage:
        return self._message

    @property
    def delivered_count(self) -> int:
        return int(self._msg.metadata.num_delivered or 1)

    async def ack(self) -> None:
        await _settle(self._msg.ack_sync(timeout=REQUEST_TIMEOUT_S), "ack", self._stream)

    async def nak(self, delay_s: float) -> None:
        await _settle(self._msg.nak(delay=delay_s), "nak", self._stream)

    async def term(self) -> None:
        await _settle(self._msg.term(), "term", self._stream)


async def _settle(settling: Coroutine[Any, Any, object], what: str, stream: str) -> None:
    try:
        await bounded(settling, what, stream)
    except (nats.errors.Error, OSError) as exc:
        raise FleetError(stream, f"{what} failed: {exc}") from exc


async def bounded(
    call: Coroutine[Any, Any, T], what: str, where: str, limit_s: float = REQUEST_DEADLINE_S
) -> T:
    """Await one nats-py call under our own deadline; past it, FleetError naming `what`.

    The call runs as a task of its own and we wait on `asyncio.wait`, so
    neither bound depends on nats-py: past `limit_s` the call is cancelled
    and left behind (nats-py may swallow the cancellation and finish
    later; its outcome is dropped), and a cancellation of the caller (the
    fleet's task group stopping its loops) always reaches the caller.  The
    call's own errors pass through unchanged, for the caller to map; a call
    that ends cancelled without us asking (nats-py cancels waits when its
    connection closes) is a FleetError too, never a silent CancelledError.
    """
    task = asyncio.ensure_future(call)
    # Its outcome is read even when nobody waits for it any more (the caller
    # cancelled as the call ended with an error): asyncio would log "Task
    # exception was never retrieved" with a traceback.  `task.result()` below
    # still raises the error for a caller that waits.
    task.add_done_callback(_drop_outcome)
    try:
        done, _ = await asyncio.wait({task}, timeout=limit_s)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise FleetError(where, f"{what}: no answer within {limit_s:g} s")
    if task.cancelled():
        raise FleetError(where, f"{what}: cancelled by the NATS client (connection closed?)")
    return task.result()


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    """The outcome of a call we stopped waiting for: read, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def shown(servers: Sequence[str]) -> str:
    """`servers` as logs, errors and status show them: without the secret of a URL.

    nats-py takes a user and password (`nats://USER:PASSWORD@HOST:PORT`) or a
    token (`nats://TOKEN@HOST:PORT`) in the URL, and an operator who gives
    them there found the password in every log line that named the servers,
    in `/v1/status` (`fleet.servers`), on the dashboard and in `syncmesh
    status`.  The password, or the token, is `***` there.
    """
    return ", ".join(_shown_url(url) for url in servers)


def _shown_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:***" if colon else "***"
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{hidden}@{host}", parts.path, parts.query, parts.fragment)
    )


def api_error_text(exc: BaseException) -> str:
    """A JetStream request's error as an operator reads it.

    A request nobody answers comes back as a 503 without a code, which
    nats-py words `ServiceUnavailableError: code=None err_code=None
    description='None'`: the servers have no JetStream for this account
    (a `nats-server` started without `-js`, or an account without
    `jetstream: enabled`).  A JetStream cluster without a leader answers
    503 too, with a code and a description: that one stays as it is.
    """
    if isinstance(exc, nats.js.errors.ServiceUnavailableError) and exc.err_code is None:
        return (
            "no JetStream answers on these servers (503, no responders): enable JetStream"
            " on them (nats-server -js, or a jetstream {} block) and for this user's"
            " account (jetstream: enabled)"
        )
    return str(exc)


# A fleet's changes stream subjects, `syncmesh.<cluster>.changes.*`: group 1 the cluster.
_FLEET_SUBJECTS = re.compile(re.escape(SUBJECT_ROOT) + r"\.([^.]+)\.changes\.\*")

# How `_on_error` words nats-py's timeouts (type names): no cause beyond "no answer".
_TIMEOUT_NAMES = ("TimeoutError:", "ConnectTimeoutError:")


class JetStreamLink:
    """A `FleetLink` on a NATS JetStream cluster."""

    def __init__(
        self,
        servers: tuple[str, ...],
        cluster: str,
        *,
        auth: NatsAuth | None = None,
        replicas: int = 3,
        connect_timeout_s: float = 5.0,
    ) -> None:
        assert servers, "at least one NATS server URL"
        assert valid_cluster_name(cluster), cluster
        self._servers = servers
        self.cluster = cluster
        self._auth = auth or NatsAuth()
        self._tls = tls_context(self._auth)
        self._replicas = replicas
        self._connect_timeout_s = connect_timeout_s
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._consumer = ""
        self._last_error = ""  # the last asynchronous client error logged (repeats: DEBUG)

    # -- names ---------------------------------------------------------------------

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers as status and logs show them (no password: `shown`)."""
        return tuple(_shown_url(url) for url in self._servers)

    @property
    def stream_name(self) -> str:
        return STREAM_PREFIX + self.cluster.upper()

    @property
    def changes_prefix(self) -> str:
        return f"{SUBJECT_ROOT}.{self.cluster}.changes."

    def subject_of(self, site_id: str) -> str:
        return self.changes_prefix + site_id

    @property
    def state_stream_name(self) -> str:
        return self.stream_name + STATE_SUFFIX

    @property
    def state_prefix(self) -> str:
        return f"{SUBJECT_ROOT}.{self.cluster}.state."

    def site_of(self, subject: str) -> str | None:
        if not subject.startswith(self.changes_prefix):
            return None
        site = subject[len(self.changes_prefix) :]
        return site if site and "." not in site else None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def max_payload_bytes(self) -> int:
        return 0 if self._client is None else int(self._client.max_payload)

    # -- lifecycle -----------------------------------------------------------------

    async def open(self, site_id: str, *, fresh_consumer: bool = False) -> None:
        if self._client is None:
            await self._connect(site_id)
        js = self._jetstream()
        await self._ensure_stream(js)
        self._consumer = CONSUMER_PREFIX + site_id
        where = self.stream_name
        try:
            if fresh_consumer:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await bounded(
                        js.delete_consumer(self.stream_name, self._consumer),
                        f"delete consumer {self._consumer}",
                        where,
                    )
            self._subscription = await bounded(
                js.pull_subscribe(
                    self.changes_prefix + "*",
                    durable=self._consumer,
                    stream=self.stream_name,
                    config=ConsumerConfig(
                        durable_name=self._consumer,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=ACK_WAIT_S,
                        max_ack_pending=ACK_PENDING_MAX,
                        filter_subject=self.changes_prefix + "*",
                    ),
                ),
                f"bind consumer {self._consumer}",
                where,
                2 * REQUEST_DEADLINE_S,  # its info, then its creation
            )
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(
                self.stream_name, f"cannot bind consumer {self._consumer}: {exc}"
            ) from exc

    async def _connect(self, site_id: str) -> None:
        """Connect, within a bound of our own.

        With `max_reconnect_attempts=-1` (reconnect for ever once connected)
        nats-py's first connect also tries for ever while no server answers
        (or every server accepts and then says nothing): each pass over the
        servers costs up to `connect_timeout` per server, and nothing is
        logged but the error callback's lines.  Past a few passes it is a
        FleetError, and the fleet's run loop backs off and connects again.
        """
        client = Client()
        servers = shown(self._servers)
        self._last_error = ""  # what this connect meets, not an earlier life's error
        connect_timeout_s = max(1, round(self._connect_timeout_s))
        limit_s = (
            2 * len(self._servers) * (connect_timeout_s + RECONNECT_WAIT_S) + DEADLINE_MARGIN_S
        )
        try:
            await bounded(
                client.connect(
                    servers=list(self._servers),
                    name=f"syncmesh {site_id}",
                    user_credentials=self._auth.credentials or None,
                    tls=self._tls,
                    connect_timeout=connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_S,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                "connect",
                servers,
                limit_s,
            )
        except FleetError as exc:
            await close_client(client)
            # Past our bound nats-py is still retrying: its last error (a
            # refused port, a name that does not resolve, an authorization
            # violation) is the cause; "no answer" alone sent operators
            # looking for a server that hangs when none listened.
            # (A timeout of nats-py's says less than our own "no answer".)
            reason = exc.reason
            if self._last_error and not self._last_error.startswith(_TIMEOUT_NAMES):
                reason = f"{self._last_error} (tried for {limit_s:g} s)"
            raise FleetError(servers, f"cannot connect: {reason}") from exc
        except (nats.errors.Error, OSError) as exc:
            await close_client(client)
            raise FleetError(servers, f"cannot connect: {exc}") from exc
        self._client = client
        self._js = client.jetstream(timeout=REQUEST_TIMEOUT_S)

    async def _on_error(self, error: Exception) -> None:
        """nats-py's asynchronous errors (a server down while it reconnects): one line each.

        Its default logs a traceback for every failed reconnect; an
        operating error is no bug.  A repeat of the same text goes to DEBUG.
        """
        text = f"{type(error).__name__}: {error}"
        level = logging.DEBUG if text == self._last_error else logging.WARNING
        self._last_error = text
        log.log(level, "nats (%s): %s", shown(self._servers), text)

    async def _on_disconnected(self) -> None:
        log.warning("nats: disconnected; reconnecting (%s)", shown(self._servers))

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        url = None if self._client is None else self._client.connected_url
        log.info("nats: reconnected to %s", None if url is None else url.netloc)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        created = await self._ensure(
            js,
            StreamConfig(
                name=self.stream_name,
                subjects=[self.changes_prefix + "*"],
                storage=StorageType.FILE,
                num_replicas=self._replicas,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
        )
        # One message per subject (site, row): the newest copy replaces the one before.
        await self._ensure(
            js,
            StreamConfig(
                name=self.state_stream_name,
                subjects=[self.state_prefix + ">"],
                storage=StorageType.FILE,
                num_replicas=self._replicas,
                max_msgs_per_subject=1,
            ),
        )
        if created:
            await self._note_new_fleet(js)

    async def _note_new_fleet(self, js: JetStreamContext) -> None:
        """Say that we made a new fleet's stream, naming the fleets these servers hold.

        A typo in `--cluster` (`shop` for `shops`) makes a stream of its
        own, and the node then streams, healthy, alone: it publishes to no
        one and applies nothing, and said nothing of it.  The first site of
        a real new fleet reads an INFO line; a site beside existing fleets
        a WARNING naming them.  Listing streams may be refused (narrow
        permissions) or fail: then the line names none.
        """
        try:
            infos = await bounded(js.streams_info(), "list streams", self.stream_name)
        except (FleetError, nats.errors.Error, OSError):
            infos = []
        others = sorted(
            {
                match.group(1)
                for info in infos
                for subject in (info.config.subjects or [])
                if (match := _FLEET_SUBJECTS.fullmatch(subject)) is not None
                and match.group(1) != self.cluster
            }
        )
        if not others:
            log.info(
                "fleet: created stream %s: the first site of fleet %r on these servers",
                self.stream_name,
                self.cluster,
            )
            return
        log.warning(
            "fleet: created stream %s: no site of fleet %r was on these servers before;"
            " they hold the syncmesh fleet(s) %s: if this site belongs to one of them,"
            " its cluster name is wrong (--cluster, transport.nats.cluster)",
            self.stream_name,
            self.cluster,
            ", ".join(repr(other) for other in others),
        )

    async def _ensure(self, js: JetStreamContext, config: StreamConfig) -> bool:
        """Make the stream `config` describes unless it exists (then it is used as it is).

        True if this call made it.
        """
        name = str(config.name)
        try:
            await bounded(js.stream_info(name), "stream info", name)
            return False
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(name, f"cannot read the stream: {api_error_text(exc)}") from exc
        try:
            await bounded(js.add_stream(config), "create stream", name)
        except nats.js.errors.APIError as exc:
            if "already in use" in str(exc) or "already exists" in str(exc):
                return False  # another site made it meanwhile
            if exc.err_code == REPLICAS_UNSUPPORTED or "non-clustered mode" in str(exc.description):
                # A single `nats-server -js` (the first thing a new user runs)
                # answers a 500 with this code, not a bad request.
                raise FleetError(
                    name,
                    f"cannot create the stream with {self._replicas} replicas: the server says"
                    f" {exc.description!r}; a single server (not a JetStream cluster) needs"
                    " transport.nats.replicas = 1 (env SYNCMESH_TRANSPORT_NATS_REPLICAS=1),"
                    " or create the stream yourself (docs/nats.md)",
                    configuration=True,
                ) from exc
            raise FleetError(name, f"cannot create the stream: {exc}") from exc
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(name, f"cannot create the stream: {exc}") from exc
        return True

    async def close(self) -> None:
        client, self._client = self._client, None
        self._js = self._subscription = None
        if client is not None:
            await close_client(client)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise FleetError(self.stream_name, "not connected")
        return self._js

    # -- publishing and reading ------------------------------------------------------

    async def publish(
        self, site_id: str, data: bytes, *, message_id: str, headers: Mapping[str, str]
    ) -> PublishReceipt:
        js = self._jetstream()
        try:
            ack = await bounded(
                js.publish(
                    self.subject_of(site_id),
                    data,
                    timeout=REQUEST_TIMEOUT_S,
                    stream=self.stream_name,
                    headers={**headers, "Nats-Msg-Id": message_id},
                ),
                "publish",
                self.stream_name,
            )
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(self.stream_name, f"publish failed: {exc}") from exc
        return PublishReceipt(int(ack.seq), bool(ack.duplicate))

    async def publish_state(
        self, site_id: str, items: Sequence[tuple[str, bytes]], *, headers: Mapping[str, str]
    ) -> None:
        js = self._jetstream()
        prefix = f"{self.state_prefix}{site_id}."

        async def one(token: str, data: bytes) -> None:
            await js.publish(
                prefix + token,
                data,
                timeout=REQUEST_TIMEOUT_S,
                stream=self.state_stream_name,
                headers=dict(headers),
            )

        try:
            # Requests in flight together: one round trip per group, not per row.
            for start in range(0, len(items), STATE_PUBLISH_CONCURRENCY):
                group = items[start : start + STATE_PUBLISH_CONCURRENCY]
                await bounded(
                    _gather(one(token, data) for token, data in group),
                    f"state publish of {len(group)} rows",
                    self.state_stream_name,
                )
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(self.state_stream_name, f"state publish failed: {exc}") from exc

    async def last_state(self, site_id: str, token: str) -> StoredMessage | None:
        return await self._get(
            f"{self.state_prefix}{site_id}.{token}", None, self.state_stream_name
        )

    async def state_sites(self, token: str) -> tuple[str, ...]:
        js = self._jetstream()
        try:
            info = await bounded(
                js.stream_info(
                    self.state_stream_name, subjects_filter=f"{self.state_prefix}*.{token}"
                ),
                "stream info",
                self.state_stream_name,
            )
        except nats.js.errors.NotFoundError:
            return ()
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(
                self.state_stream_name, f"cannot read the stream: {api_error_text(exc)}"
            ) from exc
        prefix = self.state_prefix
        return tuple(
            sorted(
                subject[len(prefix) :].split(".", 1)[0]
                for subject in info.state.subjects or {}
                if subject.startswith(prefix)
            )
        )

    async def read_state(self, site_id: str) -> list[StoredMessage]:
        js = self._jetstream()
        subject = f"{self.state_prefix}{site_id}.>"
        found: list[StoredMessage] = []
        try:
            # An ephemeral consumer of our own: no acks, gone when left idle.
            where = self.state_stream_name
            reader = await bounded(
                js.pull_subscribe(
                    subject,
                    stream=self.state_stream_name,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.NONE,
                        inactive_threshold=STATE_READER_IDLE_S,
                        filter_subject=subject,
                    ),
                ),
                f"create a reader of {subject}",
                where,
            )
            try:
                info = await bounded(reader.consumer_info(), "consumer info", where)
                pending = info.num_pending or 0
                while pending > 0:
                    try:
                        msgs = await bounded(
                            reader.fetch(STATE_FETCH_MESSAGES, timeout=STATE_FETCH_WAIT_S),
                            f"fetch {subject}",
                            where,
                            STATE_FETCH_WAIT_S + DEADLINE_MARGIN_S,
                        )
                    except TimeoutError:  # nats-py's or asyncio's: nothing within the wait
                        msgs = []
                    if not msgs:
                        raise FleetError(
                            self.state_stream_name,
                            f"reading {subject} stopped with {pending} messages left",
                        )
                    for msg in msgs:
                        found.append(
                            StoredMessage(
                                msg.subject,
                                int(msg.metadata.sequence.stream),
                                dict(msg.headers or {}),
                                msg.data,
                            )
                        )
                    pending = int(msgs[-1].metadata.num_pending or 0)
            finally:
                with contextlib.suppress(nats.errors.Error, FleetError):
                    await bounded(reader.unsubscribe(), f"stop reading {subject}", where)
        except nats.js.errors.NotFoundError:
            return []  # no state stream: nothing to bootstrap from
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(self.state_stream_name, f"cannot read {subject}: {exc}") from exc
        return found

    async def last_message(self, subject: str) -> StoredMessage | None:
        return await self._get(subject, None)

    async def next_message(self, subject: str, from_seq: int) -> StoredMessage | None:
        return await self._get(subject, max(1, from_seq))

    async def _get(
        self, subject: str, from_seq: int | None, stream: str = ""
    ) -> StoredMessage | None:
        js = self._jetstream()
        stream = stream or self.stream_name
        try:
            if from_seq is None:
                raw = await bounded(
                    js.get_last_msg(stream, subject), f"get last message of {subject}", stream
                )
            else:
                raw = await bounded(
                    js.get_msg(stream, seq=from_seq, subject=subject, next=True),
                    f"get message of {subject} from seq {from_seq}",
                    stream,
                )
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(stream, f"cannot read {subject}: {exc}") from exc
        return StoredMessage(
            raw.subject or subject, int(raw.seq or 0), dict(raw.headers or {}), raw.data or b""
        )

    async def fetch(self, messages_max: int, timeout_s: float) -> list[Delivery]:
        subscription = self._subscription
        if subscription is None:
            raise FleetError(self.stream_name, "no consumer bound")
        try:
            msgs = await bounded(
                subscription.fetch(messages_max, timeout=timeout_s),
                "fetch",
                self.stream_name,
                timeout_s + DEADLINE_MARGIN_S,
            )
        except TimeoutError:
            # Nothing to deliver within the wait: nats-py raises its own
            # TimeoutError, or asyncio's (`_fetch_n`).  Past our deadline it
            # is a FleetError instead, and the link is opened again.
            return []
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(self.stream_name, f"fetch failed: {exc}") from exc
        return [
            _JetStreamDelivery(
                msg,
                StoredMessage(
                    msg.subject,
                    int(msg.metadata.sequence.stream),
                    dict(msg.headers or {}),
                    msg.data,
                ),
                self.stream_name,
            )
            for msg in msgs
        ]

    async def position(self) -> StreamPosition:
        js = self._jetstream()
        where = self.stream_name
        try:
            stream = await bounded(
                js.stream_info(self.stream_name, subjects_filter=self.changes_prefix + "*"),
                "stream info",
                where,
            )
            consumer = await bounded(
                js.consumer_info(self.stream_name, self._consumer), "consumer info", where
            )
        except (nats.errors.Error, OSError) as exc:
            raise FleetError(
                self.stream_name, f"cannot read the stream's state: {api_error_text(exc)}"
            ) from exc
        return StreamPosition(
            first_seq=int(stream.state.first_seq),
            last_seq=int(stream.state.last_seq),
            messages=int(stream.state.messages),
            consumer_pending=int(consumer.num_pending or 0),
            consumer_ack_pending=int(consumer.num_ack_pending or 0),
            consumer_redelivered=int(consumer.num_redelivered or 0),
            consumer_ack_floor=int(consumer.ack_floor.stream_seq if consumer.ack_floor else 0),
            subjects=tuple(sorted(stream.state.subjects or {})),
        )


async def _gather(calls: Any) -> None:
    """Await `calls` together (one bounded group of pipelined requests)."""
    await asyncio.gather(*calls)


async def close_client(client: Client) -> None:
    """Close a connection, bounded: closing flushes first, on a socket that may not move.

    Past the bound the connection is left to nats-py (its tasks end when
    the socket does); a close never raises, nothing is left to release.
    """
    try:
        await bounded(client.close(), "close", "nats", CLOSE_DEADLINE_S)
    except Exception as exc:  # nats-py's own asserts too (a client that never connected)
        log.debug("nats: close: %s: %s", type(exc).__name__, exc)


async def probe_jetstream(servers: Sequence[str], *, replicas: int) -> None:
    """Make and delete a stream of `replicas` copies: a JetStream cluster that takes streams.

    For the code that starts real servers (`syncmesh.chaos.natsservers`):
    its routes, health and meta leader can look ready a moment before a
    replicated stream can be made.  One try, no reconnects; nats-py's
    errors leave as they are (the caller waits and tries again).
    """

    async def quiet(_error: Exception) -> None:
        """A server not up yet is what the caller waits out: no traceback for it."""

    client = await nats.connect(
        servers=list(servers),
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=quiet,
    )
    try:
        manager = client.jetstream()
        await manager.add_stream(
            name="READY_PROBE", subjects=["ready.probe"], num_replicas=replicas
        )
        await manager.delete_stream("READY_PROBE")
    finally:
        await close_client(client)
