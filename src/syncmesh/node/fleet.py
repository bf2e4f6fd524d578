"""Sync through a fleet stream (NATS JetStream): publish our writes, apply the others'.

docs/adr/0014-nats-stream-model.md is the model; in short:

- **Publishing.** The publish loop reads our feed and publishes, as BATCH
  frames of the wire codec, only our own writes (`origin.own_rows`), on
  our subject.  Each message covers the slice (from, to] of our feed
  after the previous message, so our messages form a *chain*: a
  message's `from` is the `to` of the one before.  The message id is
  `site:incarnation:from:to`, so the stream stores a retried publish
  once.  Where the chain ends is read back from the stream at start (the
  last message on our subject): the stream is the publisher's memory.
- **Applying.** The consume loop fetches from our durable consumer and
  applies each other site's message in one store transaction with the
  new position: `Store.apply_batch` under the position key
  `nats/<cluster>/<site>` moves that key's cursor to the message's `to`
  and stores the message's stream sequence (in the cursor's `head_seq`),
  in the transaction that merges the rows.  Only then is the message
  acked.  A crash before the commit: the stream delivers it again and it
  applies.  A crash after the commit, before the ack: it is delivered
  again, its `to` is not past the cursor, and it is acked unapplied.
- **Gaps.** A message whose `from` is past the stored cursor means the
  stream no longer holds the messages between (its limits dropped them
  before this node read them).  That is never skipped silently: the gap
  is logged at ERROR, shown in status and made a health reason with the
  fix, the position stays where it was (so a restart finds the gap
  again), and the rows of later messages are merged without moving it
  (`merge_repair_rows`: the merge is idempotent, they do no harm).
  The consume loop then closes it from the compacted state stream (below).
- **Origins.** Rows on a site's subject that claim another site's write
  are refused (`origin.refuse_foreign`), counted and logged; the rest of
  the message applies.
- **The compacted state stream.** Before each message, the publisher
  puts each of its rows on a subject of its own in a second stream that
  keeps one message per subject: each site's latest copy of each of its
  rows (a state-based CRDT merges any such copy safely).  A marker says
  the copies cover the site's whole chain (published once per
  incarnation, after a backfill from the feed).  A node with a gap merges
  the site's copies and takes as position the end of the site's newest
  message, read before the copies; without the marker the gap stays
  reported, with the reason.
- **Claims (tombstone collection, docs/adr/0017).**  Every
  `lifecycle.interval_s` each site puts a *claim* on the state stream
  (token `members`, one per site): what it holds of each fleet site's
  writes, its own entry being a stamp below which all its writes are on
  the stream, with `published`, where its chain ended when it said so.
  A node counts a claim only once it applied the claimant's chain that
  far (its batches and its claim travel apart), and gives the lifecycle
  round what the usable claims say (`holdings`).
- **Relaying WebSocket peers.**  A node with WebSocket peers that are not
  on the stream holds their writes, which no fleet site would otherwise
  get.  The relay loop publishes them on a second chain of ours, on the
  subject `syncmesh.<cluster>.changes.relay-<our site id>` (`relay_chain`):
  the content of our feed of sites that have no chain on the stream
  (`origin.relay_rows`), with its own slices (from, to], message ids,
  state copies and marker.  A receiver applies it as any chain (position
  key `nats/<cluster>/relay-<site>`, gaps, bootstrap), but refuses on it
  every row that claims a write of a fleet site, the relayer's or its own
  (`origin.refuse_fleet_claims`): the subject is still the publisher's
  identity, and a fleet site's writes come only on its own subject.
  Relayed content is not ours: it feeds neither our claims (their own
  entry is our own chain's mark) nor the restore check of our own subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeGuard

from syncmesh.clock import feed_lag_ms
from syncmesh.errors import ProtocolError, StoreError, SyncError
from syncmesh.model import ChangeBatch, FleetHoldings, Membership
from syncmesh.node.chain import (
    HEADER_FROM,
    HEADER_HEAD,
    HEADER_INCARNATION,
    HEADER_SITE,
    HEADER_TO,
    header_int,
)
from syncmesh.node.config import FleetConfig, NodeConfig
from syncmesh.node.cursors import position_key
from syncmesh.node.fleet_restore import OwnRestore
from syncmesh.node.origin import (
    one_row_batches,
    own_rows,
    refuse_fleet_claims,
    refuse_foreign,
    relay_rows,
)
from syncmesh.node.worker import StoreWorker
from syncmesh.protocol import Batch, decode, encode
from syncmesh.store import Store
from syncmesh.transport.stream import (
    Delivery,
    FleetError,
    FleetLink,
    PublishReceipt,
    StoredMessage,
)

log = logging.getLogger(__name__)

HLC_MAX = (1 << 63) - 1
# A relay chain's token in the subjects (docs/adr/0014, "Relaying WebSocket peers"):
# syncmesh.<cluster>.changes.relay-<site id>; no site id (hex) can be named so.
RELAY_PREFIX = "relay-"
# The state stream's token of a site's marker: "my state is complete for this
# incarnation" (row tokens are 32 hex digits, so no row can be named so).
STATE_MARKER = "complete"
# The state stream's token of a site's claim (docs/adr/0017): what it holds.
CLAIM_TOKEN = "members"
CLAIM_BYTES_MAX = 1 << 20
CLAIM_DISCOVERY_ROUNDS = 10  # claim subjects listed once in so many rounds (the first included)
BOOTSTRAP_MERGE_MESSAGES = 500  # state messages merged per store call while bootstrapping
BOOTSTRAP_RETRY_S = 30.0  # a bootstrap that could not close a gap is tried again after this
PUBLISH_TRIES_MAX = 5  # then the link is opened again (the stream tells what landed)
RECONNECT_S_MAX = 5.0
STORE_RETRY_S = 1.0  # a message whose apply failed is delivered again after this
GAP_FIX = (
    "rows that site wrote in the missing range are not here yet; the node bootstraps them"
    " from the compacted state stream (docs/nats.md, Gaps). If that is not possible (see"
    " the bootstrap error), sync this node once with a node that holds that site's writes"
    " over WebSocket (--peer URL), and raise the stream's limits (max_age, max_bytes) so"
    " that offline nodes stay within them"
)


def relay_chain(site_id: str) -> str:
    """The token of a site's relay chain: its subject and position key use it as a site id."""
    return RELAY_PREFIX + site_id


def relayer_of(chain: str) -> str | None:
    """The site that publishes relay chain `chain`; None if `chain` is no relay chain."""
    if not chain.startswith(RELAY_PREFIX):
        return None
    site_id = chain[len(RELAY_PREFIX) :]
    return site_id if _hex_site(site_id) else None


def chain_name(chain: str) -> str:
    """A chain in words, for logs and status: "site S", or "the relay chain of site S"."""
    relayer = relayer_of(chain)
    return f"site {chain}" if relayer is None else f"the relay chain of site {relayer}"


class RereadStream(SyncError):
    """The fleet positions were reset: open the link again with a fresh consumer."""


class FleetHost(Protocol):
    """What the fleet loops need from their node."""

    config: NodeConfig
    store: Store
    worker: StoreWorker

    def now_ms(self) -> int: ...

    def feed_event(self) -> asyncio.Event: ...

    def feed_advanced(self) -> None: ...

    def note_throughput(self, *, applied_rows: int = 0, rows_captured_total: int) -> None: ...

    def session_sites(self) -> list[str]:
        """The sites of the WebSocket sessions that said HELLO and are open now."""
        ...


@dataclass(slots=True)
class _Site:
    """What this node knows of one other site on the stream."""

    site_id: str
    incarnation: str = ""  # of the chain our position is on
    cursor: int = 0  # its feed, up to here applied (the chain's position)
    stream_seq: int = 0  # the stream sequence of the last message applied
    head_seq: int = 0  # its feed's head, as its newest message seen says
    last_stream_seq: int = 0  # its newest message in the stream (status loop)
    messages_applied: int = 0
    rows_applied: int = 0
    duplicates: int = 0  # messages delivered again after they were applied
    foreign_rows_refused: int = 0
    last_applied_ms: int = 0
    gap: str = ""
    bootstrap: str = ""  # how its last gap was closed (from the state stream), for status
    bootstrap_rows: int = 0
    bootstrap_error: str = ""  # why the gap could not be closed yet
    bootstrap_after_ms: int = 0  # not tried again before this
    # Known only from its marker in the state stream: the changes stream holds
    # none of its messages, so no message will ever show us a gap.
    unseen: bool = False


@dataclass(frozen=True, slots=True)
class FleetSiteStatistics:
    site_id: str
    cursor: int
    stream_seq: int
    last_stream_seq: int
    head_seq: int
    # How much older our position is than its newest message (0: caught up;
    # None: not known, as nothing of it was applied yet).
    lag_ms: int | None
    messages_applied: int
    rows_applied: int
    duplicates: int
    foreign_rows_refused: int
    last_applied_ms: int
    gap: str
    bootstrap: str  # "" or how its last gap was closed (the compacted state stream)
    bootstrap_rows: int
    bootstrap_error: str
    # The node's last periodic verify of this site (node.verify_server; filled
    # in by the node, as for a dialled peer): when (0: not yet), its verdict.
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


def quiet_site(site_id: str) -> FleetSiteStatistics:
    """A site known only by its state marker: no message of it applied here, no gap."""
    return FleetSiteStatistics(site_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "", "", 0, "")


@dataclass(frozen=True, slots=True)
class FleetStatistics:
    servers: tuple[str, ...]
    cluster: str
    stream: str
    subject: str
    # "connecting"; "starting" (connected, the publish side not started yet);
    # "streaming" (our chain's end read and our state marker published); "backoff"
    state: str
    last_error: str
    down_since_ms: int  # 0 while streaming
    # Since when our own writes wait to be published, no publish acked since; 0: none wait.
    publish_waiting_since_ms: int
    published_seq: int  # where our chain ends in the stream (our feed's seq)
    published_messages: int
    published_rows: int
    publish_retries: int
    publish_duplicates: int  # retried publishes the stream had already (stored once)
    stream_first_seq: int
    stream_last_seq: int
    stream_messages: int
    consumer_pending: int
    consumer_ack_pending: int
    undecodable_messages: int
    foreign_rows_refused: int
    sites: tuple[FleetSiteStatistics, ...]
    gaps: tuple[str, ...]
    state_stream: str  # the compacted stream: each site's latest copy of each row
    state_published_rows: int  # rows we published to it (backfill included)
    bootstraps: int  # gaps closed from it
    claims_published: int = 0  # our claims of what we hold (docs/adr/0017)
    claims_refused: int = 0  # other sites' claims that did not parse
    # Own writes lost by a restore of the file, merged back from the stream
    # (node/fleet_restore.py): what happens or happened ("" if never), and how often.
    own_restore: str = ""
    own_restores: int = 0
    # Another live file with our site id publishes on our subject ("" if none seen).
    site_id_conflict: str = ""
    # What the servers refused of our configuration since we last streamed ("" if
    # nothing): no retry fixes it, so health names it at once.
    configuration_error: str = ""
    # Our relay chain (content of sites not on the stream, from our WebSocket peers).
    relay_subject: str = ""
    relayed_seq: int = 0  # where our relay chain ends (our feed's seq)
    relayed_messages: int = 0
    relayed_rows: int = 0
    # Other sites' relay chains read here, per relayer (`site_id` is the relayer's).
    relays: tuple[FleetSiteStatistics, ...] = ()


class Fleet:
    """The publish, consume and status loops of one node on one fleet stream."""

    def __init__(self, host: FleetHost, link: FleetLink, config: FleetConfig) -> None:
        self._host = host
        self._link = link
        self._config = config
        self._sites: dict[str, _Site] = {}
        self._own = ""
        self._state = "connecting"
        self._last_error = ""
        self._down_since_ms = 0
        self._publish_waiting_since_ms = 0
        self._failures = 0  # in a row, without streaming in between: the backoff grows
        self._configuration_error = ""  # FleetError.configuration, until we stream
        self._published_seq = 0
        self._published_messages = 0
        self._published_rows = 0
        self._publish_retries = 0
        self._publish_duplicates = 0
        self._undecodable = 0
        self._state_published_rows = 0
        self._bootstraps = 0
        self._stream = (0, 0, 0, 0, 0)  # first, last, messages, pending, ack pending
        self._rng = random.Random()
        self._reread = False  # read the stream again from its start at the next open
        self._incarnation = ""
        # Claims (docs/adr/0017).  `_claimable`: (a stamp below which all our
        # writes are on the stream, where our chain ended then, what we held
        # of the other sites when the stamp was taken); the publish loop takes
        # a new one when `_mark_wanted`.
        self._mark_wanted = True
        self._claimable: tuple[int, int, dict[str, int]] | None = None
        self._claims: dict[str, _Claim] = {}  # per other site, its latest claim read
        self._usable_claims: dict[str, _Claim] = {}  # per other site, its latest usable one
        # Every other site whose state marker a collection round listed: a site
        # is on the stream from its marker on, long before its first message or
        # claim may arrive (`holdings`).
        self._marked: set[str] = set()
        self._claims_published = 0
        self._claims_refused = 0
        self._claim_reads = 0
        self._own_restore = OwnRestore(host, link, self._decoded, STATE_MARKER, config.cluster)
        self._relayed_seq = 0
        self._relayed_messages = 0
        self._relayed_rows = 0
        # Set once the status loop listed the stream's sites in this open: the
        # relay loop waits for it, so that it relays no fleet site's content.
        self._listed = asyncio.Event()
        # Set once our vector, or an open WebSocket session, names a site off the
        # stream (the publish loop looks at each read): until then the relay loop
        # costs nothing.
        self._relay_wanted = asyncio.Event()
        # The sites of the WebSocket sessions seen open in this run (`_note_sites`):
        # what they sent us stays to be relayed after their session closes.
        self._session_sites: set[str] = set()

    # -- the loop that keeps the others running -------------------------------------

    async def run(self) -> None:
        """Connect, run the loops; on a transport error close, back off, and again."""
        while True:
            # Down until the publish loop says streaming (`_note_streaming`).
            self._down_since_ms = self._down_since_ms or self._host.now_ms()
            try:
                self._state = "connecting"
                rewind = await self._load_positions()
                await self._link.open(self._own, fresh_consumer=rewind)
                if rewind:
                    await self._clear_reset_marks()
                # Before anything is published: a restored file must not publish its
                # older copies of rows (nor continue the lost run's chain).
                await self._own_restore.check(self._own)
                # Not "streaming" yet: that is the publish loop's to say, once it
                # has started (a link that opened can still stall before it).
                self._state = "starting"
                log.info(
                    "fleet: connected to stream %s (%s); starting",
                    self._link.stream_name,
                    ", ".join(self._link.servers),
                )
                self._listed = asyncio.Event()
                self._relay_wanted = asyncio.Event()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publish_loop())
                    group.create_task(self._relay_loop())
                    group.create_task(self._consume_loop())
                    group.create_task(self._status_loop())
                    group.create_task(self._claim_loop())
            except* RereadStream as group_error:
                log.info("fleet: %s; reading the stream again", group_error.exceptions[0])
            except* (FleetError, StoreError, ProtocolError) as group_error:
                self._failures += 1
                self._note_down(group_error.exceptions[0])
                log.warning("fleet: %s; connecting again", group_error.exceptions[0])
            except* Exception as group_error:  # a bug: logged with its traceback, then again
                self._failures += 1
                self._note_down(group_error.exceptions[0])
                log.error("fleet: the loops failed unexpectedly", exc_info=group_error)
            await self._link.close()
            delay_s = min(RECONNECT_S_MAX, 0.1 * 2**self._failures)
            await asyncio.sleep(self._rng.uniform(0, delay_s))

    def _note_down(self, error: BaseException) -> None:
        self._state = "backoff"
        self._last_error = str(error)
        self._down_since_ms = self._down_since_ms or self._host.now_ms()
        if isinstance(error, FleetError) and error.configuration:
            self._configuration_error = str(error)

    async def close(self) -> None:
        await self._link.close()

    async def _load_positions(self) -> bool:
        """Read our site and the stored positions; True if one asks to re-read the stream.

        A cursor at 0 with a stream sequence was reset by the store
        (a table newly tracked: every peer's feed is read again), so the
        durable consumer starts again from the stream's first message.
        """
        store, worker = self._host.store, self._host.worker
        self._own = await worker.call(lambda: store.site_id)
        status = await worker.call(store.status)
        prefix = position_key(self._link_cluster(), "")
        rewind, self._reread = self._reread, False
        for cursor in status.peers:
            if not cursor.site_id.startswith(prefix):
                continue
            site = self._site(cursor.site_id[len(prefix) :])
            site.cursor, site.stream_seq = cursor.cursor, cursor.head_seq
            site.incarnation = cursor.incarnation
            if cursor.cursor == 0 and cursor.head_seq > 0:
                rewind = True
                site.stream_seq = 0
        if rewind:
            log.info("fleet: positions were reset (tables changed): reading the stream again")
        return rewind

    async def _clear_reset_marks(self) -> None:
        """After the fresh consumer exists: positions at 0 lose their stream sequence.

        In this order, a crash in between only reads the stream once more.
        """
        store = self._host.store

        def clear() -> None:
            for site_id in self._sites:
                key = position_key(self._config.cluster, site_id)
                stored = store.peer_cursor(key)
                if stored is not None and stored.cursor == 0 and stored.head_seq > 0:
                    store.reset_peer_cursor(key, stored.incarnation, 0, stored.address)

        await self._host.worker.call(clear)

    def _link_cluster(self) -> str:
        return self._config.cluster

    def _site(self, site_id: str) -> _Site:
        site = self._sites.get(site_id)
        if site is None:
            site = self._sites[site_id] = _Site(site_id)
        return site

    # -- publishing --------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        host, store, worker = self._host, self._host.store, self._host.worker
        incarnation = await worker.call(lambda: store.incarnation)
        self._incarnation = incarnation
        self._claimable = None  # our chain's end is read again below
        self._mark_wanted = True
        subject = self._link.subject_of(self._own)
        last = await self._link.last_message(subject)
        head = await worker.call(store.head_seq)
        published = 0
        if last is not None and last.headers.get(HEADER_INCARNATION) == incarnation:
            published = min(_header_int(last.headers, HEADER_TO), head)
        self._published_seq = scan = published
        await self._complete_state(self._own, incarnation, published)
        self._note_streaming(subject, published)
        rows_max = host.config.batch_rows_max
        while True:
            changed = host.feed_event()
            # What we hold of the others now, before the mark and the read: every
            # message of ours read before this moment is at or before `published`
            # once the read's rows are out, so a reader that applied that far may
            # count it.  Before the mark (not after its store call, during which
            # the consume loop may apply more): each delete counted here was
            # applied before the mark, so every life of ours it ended is stamped
            # below the mark, which a collector's settled pass relies on (ADR 0017).
            wanted = self._mark_wanted
            others = self._held_others() if wanted else {}
            # Taken before the read: a write captured after it is stamped above it.
            mark = await worker.call(store.stamp_mark) if wanted else None
            vector = dict.fromkeys(await worker.call(store.vector), HLC_MAX)
            self._note_sites(list(vector))
            vector.pop(self._own, None)
            batch = await worker.call(store.read_batch, scan, vector, rows_max)
            if batch.to_seq == scan:
                self._publish_waiting_since_ms = 0  # all our writes are on the stream
                self._note_mark(mark, batch, published, others)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(host.config.idle_resend_s):
                        await changed.wait()
                continue
            outgoing = dataclasses.replace(own_rows(batch, self._own), from_seq=published)
            if not outgoing.tables:
                scan = batch.to_seq  # only others' writes: theirs to publish
                self._note_mark(mark, batch, published, others)
                continue
            # Kept across reconnects: the writes wait until a publish of them is acked.
            self._publish_waiting_since_ms = self._publish_waiting_since_ms or host.now_ms()
            frame = encode(Batch(outgoing))
            if len(frame) > self._frame_bytes_max():
                if rows_max > 1:
                    rows_max = max(1, rows_max // 4)
                    continue
                if await worker.call(store.split_seq_group, batch.to_seq):
                    continue
                raise ProtocolError(
                    f"one row encodes to {len(frame)} bytes, over the fleet's message limit"
                    f" of {self._frame_bytes_max()}"
                )
            rows_max = min(host.config.batch_rows_max, rows_max * 2)
            # State first: every change the changes stream holds is then in the
            # state stream too, which is what a bootstrap from it relies on.
            await self._publish_state(outgoing, incarnation, self._own)
            await self._publish(outgoing, frame, incarnation)
            published = scan = outgoing.to_seq
            self._published_seq = published
            self._note_mark(mark, batch, published, others)

    def _note_mark(
        self, mark: int | None, batch: ChangeBatch, published: int, others: dict[str, int]
    ) -> None:
        """After a read that reached our feed's head, all of it published: a claim may say so.

        `mark` was stamped before the read; the store gives a batch a vector
        only when it reaches the head with no row held back.  Every write of
        ours stamped at or below `mark` was then in the feed read, and its
        row's state (or a later one) is in our messages up to `published`.
        """
        if mark is not None and batch.vector is not None:
            self._claimable = (mark, published, others)
            self._mark_wanted = False

    def _note_streaming(self, subject: str, published: int) -> None:
        """The publish side has started: our chain's end is read and our state is marked."""
        self._state = "streaming"
        self._down_since_ms = 0
        self._failures = 0
        self._configuration_error = ""
        log.info(
            "fleet: on stream %s as %s (%s), publishing after our seq %d",
            self._link.stream_name,
            subject,
            ", ".join(self._link.servers),
            published,
        )

    async def _complete_state(self, chain: str, incarnation: str, published: int) -> None:
        """Make the state stream hold our latest copy of every row of `chain`, then mark it so.

        `chain` is our own site (our own rows) or our relay chain (the rows
        of sites not on the stream, `_relay_loop`).  The marker
        (`STATE_MARKER`, with our incarnation) tells a reader that the
        chain's state messages cover the whole chain: the publish loops
        publish each message's rows to the state stream before the message.
        Without the marker (a new incarnation, a site that published before
        the state stream existed, or a state stream purged), our feed is read
        from 0 up to the chain's end and its rows are published first.
        """
        marker = await self._link.last_state(chain, STATE_MARKER)
        if marker is not None and marker.headers.get(HEADER_INCARNATION) == incarnation:
            return
        store, worker = self._host.store, self._host.worker
        scan, rows = 0, 0
        while scan < published:
            vector, select = await self._selection(chain)
            batch = await worker.call(
                store.read_batch, scan, vector, self._host.config.batch_rows_max
            )
            if batch.to_seq == scan:
                break
            outgoing = select(batch)
            rows += outgoing.row_count
            await self._publish_state(outgoing, incarnation, chain)
            scan = batch.to_seq
        await self._link.publish_state(
            chain,
            [(STATE_MARKER, b"")],
            headers={
                HEADER_SITE: self._own,
                HEADER_INCARNATION: incarnation,
                HEADER_TO: str(published),
            },
        )
        log.info(
            "fleet: published our latest copy of %d rows of %s (feed up to %d) to %s",
            rows,
            "our relay chain" if chain != self._own else "our own",
            published,
            self._link.state_stream_name,
        )

    async def _selection(
        self, chain: str
    ) -> tuple[dict[str, int], Callable[[ChangeBatch], ChangeBatch]]:
        """How to read our feed for `chain`: the receiver vector to read with, and the filter.

        Our own chain: every other site's writes are left out by the read
        (the vector says the reader holds them all), then `own_rows`.  Our
        relay chain: the fleet sites' writes are left out, then `relay_rows`.
        """
        if chain == self._own:
            vector = dict.fromkeys(await self._host.worker.call(self._host.store.vector), HLC_MAX)
            vector.pop(self._own, None)
            return vector, lambda batch: own_rows(batch, self._own)
        fleet = self._fleet_sites()
        return dict.fromkeys(fleet, HLC_MAX), lambda batch: relay_rows(batch, fleet)

    def _note_sites(self, sites: list[str]) -> None:
        """Wake the relay loop once a site off the stream gives us its writes.

        `sites`: those our vector names (a WebSocket peer's adopted vector
        brings them, with its peers' own); and those of the WebSocket
        sessions open now or earlier in this run: a peer whose vector we do
        not adopt (it lacks a table or column we track, a rolling migration
        not yet run there: ADR 0013) sends its writes all the same, and
        they stopped at us.  Only once the stream's sites are listed:
        before, a fleet site we have not heard of yet would look like one
        off the stream.
        """
        self._session_sites.update(self._host.session_sites())
        if self._relay_wanted.is_set() or not self._listed.is_set():
            return
        if self._off_stream([*sites, *self._session_sites]):
            self._relay_wanted.set()

    def _off_stream(self, sites: list[str]) -> bool:
        """Whether any of `sites` is off the stream (its writes are ours to relay)."""
        fleet = self._fleet_sites()
        return any(site not in fleet for site in sites)

    def _fleet_sites(self) -> frozenset[str]:
        """The sites on the stream as we know them: ourselves, each site with a chain here,
        and each relayer.  Their writes come on their own subjects, never relayed."""
        sites = {self._own}
        for chain in self._sites:
            if _hex_site(chain):
                sites.add(chain)
            relayer = relayer_of(chain)
            if relayer is not None:
                sites.add(relayer)
        return frozenset(sites)

    async def _publish_state(self, batch: ChangeBatch, incarnation: str, chain: str) -> None:
        """Each row of `batch` on its own state subject (the newest copy replaces the older)."""
        if not batch.tables:
            return
        items = [(token, encode(Batch(alone))) for token, alone in one_row_batches(batch)]
        headers = {HEADER_SITE: self._own, HEADER_INCARNATION: incarnation}
        for attempt in range(1, PUBLISH_TRIES_MAX + 1):
            try:
                await self._link.publish_state(chain, items, headers=headers)
            except FleetError as exc:
                if attempt == PUBLISH_TRIES_MAX:
                    raise
                self._publish_retries += 1
                self._last_error = str(exc)
                log.info("fleet: state publish failed (%s); trying again", exc)
                await asyncio.sleep(self._rng.uniform(0, min(RECONNECT_S_MAX, 0.1 * 2**attempt)))
                continue
            self._state_published_rows += len(items)
            return

    def _frame_bytes_max(self) -> int:
        limit = self._host.config.message_bytes_max
        payload = self._link.max_payload_bytes
        # Headers travel in the same message: leave them room.
        return min(limit, payload - 1024) if payload > 0 else limit

    async def _publish(self, batch: ChangeBatch, frame: bytes, incarnation: str) -> None:
        """Publish a message of our own chain until the stream acknowledges it."""
        receipt = await self._publish_chain(self._own, batch, frame, incarnation)
        self._own_restore.note_published(receipt.stream_seq)
        self._publish_waiting_since_ms = 0  # progress; the next batch waits from now
        self._published_messages += 1
        self._published_rows += batch.row_count

    async def _publish_chain(
        self, chain: str, batch: ChangeBatch, frame: bytes, incarnation: str
    ) -> PublishReceipt:
        """Publish until the stream acknowledges; the message id makes a retry harmless."""
        message_id = f"{chain}:{incarnation}:{batch.from_seq}:{batch.to_seq}"
        headers = {
            HEADER_SITE: self._own,
            HEADER_INCARNATION: incarnation,
            HEADER_FROM: str(batch.from_seq),
            HEADER_TO: str(batch.to_seq),
            HEADER_HEAD: str(batch.head_seq),
        }
        for attempt in range(1, PUBLISH_TRIES_MAX + 1):
            try:
                receipt = await self._link.publish(
                    chain, frame, message_id=message_id, headers=headers
                )
            except FleetError as exc:
                if attempt == PUBLISH_TRIES_MAX:
                    raise
                self._publish_retries += 1
                self._last_error = str(exc)
                log.info("fleet: publish of %s failed (%s); trying again", message_id, exc)
                await asyncio.sleep(self._rng.uniform(0, min(RECONNECT_S_MAX, 0.1 * 2**attempt)))
                continue
            if receipt.duplicate:
                self._publish_duplicates += 1
            return receipt
        raise AssertionError("unreachable: the last try raises")

    # -- relaying the writes of sites that are not on the stream -------------------------

    async def _relay_loop(self) -> None:
        """Publish, on our relay chain, our feed's content of sites not on the stream.

        A WebSocket peer that is not on the stream (a local replica) gives
        us its writes; no fleet site gets them unless we publish them, and
        we may publish only on our own subjects.  So this loop keeps a
        second chain of ours over our feed, on `relay_chain(our site)`, as
        the publish loop keeps our own: slices (from, to], the chain's end
        read back from the stream at start, idempotent message ids, state
        copies and a marker on the state stream before the messages (so a
        receiver's gap on it closes like any other).  It starts reading
        only once the publish loop saw a site off the stream in our vector or
        among our WebSocket sessions (`_note_sites`): a plain fleet site pays
        nothing for it.
        """
        host, store, worker = self._host, self._host.store, self._host.worker
        incarnation = await worker.call(lambda: store.incarnation)
        chain = relay_chain(self._own)
        # Each fleet site's content is its own to publish: know them first.
        await self._listed.wait()
        await self._relay_wanted.wait()
        last = await self._link.last_message(self._link.subject_of(chain))
        head = await worker.call(store.head_seq)
        relayed = 0
        if last is not None and last.headers.get(HEADER_INCARNATION) == incarnation:
            relayed = min(_header_int(last.headers, HEADER_TO), head)
        self._relayed_seq = scan = relayed
        marked = False
        rows_max = host.config.batch_rows_max
        while True:
            changed = host.feed_event()
            held = await worker.call(store.vector)
            self._session_sites.update(host.session_sites())
            if self._off_stream([*held, *self._session_sites]):
                if not marked:
                    await self._complete_state(chain, incarnation, relayed)
                    marked = True
                vector, select = await self._selection(chain)
                batch = await worker.call(store.read_batch, scan, vector, rows_max)
                if batch.to_seq > scan:
                    outgoing = dataclasses.replace(select(batch), from_seq=relayed)
                    if not outgoing.tables:
                        scan = batch.to_seq  # only fleet sites' writes: theirs to publish
                        continue
                    frame = encode(Batch(outgoing))
                    if len(frame) > self._frame_bytes_max():
                        if rows_max > 1:
                            rows_max = max(1, rows_max // 4)
                            continue
                        if await worker.call(store.split_seq_group, batch.to_seq):
                            continue
                        raise ProtocolError(
                            f"one relayed row encodes to {len(frame)} bytes, over the fleet's"
                            f" message limit of {self._frame_bytes_max()}"
                        )
                    rows_max = min(host.config.batch_rows_max, rows_max * 2)
                    await self._publish_state(outgoing, incarnation, chain)
                    await self._publish_chain(chain, outgoing, frame, incarnation)
                    self._relayed_messages += 1
                    self._relayed_rows += outgoing.row_count
                    relayed = scan = outgoing.to_seq
                    self._relayed_seq = relayed
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(host.config.idle_resend_s):
                    await changed.wait()

    # -- applying ----------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        config = self._config
        while True:
            await self._close_gaps()
            deliveries = await self._link.fetch(config.fetch_messages_max, config.fetch_wait_s)
            for index, delivery in enumerate(deliveries):
                if not await self._receive(delivery):
                    # The store failed: leave the rest for redelivery, in order.
                    for later in deliveries[index:]:
                        await later.nak(STORE_RETRY_S)
                    break

    async def _receive(self, delivery: Delivery) -> bool:
        """Apply one delivered message and settle it; False if the store failed."""
        message = delivery.message
        site_id = self._link.site_of(message.subject)
        if site_id is None:
            self._undecodable += 1
            log.error("fleet: message on unexpected subject %s dropped", message.subject)
            await delivery.term()
            return True
        if site_id == self._own:
            self._own_restore.note_delivered(message)
            await delivery.ack()
            return True
        if site_id == relay_chain(self._own):
            await delivery.ack()  # what we relayed: we hold it
            return True
        batch = self._decoded(message)
        if batch is None:
            await delivery.term()
            return True
        site = self._site(site_id)
        batch = self._refuse(site, batch, "")
        try:
            outcome = await self._host.worker.call(self._apply, site_id, message, batch)
            if outcome.kind == "ahead":
                outcome = await self._apply_in_order(site, message, batch, outcome)
        except StoreError as exc:
            log.warning("fleet: cannot apply a message of %s now: %s", site_id, exc)
            return False
        if outcome.kind == "reread":
            await delivery.nak(0)  # read again once the stream is read from its start
            raise RereadStream("tracked tables changed: the fleet positions were reset")
        # Before the ack: the status loop takes what the consumer acked as applied.
        self._note_outcome(site, message, batch, outcome)
        if outcome.kind == "gap" and self._host.now_ms() >= site.bootstrap_after_ms:
            # Closed before the ack, so that no later message of the site is
            # acked meanwhile at a position the bootstrap then passes over.
            await self._bootstrap(site)
        await delivery.ack()
        return True

    async def _apply_in_order(
        self, site: _Site, message: StoredMessage, batch: ChangeBatch, ahead: _Outcome
    ) -> _Outcome:
        """A message past our position: apply the ones between from the stream, if it holds them.

        The durable consumer delivers in order, except after a crash: the
        messages a killed process had fetched and not acked come back only
        after the ack wait (30 s), and the newer ones are delivered first.
        Those messages are still in the stream, so this is no gap: each one
        that continues the chain (its `from` is our position) is read from
        the stream and applied, in order, then `message` itself.  Their
        redelivery later is a duplicate, acked unapplied.  Only when the
        stream does not continue the chain up to `message` is it a gap
        (`_merge_past_gap`, reported and closed from the state stream).
        """
        cursor, after_seq = ahead.cursor, ahead.after_seq
        filled = 0
        while True:
            following = await self._link.next_message(message.subject, after_seq + 1)
            if (
                following is None
                or following.stream_seq >= message.stream_seq
                or _header_int(following.headers, HEADER_FROM) != cursor
                or following.headers.get(HEADER_INCARNATION) != batch.incarnation
            ):
                break
            earlier = self._decoded(following)
            if earlier is None:
                break  # counted and logged; what it held is the gap's
            earlier = self._refuse(site, earlier, "")
            outcome = await self._host.worker.call(self._apply, site.site_id, following, earlier)
            if outcome.kind != "applied":
                break
            self._note_outcome(site, following, earlier, outcome)
            cursor, after_seq = outcome.cursor, following.stream_seq
            filled += 1
        if filled:
            log.info(
                "fleet: read %d messages of site %s from the stream before its stream seq %d"
                " (delivered to an earlier process and not acked: redelivered later)",
                filled,
                site.site_id,
                message.stream_seq,
            )
        return await self._host.worker.call(
            self._apply, site.site_id, message, batch, past_gap=True
        )

    def _refuse(self, site: _Site, batch: ChangeBatch, what: str) -> ChangeBatch:
        """`batch` without the rows its subject may not carry (counted, logged at ERROR).

        On a site's subject: rows that claim another origin.  On a relay
        subject: rows that claim a write of a site on the stream (the
        relayer, us, any site with a chain here): those come only on their
        own subjects, which only they may publish on.
        """
        relayer = relayer_of(site.site_id)
        if relayer is None:
            batch, refused, example = refuse_foreign(batch, site.site_id)
            subject = f"the subject of site {site.site_id}"
            claim = "another origin"
        else:
            fleet = self._fleet_sites() | {relayer}
            batch, refused, example = refuse_fleet_claims(batch, fleet)
            subject = f"the relay subject of site {relayer}"
            claim = "a write of a site on the stream"
        if refused:
            site.foreign_rows_refused += refused
            log.error(
                "fleet: refused %d %srows on %s that claim %s; first: %s",
                refused,
                what,
                subject,
                claim,
                example,
            )
        return batch

    def _decoded(self, message: StoredMessage) -> ChangeBatch | None:
        """The message's batch, checked at the trust boundary; None (counted, logged) if bad."""
        config = self._host.config
        try:
            decoded = decode(
                message.data,
                frame_bytes_max=config.message_bytes_max,
                rows_max=config.rows_per_message_max,
            )
            if not isinstance(decoded, Batch):
                raise ProtocolError(f"expected BATCH, got {type(decoded).__name__.upper()}")
        except ProtocolError as exc:
            self._undecodable += 1
            log.error(
                "fleet: message %d on %s is not a batch we can read: %s",
                message.stream_seq,
                message.subject,
                exc,
            )
            return None
        return decoded.batch

    def _apply(
        self, site_id: str, message: StoredMessage, batch: ChangeBatch, *, past_gap: bool = False
    ) -> _Outcome:
        """On the store thread: apply at the stored position, or say why not.

        A message past the position is "ahead" (the messages between may be
        in the stream still: `_apply_in_order`); with `past_gap` it is a gap
        and its rows are merged without moving the position.
        """
        store = self._host.store
        key = position_key(self._config.cluster, site_id)
        stored = store.peer_cursor(key)
        if stored is None or stored.incarnation != batch.incarnation:
            # A new site, or a new incarnation of it (restored, re-initialised):
            # its chain starts at 0.  Kept even when the first message is past
            # 0 (a gap), so that a restart finds the gap again.
            store.reset_peer_cursor(key, batch.incarnation, 0, message.subject)
            cursor = after_seq = 0
        elif stored.cursor == 0 and stored.head_seq > 0:
            return _Outcome("reread", 0)  # reset by the store: not a gap (_positions_reset)
        else:
            cursor, after_seq = stored.cursor, stored.head_seq
        if batch.to_seq <= cursor:
            return _Outcome("duplicate", cursor)
        if batch.from_seq > cursor:
            if not past_gap:
                return _Outcome("ahead", cursor, gap_from=batch.from_seq, after_seq=after_seq)
            return self._merge_past_gap(site_id, cursor, batch)
        # The stream sequence goes into the cursor's head_seq: the position
        # commits with the rows, in apply_batch's one transaction.
        positioned = dataclasses.replace(
            batch, from_seq=cursor, head_seq=message.stream_seq, vector=None
        )
        result = store.apply_batch(key, positioned, adopt_vector=False)
        return _Outcome("applied", batch.to_seq, result.applied_rows, store.rows_captured_total)

    def _merge_past_gap(self, site_id: str, cursor: int, batch: ChangeBatch) -> _Outcome:
        store = self._host.store
        result = store.merge_repair_rows(site_id, batch)
        return _Outcome(
            "gap", cursor, result.applied_rows, store.rows_captured_total, batch.from_seq
        )

    def _note_outcome(
        self, site: _Site, message: StoredMessage, batch: ChangeBatch, outcome: _Outcome
    ) -> None:
        site.head_seq = max(site.head_seq, batch.head_seq)
        site.last_stream_seq = max(site.last_stream_seq, message.stream_seq)
        if outcome.kind == "duplicate":
            site.duplicates += 1
            return
        if outcome.kind == "applied":
            site.cursor, site.stream_seq = outcome.cursor, message.stream_seq
            site.incarnation = batch.incarnation
            site.messages_applied += 1
        elif outcome.kind == "gap":
            site.cursor = outcome.cursor
            self._note_gap(site, outcome.cursor, outcome.gap_from, message.stream_seq)
        site.rows_applied += outcome.applied_rows
        site.last_applied_ms = self._host.now_ms()
        self._host.note_throughput(
            applied_rows=outcome.applied_rows, rows_captured_total=outcome.captured_total
        )
        if outcome.applied_rows:
            self._host.feed_advanced()

    def _note_gap(self, site: _Site, cursor: int, gap_from: int, stream_seq: int) -> None:
        if site.gap:
            return
        site.gap = (
            f"fleet stream gap: {chain_name(site.site_id)}'s changes after its seq {cursor} up to"
            f" {gap_from} are no longer in stream {self._link.stream_name} (its first message"
            f" of that site still held is at stream seq {stream_seq}); {GAP_FIX}"
        )
        log.error("%s", site.gap)

    # -- closing gaps from the compacted state stream -----------------------------------

    async def _close_gaps(self) -> None:
        """Bootstrap every site with a gap (the status loop finds them before any message).

        Runs in the consume loop, the only place that acks: no message is
        acked while a bootstrap moves a position.
        """
        for site in list(self._sites.values()):
            if site.gap and self._host.now_ms() >= site.bootstrap_after_ms:
                await self._bootstrap(site)

    async def _bootstrap(self, site: _Site) -> None:
        """Merge the site's latest copy of each row from the state stream; move past the gap.

        The position taken is the end of the site's newest message in the
        changes stream, read *before* the state: the site published every
        row of that message (and of all before it) to the state stream
        before the message itself, and its marker says the state covers its
        whole chain.  A newer copy of a row merged too does no harm (the
        merge is a join).  Without the marker for the site's incarnation the
        gap stays, reported with the reason: never skipped in silence.
        """
        link, site_id = self._link, site.site_id
        if site.unseen:
            await self._merge_unseen(site)
            return
        found = await self._state_snapshot(site_id)
        if isinstance(found, str):
            site.bootstrap_after_ms = self._host.now_ms() + int(BOOTSTRAP_RETRY_S * 1000)
            if site.bootstrap_error != found:
                site.bootstrap_error = found
                log.error("fleet: cannot close the gap of %s: %s", chain_name(site_id), found)
            return
        last, messages = found
        incarnation = last.headers.get(HEADER_INCARNATION, "")
        to_seq = _header_int(last.headers, HEADER_TO)
        rows = await self._merge_state(site, messages)
        await self._host.worker.call(
            self._position_after_bootstrap, site_id, incarnation, to_seq, last
        )
        self._bootstraps += 1
        site.cursor, site.stream_seq = to_seq, last.stream_seq
        site.incarnation = incarnation
        site.last_stream_seq = max(site.last_stream_seq, last.stream_seq)
        site.gap = site.bootstrap_error = ""
        site.bootstrap_rows = rows
        site.bootstrap = (
            f"bootstrapped from the compacted state stream {link.state_stream_name}:"
            f" {rows} rows merged, position now its seq {to_seq} (stream seq"
            f" {last.stream_seq})"
        )
        log.warning("fleet: %s %s", chain_name(site_id), site.bootstrap)
        self._host.feed_advanced()

    async def _merge_unseen(self, site: _Site) -> None:
        """Merge the state of a site with no message in the changes stream; no position.

        With no message there is no chain end to take as a position: the
        site's next message shows a gap (its `from` past our 0), which the
        ordinary bootstrap then closes with a position.  Merging now is
        safe (the merge is a join) and brings its rows without waiting.
        """
        messages = await self._link.read_state(site.site_id)
        marker = next((m for m in messages if m.subject.endswith("." + STATE_MARKER)), None)
        if marker is None:  # purged since we listed it: look again later
            site.bootstrap_after_ms = self._host.now_ms() + int(BOOTSTRAP_RETRY_S * 1000)
            return
        rows = await self._merge_state(site, _row_copies(messages))
        self._bootstraps += 1
        site.unseen = False
        site.gap = site.bootstrap_error = ""
        site.bootstrap_rows = rows
        site.bootstrap = (
            f"merged from the compacted state stream {self._link.state_stream_name}:"
            f" {rows} rows (no message of the site is left in the changes stream; its next"
            " message sets the position)"
        )
        log.warning("fleet: %s %s", chain_name(site.site_id), site.bootstrap)
        self._host.feed_advanced()

    async def _state_snapshot(
        self, site_id: str
    ) -> tuple[StoredMessage, list[StoredMessage]] | str:
        """(the site's newest changes message, its state messages), or why there is none."""
        link = self._link
        last = await link.last_message(link.subject_of(site_id))
        if last is None:
            return "the changes stream holds no message of that site"
        incarnation = last.headers.get(HEADER_INCARNATION, "")
        messages = await link.read_state(site_id)
        marker = next((m for m in messages if m.subject.endswith("." + STATE_MARKER)), None)
        if marker is None or marker.headers.get(HEADER_INCARNATION) != incarnation:
            return (
                f"the state stream {link.state_stream_name} holds no complete state of that"
                f" site's incarnation {incarnation} (a site publishes it when it starts with"
                " a version that has the state stream)"
            )
        return last, _row_copies(messages)

    async def _merge_state(self, site: _Site, messages: list[StoredMessage]) -> int:
        """Merge the state messages' rows (refused, counted: rows that claim another origin)."""
        rows = 0
        for start in range(0, len(messages), BOOTSTRAP_MERGE_MESSAGES):
            batches = []
            for message in messages[start : start + BOOTSTRAP_MERGE_MESSAGES]:
                batch = self._decoded(message)
                if batch is None:
                    continue
                batch = self._refuse(site, batch, "state ")
                if batch.tables:
                    batches.append(batch)
            rows += await self._host.worker.call(self._merge_batches, site.site_id, batches)
        return rows

    def _merge_batches(self, site_id: str, batches: list[ChangeBatch]) -> int:
        store = self._host.store
        return sum(store.merge_repair_rows(site_id, batch).applied_rows for batch in batches)

    def _position_after_bootstrap(
        self, site_id: str, incarnation: str, to_seq: int, last: StoredMessage
    ) -> None:
        """On the store thread: the site's position at `to_seq`, with its stream sequence."""
        store = self._host.store
        key = position_key(self._config.cluster, site_id)
        store.reset_peer_cursor(key, incarnation, 0, last.subject)
        # An empty batch (0, to_seq]: the cursor and the stream sequence in one commit.
        empty = ChangeBatch(incarnation, 0, to_seq, to_seq, None, (), ())
        store.apply_batch(
            key, dataclasses.replace(empty, head_seq=last.stream_seq), adopt_vector=False
        )

    # -- the stream's state --------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            position = await self._link.position()
            self._stream = (
                position.first_seq,
                position.last_seq,
                position.messages,
                position.consumer_pending,
                position.consumer_ack_pending,
            )
            if await self._host.worker.call(self._positions_reset):
                raise RereadStream("tracked tables changed: the fleet positions were reset")
            for subject in position.subjects:
                site_id = self._link.site_of(subject)
                if site_id is not None and site_id not in (self._own, relay_chain(self._own)):
                    self._site(site_id)
            if not self._listed.is_set():
                self._listed.set()
                self._host.feed_advanced()  # the publish loop looks at our vector again
            if position.first_seq > 1:
                # Only once the stream dropped messages can a site's all be gone; before,
                # a site with a marker and no message has not published its first yet.
                await self._find_unseen_sites()
            for site in list(self._sites.values()):
                await self._look_at(site, position.first_seq, position.consumer_ack_floor)
            await self._own_restore.judge(self._own, publishing=self._publish_waiting_since_ms > 0)
            await asyncio.sleep(self._config.status_interval_s)

    async def _find_unseen_sites(self) -> None:
        """Sites with a complete state but no message left in the changes stream: a gap.

        Their messages all aged out (or were dropped) before we ever read
        one, so neither a message nor `_look_at` would name them: without
        this their rows would be skipped in silence.  Each is a gap the
        consume loop closes from the state stream.
        """
        for site_id in await self._link.state_sites(STATE_MARKER):
            if site_id in (self._own, relay_chain(self._own)) or site_id in self._sites:
                continue
            if not (_hex_site(site_id) or relayer_of(site_id)):
                continue
            site = self._site(site_id)
            site.unseen = True
            site.gap = (
                f"fleet stream gap: {chain_name(site_id)} has a state in"
                f" {self._link.state_stream_name} but no message left in stream"
                f" {self._link.stream_name}; {GAP_FIX}"
            )
            log.error("%s", site.gap)

    def _positions_reset(self) -> bool:
        """On the store thread: True if the store reset a fleet position (ADR 0013).

        Tracking a new table sets every cursor to 0 so that every feed is
        read again; a fleet position at 0 that has a stream sequence was
        reset so.  The run loop then reads the stream again from its start.
        """
        store = self._host.store
        for site_id in list(self._sites):
            stored = store.peer_cursor(position_key(self._config.cluster, site_id))
            if stored is not None and stored.cursor == 0 and stored.head_seq > 0:
                return True
        return False

    async def _look_at(self, site: _Site, first_seq: int, acked_seq: int) -> None:
        """Its newest message (lag); whether messages after our position are gone or lost.

        `acked_seq` is our consumer's ack floor, read before: every message
        up to it was applied and committed before it was acked, so its chain
        position is at most our cursor, read after.  A message of the site
        up to the floor that continues past our cursor was acked in a past
        life of this file: it was restored from an older copy, and the
        stream is read again.  One whose `from` is past our cursor is a gap.
        """
        subject = self._link.subject_of(site.site_id)
        last = await self._link.last_message(subject)
        if last is not None:
            site.last_stream_seq = max(site.last_stream_seq, last.stream_seq)
            site.head_seq = max(site.head_seq, _header_int(last.headers, HEADER_HEAD))
        dropped = first_seq > site.stream_seq + 1
        if site.gap or not (dropped or acked_seq > site.stream_seq):
            return
        following = await self._link.next_message(subject, site.stream_seq + 1)
        if following is None:
            return
        start = _header_int(following.headers, HEADER_FROM)
        if start > site.cursor:
            self._note_gap(site, site.cursor, start, following.stream_seq)
        elif (
            following.stream_seq <= acked_seq
            and _header_int(following.headers, HEADER_TO) > site.cursor
        ):
            self._reread = True
            raise RereadStream(
                f"site {site.site_id}'s message at stream seq {following.stream_seq} was acked"
                " but is not applied here (the database was restored from an older copy?)"
            )

    async def has_marker(self, site_id: str) -> bool:
        """Whether the site published its state marker: a fleet site, even one that
        never wrote (verify admits it on this, node.fleet_verify)."""
        try:
            return await self._link.last_state(site_id, STATE_MARKER) is not None
        except SyncError as exc:
            log.info("fleet: looking up the state marker of site %s failed: %s", site_id, exc)
            return False

    # -- claims: what each site holds (docs/adr/0017) ---------------------------------

    async def _claim_loop(self) -> None:
        """Every `lifecycle.interval_s`: read the other sites' claims, then publish ours."""
        interval_s = self._host.config.lifecycle_interval_s
        if interval_s <= 0:
            return  # no collection here: nobody needs what we hold
        while True:
            await self._read_claims()
            await self._publish_claim()
            await asyncio.sleep(interval_s)

    async def _publish_claim(self) -> None:
        """Our claim on the state stream, if the publish loop has a mark; else ask for one."""
        claimable = self._claimable
        if claimable is None:
            self._mark_wanted = True
            self._host.feed_advanced()  # an idle publish loop reads, and marks
            return
        mark, published, others = claimable
        store = self._host.store
        membership = await self._host.worker.call(store.membership)
        body = {
            "published": published,
            # What we held of the others when the mark was taken, not now: a
            # message we read since may carry a state older than what we hold
            # now, and it may lie past `published` (found by `syncmesh chaos
            # --transport nats --seed 1 --only 1 --nodes 3 --duration 6`).
            "held": {**others, self._own: mark},
            "gone": list(membership.forgotten),
            "cl_floor": membership.cl_floor,
            "horizon": membership.horizon,
        }
        await self._link.publish_state(
            self._own,
            [(CLAIM_TOKEN, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())],
            headers={HEADER_SITE: self._own, HEADER_INCARNATION: self._incarnation},
        )
        self._claims_published += 1
        # The next claim says more: a new mark at the publish loop's next read.
        self._mark_wanted = True
        self._host.feed_advanced()

    async def _read_claims(self) -> None:
        """Each other site's latest claim; learn its forgotten sites, cl floor and horizon.

        What it holds is learned only from a usable claim (`_usable`); the
        rest (sites forgotten, the cl floor) is safe to learn at once.
        """
        store, worker = self._host.store, self._host.worker
        known = set(self._sites) | set(self._claims) | self._marked
        if self._claim_reads % CLAIM_DISCOVERY_ROUNDS == 0:
            # Listing the state stream's claim subjects makes the server look
            # through a subject per row: only now and then, for sites that
            # claim but never published a message.
            known |= set(await self._link.state_sites(CLAIM_TOKEN))
        self._claim_reads += 1
        for site_id in sorted(known):
            if site_id == self._own or not _hex_site(site_id):
                continue
            message = await self._link.last_state(site_id, CLAIM_TOKEN)
            if message is None:
                continue
            try:
                claim = parse_claim(site_id, message)
            except ValueError as exc:
                self._claims_refused += 1
                log.error("fleet: site %s's claim is refused: %s", site_id, exc)
                continue
            self._claims[site_id] = claim
            usable = self._usable(claim)
            if usable:
                self._usable_claims[site_id] = claim
            gossip = Membership(
                {site_id: dict(claim.held)} if usable else {},
                claim.gone,
                claim.cl_floor,
                claim.horizon,
            )
            await worker.call(store.note_gossip, site_id, gossip)

    def _usable(self, claim: _Claim) -> bool:
        """True once we applied the claimant's chain as far as it had published when it claimed.

        Its claim and its batches travel on different streams: a claim may
        arrive before batches it follows.  A batch read before the claimant
        held a delete may carry an older state of the row; counted before we
        applied that batch, the claim could let us collect the tombstone,
        and the batch would then bring the row back.
        """
        if claim.published == 0:
            return True  # it had published nothing: no batch of it can come late
        site = self._sites.get(claim.site_id)
        return (
            site is not None
            and site.incarnation == claim.incarnation
            and site.cursor >= claim.published
        )

    def _held_others(self) -> dict[str, int]:
        """What we hold of each other fleet site's writes (their usable claims' marks)."""
        return {
            site_id: claim.held.get(site_id, 0)
            for site_id, claim in self._usable_claims.items()
            if self._usable(claim)
        }

    def _held(self) -> dict[str, int]:
        """What we hold of each fleet site's writes now; our own: those on the stream."""
        held = self._held_others()
        if self._claimable is not None:
            held[self._own] = self._claimable[0]
        return held

    async def holdings(self) -> FleetHoldings:
        """For the lifecycle round: what we and every other fleet site hold (usable claims).

        Every site on the stream counts, also one that has published no
        message yet and whose claim we have not read: its marker on the
        state stream is its first step there (the publish loop's
        `_complete_state`), and from then on it may write while cut off,
        inserting keys a delete ended.  The markers are listed first, at
        each round: a site known only by its messages and by claims
        listed now and then was unknown for up to ten rounds (longer
        while our link was down), and a pass collected without it; its
        first message then brought such a key back (`syncmesh chaos
        --transport nats --seed 1 --only 1`, docs/adr/0017).  If the
        listing fails, `unlisted` says why and the round collects nothing.
        """
        unlisted = await self._list_marked()
        sites: dict[str, dict[str, int]] = {}
        waiting: dict[str, str] = {}
        for site_id in sorted(set(self._sites) | set(self._claims) | self._marked):
            if site_id == self._own or not _hex_site(site_id):
                continue  # (a subject token that is no site id: it has no rows here)
            claim = self._usable_claims.get(site_id)
            if claim is not None and self._usable(claim):
                sites[site_id] = dict(claim.held)
                continue
            sites[site_id] = {}
            latest = self._claims.get(site_id)
            site = self._sites.get(site_id)
            if latest is None:
                waiting[site_id] = "has put no claim on the stream (what it holds is unknown)"
            else:
                waiting[site_id] = (
                    f"claims what it holds as of its seq {latest.published}, and we applied"
                    f" its chain only up to {0 if site is None else site.cursor}"
                )
        if self._claimable is None:
            waiting[self._own] = "our own writes are not known to be on the stream yet"
        return FleetHoldings(self._held(), sites, waiting, unlisted)

    async def _list_marked(self) -> str:
        """Add every site with a state marker to `_marked`; why not, if the listing failed.

        A site never leaves the set: a member is only ever taken out by
        `syncmesh forget` (docs/adr/0015), which the frontier honours.
        """
        try:
            listed = await self._link.state_sites(STATE_MARKER)
        except FleetError as exc:
            return f"the fleet's sites could not be listed ({exc})"
        for site_id in listed:
            if site_id != self._own and _hex_site(site_id) and site_id not in self._marked:
                self._marked.add(site_id)
                if site_id not in self._sites and site_id not in self._claims:
                    log.debug(
                        "fleet: site %s is on the stream (its state marker), with no message"
                        " or claim read here yet: a member, it holds collection back",
                        site_id,
                    )
        return ""

    def statistics(self) -> FleetStatistics:
        ordered = sorted(self._sites.values(), key=lambda site: site.site_id)
        # A relay chain is listed under its relayer's site id, apart from the sites.
        sites = tuple(
            _site_statistics(site) for site in ordered if relayer_of(site.site_id) is None
        )
        relays = tuple(
            dataclasses.replace(_site_statistics(site), site_id=relayer)
            for site in ordered
            if (relayer := relayer_of(site.site_id)) is not None
        )
        first, last, messages, pending, ack_pending = self._stream
        return FleetStatistics(
            servers=self._link.servers,
            cluster=self._config.cluster,
            stream=self._link.stream_name,
            subject=self._link.subject_of(self._own) if self._own else "",
            # The client lost its server and is reconnecting: no call has failed
            # yet, but nothing flows either; status must not say streaming.
            state=(
                "reconnecting"
                if self._state == "streaming" and not self._link.connected
                else self._state
            ),
            last_error=self._last_error,
            down_since_ms=self._down_since_ms,
            publish_waiting_since_ms=self._publish_waiting_since_ms,
            published_seq=self._published_seq,
            published_messages=self._published_messages,
            published_rows=self._published_rows,
            publish_retries=self._publish_retries,
            publish_duplicates=self._publish_duplicates,
            stream_first_seq=first,
            stream_last_seq=last,
            stream_messages=messages,
            consumer_pending=pending,
            consumer_ack_pending=ack_pending,
            undecodable_messages=self._undecodable,
            foreign_rows_refused=sum(site.foreign_rows_refused for site in sites + relays),
            sites=sites,
            gaps=tuple(
                f"{site.gap} (bootstrap: {site.bootstrap_error})"
                if site.bootstrap_error
                else site.gap
                for site in sites + relays
                if site.gap
            ),
            state_stream=self._link.state_stream_name,
            state_published_rows=self._state_published_rows,
            bootstraps=self._bootstraps,
            claims_published=self._claims_published,
            claims_refused=self._claims_refused,
            own_restore=self._own_restore.status,
            own_restores=self._own_restore.restores,
            site_id_conflict=self._own_restore.twin,
            configuration_error=self._configuration_error,
            relay_subject=self._link.subject_of(relay_chain(self._own)) if self._own else "",
            relayed_seq=self._relayed_seq,
            relayed_messages=self._relayed_messages,
            relayed_rows=self._relayed_rows,
            relays=relays,
        )


def _site_statistics(site: _Site) -> FleetSiteStatistics:
    return FleetSiteStatistics(
        site_id=site.site_id,
        cursor=site.cursor,
        stream_seq=site.stream_seq,
        last_stream_seq=site.last_stream_seq,
        head_seq=site.head_seq,
        lag_ms=feed_lag_ms(site.cursor, site.head_seq),
        messages_applied=site.messages_applied,
        rows_applied=site.rows_applied,
        duplicates=site.duplicates,
        foreign_rows_refused=site.foreign_rows_refused,
        last_applied_ms=site.last_applied_ms,
        gap=site.gap,
        bootstrap=site.bootstrap,
        bootstrap_rows=site.bootstrap_rows,
        bootstrap_error=site.bootstrap_error,
    )


@dataclass(frozen=True, slots=True)
class _Outcome:
    kind: str  # "applied", "duplicate", "ahead", "gap" or "reread"
    cursor: int
    applied_rows: int = 0
    captured_total: int = 0
    gap_from: int = 0
    after_seq: int = 0  # "ahead": the stream sequence of the last message applied


def _row_copies(messages: list[StoredMessage]) -> list[StoredMessage]:
    """A site's state messages without its marker and its claim: its rows' copies."""
    return [
        message
        for message in messages
        if not message.subject.endswith(("." + STATE_MARKER, "." + CLAIM_TOKEN))
    ]


@dataclass(frozen=True, slots=True)
class _Claim:
    """A fleet site's claim (docs/adr/0017), as read from the state stream."""

    site_id: str
    incarnation: str
    published: int  # its chain's end when it claimed: count the claim once we applied that far
    held: dict[str, int]  # per fleet site, the stamp up to which it holds its writes
    gone: tuple[str, ...]  # sites forgotten there (`syncmesh forget`)
    cl_floor: int
    horizon: dict[str, int]


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= HLC_MAX


def _stamps(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    stamps: dict[str, int] = {}
    for site, hlc in value.items():
        if not (isinstance(site, str) and _hex_site(site)):
            raise ValueError(f"{what} names {site!r}, not a site id")
        if not _count(hlc):
            raise ValueError(f"{what}[{site}] is not a stamp")
        stamps[site] = hlc
    return stamps


def parse_claim(site_id: str, message: StoredMessage) -> _Claim:
    """A claim checked at the trust boundary; ValueError says what is wrong with it."""
    if len(message.data) > CLAIM_BYTES_MAX:
        raise ValueError(f"{len(message.data)} bytes, over {CLAIM_BYTES_MAX}")
    try:
        body = json.loads(message.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("not an object")
    published, floor, gone = body.get("published"), body.get("cl_floor"), body.get("gone")
    if not _count(published):
        raise ValueError("published is not a count")
    if not _count(floor):
        raise ValueError("cl_floor is not a count")
    if not isinstance(gone, list) or not all(
        isinstance(site, str) and _hex_site(site) for site in gone
    ):
        raise ValueError("gone is not a list of site ids")
    return _Claim(
        site_id,
        message.headers.get(HEADER_INCARNATION, ""),
        published,
        _stamps(body.get("held"), "held"),
        tuple(gone),
        floor,
        _stamps(body.get("horizon"), "horizon"),
    )


def _hex_site(site_id: str) -> bool:
    """A site id as `syncmesh init` makes them (hex), not some other subject token."""
    return bool(site_id) and all(char in "0123456789abcdef" for char in site_id)


def _header_int(headers: Mapping[str, str], name: str) -> int:
    return header_int(headers, name)
