"""The answering side of verify and repair, and a node's periodic verify of its peers.

`VerifyServer` answers the requests of syncmesh.node.verify (the asking
side, which also describes the exchange) from the node's store, on the
store thread.  It is the node's `transport.VerifyHost`: a transport's
listener hands it each request (`answer_verify`), admitted like a peer's
channel (`node.admission.admit`).  `periodic_verify` runs in the node: every
`sync.verify_interval_s` it verifies each peer it dials and keeps the
outcome for `/v1/status`, `/metrics` and the dashboard.  Both take narrow
host Protocols, not the `Node`, so this module does not import node.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from syncmesh.clock import PhysicalClock
from syncmesh.errors import StoreError, SyncError, TransportError
from syncmesh.node.admission import Admitted
from syncmesh.node.config import NodeConfig, PeerConfig
from syncmesh.node.verify import (
    DEEP_SESSION_TTL_S,
    DEEP_SESSIONS_MAX,
    SETTLE_ROUNDS_DEFAULT,
    StoreCall,
    VerifyClient,
    VerifyReport,
    WrittenAfterTrees,
    confirm,
    deep_tree,
    held_now,
    lacking,
    merge_divergent,
    verify,
)
from syncmesh.protocol.verify import (
    BRANCH_ARRAY,
    LEAF_ARRAY,
    DigestsAnswer,
    DigestsRequest,
    FetchAnswer,
    FetchRequest,
    LeafRows,
    LeavesAnswer,
    LeavesRequest,
    PushAnswer,
    PushRequest,
    RootsAnswer,
    RootsRequest,
    VerifyAnswerMessage,
    VerifyRefusal,
    VerifyRequest,
    VerifyRequestError,
    decode_request,
    encode_answer,
)
from syncmesh.store.base import VerifyStore
from syncmesh.store.summary import LEAVES_PER_BRANCH, TableSummary
from syncmesh.transport.base import (
    Connector,
    FleetVerifyAsker,
    FleetVerifyConnection,
    PeerIdentity,
    Refusal,
    VerifyAnswer,
)

log = logging.getLogger(__name__)

# How often a verify that found rows differ looks whether the peer has caught up.
CAUGHT_UP_POLL_S = 0.05
# A fleet site is asked again over NATS request/reply: a round trip per poll.
FLEET_CAUGHT_UP_POLL_S = 0.25


# -- the answering side (a node) ------------------------------------------------------


class VerifyServer:
    """Answers verify requests from the node's store; holds deep trees per session."""

    def __init__(
        self,
        store: VerifyStore,
        call: StoreCall,
        frame_bytes_max: int,
        *,
        admit: Callable[[PeerIdentity], Admitted | Refusal],
    ) -> None:
        """`admit`: the node's admission of a request's sender (`node.admission`)."""
        self._store = store
        self._call = call
        self._frame_bytes_max = frame_bytes_max
        self._admit = admit
        self._deep: dict[str, tuple[float, dict[str, TableSummary]]] = {}

    async def answer_verify(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | VerifyAnswer:
        """One request from `peer` (the `transport.VerifyHost` Protocol): admitted, answered.

        A request we cannot read is answered `ok=False` with a msgpack map
        naming the problem (HTTP 400); TransportError from `read_body` (the
        asker went away) goes back to the transport.
        """
        verdict = self._admit(peer)
        if isinstance(verdict, Refusal):
            return verdict
        rights = verdict.peer
        body = await read_body()
        try:
            request = decode_request(body, frame_bytes_max=self._frame_bytes_max)
            origin = request.site if isinstance(request, PushRequest) and request.site else ""
            answer = await self.answer(
                request,
                may_read=rights.may_receive if rights is not None else _anything,
                may_write=rights.may_send if rights is not None else _anything,
                origin=origin or peer.address,
            )
        except (VerifyRequestError, StoreError) as exc:
            log.info("refused a verify request from %s: %s", peer.address, exc)
            return VerifyAnswer(False, encode_answer(VerifyRefusal(str(exc))))
        return VerifyAnswer(True, encode_answer(answer))

    async def answer(
        self,
        request: VerifyRequest,
        may_read: Callable[[str], bool],
        may_write: Callable[[str], bool],
        origin: str,
    ) -> VerifyAnswerMessage:
        """The answer to one decoded request; VerifyRequestError for one we cannot serve.

        `may_read(table)`: the asker may learn about the table (we send it
        its changes); `may_write(table)`: we accept the asker's changes to it.
        """
        tracked = {spec.name for spec in self._store.specs()}
        match request:
            case RootsRequest():
                return await self._roots(request, tracked, may_read)
            case LeavesRequest():
                return await self._leaves(request, tracked, may_read)
            case DigestsRequest(tables, deep):
                _check_shared(tables, tracked, may_read)
                return DigestsAnswer(
                    {
                        name: await self._call(self._store.key_digests, name, keys, deep=deep)
                        for name, keys in tables.items()
                    }
                )
            case FetchRequest(tables):
                _check_shared(tables, tracked, may_read)
                return FetchAnswer(
                    {
                        name: await self._call(self._store.rows_of, name, keys)
                        for name, keys in tables.items()
                    }
                )
            case PushRequest(batch):
                for rows in batch.tables:
                    if rows.table not in tracked or not may_write(rows.table):
                        raise VerifyRequestError(f"push: table {rows.table!r} is not accepted here")
                result = await self._call(self._store.merge_repair_rows, origin, batch)
                return PushAnswer(result.applied_rows, result.quarantined_rows)

    async def _trees(self, deep: bool, session: str, names: list[str]) -> dict[str, TableSummary]:
        if not deep:
            trees: dict[str, TableSummary] = await self._call(self._store.summaries, names)
            return trees
        now = time.monotonic()
        for stale in [key for key, (at, _) in self._deep.items() if now - at > DEEP_SESSION_TTL_S]:
            del self._deep[stale]
        _, cached = self._deep.get(session, (now, {}))
        for name in names:
            if name not in cached:
                cached[name] = (await deep_tree(self._store, self._call, name))[0]
        self._deep[session] = (now, cached)
        while len(self._deep) > DEEP_SESSIONS_MAX:
            del self._deep[min(self._deep, key=lambda key: self._deep[key][0])]
        return {name: cached[name] for name in names}

    async def _roots(
        self, request: RootsRequest, tracked: set[str], may_read: Callable[[str], bool]
    ) -> RootsAnswer:
        asked = request.tables
        shared = [name for name in asked if name in tracked and may_read(name)]
        # A table whose columns differ from the asker's (a migration not run
        # everywhere yet) is named, not compared: every row written since differs.
        ours = {spec.name: list(spec.value_columns) for spec in self._store.specs()}
        theirs = request.columns or {}
        other_columns = {
            name: ours[name] for name in shared if name in theirs and theirs[name] != ours[name]
        }
        compared = [name for name in shared if name not in other_columns]
        trees = await self._trees(request.deep, request.session, compared)
        answer: dict[str, bytes | None] = {}
        for name in compared:
            tree = trees[name]
            same = tree.root() == asked[name]
            answer[name] = None if same else BRANCH_ARRAY.pack(*tree.branches())
        # Read after the trees: every row they hold is at or below them.
        head = await self._call(self._store.head_seq)
        held = await self._call(self._store.held_claims)
        return RootsAnswer(
            self._store.site_id,
            answer,
            sorted(set(asked) - set(shared), key=str),
            other_columns,
            head,
            held,
        )

    async def _leaves(
        self, request: LeavesRequest, tracked: set[str], may_read: Callable[[str], bool]
    ) -> LeavesAnswer:
        asked = request.tables
        _check_shared(asked, tracked, may_read)
        trees = await self._trees(request.deep, request.session, list(asked))
        answer: dict[str, LeafRows] = {}
        for name, branches in asked.items():
            differing: list[int] = []
            for branch, packed in branches.items():
                ours = trees[name].branch_leaves(branch)
                theirs = LEAF_ARRAY.unpack(packed)
                start = branch * LEAVES_PER_BRANCH
                differing.extend(
                    start + index
                    for index in range(LEAVES_PER_BRANCH)
                    if ours[index] != theirs[index]
                )
            rows = await self._call(self._store.leaf_digests, name, differing, deep=request.deep)
            answer[name] = LeafRows(differing, list(rows.items()))
        return LeavesAnswer(answer)


def _check_shared(
    tables: Mapping[str, object], tracked: set[str], may_read: Callable[[str], bool]
) -> None:
    for name in tables:
        if name not in tracked or not may_read(name):
            raise VerifyRequestError(f"table {name!r} is not shared with you here")


# -- inside a node: the route, and verify against each peer now and then ----------------


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    """The last periodic verify against one peer (what status and metrics show)."""

    at_ms: int
    identical: bool
    divergent_rows: int
    unsettled_rows: int
    round_trips: int
    bytes: int
    seconds: float
    error: str = ""
    repaired_rows: int = 0  # divergent rows merged both ways after it (`sync.verify_repair`)
    repaired_rows_total: int = 0  # the same, summed over every round since the node started
    not_compared: tuple[str, ...] = ()  # tables whose columns differ at the peer (a migration)
    # Not "" while the verify waits for the peer to catch up (the rounds since
    # the last verdict were skipped, or their verdict was not trusted): why.
    # The other fields are the last verdict's (at_ms 0: none yet).
    waiting: str = ""

    def after(self, previous: VerifyOutcome | None) -> VerifyOutcome:
        """This verdict with the rows repaired since start counted on from `previous`'s."""
        before = 0 if previous is None else previous.repaired_rows_total
        return replace(self, repaired_rows_total=before + self.repaired_rows)


class NotCaughtUp(Exception):
    """A verify's differences may be rows in flight: it has no verdict (the reason)."""


def waiting_outcome(previous: VerifyOutcome | None, reason: str) -> VerifyOutcome:
    """The last verdict, if any, kept with the reason this round gave none."""
    if previous is None:
        return VerifyOutcome(0, False, 0, 0, 0, 0, 0.0, waiting=reason)
    return replace(previous, waiting=reason)


def outcome_fields(outcome: VerifyOutcome | None) -> dict[str, Any]:
    """The `verified_ms`, `verify_*` fields of a peer's or fleet site's statistics."""
    if outcome is None:
        return {}
    if not outcome.at_ms:
        return {"verify_waiting": outcome.waiting}
    return {
        "verify_waiting": outcome.waiting,
        "verified_ms": outcome.at_ms,
        "verify_identical": None if outcome.error else outcome.identical,
        "verify_divergent_rows": outcome.divergent_rows,
        "verify_unsettled_rows": outcome.unsettled_rows,
        "verify_round_trips": outcome.round_trips,
        "verify_bytes": outcome.bytes,
        "verify_seconds": round(outcome.seconds, 3),
        "verify_error": outcome.error,
        "verify_repaired_rows": outcome.repaired_rows,
        "verify_repaired_rows_total": outcome.repaired_rows_total,
        "verify_not_compared": outcome.not_compared,
    }


def _anything(_table: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class FleetVerifyTargets:
    """The fleet sites a periodic verify round may take one of (`next_fleet_site`)."""

    asker: FleetVerifyAsker
    ready: list[str]  # sites our stream knows whose chain we have read (nearly) to its end
    behind: frozenset[str]  # sites we lag behind (or with a gap): not verified now
    marker_token: str  # the state stream's token of a site's marker (node.fleet)
    # Tokens the stream lists that name no site that answers (a relay chain's
    # `relay-<site>`, node.fleet): never a candidate.
    not_a_site: Callable[[str], bool] = lambda _token: False


class VerifyingHost(Protocol):
    """What the periodic verify needs from its node."""

    config: NodeConfig
    clock: PhysicalClock
    connector: Connector
    verify_outcomes: dict[str, VerifyOutcome]
    # The last periodic verify per fleet site id (NATS request/reply).
    fleet_verify_outcomes: dict[str, VerifyOutcome]

    @property
    def store(self) -> VerifyStore:
        """Only the verify side of the node's store (read-only here: the node owns it)."""
        ...

    @property
    def store_call(self) -> StoreCall:
        """Runs a function on the store's thread (`StoreWorker.call`)."""
        ...

    def dialled_peers(self) -> list[tuple[str, PeerConfig | None]]: ...

    def streaming_with(self, url: str) -> bool: ...

    async def verify_wait_reason(
        self, url: str, since: float, heads: tuple[int, int | None] | None = None
    ) -> str:
        """Why the peer at `url` cannot be judged now, "" if it can: a direction not
        caught up since `since` (time.monotonic()), or not up to `heads` (ours,
        the peer's) if given."""
        ...

    def fleet_verify_sites(self) -> FleetVerifyTargets | None:
        """Whom the periodic verify may ask on the fleet now; None: no fleet, or not now."""
        ...


async def periodic_verify(node: VerifyingHost) -> None:
    """Every `verify_interval_s`, verify against each peer we dial that is streaming,
    and against one site of our fleet, the one verified longest ago."""
    interval_s = node.config.verify_interval_s
    # The first round waits a whole interval: a starting cluster is still catching up.
    while True:
        await asyncio.sleep(interval_s)
        for url, peer in node.dialled_peers():
            if not node.streaming_with(url):
                continue
            tables = _shared_tables(node, peer)
            if not tables:
                continue
            try:
                node.verify_outcomes[url] = await _verify_when_caught_up(node, url, tables, peer)
            except Exception:  # a bug must not end the periodic verify of every peer
                log.exception("verify against %s failed unexpectedly", url)
        try:
            await _verify_next_fleet_site(node)
        except Exception:  # nor of the fleet's sites
            log.exception("verify of a fleet site failed unexpectedly")


async def _verify_when_caught_up(
    node: VerifyingHost, url: str, tables: list[str], peer: PeerConfig | None
) -> VerifyOutcome:
    """Verify the peer if both directions have caught up lately, else say that it waits.

    Lately: within the settle time, as for a fleet site (`Node.fleet_verify_sites`).
    """
    previous = node.verify_outcomes.get(url)
    waiting = await node.verify_wait_reason(url, time.monotonic() - node.config.verify_settle_s)
    if not waiting:
        outcome = await verify_peer(node, url, tables, peer)
        if not outcome.waiting:
            return outcome.after(previous)
        waiting = outcome.waiting
    if previous is None or not previous.waiting:
        log.info("verify against %s waits: %s", url, waiting)
    return waiting_outcome(previous, waiting)


def _shared_tables(node: VerifyingHost, peer: PeerConfig | None) -> list[str]:
    """Our tracked tables that the peer may both read and send (ADR 0008)."""
    return [
        spec.name
        for spec in node.store.specs()
        if peer is None or (peer.may_send(spec.name) and peer.may_receive(spec.name))
    ]


def next_fleet_site(sites: list[str], outcomes: Mapping[str, VerifyOutcome]) -> str | None:
    """The fleet site to verify now: never verified first, then the longest ago.

    One site per round, not all: every site verifying every other each
    round would be N x (N - 1) exchanges (2,450 for 50 sites).  In turn,
    each site is verified once every N rounds.
    """
    if not sites:
        return None
    return min(sites, key=lambda site: (outcomes[site].at_ms if site in outcomes else -1, site))


def fleet_candidates(targets: FleetVerifyTargets, listed: tuple[str, ...]) -> list[str]:
    """The sites a round may verify: those we read and those the stream lists, less
    those we lag behind and tokens that name no site (a relay chain's)."""
    candidates = {*targets.ready, *listed} - targets.behind
    return sorted(site for site in candidates if not targets.not_a_site(site))


async def _verify_next_fleet_site(node: VerifyingHost) -> None:
    targets = node.fleet_verify_sites()
    if targets is None:
        return
    own_site = await node.store_call(lambda: node.store.site_id)
    try:
        async with targets.asker.connect(own_site) as connection:
            await _verify_one_of(node, connection, targets)
    except TransportError as exc:
        log.warning("cannot verify a fleet site this round: %s", exc)


async def _verify_one_of(
    node: VerifyingHost, connection: FleetVerifyConnection, targets: FleetVerifyTargets
) -> None:
    """Verify the fleet site whose turn it is: of those our stream knows, and those
    that only published their state marker (a site that never wrote: it can still
    lack rows)."""
    try:
        listed = await connection.fleet_sites(targets.marker_token)
    except SyncError as exc:
        log.info("listing the fleet's sites failed (%s): verifying among those we know", exc)
        listed = ()
    site = next_fleet_site(fleet_candidates(targets, listed), node.fleet_verify_outcomes)
    if site is None:
        return
    # Its rights, if the configuration names the site (`[peers.<site id>]`), as
    # the answering side reads them (node.fleet_verify).
    tables = _shared_tables(node, node.config.peer_named(site))
    if not tables:
        return

    all_tables = {spec.name for spec in node.store.specs()}

    async def exchange_with_site() -> _Checked:
        async with VerifyClient(connection.exchange(site)) as client:
            report = await verify(
                node.store, node.store_call, client, tables, settle_s=node.config.verify_settle_s
            )
            if not report.divergent_rows:
                return _Checked(report)
            if set(tables) != all_tables or report.not_shared or report.peer_held is None:
                # Some table is not shared one way: the sides' `held` then cover
                # writes the other never gets, and "caught up" cannot be told:
                # the verdict is given as read, and nothing is repaired
                # (`syncmesh repair --site` merges them).
                return _Checked(report)
            # A fleet site's chain carries only its own writes, so rows in flight
            # are judged per origin: judge again once each side holds what the
            # other held when its trees were read; if not in time, no verdict.
            # (Without this gate a repair of rows in flight cost `syncmesh chaos
            # --transport nats` 1,881 rows on the wire in one schedule.)  Rows
            # written after the trees pass it; the repair leaves them
            # (`repair_found`).
            deadline = time.monotonic() + node.config.verify_settle_s * SETTLE_ROUNDS_DEFAULT
            while waiting := await _fleet_wait_reason(node, client, report):
                if time.monotonic() >= deadline:
                    raise NotCaughtUp(waiting)
                await asyncio.sleep(FLEET_CAUGHT_UP_POLL_S)
            confirmed = await confirm(node.store, node.store_call, client, report)
            return await repair_found(node, client, confirmed)

    previous = node.fleet_verify_outcomes.get(site)
    outcome = await _outcome(node, f"fleet site {site}", f"--site {site}", exchange_with_site)
    if outcome.waiting:
        if previous is None or not previous.waiting:
            log.info("verify against fleet site %s waits: %s", site, outcome.waiting)
        node.fleet_verify_outcomes[site] = waiting_outcome(previous, outcome.waiting)
        return
    node.fleet_verify_outcomes[site] = outcome.after(previous)


async def _fleet_wait_reason(
    node: VerifyingHost, client: VerifyClient, report: VerifyReport
) -> str:
    """Why `report`'s differences with a fleet site may be rows in flight; "" if not."""
    assert report.peer_held is not None
    ours = await node.store_call(node.store.held_claims)
    behind_here = lacking(ours, report.peer_held)
    if behind_here:
        return "catching up: this node still lacks writes the site held of " + _sites_in_words(
            behind_here
        )
    theirs = await held_now(client)
    behind_there = lacking(theirs or {}, report.held)
    if behind_there:
        return "catching up: the site still lacks writes this node held of " + _sites_in_words(
            behind_there
        )
    return ""


def _sites_in_words(sites: list[str]) -> str:
    shown = ", ".join(sites[:3])
    more = f" and {len(sites) - 3} more" if len(sites) > 3 else ""
    return f"site{'s' if len(sites) > 1 else ''} {shown}{more}"


async def verify_peer(
    node: VerifyingHost, url: str, tables: list[str], peer: PeerConfig | None = None
) -> VerifyOutcome:
    """One verify of our store against the node at `url`, as an outcome (never raises)."""

    settle_s = node.config.verify_settle_s

    async def exchange_with_peer() -> _Checked:
        exchange = node.connector.verify_exchange(url, None if peer is None else peer.name)
        async with VerifyClient(exchange) as client:
            report = await verify(node.store, node.store_call, client, tables, settle_s=settle_s)
            if not report.divergent_rows:
                return _Checked(report)
            # Rows that held still may still be in flight: a backlog that began
            # just before this round (a bulk insert at the peer) outlasts the
            # re-reads.  Judge them again once each side has applied the other's
            # feed up to where the trees were read; if not in time, no verdict.
            judged = time.monotonic()
            deadline = judged + settle_s * SETTLE_ROUNDS_DEFAULT
            heads = (report.head_seq, report.peer_head_seq)
            while waiting := await node.verify_wait_reason(url, judged, heads):
                if time.monotonic() >= deadline:
                    raise NotCaughtUp(waiting)
                await asyncio.sleep(CAUGHT_UP_POLL_S)
            confirmed = await confirm(node.store, node.store_call, client, report)
            return await repair_found(node, client, confirmed)

    return await _outcome(node, url, f"--peer {url}", exchange_with_peer)


@dataclass(frozen=True, slots=True)
class _Checked:
    """One periodic verify's report, and what the repair after it merged (fetched, pushed)."""

    report: VerifyReport
    fetched_rows: int = 0
    pushed_rows: int = 0
    repair_error: str = ""
    repaired: bool = False  # the repair ran (`sync.verify_repair`, a WebSocket peer)


async def repair_found(node: VerifyingHost, client: VerifyClient, report: VerifyReport) -> _Checked:
    """With `sync.verify_repair`, merge the rows `report` found divergent both ways.

    This is the anti-entropy behind the feeds: a row a feed never carried
    (a vector that claimed it wrongly, ADR 0006's residual risks; a row
    removed behind the engine's back) is found by the hash trees and
    merged like any batch, so no newer write can lose.  Only rows that
    held still through the settle re-reads (and, for a peer, once both
    sides had caught up) are merged: writes in flight are the feeds' to
    deliver.  Done on the same client, right after the verify.

    Not while any compared row is still changing (unsettled): a write in
    flight can leave one row of a transaction divergent and another
    unsettled, and merging the first alone shows a reader half of that
    transaction (an order's line without the order: `syncmesh chaos
    --transport nats`, torn-transaction).  Rows no feed will carry stay
    divergent, so a quiet round merges them; until then they are reported.

    Nor when a row to merge, ours or the peer's, carries a write its holder
    did not hold when its trees were read (`merge_divergent`'s
    `held_at_trees`): the requests after the roots are answered from the
    store as it is by then, so a transaction written in between shows only
    its rows whose leaves were asked about (one line of an order, not the
    order: `syncmesh chaos --transport nats --seed 1 --only 1`), and no
    gate judged them, as each side's `held` and feed head were read with
    the trees.
    """
    if not report.divergent_rows or not node.config.verify_repair:
        return _Checked(report)
    if report.unsettled_rows:
        log.info(
            "verify: %d divergent rows not repaired this round: %d rows still change"
            " (writes in flight); a quiet round repairs them",
            report.divergent_rows,
            report.unsettled_rows,
        )
        return _Checked(report)
    try:
        fetched, pushed, _restamped = await merge_divergent(
            node.store, node.store_call, client, report, held_at_trees=True
        )
    except WrittenAfterTrees as exc:
        log.info(
            "verify: %d divergent rows not repaired this round: %s (writes in flight);"
            " a quiet round repairs them",
            report.divergent_rows,
            exc,
        )
        return _Checked(report)
    except (SyncError, StoreError) as exc:  # the verify's finding stands
        return _Checked(report, repair_error=str(exc))
    return _Checked(report, fetched, pushed, repaired=True)


async def _outcome(
    node: VerifyingHost,
    label: str,
    repair_target: str,
    run: Callable[[], Awaitable[_Checked]],
) -> VerifyOutcome:
    """Run one verify and log and keep its outcome; a failure is an outcome too."""
    started = time.monotonic()
    now_ms = node.clock.now_ms()
    try:
        checked = await run()
    except NotCaughtUp as exc:
        return VerifyOutcome(
            now_ms, False, 0, 0, 0, 0, time.monotonic() - started, waiting=str(exc)
        )
    except (SyncError, StoreError) as exc:
        log.warning("verify against %s failed: %s", label, exc)
        return VerifyOutcome(now_ms, False, 0, 0, 0, 0, time.monotonic() - started, str(exc))
    report = checked.report
    repaired = checked.fetched_rows + checked.pushed_rows
    if report.divergent_rows:
        where = ", ".join(
            f"{name}: {len(found.divergent)}" for name, found in report.differences.items()
        )
        if checked.repair_error:
            log.warning(
                "verify against %s: %d rows differ (%s); repairing them failed: %s;"
                " `syncmesh repair DB %s` merges them",
                label,
                report.divergent_rows,
                where,
                checked.repair_error,
                repair_target,
            )
        elif checked.repaired:
            # Found and merged: still a warning, as a feed missed them (or a
            # program changed the file behind the engine's back).
            log.warning(
                "verify against %s: %d rows differed (%s); repaired: %d of the peer's rows"
                " merged here, %d of ours there",
                label,
                report.divergent_rows,
                where,
                checked.fetched_rows,
                checked.pushed_rows,
            )
        else:
            log.warning(
                "verify against %s: %d rows differ (%s); `syncmesh repair DB %s` merges them",
                label,
                report.divergent_rows,
                where,
                repair_target,
            )
    else:
        log.info(
            "verify against %s: identical (%d round trips, %d bytes, %.2f s)%s",
            label,
            report.round_trips,
            report.bytes_sent + report.bytes_received,
            report.seconds,
            "".join(
                f"; table {name!r} not compared: its columns differ there ({', '.join(there)})"
                for name, (_here, there) in report.other_columns.items()
            ),
        )
    # Identical as far as it can tell: rows still changing (writes in flight)
    # are counted apart, and a table the peer does not share is no row.
    return VerifyOutcome(
        now_ms,
        report.divergent_rows == 0,
        report.divergent_rows,
        report.unsettled_rows,
        report.round_trips,
        report.bytes_sent + report.bytes_received,
        report.seconds,
        checked.repair_error and f"repair failed: {checked.repair_error}",
        repaired,
        not_compared=tuple(report.other_columns),
    )
