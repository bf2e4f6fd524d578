"""One sync session with one peer, over any `Channel`; both ends run the same code.

    HELLO ->           <- HELLO        (check version, site id; compare schemas)
    PULL(cursor) ->    <- PULL(cursor) (each side asks for the other's feed)
    BATCH ... ->       <- BATCH ...    (backlog, then live changes)
    <- ACK             ACK ->          (flow control; fresher vector)

The receive loop applies the peer's batches in order; the send loop streams
our feed with at most `batches_in_flight_max` unacknowledged batches.  Any
error ends the session (the caller reconnects with backoff): a session that
resumes from the stored cursor is always correct, so there is no attempt to
repair a session in place.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from syncmesh.errors import (
    ClockDriftError,
    ProtocolError,
    RefusedError,
    SiteIdConflict,
    StoreError,
    SyncError,
)
from syncmesh.merge import missing_rows
from syncmesh.model import CELL_FIELDS, ChangeBatch, Membership
from syncmesh.node.catchup import CatchUp
from syncmesh.node.config import NodeConfig, PeerConfig
from syncmesh.node.mismatch import SchemaComparison, compare
from syncmesh.node.worker import StoreWorker
from syncmesh.protocol import (
    OFF_LOOP_BYTES,
    Ack,
    Batch,
    Have,
    Hello,
    Members,
    Message,
    Pull,
    Refuse,
    decode,
    encode,
    pack,
    seal,
)

# `Node.register` words its refusal of a second session with this prefix.
from syncmesh.protocol.messages import DUPLICATE_SESSION_PREFIX as DUPLICATE_SESSION_PREFIX
from syncmesh.protocol.messages import shared_site_id_reason
from syncmesh.store import Store
from syncmesh.transport.base import Channel

log = logging.getLogger(__name__)

HLC_MAX = (1 << 63) - 1
# What a peer's session (or its dialer) is doing, as /v1/status shows it.
PeerState = Literal[
    "connecting", "handshake", "streaming", "backoff", "refused", "connected by peer", "closed"
]


class DuplicateSession(RefusedError):
    """The pair already has a session: not a fault, the other session carries on."""


class SharedSiteId(RefusedError):
    """A peer met another live file with our site id: this file or that one is a copy."""


def refused_by_peer(what: str, message: Refuse) -> RefusedError:
    """The error for a REFUSE received from a peer, typed as the message is."""
    kind: type[RefusedError] = RefusedError
    if message.duplicate_session:
        kind = DuplicateSession
    elif message.shared_site_id:
        kind = SharedSiteId
    return kind(f"{what}: {message.reason}")


@dataclass(frozen=True, slots=True)
class SendLimits:
    """The most one BATCH we send may hold: our limits or the peer's, whichever is lower.

    A peer refuses a batch over its `limits.rows_per_message_max` or
    `limits.message_bytes_max` and ends the session; sending it again on
    the next session would be refused again, for ever (issue 12).  Its
    HELLO says what it takes; a peer from before that says nothing and is
    sent batches within our own limits, as before.
    """

    rows_max: int
    bytes_max: int
    # True if a limit is the peer's: errors then name whose limit it is.
    peers: bool = False

    @classmethod
    def for_peer(cls, config: NodeConfig, hello: Hello) -> SendLimits:
        rows_max, bytes_max = config.rows_per_message_max, config.message_bytes_max
        if hello.rows_per_message_max:
            rows_max = min(rows_max, hello.rows_per_message_max)
        if hello.message_bytes_max:
            bytes_max = min(bytes_max, hello.message_bytes_max)
        lower = (rows_max, bytes_max) != (config.rows_per_message_max, config.message_bytes_max)
        return cls(rows_max, bytes_max, lower)


APPLY_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class PeerLink:
    """Live counters of one session, read by `Node.statistics()`."""

    address: str
    dialed: bool
    name: str = ""  # the peer's site name (certificate or [peers.NAME]); "" if unnamed
    peer_instance: str = ""  # the peer process's HELLO `instance` ("" from older peers)
    site_id: str = ""
    state: PeerState = "handshake"
    connected_ms: int = 0
    peer_head_seq: int = 0
    cursor: int = 0
    # Our feed as the peer acknowledged it (from its PULL, then each ACK);
    # -1 until its PULL: the peer's own lag on our feed.
    acked_seq: int = -1
    # When (time.monotonic()) our cursor last reached the peer's head as its
    # batch told it, and the highest such head; when the peer last
    # acknowledged a batch that reached our head as we read it, and the
    # highest such head (0: not in this session).  Everything at or below
    # such a head has been applied (a split seq group moves rows above the
    # head of its time, never below).  The periodic verify judges a peer
    # only once both directions have caught up: rows still in flight are no
    # divergence (node.verify_server).
    in_caught_up_at: float = 0.0
    in_caught_up_head: int = 0
    out_caught_up_at: float = 0.0
    out_caught_up_head: int = 0
    rows_in: int = 0
    rows_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    quarantined_rows: int = 0
    rights_refused_rows: int = 0  # rows of tables it may not send us
    last_batch_ms: int = 0
    last_error: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    # Batch apply times: counts per bucket of APPLY_SECONDS_BUCKETS (the last
    # counts everything slower), and their sum.
    apply_seconds_counts: list[int] = field(
        default_factory=lambda: [0] * (len(APPLY_SECONDS_BUCKETS) + 1)
    )
    apply_seconds_sum: float = 0.0
    peer_vector: dict[str, int] = field(default_factory=dict)
    catchup: CatchUp = field(default_factory=lambda: CatchUp(0))  # reading the peer's feed
    # Per table: rows applied, and the frame bytes of its batches apportioned
    # by the table's share of each batch's rows (a frame is compressed whole).
    applied_rows_by_table: dict[str, int] = field(default_factory=dict)
    bytes_in_by_table: dict[str, int] = field(default_factory=dict)
    # How the peer's tracked tables compare with ours (node.mismatch), from
    # its HELLO: what differs, in words, and whether we adopt its vector.
    schema_differences: tuple[str, ...] = ()
    adopts_vector: bool = True

    def note_in_caught_up(self, head_seq: int) -> None:
        self.in_caught_up_at = time.monotonic()
        self.in_caught_up_head = max(self.in_caught_up_head, head_seq)

    def note_out_caught_up(self, head_seq: int) -> None:
        self.out_caught_up_at = time.monotonic()
        self.out_caught_up_head = max(self.out_caught_up_head, head_seq)

    def note_apply(self, seconds: float) -> None:
        self.apply_seconds_sum += seconds
        self.apply_seconds_counts[bisect.bisect_left(APPLY_SECONDS_BUCKETS, seconds)] += 1

    def note_tables(self, batch: ChangeBatch, applied: dict[str, int], frame_bytes: int) -> None:
        """Count a batch per table: rows applied, and its share of the frame's bytes."""
        for name, count in applied.items():
            self.applied_rows_by_table[name] = self.applied_rows_by_table.get(name, 0) + count
        total = sum(len(part.rows) for part in batch.tables)
        for part in batch.tables:
            share = frame_bytes * len(part.rows) // total if total else 0
            self.bytes_in_by_table[part.table] = self.bytes_in_by_table.get(part.table, 0) + share


async def _encoded(message: Message) -> bytes:
    """`encode(message)`, compressed in a thread when large (the loop keeps answering pings)."""
    payload = pack(message)
    if len(payload) >= OFF_LOOP_BYTES:
        return await asyncio.to_thread(seal, payload)
    return seal(payload)


class FrameReadAhead:
    """Reads a session's channel ahead of the frames it is handling.

    aiohttp answers a peer's ping only inside `receive()`.  The session used
    to call it again only once the previous frame was handled: while a
    large batch (one 30 MB row) was decoded and applied, the peer's pings
    went unanswered, its heartbeat saw no pong and it dropped the session,
    again at each retry (new-user report).  This task keeps receiving while
    the session works, so pings are answered, and hands the frames over in
    order, then the channel's error once they are all taken.  Frames not
    taken yet are held up to `budget_bytes` (the message limit), then it
    waits: a peer cannot make it hold more than that and one frame.
    """

    def __init__(self, channel: Channel, budget_bytes: int) -> None:
        self._channel = channel
        self._budget_bytes = budget_bytes
        self._frames: collections.deque[bytes] = collections.deque()
        self._held_bytes = 0
        self._error: Exception | None = None
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def next(self) -> bytes:
        """The next frame; the channel's error once every frame before it was taken."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            await self._arrived.wait()
        frame = self._frames.popleft()
        self._held_bytes -= len(frame)
        self._taken.set()
        return frame

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        try:
            while True:
                while self._held_bytes >= self._budget_bytes:
                    self._taken.clear()
                    await self._taken.wait()
                frame = await self._channel.receive()
                self._frames.append(frame)
                self._held_bytes += len(frame)
                self._arrived.set()
        except Exception as exc:  # handed to the session in order, after the frames
            self._error = exc
            self._arrived.set()


class SessionHost(Protocol):
    """What a session needs from its node."""

    config: NodeConfig
    store: Store
    worker: StoreWorker
    # Bumped when our tracked tables change: a HELLO built before is stale.
    schema_epoch: int

    def now_ms(self) -> int:
        """Wall time from the node's injected clock."""
        ...

    async def our_hello(self) -> Hello: ...

    def register(self, link: PeerLink, session: Session) -> RefusedError | None:
        """Record the session under the peer's site id, or the refusal to send it."""
        ...

    def unregister(self, link: PeerLink, session: Session) -> None: ...

    def feed_event(self) -> asyncio.Event: ...

    def restore_detected(self, current: Session) -> None: ...

    def feed_advanced(self) -> None: ...

    def want_batch(
        self,
        session: Session,
        cursor: int,
        vector: dict[str, int],
        rows: int,
        tables: frozenset[str],
    ) -> None: ...

    def unwant_batch(self, session: Session) -> None: ...

    def note_throughput(self, *, applied_rows: int = 0, rows_captured_total: int) -> None: ...

    def note_rights_refused(self, rows: int) -> None: ...

    def note_feed_read(self, error: BaseException | None) -> None: ...


class Session:
    def __init__(
        self,
        host: SessionHost,
        channel: Channel,
        link: PeerLink,
        *,
        rights: PeerConfig | None = None,
    ) -> None:
        """`rights`: the peer's configuration (None: an unnamed peer, every table both ways)."""
        self._host = host
        self._channel = channel
        self.link = link
        self._rights = rights
        self._acked = asyncio.Event()
        # (to_seq, our head if the batch reached it, else -1) of each unacknowledged batch
        self._in_flight: collections.deque[tuple[int, int]] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._own_writes_wanted = True
        self._closing: asyncio.Task[None] | None = None
        # (cursor, batch) read for us by the node right after a capture
        self._prefetched: tuple[int, ChangeBatch] | None = None
        # Set at the handshake from both HELLOs: what to send, whose vector to adopt.
        self._schema = SchemaComparison(frozenset(), False, ())
        # The peer's HELLO carried membership: it reads MEMBERS (ADR 0015).
        self._gossips = False
        # Whether our PULL of this session told the peer that we restore (apply_batch).
        self._pulled_restoring = False
        # Set at the handshake from the peer's HELLO: what one BATCH may hold.
        self._limits = SendLimits(host.config.rows_per_message_max, host.config.message_bytes_max)

    async def close(self) -> None:
        await self._channel.close()

    @property
    def peer_site_id(self) -> str:
        """The peer's site id once its HELLO was admitted ("" before)."""
        return self.link.site_id if self.link.state == "streaming" else ""

    @property
    def peer_vector(self) -> dict[str, int]:
        """The vector the peer last sent us (PULL, ACK, HAVE, a batch's)."""
        return self.link.peer_vector

    async def send_membership(self, membership: Membership) -> bool:
        """MEMBERS to a streaming peer that speaks it (its HELLO had membership)."""
        if not self._gossips or self.link.state != "streaming":
            return False
        await self._send(Members(membership))
        return True

    async def refuse_and_close(self, reason: str) -> None:
        """End a streaming session with a REFUSE that tells the peer why."""
        await self._refuse(reason)
        await self._channel.close()

    async def run(self) -> None:
        """Handshake, then stream both ways until the link fails or is closed."""
        registered = False
        try:
            hello = await self._handshake()
            registered = True
            self.link.state = "streaming"
            self.link.connected_ms = self._host.now_ms()
            log.info("session with %s (%s) established", hello.site_id, self.link.address)
            try:
                await self._receive_loop()
            except ProtocolError as exc:
                # Tell the peer why before hanging up: its operator reads the reason.
                raise await self._refuse(f"bad message: {exc}") from exc
        finally:
            if self._sender is not None:
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
            if registered:
                self._host.unregister(self.link, self)
            await self._channel.close()

    async def _send(self, message: Message) -> None:
        await self._send_frame(encode(message))

    async def _send_frame(self, frame: bytes) -> None:
        await self._channel.send(frame)
        self.link.bytes_out += len(frame)

    async def _refuse(self, reason: str | RefusedError) -> RefusedError:
        refusal = reason if isinstance(reason, RefusedError) else RefusedError(reason)
        try:
            await self._send(Refuse(refusal.reason))
        except Exception:  # the refusal is a courtesy: the link may be gone already
            log.debug("could not send refusal to %s", self.link.address, exc_info=True)
        return refusal

    async def _handshake(self) -> Hello:
        host = self._host
        epoch = host.schema_epoch
        ours = await host.our_hello()
        await self._send(ours)
        frame = await self._channel.receive(timeout_s=host.config.handshake_timeout_s)
        try:
            message = self._decode(frame)
        except ProtocolError as exc:
            raise await self._refuse(f"bad HELLO: {exc}") from exc
        if isinstance(message, Refuse):
            raise refused_by_peer(f"peer {self.link.address} refused the session", message)
        if not isinstance(message, Hello):
            raise await self._refuse(f"expected HELLO, got {type(message).__name__.upper()}")
        reason = _mismatch(ours, message)
        if reason is not None:
            raise await self._refuse(reason)
        self._note_schema(ours, message)
        self._note_limits(message)
        self.link.site_id = message.site_id
        self.link.peer_head_seq = message.head_seq
        self.link.peer_instance = message.instance
        duplicate = host.register(self.link, self)
        if duplicate is not None:
            raise await self._refuse(duplicate)
        try:
            if host.schema_epoch != epoch:
                # Our tables changed since our HELLO: the node closed the
                # sessions it knew of; this one was not registered yet.
                raise SyncError("our tracked tables changed during the handshake")
            await self._start_pull(message)
        except BaseException:
            host.unregister(self.link, self)
            raise
        return message

    def _note_schema(self, ours: Hello, theirs: Hello) -> None:
        """Compare the tracked tables; log what differs once, at INFO: it is no refusal."""
        self._schema = compare(ours, theirs)
        self.link.schema_differences = self._schema.differences
        self.link.adopts_vector = self._schema.adopt_vector
        if self._schema.differences:
            log.info(
                "site %s tracks other tables or columns (only what both have is exchanged%s): %s",
                theirs.site_id,
                "" if self._schema.adopt_vector else "; its vector is not adopted",
                "; ".join(self._schema.differences),
            )

    def _note_limits(self, theirs: Hello) -> None:
        """Send within the peer's limits from now on; say so once if they are below ours."""
        self._limits = SendLimits.for_peer(self._host.config, theirs)
        if self._limits.peers:
            log.info(
                "site %s takes at most %d rows and %d bytes per message: batches to it are cut"
                " to that",
                theirs.site_id,
                self._limits.rows_max,
                self._limits.bytes_max,
            )

    async def _refuse_a_twin(self, conflict: SiteIdConflict) -> SharedSiteId:
        """A copy of our file writes under our site id, seen through this peer: refuse loudly.

        The peer, and any node that relays it, cannot tell the two files
        apart; only the fix can (issue 12, defect 7).  Our health names it
        too (the node notes a SharedSiteId).
        """
        own = await self._host.worker.call(lambda: self._host.store.site_id)
        reason = f"{shared_site_id_reason(own)} ({conflict})"
        log.error("refused site %s (%s): %s", self.link.site_id, self.link.address, reason)
        await self._refuse(reason)
        return SharedSiteId(reason)

    async def _start_pull(self, hello: Hello) -> None:
        store, worker = self._host.store, self._host.worker
        # Membership first (ADR 0015): a forgotten site, or one that slept past
        # the GC horizon, would bring deleted rows back.
        refusal = await worker.call(
            store.note_hello, hello.site_id, hello.vector, hello.head_seq, hello.membership
        )
        if refusal is not None:
            log.warning("refused site %s: %s", hello.site_id, refusal)
            raise await self._refuse(refusal)
        self._gossips = hello.membership is not None
        try:
            restored = await worker.call(store.note_peer_vector, hello.vector, hello.held)
        except ClockDriftError as exc:
            raise await self._refuse(
                f"your vector claims writes of ours from the future: {exc}"
            ) from exc
        except SiteIdConflict as exc:
            raise await self._refuse_a_twin(exc) from exc
        if restored:
            # Our file is an old copy: sessions that began before we knew must
            # start again under the new incarnation, with our lowered vector.
            self._host.restore_detected(self)
        stored = await worker.call(store.peer_cursor, hello.site_id)
        if (
            stored is None
            or stored.incarnation != hello.incarnation
            or stored.cursor > hello.head_seq
        ):
            if stored is not None:
                log.warning(
                    "peer %s was restored or re-initialised (incarnation or seq went"
                    " back): re-reading its feed from the start",
                    hello.site_id,
                )
            await worker.call(
                store.reset_peer_cursor,
                hello.site_id,
                hello.incarnation,
                hello.head_seq,
                self.link.address,
            )
            cursor = 0
        else:
            cursor = stored.cursor
        self.link.cursor = cursor
        self.link.catchup = CatchUp(cursor)
        if cursor >= hello.head_seq:
            self.link.note_in_caught_up(hello.head_seq)
        vector = await worker.call(store.vector)
        restoring = await worker.call(store.restoring)
        # Only a sender told that we restore sends our own writes back, so
        # only its batches may claim them (Store.apply_batch, ADR 0006).
        self._pulled_restoring = restoring
        await self._send(Pull(hello.incarnation, cursor, vector, restoring))

    async def _receive_loop(self) -> None:
        reader = FrameReadAhead(self._channel, self._host.config.message_bytes_max)
        try:
            while True:
                await self._handle(await reader.next())
        finally:
            await reader.stop()

    async def _handle(self, frame: bytes) -> None:
        """One frame from the peer, in the order it came (the channel is read meanwhile)."""
        self.link.bytes_in += len(frame)
        if len(frame) >= OFF_LOOP_BYTES:
            message = await asyncio.to_thread(self._decode, frame)
        else:
            message = self._decode(frame)
        if isinstance(message, Batch):
            await self._apply(message.batch, len(frame))
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Have):
            self._learn_peer_vector(message.vector)
        elif isinstance(message, Members):
            site = self.link.site_id
            await self._host.worker.call(self._host.store.note_gossip, site, message.membership)
        elif isinstance(message, Pull):
            if self._sender is not None:
                raise ProtocolError("second PULL in one session")
            self._sender = asyncio.create_task(self._send_loop(message))
            self._sender.add_done_callback(self._sender_done)
        elif isinstance(message, Refuse):
            raise refused_by_peer(f"peer {self.link.site_id} ended the session", message)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__.upper()} mid-session")

    def _decode(self, frame: bytes) -> Message:
        """The trust boundary: every frame from the peer, checked against our limits."""
        config = self._host.config
        return decode(
            frame, frame_bytes_max=config.message_bytes_max, rows_max=config.rows_per_message_max
        )

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The receive loop is blocked on the channel: closing it ends the session.
            error = task.exception()
            self.link.last_error = str(error)
            log.warning("sending to %s failed: %s", self.link.site_id or self.link.address, error)
            self._closing = asyncio.get_running_loop().create_task(self._channel.close())

    def _within_send_rights(self, batch: ChangeBatch) -> ChangeBatch:
        """`batch` without the tables the peer may not send us, and without its vector.

        The refused rows are counted and reported in one line.  A peer whose
        send rights are restricted never moves our vector: its vector also
        covers writes we refused (in this batch or an earlier one), and
        claiming them would let other peers filter them out, though they
        may send them to us (docs/adr/0008-per-peer-rights.md).
        """
        rights = self._rights
        if rights is None or rights.send is None:
            return batch
        refused: dict[str, int] = {}
        kept = []
        for table in batch.tables:
            if rights.may_send(table.table):
                kept.append(table)
            else:
                refused[table.table] = refused.get(table.table, 0) + len(table.rows)
        if refused:
            rows = sum(refused.values())
            self.link.rights_refused_rows += rows
            self._host.note_rights_refused(rows)
            listed = ", ".join(f"{table} ({count})" for table, count in sorted(refused.items()))
            log.warning(
                "refused %d rows from site %s: tables it may not send here: %s",
                rows,
                rights.name,
                listed,
            )
        return dataclasses.replace(batch, tables=tuple(kept), vector=None)

    def _within_receive_rights(self, batch: ChangeBatch) -> ChangeBatch:
        """`batch` without the tables the peer may not receive, and then without a vector.

        A vector claims our whole state; the peer would claim writes it
        never got, and pass that claim on.
        """
        rights = self._rights
        if rights is None or rights.receive is None:
            return batch
        tables = tuple(table for table in batch.tables if rights.may_receive(table.table))
        return dataclasses.replace(batch, tables=tables, vector=None)

    async def _apply(self, received: ChangeBatch, frame_bytes: int) -> None:
        store, worker, site = self._host.store, self._host.worker, self.link.site_id
        batch = self._within_send_rights(received)

        def apply() -> tuple[int, int, dict[str, int], int, dict[str, int], bool, bool]:
            restoring_before = store.restoring()
            stored = store.peer_cursor(site)
            if batch.from_seq == 0 and (
                stored is None or stored.incarnation != batch.incarnation or stored.cursor != 0
            ):
                store.reset_peer_cursor(site, batch.incarnation, batch.head_seq, self.link.address)
            # Leave out what we hold already by our own vector, as the sender
            # would have had it known our vector now: in a mesh the same rows
            # arrive from their origin and from every relay, and merging a
            # row we hold costs several times more than filtering it here.
            result = store.apply_batch(
                site,
                _refiltered(batch, store.vector()),
                adopt_vector=self._schema.adopt_vector,
                own_claims=self._pulled_restoring,
            )
            return (
                result.applied_rows,
                result.quarantined_rows + result.drift_refused_rows,
                store.vector(),
                store.rows_captured_total,  # apply_batch captures pending local writes first
                result.applied_by_table,
                restoring_before,
                store.restoring(),
            )

        started = time.perf_counter()
        try:
            (
                applied,
                quarantined,
                vector,
                captured_total,
                by_table,
                restoring_before,
                restoring,
            ) = await worker.call(apply)
        except SiteIdConflict as exc:
            raise await self._refuse_a_twin(exc) from exc
        except StoreError as exc:
            raise StoreError(f"cannot apply batch from {site}: {exc}") from exc
        link = self.link
        link.note_apply(time.perf_counter() - started)
        link.rows_in += received.row_count
        link.batches_in += 1
        link.quarantined_rows += quarantined
        link.note_tables(received, by_table, frame_bytes)
        link.cursor = batch.to_seq
        link.peer_head_seq = batch.head_seq
        link.last_batch_ms = self._host.now_ms()
        link.catchup.note(time.monotonic(), link.cursor, link.rows_in)
        if batch.to_seq >= batch.head_seq:
            link.note_in_caught_up(batch.head_seq)
        if received.vector is not None:
            # The peer's vector is true of its whole state: what it sent us
            # we need not send back (this is what stops a relay from echoing).
            self._learn_peer_vector(received.vector)
        self._host.note_throughput(applied_rows=applied, rows_captured_total=captured_total)
        if applied:
            self._host.feed_advanced()
        await self._send(Ack(batch.to_seq, vector))
        if restoring and not self._pulled_restoring:
            # Our file is an old copy, and this session's PULL told the peer we
            # were not restoring, so it will not send our own writes back: the
            # session starts again, with a PULL that asks for them.  If this
            # batch's vector showed it (the restore check of its claim), the
            # other sessions that began before must too, as after a HELLO.
            if not restoring_before:
                self._host.restore_detected(self)
            raise SyncError(
                "this file was found to be an old copy (restored from a backup?):"
                " starting the session again so that the peer sends our own writes back"
            )

    def offer_batch(self, cursor: int, batch: ChangeBatch) -> None:
        """A batch read for this session from `cursor` (after a capture): used if still due."""
        self._prefetched = (cursor, batch)

    def _on_ack(self, ack: Ack) -> None:
        if not self._in_flight or self._in_flight[0][0] != ack.to_seq:
            raise ProtocolError(f"ACK for seq {ack.to_seq} does not match what we sent")
        _to_seq, reached_head = self._in_flight.popleft()
        self.link.acked_seq = ack.to_seq
        if reached_head >= 0:
            self.link.note_out_caught_up(reached_head)
        self._learn_peer_vector(ack.vector)
        self._acked.set()

    def _learn_peer_vector(self, vector: dict[str, int]) -> None:
        """Fold in a vector the peer holds; its state only grows, so the max stays true."""
        known = self.link.peer_vector
        for site, hlc in vector.items():
            known[site] = max(known.get(site, 0), hlc)

    def _filter_vector(self) -> dict[str, int]:
        """What the peer holds: its vector, and all its own writes unless it asked for them."""
        vector = dict(self.link.peer_vector)
        if not self._own_writes_wanted:
            vector[self.link.site_id] = HLC_MAX
        return vector

    async def _send_loop(self, pull: Pull) -> None:
        host, store, worker = self._host, self._host.store, self._host.worker
        config = host.config
        incarnation = await worker.call(lambda: store.incarnation)
        head = await worker.call(store.head_seq)
        cursor = pull.cursor
        if pull.incarnation != incarnation or cursor > head:
            cursor = 0  # the peer's cursor is of an older copy of this file
        self.link.acked_seq = cursor
        if cursor >= head:
            self.link.note_out_caught_up(head)
        self.link.peer_vector = dict(pull.vector)
        self._own_writes_wanted = pull.own_writes_wanted
        own_site = await worker.call(lambda: store.site_id)
        last_vector: dict[str, int] | None = None
        limits = self._limits
        rows_max = min(config.batch_rows_max, limits.rows_max)
        while True:
            while len(self._in_flight) >= config.batches_in_flight_max:
                self._acked.clear()
                await self._acked.wait()
            changed = host.feed_event()
            prefetched, self._prefetched = self._prefetched, None
            if prefetched is not None and prefetched[0] == cursor and prefetched[1].to_seq > cursor:
                # Read before `changed` was taken: only a batch that moves the
                # cursor is used (the next round reads afresh); an empty one
                # could hide a capture made since.
                batch = prefetched[1]
            else:
                try:
                    batch = await worker.call(
                        store.read_batch,
                        cursor,
                        self._filter_vector(),
                        rows_max,
                        tables=self._schema.peer_tables,
                    )
                except Exception as exc:
                    host.note_feed_read(exc)  # failing in a row makes the node unhealthy
                    raise
            batch = self._within_receive_rights(batch)
            if batch.to_seq == cursor and (batch.vector is None or batch.vector == last_vector):
                host.note_feed_read(None)
                # Caught up: the node reads our next batch in the same trip to
                # the store thread as its next capture (one hop less per write).
                host.want_batch(
                    self, cursor, self._filter_vector(), rows_max, self._schema.peer_tables
                )
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancel that lands as `changed` fires, and the sender then outlives
                # its session (a shutdown hung for ever in gather(sender)).
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(config.idle_resend_s):
                            await changed.wait()
                finally:
                    host.unwant_batch(self)
                continue
            if (
                config.relay_hold_ms > 0
                and batch.row_count <= config.batch_rows_max // 2  # live changes, not a backlog
                and _only_relays(batch, own_site)
            ):
                # In a mesh the peer often gets these rows from their origin at
                # the same moment.  Tell it what we hold, give it a moment to do
                # the same, then leave out what it turns out to hold already, so
                # a relay does not double the traffic.  Once per batch: a chain's
                # relays are delayed by milliseconds, never starved.
                await self._send(Have(await worker.call(store.vector)))
                await asyncio.sleep(config.relay_hold_ms / 1000)
                batch = _refiltered(batch, self._filter_vector())
            frame = await _encoded(Batch(batch))
            too_many = batch.row_count > limits.rows_max
            if too_many or len(frame) > limits.bytes_max:
                # Wide rows (large blobs), or a seq group of more rows than a
                # message may hold (ours or the peer's limit, whichever is
                # lower): read fewer rows; only a single row larger than a
                # frame cannot be split.
                if rows_max > 1:
                    rows_max = max(1, rows_max // 4)
                    continue
                # One seq group alone is too big: split it in the store.
                if await worker.call(store.split_seq_group, batch.to_seq):
                    continue
                whose = "the peer's" if limits.bytes_max < config.message_bytes_max else "our"
                error = ProtocolError(
                    f"{_first_row(batch)} encodes to {len(frame)} bytes, over the message"
                    f" limit of {limits.bytes_max} ({whose} limits.message_bytes_max):"
                    " nothing written after it here reaches the peer until that row is made"
                    " smaller or deleted"
                )
                # Counted like a failed read: each new session meets the same row,
                # so the node turns unhealthy instead of streaming nothing while
                # status and /v1/health said all was well (new-user report).
                host.note_feed_read(error)
                raise error
            host.note_feed_read(None)  # a batch that can go: this feed is not stuck
            rows_max = min(config.batch_rows_max, limits.rows_max, rows_max * 2)
            await self._send_frame(frame)
            reached_head = batch.head_seq if batch.to_seq >= batch.head_seq else -1
            self._in_flight.append((batch.to_seq, reached_head))
            cursor = batch.to_seq
            last_vector = batch.vector if batch.vector is not None else last_vector
            self.link.rows_out += batch.row_count
            self.link.batches_out += 1


def _refiltered(batch: ChangeBatch, vector: dict[str, int]) -> ChangeBatch:
    """`batch` without what a peer holding `vector` has; same slice, same vector."""
    tables = []
    for table in batch.tables:
        rows = missing_rows(table, batch.sites, vector)
        if rows:
            tables.append(dataclasses.replace(table, rows=rows))
    return dataclasses.replace(batch, tables=tuple(tables))


def _first_row(batch: ChangeBatch) -> str:
    """The first row of `batch`, in words: its table and key (an oversized row's name)."""
    for table in batch.tables:
        for row in table.rows:
            return f"the row of table {table.table!r} with key {list(row[: table.key_count])!r}"
    return "one row"


def _only_relays(batch: ChangeBatch, own_site: str) -> bool:
    """True if no row of `batch` carries a write of our own site (all are relays)."""
    if batch.row_count == 0:
        return False
    if own_site not in batch.sites:
        return True
    own = batch.sites.index(own_site)
    for table in batch.tables:
        keys = table.key_count
        for row in table.rows:
            # cl_site, then each cell's site (the third of its CELL_FIELDS).
            if row[keys + 2] == own or own in row[keys + 5 :: CELL_FIELDS]:
                return False
    return True


def _mismatch(ours: Hello, theirs: Hello) -> str | None:
    """Why a session with `theirs` must not go on, or None.

    A schema difference is no reason (ADR 0013): the session exchanges the
    tables both track (`node.mismatch.compare`).
    """
    if theirs.site_id == ours.site_id:
        if theirs.instance and theirs.instance == ours.instance:
            # The same process at both ends: a peer URL that leads back to this
            # node.  Telling the user to re-identify a copy would be wrong, and
            # `init --new-site-id` would not help (new-user report).
            return (
                "this node dialled itself: the peer URL leads to this node's own address;"
                " remove it from the peers (--peer, peers.urls) and dial another node"
            )
        return (
            f"both ends have site id {ours.site_id}: one database file is a copy of the"
            " other; give the copy a new identity (`syncmesh init --new-site-id`) before"
            " syncing it"
        )
    return None
