"""A node's settings: every limit is named, with its unit in the name."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from syncmesh.errors import ConfigError
from syncmesh.protocol import FRAME_BYTES_MAX
from syncmesh.store import OrphanPolicy
from syncmesh.transport.tls import TlsFiles, valid_site_name

WEBSOCKET_SLACK_BYTES = 1024  # the WebSocket's message limit: a frame plus this
# Tables a `[tables] track` pattern never matches: syncmesh's own and SQLite's.
UNTRACKABLE_PREFIXES = ("_syncmesh", "sqlite_")
PATTERN_CHARACTERS = frozenset("*?[")
SITE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class Secret:
    """A string that never shows itself: not in repr, logs, status or `config check`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """A named peer: where to dial it (if we do), and its rights on our tables.

    The name is the site name in the peer's certificate.  `send`: the
    tables whose changes we accept from it; `receive`: the tables whose
    changes we send it.  None means every table.
    """

    name: str
    url: str = ""  # "": we do not dial it; it may dial us
    send: frozenset[str] | None = None
    receive: frozenset[str] | None = None

    def __post_init__(self) -> None:
        assert valid_site_name(self.name), self.name

    @property
    def restricted(self) -> bool:
        return self.send is not None or self.receive is not None

    def may_send(self, table: str) -> bool:
        return self.send is None or table in self.send

    def may_receive(self, table: str) -> bool:
        return self.receive is None or table in self.receive


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """`[transport.nats]`: the fleet stream this node publishes to and reads from.

    docs/adr/0014-nats-stream-model.md; docs/nats.md.  Paths are read by the
    transport when it connects (a bad file is a ConfigError then).
    """

    servers: tuple[str, ...]
    cluster: str = "default"  # the stream SYNCMESH_<CLUSTER>, subjects syncmesh.<cluster>.*
    credentials: str = ""  # a NATS .creds file; "" for none
    tls_ca: str = ""  # the CA of the servers' certificates; "" for plain connections
    tls_cert: str = ""  # a client certificate and key (mutual TLS); "" for none
    tls_key: str = ""
    replicas: int = 3  # copies of the stream, if this node creates it
    fetch_messages_max: int = 64  # messages per fetch from the durable consumer
    fetch_wait_s: float = 1.0  # a fetch with nothing to deliver returns after this
    status_interval_s: float = 2.0  # how often the stream's state and gaps are read

    def __post_init__(self) -> None:
        assert self.servers, "at least one NATS server"
        assert 1 <= self.replicas <= 5
        assert self.fetch_messages_max > 0
        assert self.fetch_wait_s > 0
        assert self.status_interval_s > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    database_path: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 7401  # 0 picks a free port (tests, demo)
    peer_urls: tuple[str, ...] = field(default_factory=tuple)  # unnamed peers (no TLS)
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)  # named peers
    tls: TlsFiles | None = None  # None: plain HTTP, only on loopback unless insecure_no_tls
    insecure_no_tls: bool = False  # allow plain HTTP on a non-loopback address
    api_token: Secret | None = None  # bearer token of the HTTP API
    api_require_token: bool = False  # ask for the token on loopback too
    clock_drift_ms_max: int = 60_000  # stamps further ahead are refused
    batch_rows_max: int = 2_000  # rows per batch (whole local transactions may exceed it)
    batches_in_flight_max: int = 4  # unacknowledged batches per session (flow control)
    message_bytes_max: int = FRAME_BYTES_MAX  # one protocol message, sent or received
    rows_per_message_max: int = 100_000  # rows in one BATCH, sent or received
    sessions_per_peer_max: int = 2  # connections a peer (by certificate) may hold open at once
    inbound_sessions_max: int = 64  # connections dialled in, in handshake or streaming
    poll_interval_ms: int = 5  # how often to look for writes by other connections
    heartbeat_s: float = 5.0  # WebSocket ping interval; a missed pong closes the link
    handshake_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.1  # reconnect delay doubles from here ...
    backoff_max_s: float = 5.0  # ... up to here, with full jitter
    idle_resend_s: float = 2.0  # a sender with nothing new re-reads its feed this often
    relay_hold_ms: int = 10  # a batch of only others' writes waits this long (mesh dedup)
    quarantine_retry_s: float = 5.0
    verify_interval_s: float = 600.0  # verify each dialled peer this often (0: never)
    verify_settle_s: float = 2.0  # pause before re-reading rows that differ (writes in flight)
    # Merge the rows a periodic verify finds divergent, both ways (anti-entropy):
    # whatever the feeds missed comes back within an interval (docs/verify.md).
    verify_repair: bool = True
    conflict_ledger_rows_max: int = 10_000  # the ledger keeps the newest this many conflicts
    # Tombstone collection (ADR 0015): a pass and a gossip round this often
    # (0: never), each step of a pass one transaction over this many shadow rows.
    lifecycle_interval_s: float = 10.0
    lifecycle_batch_rows: int = 1_000
    api_listen_host: str | None = None  # None: the API shares listen_host:listen_port
    api_listen_port: int = 0
    throughput_interval_s: float = 5.0  # the throughput history counts rows per interval ...
    throughput_samples_max: int = 120  # ... and keeps this many intervals (10 minutes)
    # /v1/health (syncmesh.node.health): a configured peer not streaming for
    # longer than this is a reason; quarantine that grew this recently is one.
    health_peer_down_s_max: float = 60.0
    health_quarantine_window_s: float = 60.0
    # `[tables] track`: names and fnmatch patterns ("*", "app_*").  The node
    # tracks every table that matches, at start and whenever the schema
    # changes, so that tables a migration creates sync without a command.
    track_patterns: tuple[str, ...] = ()

    # Tables whose keys SQLite allocates per site that the operator says
    # cannot collide (one writer, per-site ranges): `track` takes them
    # (`[tables] allow_integer_keys`, docs/keys.md).
    allow_integer_keys: frozenset[str] = frozenset()
    # Rows whose foreign key names a deleted parent: `[tables.orphans]`
    # (docs/keys.md, "Foreign keys"); the same at every site.
    orphan_policy: OrphanPolicy = field(default_factory=OrphanPolicy)
    # `[transport.nats]`: sync through a NATS JetStream fleet stream as well
    # (None: WebSocket peers only).
    fleet: FleetConfig | None = None

    def __post_init__(self) -> None:
        assert self.batch_rows_max > 0
        assert self.batches_in_flight_max > 0
        assert 0 < self.message_bytes_max <= FRAME_BYTES_MAX
        assert self.rows_per_message_max > 0
        assert self.sessions_per_peer_max > 0
        assert self.inbound_sessions_max > 0
        assert self.poll_interval_ms > 0
        assert 0 < self.backoff_initial_s <= self.backoff_max_s
        assert self.throughput_interval_s >= 0.001
        assert self.throughput_samples_max > 0
        assert len({peer.name for peer in self.peers}) == len(self.peers), "peer names repeat"
        assert self.conflict_ledger_rows_max >= 0
        assert self.verify_interval_s >= 0
        assert self.verify_settle_s >= 0
        assert self.lifecycle_interval_s >= 0
        assert self.lifecycle_batch_rows >= 1

    @property
    def frame_bytes_max(self) -> int:
        """The WebSocket's message limit: the protocol's plus a little slack."""
        return self.message_bytes_max + WEBSOCKET_SLACK_BYTES

    def peer_named(self, name: str) -> PeerConfig | None:
        return next((peer for peer in self.peers if peer.name == name), None)

    def api_host(self) -> str:
        return self.listen_host if self.api_listen_host is None else self.api_listen_host

    def token_required(self) -> bool:
        """The API asks for the bearer token off loopback, or when told to."""
        return self.api_require_token or not is_loopback(self.api_host())

    def check_exposure(self) -> list[str]:
        """Refuse (ConfigError) what would expose the node; warnings for what is allowed.

        Secure by default: plain HTTP only on loopback, unless the operator
        names the risk (`insecure_no_tls`); a bearer token for an API that
        is reachable from elsewhere; per-peer rights only where a peer's
        identity is known (its certificate).
        """
        warnings: list[str] = []
        if self.tls is None and not is_loopback(self.listen_host):
            if not self.insecure_no_tls:
                raise ConfigError(
                    "node.listen",
                    f"listening on {self.listen_host} without TLS would let anyone who"
                    " reaches the port read and write every tracked table. Give the node a"
                    " certificate (syncmesh tls init; syncmesh tls issue SITE; then --tls-cert,"
                    " --tls-key, --tls-ca: docs/security.md), or listen on 127.0.0.1, or,"
                    " on a network you fully trust, pass --insecure-no-tls",
                )
            warnings.append(
                f"INSECURE: serving the sync port on {self.listen_host} without TLS"
                " (--insecure-no-tls): anyone who reaches it can read and change every"
                " tracked table; use TLS (docs/security.md)"
            )
        if self.token_required() and self.api_token is None:
            raise ConfigError(
                "api.token",
                f"the HTTP API listens on {self.api_host()}, which is not loopback: set a"
                " bearer token (api.token_file, or the SYNCMESH_API_TOKEN environment"
                " variable), or move the API to loopback with api.listen = 127.0.0.1:PORT",
            )
        if self.tls is not None:
            for url in self.peer_urls:
                raise ConfigError(
                    "peers.urls",
                    f"with TLS every peer needs a name, its certificate's site:"
                    f" give {url!r} as --peer NAME={url} or in a [peers.NAME] table",
                )
            for peer in self.peers:
                if peer.url and not peer.url.startswith("https://"):
                    raise ConfigError(
                        f"peers.{peer.name}.url", f"{peer.url!r}: with TLS peers are https:// URLs"
                    )
        else:
            for peer in self.peers:
                # On a fleet, a site's id is backed by its NATS user (the verify
                # replies reach only its inbox: docs/nats.md), so rights for a
                # fleet site, by its id, hold for its requests over the fleet.
                fleet_site = self.fleet is not None and not peer.url and is_site_id(peer.name)
                if peer.restricted and not fleet_site:
                    raise ConfigError(
                        f"peers.{peer.name}",
                        "per-peer rights (send, receive) need TLS: without a certificate a"
                        " peer's name is only a claim",
                    )
        return warnings


def is_site_id(name: str) -> bool:
    """A site id (a store's `site_id`: 32 lowercase hex digits), not a certificate's name."""
    return SITE_ID_PATTERN.fullmatch(name) is not None


def is_pattern(name: str) -> bool:
    """True if a `[tables] track` entry is an fnmatch pattern, not a table's name."""
    return not PATTERN_CHARACTERS.isdisjoint(name)


def tables_matching(patterns: Sequence[str], tables: list[str]) -> list[str]:
    """The tables among `tables` that some pattern matches (case-sensitive), in order.

    Never syncmesh's own tables or SQLite's, whatever the pattern: `"*"`
    means every table of the application.
    """
    return [
        table
        for table in tables
        if not table.startswith(UNTRACKABLE_PREFIXES)
        and any(fnmatch.fnmatchcase(table, pattern) for pattern in patterns)
    ]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; an empty host means every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
