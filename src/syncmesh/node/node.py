"""A running node: the store worker, the capture loop, peer sessions and dialers.

`Node` owns everything that lives on the event loop.  It reaches peers
only through the transport seam (`syncmesh.transport.base`): it dials with
a `Connector`, and a transport's listener hands it each channel dialled in
(`serve_channel`, the `ChannelHost` Protocol).  Which transport, and the
HTTP server that carries the WebSocket one, is `syncmesh.api`'s choice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from syncmesh.clock import HybridClock, PhysicalClock, SystemClock, feed_lag_ms
from syncmesh.errors import RefusedError, StoreError, SyncError
from syncmesh.model import ChangeBatch, FleetHoldings
from syncmesh.node.admission import Admitted, admit
from syncmesh.node.bootstrap import SnapshotServer, SnapshotStatistics
from syncmesh.node.config import NodeConfig, PeerConfig
from syncmesh.node.fleet import STATE_MARKER, Fleet, FleetStatistics, quiet_site, relayer_of
from syncmesh.node.fleet_verify import FleetVerifyService
from syncmesh.node.health import HealthMonitor
from syncmesh.node.identity import IdentityGuard, Verdict
from syncmesh.node.lifecycle import LifecycleStatistics, lifecycle_loop
from syncmesh.node.mismatch import describe_columns, table_schema
from syncmesh.node.patterns import track_matches
from syncmesh.node.session import (
    APPLY_SECONDS_BUCKETS,
    DUPLICATE_SESSION_PREFIX,
    DuplicateSession,
    PeerLink,
    PeerState,
    Session,
    SharedSiteId,
)
from syncmesh.node.throughput import ThroughputHistory, ThroughputSample
from syncmesh.node.verify import StoreCall
from syncmesh.node.verify_server import (
    FleetVerifyTargets,
    VerifyOutcome,
    VerifyServer,
    outcome_fields,
    periodic_verify,
)
from syncmesh.node.worker import StoreWorker
from syncmesh.protocol import PROTOCOL_VERSION, Hello
from syncmesh.protocol.messages import shared_site_id_reason
from syncmesh.store import Store, StoreStatus
from syncmesh.store.open import open_store
from syncmesh.transport.base import (
    Channel,
    Connector,
    FleetVerifyAsker,
    FleetVerifyResponder,
    PeerIdentity,
    Refusal,
    RefusalReason,
)
from syncmesh.transport.stream import FleetLink
from syncmesh.transport.tls import server_context

log = logging.getLogger(__name__)

SESSION_STABLE_S = 10.0  # a session that lived this long resets the reconnect backoff
CAPTURE_YIELD_FACTOR = 2.0  # after a capture, pause this many times its duration
IDLE_AFTER_S = 5.0  # no commit for this long: the file is quiet ...
IDLE_POLL_FACTOR = 10  # ... and is polled this many times less often
# With hints (the SQLite notifier: inotify): a hint comes as the commit's frames
# are written, just before the commit is published in the WAL index, so when
# the first look finds nothing the loop looks again this soon, then
# HINT_RECHECK_FACTOR times later each time, up to twice the poll interval
# (0.2, 0.4, ... 6.4 ms); with no hint, poll SAFETY_POLL_FACTOR intervals apart.
HINT_RECHECK_S = 0.0002
HINT_RECHECK_FACTOR = 2
# A capture of at least STREAM_BULK_ROWS rows: bulk writes, where a capture at
# every commit collides with the writer's next transaction for the write lock.
# For STREAM_BULK_S after one the loop polls every poll interval, as without
# inotify, and pauses at least a poll interval after each capture.  Smaller
# captures (single-row transactions, at any rate) keep the hints: a commit is
# captured as soon as it is published (issue 17: no fixed re-look delay).
STREAM_BULK_S = 0.1
STREAM_BULK_ROWS = 200
SAFETY_POLL_FACTOR = 10
LAG_CHANGES_MAX = 10_000  # a peer's lag in changes is counted up to this many rows


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    address: str
    site_id: str
    name: str  # the site name of its certificate (TLS) or of its [peers.NAME] table; "" if none
    dialed: bool
    state: PeerState
    cursor: int
    peer_head_seq: int
    # How much older our cursor is than the peer's head (0: caught up; None:
    # not known, as nothing of the peer's feed was applied yet).
    lag_ms: int | None
    # Reading the peer's feed up to its head (bootstrap, or after a partition):
    # None once caught up; see syncmesh.node.catchup.
    catchup_progress: float | None  # 0..1 of the way from the session's start
    catchup_rows_per_s: float
    catchup_eta_s: float | None  # time left at the recent pace
    applied_rows_by_table: dict[str, int]  # rows applied from the peer, this session
    bytes_in_by_table: dict[str, int]  # frame bytes apportioned by rows, this session
    # The other way: rows of our feed after what the peer acknowledged (at
    # most LAG_CHANGES_MAX), and how much older that position is than our
    # head.  None until the peer's first PULL.
    out_lag_changes: int | None
    out_lag_ms: int | None
    rows_in: int
    rows_out: int
    batches_in: int
    batches_out: int
    quarantined_rows: int
    rights_refused_rows: int  # rows of tables the peer may not send us, refused (this session)
    last_batch_ms: int
    last_error: str
    reconnects: int
    bytes_in: int
    bytes_out: int
    apply_seconds_buckets: tuple[float, ...]  # upper bounds; counts has one more (+Inf)
    apply_seconds_counts: tuple[int, ...]
    apply_seconds_sum: float
    # The last periodic verify against this peer (dialled peers only; see
    # syncmesh.node.verify): when (0: not yet), its verdict and its cost.
    verified_ms: int = 0
    verify_identical: bool | None = None
    verify_divergent_rows: int = 0
    verify_unsettled_rows: int = 0
    verify_round_trips: int = 0
    verify_bytes: int = 0
    verify_seconds: float = 0.0
    verify_error: str = ""
    verify_repaired_rows: int = 0  # of the divergent rows, merged both ways after it
    verify_repaired_rows_total: int = 0  # the same, summed since the node started
    # Tables not compared: their columns differ there (a migration not run at both).
    verify_not_compared: tuple[str, ...] = ()
    # Not "" while the verify waits for both sides to catch up (no verdict
    # since; the fields above are the last one's): why.
    verify_waiting: str = ""
    # When `last_error` happened (0: never), and since when a configured peer
    # has not streamed (0: it streams, or was never dialled): syncmesh.node.health.
    last_error_ms: int = 0
    down_since_ms: int = 0
    # How the peer's tracked tables differ from ours, naming tables and
    # columns (ADR 0013: never a refusal; only what both track is exchanged),
    # and whether its batches' vector claims are adopted (its tables and
    # columns cover ours).  From the last session's HELLOs.
    schema_differences: tuple[str, ...] = ()
    adopts_vector: bool = True


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    site_id: str
    listen: str
    store: StoreStatus
    peers: tuple[PeerStatistics, ...]
    captures: int
    rights_refused_rows: int  # rows refused for a peer's rights since start, all peers
    refused_connections: int  # connections refused before HELLO (certificate, limits)
    # Two live files with one site id, seen lately (node/identity.py): as
    # health reasons, with the fix.
    identity_conflicts: tuple[str, ...] = ()
    # What this run's tombstone collection rounds did (syncmesh.node.lifecycle).
    lifecycle: LifecycleStatistics = field(default_factory=LifecycleStatistics)
    # The fleet stream (NATS JetStream; node/fleet.py), None without one.
    fleet: FleetStatistics | None = None
    # Snapshots served to joining nodes in this run (node/bootstrap.py, ADR 0016).
    snapshots: SnapshotStatistics = field(default_factory=SnapshotStatistics)


@dataclass(slots=True)
class _Dialer:
    url: str
    peer: PeerConfig | None = None  # None: an unnamed URL (no TLS)
    state: PeerState = "connecting"
    last_error: str = ""
    reconnects: int = 0
    link: PeerLink | None = None
    last_error_ms: int = 0
    # Since when it has not streamed: the node's start, or the end of its last session.
    down_since_ms: int = 0  # set from the node's clock when the dialer is made


class Node:
    """Example:

    node = Node(NodeConfig(database_path="app.db", peer_urls=("http://b:7401",)))
    await node.start()
    ...
    await node.stop()
    """

    def __init__(
        self,
        config: NodeConfig,
        store: Store | None = None,
        *,
        physical_clock: PhysicalClock | None = None,
        connector: Connector,
        fleet_link: FleetLink | None = None,
        fleet_verify: FleetVerifyResponder | None = None,
        fleet_verify_asker: FleetVerifyAsker | None = None,
    ) -> None:
        """`physical_clock` is the seam for clock faults (syncmesh.chaos) and the one
        source of wall time in the node; default: the system's.  `connector` dials
        peers: the transport, chosen by the caller (`syncmesh.api.running_node`
        picks the WebSocket one); node code knows only the Protocol.  `fleet_link`:
        the fleet stream of `config.fleet` (NATS JetStream), alongside the peers.
        `fleet_verify`: answers fleet sites' verify requests (node.fleet_verify);
        `fleet_verify_asker`: asks them, for the periodic verify (node.verify_server).
        """
        self.config = config
        self.clock: PhysicalClock = physical_clock or SystemClock()
        self.store = store or open_store(
            config.database_path,
            clock=HybridClock(self.clock, drift_ms_max=config.clock_drift_ms_max),
            conflict_ledger_rows_max=config.conflict_ledger_rows_max,
            orphan_policy=config.orphan_policy,
        )
        self.worker = StoreWorker()
        self.listen = f"{config.listen_host}:{config.listen_port}"
        self.api_listen = self.listen
        self._sessions: dict[str, Session] = {}
        self._dialers: dict[str, _Dialer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._feed_event = asyncio.Event()
        # Caught-up send loops: (cursor, filter vector, rows, the peer's tables) to
        # read after a capture.
        self._wanted: dict[Session, tuple[int, dict[str, int], int, frozenset[str]]] = {}
        self._captures = 0
        self._stopping = False
        self._rng = random.Random()
        self._accepted: set[Session] = set()
        self._schema_problems: list[str] = []
        # The database's tables when `[tables] track` patterns were last matched
        # (store thread only); None: not yet.
        self._application_tables: list[str] | None = None
        # Bumped whenever our tracked tables change: a session whose HELLO was
        # read before (in its handshake then) starts again (Session).
        self.schema_epoch = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._rows_captured_seen = 0
        # Connections dialled in, per peer name (TLS) or "" (no TLS), open now.
        self._inbound: collections.Counter[str] = collections.Counter()
        # Site id -> the certificate name that first used it in this run.
        self._site_names: dict[str, str] = {}
        # This process's HELLO `instance`: a copy of the file never shares it.
        self.instance = uuid.uuid4().hex
        # A dead peer's session ends within 1.5 heartbeats; a dialer retries
        # within backoff_max_s (node/identity.py).
        self._identities = IdentityGuard(
            grace_s=1.5 * config.heartbeat_s + 2.0,
            window_s=3 * config.backoff_max_s + config.handshake_timeout_s,
        )
        # (reason, monotonic time) of the last refusal saying our site id is
        # shared by another live file: a health reason for `window_s`.
        self._twin_refusal: tuple[str, float] | None = None
        self.rights_refused_rows = 0
        self.refused_connections = 0
        self.health = HealthMonitor(self.clock)  # failures in a row, quarantine growth: node.health
        self.server_ssl = None if config.tls is None else server_context(config.tls)
        self.connector = connector
        self.verify_server = VerifyServer(
            self.store, self.worker.call, config.message_bytes_max, admit=self._admit_verify
        )
        # Snapshots of our file for joining nodes (syncmesh.node.bootstrap, ADR 0016).
        self.snapshot_server = SnapshotServer(
            config, self.store, self.worker.call, stopping=lambda: self._stopping
        )
        # What the tombstone collection rounds did (syncmesh.node.lifecycle).
        self.lifecycle = LifecycleStatistics()
        # The last periodic verify per dialled peer URL (syncmesh.node.verify).
        self.verify_outcomes: dict[str, VerifyOutcome] = {}
        # ... and per fleet site id, one site per round (verify_server.next_fleet_site).
        self.fleet_verify_outcomes: dict[str, VerifyOutcome] = {}
        self._fleet_verify_asker = fleet_verify_asker
        self._throughput = ThroughputHistory(
            interval_ms=max(1, round(config.throughput_interval_s * 1000)),
            samples_max=config.throughput_samples_max,
            now_ms=self.clock.now_ms(),
        )
        self.fleet: Fleet | None = None
        if config.fleet is not None:
            assert fleet_link is not None, "a fleet configuration needs its link"
            self.fleet = Fleet(self, fleet_link, config.fleet)
        self.fleet_verify: FleetVerifyService | None = None
        if self.fleet is not None and fleet_verify is not None:
            self.fleet_verify = FleetVerifyService(
                config,
                self.store,
                self.worker.call,
                fleet_verify,
                known_sites=self._fleet_sites,
                stopping=lambda: self._stopping,
                has_marker=self.fleet.has_marker,
            )

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Initialise the file if needed, capture pending writes, start dialling."""
        # Only the store thread may call SQLite from here on (ADR 0005).
        await self.worker.call(self.store.bind_thread)
        await self.worker.call(self.store.init)
        # Quarantine that exists at start is not "growing" (syncmesh.node.health).
        self.health.note_quarantined(len(await self.worker.call(self.store.quarantine)), 0)
        # Writes made while the node was down count as captured now.
        self.note_throughput(rows_captured_total=await self.worker.call(self._capture_counted))
        self._tasks.append(asyncio.create_task(self._capture_loop(), name="capture"))
        self._tasks.append(asyncio.create_task(self._quarantine_loop(), name="quarantine"))
        if self.config.verify_interval_s > 0:
            self._tasks.append(asyncio.create_task(periodic_verify(self), name="verify"))
        if self.config.lifecycle_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(lifecycle_loop(self, self.lifecycle), name="lifecycle")
            )
        if self.fleet is not None:
            self._tasks.append(asyncio.create_task(self.fleet.run(), name="fleet"))
        if self.fleet_verify is not None:
            self._tasks.append(asyncio.create_task(self.fleet_verify.run(), name="fleet verify"))
        now_ms = self.clock.now_ms()
        dialers = [_Dialer(url, down_since_ms=now_ms) for url in self.config.peer_urls]
        dialers += [
            _Dialer(peer.url, peer, down_since_ms=now_ms) for peer in self.config.peers if peer.url
        ]
        for dialer in dialers:
            self._dialers[dialer.url] = dialer
            self._tasks.append(
                asyncio.create_task(self._dial_loop(dialer), name=f"dial {dialer.url}")
            )

    async def close_sessions(self) -> None:
        """Stop dialling and close every session (the first half of `stop()`)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self._sessions.values()) + list(self._accepted):
            await session.close()
        if self.fleet is not None:
            await self.fleet.close()
        if self.fleet_verify is not None:
            await self.fleet_verify.close()

    async def stop(self) -> None:
        """Close sessions, capture what is pending, close the store."""
        await self.close_sessions()
        await self.worker.call(self.store.capture)
        self.worker.shutdown()
        self.store.close()
        self.snapshot_server.close()

    # -- what periodic verify needs (syncmesh.node.verify) ----------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def store_call(self) -> StoreCall:
        return self.worker.call

    def session_sites(self) -> list[str]:
        """The sites of the sessions that said HELLO and are open now (node.fleet's relay)."""
        return list(self._sessions)

    def gossip_peers(self) -> list[Session]:
        """The sessions that stream now (syncmesh.node.lifecycle)."""
        return [session for session in self._sessions.values() if session.peer_site_id]

    async def unmet_dialled_peers(self) -> list[str]:
        """URLs we dial whose peer never said HELLO here, in this run or an earlier one."""
        unmet = [
            url
            for url, dialer in self._dialers.items()
            if dialer.link is None or not dialer.link.site_id
        ]
        if not unmet:
            return []
        # Met in an earlier run: it has a cursor here under that address.
        status = await self.worker.call(self.store.status)
        known = {cursor.address for cursor in status.peers}
        return [url for url in unmet if url not in known]

    async def fleet_holdings(self) -> FleetHoldings | None:
        """What the fleet's sites hold, from their claims (docs/adr/0017); None: no fleet."""
        return None if self.fleet is None else await self.fleet.holdings()

    def dialled_peers(self) -> list[tuple[str, PeerConfig | None]]:
        """(URL, named peer or None) of every peer this node dials."""
        return [(url, dialer.peer) for url, dialer in self._dialers.items()]

    def fleet_verify_sites(self) -> FleetVerifyTargets | None:
        """Whom the periodic verify may ask on the fleet now; None: no one this round.

        Only while our fleet streams, and only sites whose chain we have read
        to within the verify's settle time of its newest message, with no
        gap: a site we lag behind differs by the rows not applied yet, which
        no re-read settles, and the verify would report them as divergent
        (found by `syncmesh chaos --transport nats`: a site catching up
        after a kill, "393 rows differ", and its row fetches on the wire).
        """
        if self._fleet_verify_asker is None or self.fleet is None:
            return None
        statistics = self.fleet.statistics()
        if statistics.state != "streaming":
            return None
        settle_ms = self.config.verify_settle_s * 1000
        ready: list[str] = []
        behind: list[str] = []
        for site in statistics.sites:
            caught_up = not site.gap and site.lag_ms is not None and site.lag_ms <= settle_ms
            (ready if caught_up else behind).append(site.site_id)
        return FleetVerifyTargets(
            self._fleet_verify_asker,
            sorted(ready),
            frozenset(behind),
            STATE_MARKER,
            lambda token: relayer_of(token) is not None,
        )

    def streaming_with(self, url: str) -> bool:
        """True if the session with the peer dialled at `url` (either way round) streams."""
        return self._streaming_session(url) is not None

    def _streaming_session(self, url: str) -> Session | None:
        dialer = self._dialers.get(url)
        link = None if dialer is None else dialer.link
        if link is None or not link.site_id:
            return None
        session = self._sessions.get(link.site_id)
        return session if session is not None and session.link.state == "streaming" else None

    async def verify_wait_reason(
        self, url: str, since: float, heads: tuple[int, int | None] | None = None
    ) -> str:
        """Why the peer dialled at `url` cannot be judged by a verify now; "" if it can.

        Two replicas of which one still pulls the other's backlog (a bulk
        insert, a node back from a pause) differ by rows in flight that hold
        still for longer than any re-read waits, and a verify would call them
        divergent: an operator would be told their data is corrupt when it is
        only late.  The fleet has the same gate (`fleet_verify_sites`).

        Without `heads` (before a verify): both directions caught up now or
        at a moment after `since` (time.monotonic()), our cursor at the
        peer's head as its last batch told it and its acknowledgement at our
        head.  With `heads` (our feed's head and the peer's, None if it did
        not say, as a verify read its trees): each side has applied the
        other's feed up to them, so no row the verify compared is in flight.
        """
        session = self._streaming_session(url)
        if session is None:
            return "not streaming"
        link = session.link
        if heads is not None and heads[1] is not None:
            in_caught_up = link.in_caught_up_head >= heads[1]
        else:
            in_caught_up = link.cursor >= link.peer_head_seq or link.in_caught_up_at >= since
        if not in_caught_up:
            lag_ms = feed_lag_ms(link.cursor, link.peer_head_seq)
            late = "" if lag_ms is None else f", {lag_ms:,} ms of its writes to apply"
            return f"catching up: this node still reads the peer's feed{late}"
        if heads is not None:
            out_caught_up = link.out_caught_up_head >= heads[0]
        else:
            head = await self.worker.call(self.store.head_seq)
            out_caught_up = link.acked_seq >= head or link.out_caught_up_at >= since
        if not out_caught_up:
            return "catching up: the peer has not applied this node's feed up to its head yet"
        return ""

    # -- what sessions need (SessionHost) ----------------------------------------

    async def our_hello(self) -> Hello:
        def read() -> Hello:
            self.store.reload_if_changed()
            return Hello(
                PROTOCOL_VERSION,
                self.store.site_id,
                self.store.incarnation,
                self.store.fingerprint(),
                tuple(spec.name for spec in self.store.specs()),
                self.store.head_seq(),
                self.store.vector(),
                {spec.name: describe_columns(spec) for spec in self.store.specs()},
                self.instance,
                {spec.name: table_schema(spec) for spec in self.store.specs()},
                self.store.membership(),
                rows_per_message_max=self.config.rows_per_message_max,
                message_bytes_max=self.config.message_bytes_max,
                held=self.store.held_claims(),
            )

        return await self.worker.call(read)

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def register(self, link: PeerLink, session: Session) -> RefusedError | None:
        if link.name:
            # A site id belongs to the certificate that used it first in this
            # run: another site cannot take over its session or its cursor.
            owner = self._site_names.setdefault(link.site_id, link.name)
            if owner != link.name:
                log.warning(
                    "refused site %s: its HELLO claims site id %s, which belongs to site %s",
                    link.name,
                    link.site_id,
                    owner,
                )
                return RefusedError(
                    f"site id {link.site_id} belongs to site {owner}, not to {link.name}"
                    " (the name in your certificate)"
                )
        existing = self._sessions.get(link.site_id)
        holder = None if existing is None else existing.link.peer_instance
        verdict = self._identities.check(link.site_id, link.peer_instance, holder)
        if verdict is Verdict.TWIN:
            reason = shared_site_id_reason(link.site_id)
            log.error("refused site %s (%s): %s", link.site_id, link.address or link.name, reason)
            if existing is not None:
                # The session that came first is one of the two: tell it too.
                self._sessions.pop(link.site_id, None)
                refusing = asyncio.get_running_loop().create_task(existing.refuse_and_close(reason))
                self._closing.add(refusing)
                refusing.add_done_callback(self._closing.discard)
            return RefusedError(reason)
        if existing is not None:
            if holder and link.peer_instance and holder != link.peer_instance:
                return DuplicateSession(
                    f"{DUPLICATE_SESSION_PREFIX} with site {link.site_id}"
                    f" ({existing.link.address}) from another process of that site id;"
                    " waiting for that session to end (a restart), or to find two live"
                    " files with one site id"
                )
            return DuplicateSession(
                f"{DUPLICATE_SESSION_PREFIX} with site {link.site_id}"
                f" ({existing.link.address}); one session per pair of nodes"
            )
        self._sessions[link.site_id] = session
        return None

    def _note_twin_refusal(self, exc: BaseException) -> None:
        """Remember a peer's word that another live file has our site id."""
        if isinstance(exc, SharedSiteId):
            self._twin_refusal = (str(exc), time.monotonic())

    def identity_conflicts(self) -> tuple[str, ...]:
        """Health reasons: site ids that two live files share, seen here or told by a peer."""
        reasons = [shared_site_id_reason(site) for site in self._identities.twins()]
        if self._twin_refusal is not None:
            text, at = self._twin_refusal
            if time.monotonic() - at <= self._identities.window_s:
                reasons.append(text)
        return tuple(reasons)

    def unregister(self, link: PeerLink, session: Session) -> None:
        if self._sessions.get(link.site_id) is session:
            del self._sessions[link.site_id]

    def restore_detected(self, current: Session) -> None:
        for session in [*self._sessions.values(), *self._accepted]:
            if session is not current:
                # Keep a reference: the event loop holds tasks only weakly.
                closing = asyncio.get_running_loop().create_task(session.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

    def feed_event(self) -> asyncio.Event:
        return self._feed_event

    def want_batch(
        self,
        session: Session,
        cursor: int,
        vector: dict[str, int],
        rows: int,
        tables: frozenset[str],
    ) -> None:
        self._wanted[session] = (cursor, vector, rows, tables)

    def unwant_batch(self, session: Session) -> None:
        self._wanted.pop(session, None)

    def feed_advanced(self) -> None:
        event, self._feed_event = self._feed_event, asyncio.Event()
        event.set()

    def note_throughput(self, *, applied_rows: int = 0, rows_captured_total: int) -> None:
        """Count rows in the throughput history.

        Local writes are also captured inside an apply or a quarantine retry
        (the store stamps pending writes first), so the captured rows are
        taken from the store's running total, read on the store thread by
        the caller, rather than from `capture()`'s result.
        """
        captured = max(0, rows_captured_total - self._rows_captured_seen)
        self._rows_captured_seen = max(self._rows_captured_seen, rows_captured_total)
        self._throughput.add(self.clock.now_ms(), captured_rows=captured, applied_rows=applied_rows)

    def note_feed_read(self, error: BaseException | None) -> None:
        """A send loop read our feed (error None), or failed to: node.health counts."""
        if error is None:
            self.health.note_success("reading the feed for a peer")
        else:
            self.health.note_failure("reading the feed for a peer", error)

    def note_rights_refused(self, rows: int) -> None:
        self.rights_refused_rows += rows

    # -- sessions -----------------------------------------------------------------

    async def serve_channel(
        self, peer: PeerIdentity, open_channel: Callable[[], Awaitable[Channel]]
    ) -> Refusal | None:
        """A channel dialled in (the `ChannelHost` Protocol): admit, then run its session."""
        verdict = admit(peer, self.config, stopping=self._stopping, inbound=self._inbound)
        if isinstance(verdict, Refusal):
            if verdict.reason is not RefusalReason.SHUTTING_DOWN:
                self.refused_connections += 1
                self._log_refusal(peer, verdict)
            return verdict
        name = verdict.peer.name if verdict.peer is not None else ""
        self._inbound[name] += 1
        try:
            # A TransportError here (the peer left during the upgrade) goes
            # back to the transport, which logs it: nobody is left to answer.
            channel = await open_channel()
            link = PeerLink(channel.peer, dialed=False, name=name)
            session = Session(self, channel, link, rights=verdict.peer)
            self._accepted.add(session)
            try:
                await session.run()
            except (SyncError, OSError) as exc:
                _log_session_end(session.link, exc)
                self._note_twin_refusal(exc)
            except Exception:
                log.exception("session with %s failed unexpectedly", session.link.address)
            finally:
                self._accepted.discard(session)
            return None
        finally:
            self._inbound[name] -= 1

    def _log_refusal(self, peer: PeerIdentity, refusal: Refusal) -> None:
        """One log line per connection refused before any data, saying which limit."""
        if refusal.reason is RefusalReason.TOO_MANY_CONNECTIONS:
            log.warning(
                "refused a connection from %s: %d connections dialled in already"
                " (limits.inbound_sessions_max)",
                peer.address,
                self.config.inbound_sessions_max,
            )
        elif refusal.reason is RefusalReason.NOT_A_PEER:
            log.warning(
                "refused a connection from %s: its certificate %s, not a configured peer",
                peer.address,
                refusal.certificate,
            )
        elif refusal.reason is RefusalReason.TOO_MANY_FROM_SITE:
            log.warning(
                "refused a connection from site %s (%s): it has %d open already"
                " (limits.sessions_per_peer_max)",
                peer.site,
                peer.address,
                self._inbound[peer.site or ""],
            )

    def _fleet_sites(self) -> set[str]:
        """The other sites our fleet stream knows (who may ask us to verify over it)."""
        if self.fleet is None:
            return set()
        return {site.site_id for site in self.fleet.statistics().sites}

    def _admit_verify(self, peer: PeerIdentity) -> Admitted | Refusal:
        """Admission of a verify request: a peer's, like a session; no connection limits."""
        verdict = admit(peer, self.config, stopping=self._stopping, inbound=None)
        if isinstance(verdict, Refusal) and verdict.reason is RefusalReason.NOT_A_PEER:
            log.warning(
                "refused a verify request from %s: its certificate is not a configured peer's",
                peer.address,
            )
        return verdict

    async def _dial_loop(self, dialer: _Dialer) -> None:
        delay_s = self.config.backoff_initial_s
        while not self._stopping:
            await self._wait_while_connected(dialer)
            dialer.state = "connecting"
            started = time.monotonic()
            previous = dialer.link
            failed = True
            try:
                channel = await self.connector.dial(dialer.url)
                peer = await self._dialled_peer(dialer, channel)
                link = PeerLink(dialer.url, dialed=True, name=peer.name if peer else "")
                dialer.link = link
                session = Session(self, channel, link, rights=peer)
                await session.run()
                failed = False
            except (SyncError, OSError) as exc:
                dialer.last_error = str(exc)
                dialer.last_error_ms = self.clock.now_ms()
                dialer.state = "refused" if isinstance(exc, RefusedError) else "backoff"
                if dialer.link is not None:
                    dialer.link.last_error = str(exc)
                    _log_session_end(dialer.link, exc)
                    self._note_twin_refusal(exc)
                else:
                    log.info("cannot reach peer %s: %s", dialer.url, exc)
            except Exception as exc:  # a bug must not stop the other peers' syncing
                dialer.last_error = f"internal error: {exc!r}"
                dialer.last_error_ms = self.clock.now_ms()
                dialer.state = "backoff"
                log.exception("session with %s failed unexpectedly", dialer.url)
            streamed = dialer.link is not previous and dialer.link is not None
            streamed = streamed and dialer.link is not None and dialer.link.connected_ms > 0
            if streamed and (not failed or time.monotonic() - started > SESSION_STABLE_S):
                # It streamed until now.  A session that fails at once, again and
                # again, does not count: that peer is as good as down.
                dialer.down_since_ms = self.clock.now_ms()
            dialer.reconnects += 1
            if time.monotonic() - started > SESSION_STABLE_S:
                delay_s = self.config.backoff_initial_s
            # Full jitter: nodes that lost the same link do not reconnect in lockstep.
            await asyncio.sleep(self._rng.uniform(0, delay_s))
            delay_s = min(delay_s * 2, self.config.backoff_max_s)

    async def _dialled_peer(self, dialer: _Dialer, channel: Channel) -> PeerConfig | None:
        """The peer we reached; with TLS, its certificate must name the site we dialled."""
        if self.config.tls is None:
            return dialer.peer
        name = channel.peer_site
        expected = dialer.peer.name if dialer.peer is not None else None
        if name is None or name != expected:
            await channel.close()
            what = "names no site" if name is None else f"is for site {name!r}"
            raise RefusedError(
                f"{dialer.url} presented a certificate that {what}, not for site {expected!r}"
            )
        return dialer.peer

    async def _wait_while_connected(self, dialer: _Dialer) -> None:
        """Do not dial a peer that is already in a session with us (it dialled us)."""
        site = dialer.link.site_id if dialer.link is not None else ""
        waited = False
        while site and site in self._sessions and not self._stopping:
            dialer.state = "connected by peer"
            waited = True
            await asyncio.sleep(self.config.backoff_max_s)
        if waited:
            dialer.down_since_ms = self.clock.now_ms()  # the peer's session streamed until now

    # -- background loops ---------------------------------------------------------

    async def _capture_loop(self) -> None:
        """Notice commits by any connection (the store's change notifier) and capture them.

        Where the notifier gives hints (inotify, for SQLite), a write to the
        file wakes the loop at once; when the commit is not yet published it
        looks again 0.2, 0.4, ... ms later; otherwise it sleeps, with a slow
        safety poll.  While the store thread works, the loop waits for it to
        finish and then looks (its own writes would wake it at every page).
        After a bulk capture, and without inotify, it polls every
        `poll_interval_ms`.
        """
        notifier = self.store.change_notifier()
        hinted = notifier.start()
        try:
            interval_s = self.config.poll_interval_ms / 1000
            last_change = time.monotonic()
            bulk_until = 0.0  # poll, not hints, until then (bulk writes)
            recheck_s = 0.0  # > 0: re-look this soon (after a hint), growing
            while True:
                notifier.clear_hint()
                if notifier.changed():
                    last_change = time.monotonic()
                    started = time.monotonic()
                    stamped = await self._capture_once()
                    held_s = time.monotonic() - started
                    # A capture holds the write lock: leave the application
                    # twice as long as it took, so it keeps most of the lock.
                    pause_s = CAPTURE_YIELD_FACTOR * held_s
                    if stamped >= STREAM_BULK_ROWS:
                        # Bulk writes: capturing at every commit would collide
                        # with the writer's next transaction for the lock.
                        bulk_until = time.monotonic() + STREAM_BULK_S
                        pause_s = max(interval_s, pause_s)
                    await asyncio.sleep(pause_s)
                    recheck_s = HINT_RECHECK_S  # our own commit hides a hint: look again
                    continue
                now = time.monotonic()
                # A file that has been quiet for a while is looked at less often:
                # an idle node then costs well under 1 % of a core.
                quiet = now - last_change > IDLE_AFTER_S
                if not hinted or now < bulk_until:
                    # Without inotify, or under bulk writes, poll: a commit
                    # waits at most a poll interval, and the loop does not
                    # wake (and capture) at every page of every commit.  The
                    # first write after a quiet spell waits at most
                    # IDLE_POLL_FACTOR polls (without inotify).
                    notifier.pause_hints()
                    await asyncio.sleep(interval_s * (IDLE_POLL_FACTOR if quiet else 1))
                    recheck_s = 0.0
                    continue
                if self.worker.busy:
                    # An apply or a read: its own writes would wake the loop
                    # at every page, and a capture would only queue behind it.
                    # Look as soon as the store thread is free.
                    notifier.pause_hints()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval_s * SAFETY_POLL_FACTOR):
                            await self.worker.wait_idle()
                    recheck_s = HINT_RECHECK_S
                    continue
                notifier.resume_hints()
                # Wake on the next hint, or to re-look: soon after a hint, else
                # the slow safety poll.
                if 0 < recheck_s <= interval_s * 2:
                    wait_s, recheck_s = recheck_s, recheck_s * HINT_RECHECK_FACTOR
                else:
                    wait_s, recheck_s = interval_s * SAFETY_POLL_FACTOR, 0.0
                    wait_s *= IDLE_POLL_FACTOR if quiet else 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await notifier.wait_hint()
                        recheck_s = HINT_RECHECK_S
        finally:
            notifier.close()

    async def _capture_once(self) -> int:
        """Capture (and read caught-up sessions' batches); the rows stamped."""
        wanted = list(self._wanted.items())

        def capture() -> tuple[bool, int, int, list[tuple[Session, int, ChangeBatch]]]:
            reloaded = self._follow_schema()
            stamped = self.store.capture()
            # Read the next batch of every caught-up send loop now, in this
            # trip to the store thread: each would do it first thing anyway.
            read = []
            if stamped and not reloaded:
                for session, (cursor, vector, rows, tables) in wanted:
                    batch = self.store.read_batch(cursor, vector, rows, tables=tables)
                    read.append((session, cursor, batch))
            return reloaded, stamped, self.store.rows_captured_total, read

        try:
            reloaded, stamped, captured_total, read = await self.worker.call(capture)
        except Exception as exc:  # a failed capture must not end the loop: writes wait for it
            log.exception("capture failed; will retry")
            self.health.note_failure("capture", exc)
            return 0
        self.health.note_success("capture")
        for session, cursor, batch in read:
            session.offer_batch(cursor, batch)
        if reloaded:
            await self.restart_sessions("tracked tables changed")
        if stamped:
            self._captures += 1
            self.note_throughput(rows_captured_total=captured_total)
            self.feed_advanced()
        return stamped

    def _follow_schema(self) -> bool:
        """On the store thread: follow DDL and tracking changes; True if our tables changed.

        DDL by any tool on a tracked table (`Store.reconcile_schema`, which
        first captures pending writes with the old definition), tables that
        `[tables] track` patterns match and that appeared (`patterns`), and a
        `track` or `untrack` run by another process.  Schema problems (a
        table that cannot be synced) are logged at ERROR when they change.
        """
        changes = self.store.reconcile_schema()
        for change in changes:
            log.info("schema change handled: %s", change)
        changed = bool(changes)
        if self.config.track_patterns:
            tables = self.store.application_tables()
            if changed or tables != self._application_tables:
                self._application_tables = tables
                started = track_matches(
                    self.store,
                    self.config.track_patterns,
                    allow_integer_keys=self.config.allow_integer_keys,
                )
                changed |= bool(started)
        changed |= self.store.reload_if_changed()
        problems = self.store.schema_problems()
        if problems != self._schema_problems:
            for problem in problems:
                log.error("%s", problem)
            self._schema_problems = problems
        return changed

    async def restart_sessions(self, why: str) -> None:
        """End every session, so that each peer gets a fresh HELLO (dialers dial again).

        A session still in its handshake holds a HELLO read before: it sees
        the new `schema_epoch` and ends too.
        """
        self.schema_epoch += 1
        sessions = {*self._sessions.values(), *self._accepted}
        log.info("%s: restarting %d sessions with the new schema", why, len(sessions))
        for session in sessions:
            await session.close()

    async def _quarantine_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.quarantine_retry_s)
            try:
                resolved, captured_total = await self.worker.call(self._retry_quarantine)
            except Exception:
                log.exception("quarantine retry failed")
                continue
            self.note_throughput(applied_rows=resolved, rows_captured_total=captured_total)
            if resolved:
                log.info("%d quarantined rows applied on retry", resolved)
                self.feed_advanced()

    def _capture_counted(self) -> int:
        """On the store thread: capture, then the captured-rows total."""
        self.store.capture()
        return self.store.rows_captured_total

    def _retry_quarantine(self) -> tuple[int, int]:
        """On the store thread: rows resolved, and the captured-rows total after it."""
        return self.store.retry_quarantine(), self.store.rows_captured_total

    # -- introspection ------------------------------------------------------------

    async def statistics(self) -> NodeStatistics:
        # (link, state, last error, reconnects) per dialer, then per session
        # that no dialer started (the peer dialled in).
        entries: list[tuple[PeerLink, PeerState, str, int]] = []
        # (last error's time, not streaming since) per entry, in the same order.
        times: list[tuple[int, int]] = []
        seen: set[int] = set()
        for dialer in self._dialers.values():
            link = dialer.link
            state = (
                dialer.state
                if link is None
                or link.state != "streaming"
                or self._sessions.get(link.site_id) is None
                else "streaming"
            )
            entries.append(
                (
                    link
                    or PeerLink(
                        dialer.url, dialed=True, name=dialer.peer.name if dialer.peer else ""
                    ),
                    state,
                    dialer.last_error,
                    dialer.reconnects,
                )
            )
            times.append(
                (
                    dialer.last_error_ms,
                    0 if state in ("streaming", "connected by peer") else dialer.down_since_ms,
                )
            )
            if link is not None:
                seen.add(id(link))
        for session in list(self._sessions.values()):
            if id(session.link) not in seen:
                entries.append((session.link, session.link.state, session.link.last_error, 0))
                times.append((0, 0))
        # Taken once: a session may move on while the store thread counts.
        acked = [link.acked_seq for link, *_ in entries]
        known = [seq for seq in acked if seq >= 0]

        def read() -> tuple[StoreStatus, list[int] | None]:
            store_status = self.store.status()
            try:
                return store_status, self.store.feed_rows_after(known, LAG_CHANGES_MAX)
            except StoreError as exc:
                # The feed cannot be read (a damaged shadow table): the lag is
                # unknown, and the sessions' failing feed reads are the health
                # reason that says so; status itself must still answer.
                log.debug("counting the peers' lag failed: %s", exc)
                return store_status, None

        store_status, counts = await self.worker.call(read)
        changes = iter(counts if counts is not None else [])
        if counts is None:
            acked = [-1 for _seq in acked]
        peers = tuple(
            _peer_statistics(
                link,
                state,
                last_error,
                reconnects,
                out_lag=None if seq < 0 else (next(changes), feed_lag_ms(seq, store_status.seq)),
                verified=self.verify_outcomes.get(link.address),
                times=when,
            )
            for (link, state, last_error, reconnects), seq, when in zip(
                entries, acked, times, strict=True
            )
        )
        return NodeStatistics(
            store_status.site_id,
            self.listen,
            store_status,
            peers,
            self._captures,
            self.rights_refused_rows,
            self.refused_connections,
            self.identity_conflicts(),
            dataclasses.replace(self.lifecycle),
            None if self.fleet is None else self._fleet_statistics(),
            snapshots=dataclasses.replace(self.snapshot_server.statistics),
        )

    def _fleet_statistics(self) -> FleetStatistics:
        """The fleet's figures, with each site's last periodic verify."""
        assert self.fleet is not None
        statistics = self.fleet.statistics()
        outcomes = self.fleet_verify_outcomes
        sites = [
            dataclasses.replace(site, **outcome_fields(outcomes.get(site.site_id)))
            for site in statistics.sites
        ]
        # A site that never wrote has no chain here, but the verify found it
        # (its state marker) and may have found it lacking rows: it is listed.
        listed = {site.site_id for site in sites}
        sites.extend(
            dataclasses.replace(quiet_site(site_id), **outcome_fields(outcome))
            for site_id, outcome in sorted(outcomes.items())
            if site_id not in listed
        )
        return dataclasses.replace(statistics, sites=tuple(sites))

    def throughput_samples(self) -> tuple[ThroughputSample, ...]:
        """Rows captured and applied per interval, oldest first (the last is still open)."""
        return self._throughput.samples(self.clock.now_ms())

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _peer_statistics(
    link: PeerLink,
    state: PeerState,
    last_error: str,
    reconnects: int,
    *,
    out_lag: tuple[int, int | None] | None,
    verified: VerifyOutcome | None,
    times: tuple[int, int] = (0, 0),
) -> PeerStatistics:
    catching_up = link.catchup.estimate(link.cursor, link.peer_head_seq, time.monotonic())
    verify_figures = outcome_fields(verified)
    return PeerStatistics(
        address=link.address,
        site_id=link.site_id,
        name=link.name,
        dialed=link.dialed,
        state=state,
        cursor=link.cursor,
        peer_head_seq=link.peer_head_seq,
        lag_ms=feed_lag_ms(link.cursor, link.peer_head_seq),
        catchup_progress=None if catching_up is None else round(catching_up.progress, 4),
        catchup_rows_per_s=0.0 if catching_up is None else round(catching_up.rows_per_s, 1),
        catchup_eta_s=None
        if catching_up is None or catching_up.eta_s is None
        else round(catching_up.eta_s, 1),
        out_lag_changes=None if out_lag is None else out_lag[0],
        out_lag_ms=None if out_lag is None else out_lag[1],
        applied_rows_by_table=dict(link.applied_rows_by_table),
        bytes_in_by_table=dict(link.bytes_in_by_table),
        rows_in=link.rows_in,
        rows_out=link.rows_out,
        batches_in=link.batches_in,
        batches_out=link.batches_out,
        quarantined_rows=link.quarantined_rows,
        rights_refused_rows=link.rights_refused_rows,
        last_batch_ms=link.last_batch_ms,
        last_error=last_error,
        reconnects=reconnects,
        bytes_in=link.bytes_in,
        bytes_out=link.bytes_out,
        apply_seconds_buckets=APPLY_SECONDS_BUCKETS,
        apply_seconds_counts=tuple(link.apply_seconds_counts),
        apply_seconds_sum=link.apply_seconds_sum,
        last_error_ms=times[0],
        down_since_ms=times[1],
        schema_differences=link.schema_differences,
        adopts_vector=link.adopts_vector,
        **verify_figures,
    )


def _log_session_end(link: PeerLink, exc: BaseException) -> None:
    if isinstance(exc, DuplicateSession):
        log.info("session with %s not needed: %s", link.site_id or link.address, exc)
    elif isinstance(exc, RefusedError):
        log.error("session with %s refused: %s", link.site_id or link.address, exc)
    else:
        log.info("session with %s ended: %s", link.site_id or link.address, exc)
    with contextlib.suppress(Exception):
        link.state = "closed"
