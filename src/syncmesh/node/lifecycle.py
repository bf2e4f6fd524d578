"""The node's tombstone collection and membership gossip (ADR 0015).

Every `lifecycle_interval_s`, one round:

1. the vectors our peers sent us (PULL, ACK, HAVE, a batch's) are folded
   into the membership: what each of them holds;
2. a collection pass: the store fixes the stability frontier and the
   settled pass (a peer's ACK can overtake a batch it read before it held
   a delete, so the store collects only where every life a delete ended
   is below the horizon it records: ADR 0015), then looks at
   `lifecycle_batch_rows` shadow rows per step, each step one store call,
   so the sessions' batches interleave with it and sync never waits for
   more than one step;
3. our membership goes to every peer in session that speaks it (MEMBERS).

A pass is skipped while a peer this node dials was never met (no HELLO,
in this run or an earlier one): it may be a member we have not heard of
yet (a newcomer that has written), and collecting without it could make
us refuse it.

A node on a fleet stream (NATS) learns what the stream's sites hold from
their claims (docs/adr/0017, `Fleet.holdings`): each fleet site (every
site whose state marker is on the stream, listed at each round: a pass is
skipped if they cannot be listed) counts as a peer in session whose vector
is its latest usable claim ({} while it has none: it holds collection
back), our own entry for our own writes is only
what is on the stream, and the pass collects only below the least frontier
entry over the origins not forgotten (its *ceiling*) and below an earlier
pass that has settled (the store's `lifecycle._settled`).  Before claims, a fleet node collected
nothing: one that held no other site's stamps took itself for its only
member and collected its own deletes while the stream was out of reach,
before they were published (issue 15, `syncmesh chaos --transport nats`);
the own entry above keeps that from coming back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncmesh.errors import StoreError, SyncError
from syncmesh.model import FleetHoldings, Membership
from syncmesh.node.config import NodeConfig
from syncmesh.store import Store
from syncmesh.store.records import CollectPass

log = logging.getLogger(__name__)

StoreCall = Callable[..., Awaitable[Any]]


class GossipPeer(Protocol):
    """A session, as the round sees it."""

    @property
    def peer_site_id(self) -> str: ...

    @property
    def peer_vector(self) -> dict[str, int]: ...

    async def send_membership(self, membership: Membership) -> bool:
        """Send MEMBERS if the peer speaks it; True if sent."""
        ...


class LifecycleHost(Protocol):
    config: NodeConfig
    store: Store

    @property
    def stopping(self) -> bool: ...

    @property
    def store_call(self) -> StoreCall: ...

    def gossip_peers(self) -> Sequence[GossipPeer]: ...

    async def unmet_dialled_peers(self) -> list[str]:
        """URLs this node dials whose peer it never met (in this run or an earlier one)."""
        ...

    async def fleet_holdings(self) -> FleetHoldings | None:
        """What the fleet's sites hold, from their claims; None if the node has no fleet.

        Lists the stream's sites first (every site on it is a member)."""
        ...


@dataclass(slots=True)
class LifecycleStatistics:
    """What the rounds did in this run (for status and /metrics)."""

    rounds: int = 0
    passes: int = 0
    collected: int = 0  # tombstones collected by this run's passes
    last_pass_ms: float = 0.0  # how long the last pass took, steps and waits included
    skipped: str = ""  # why the last round did not collect ("" if it did)
    # What holds collection back ("" if nothing): a fleet node's sites, or on
    # WebSocket the member that deletes held everywhere wait for (ADR 0015).
    held_back: str = ""
    gossip_sent: int = 0


async def lifecycle_loop(host: LifecycleHost, statistics: LifecycleStatistics) -> None:
    """Rounds every `lifecycle_interval_s` until the node stops; a failure waits for the next."""
    interval_s = host.config.lifecycle_interval_s
    while not host.stopping:
        await asyncio.sleep(interval_s)
        try:
            await lifecycle_round(host, statistics)
        except StoreError as exc:  # a locked or full file: the next round tries again
            log.warning("tombstone collection round failed: %s", exc)
        except Exception:  # a bug must not stop the next rounds
            log.exception("tombstone collection round failed")


async def lifecycle_round(host: LifecycleHost, statistics: LifecycleStatistics) -> int:
    """One round: learn peers' vectors, collect, gossip.  Returns tombstones collected."""
    store, call = host.store, host.store_call
    peers = list(host.gossip_peers())
    heard = {peer.peer_site_id: dict(peer.peer_vector) for peer in peers if peer.peer_site_id}
    await call(store.learn_vectors, heard)
    direct = dict(heard)
    holdings = await host.fleet_holdings()
    own_held: dict[str, int] | None = None
    if holdings is not None:
        own_held = holdings.own
        for site, claimed in holdings.sites.items():
            # A fleet site that is also a peer in session: both are its own word.
            merged = dict(direct.get(site, {}))
            for origin, hlc in claimed.items():
                merged[origin] = max(merged.get(origin, 0), hlc)
            direct[site] = merged
        # Fleet sites are members (a site without a usable claim holds collection
        # back); our own row's high-water mark takes what we hold of them, which
        # our HELLO then tells a WebSocket peer that collected (rule 3).
        own = await call(lambda: store.site_id)
        await call(store.learn_vectors, {**holdings.sites, own: holdings.own})
    statistics.rounds += 1
    collected = 0
    unmet = await host.unmet_dialled_peers()
    state: CollectPass | None = None
    if unmet:
        statistics.skipped = f"never met the peer at {', '.join(unmet)}: it may be a member"
    elif holdings is not None and holdings.unlisted:
        # A site on the stream that we do not know yet may hold a life a
        # delete ended (docs/adr/0017, "Every site on the stream is a member").
        statistics.skipped = holdings.unlisted
    else:
        statistics.skipped = ""
        state = await _collection_pass(host, statistics, direct, own_held)
        collected = state.collected
    membership = await call(store.membership)
    statistics.held_back = (
        _held_back(state) if holdings is None else _fleet_held_back(holdings, membership, state)
    )
    for peer in peers:
        try:
            sent = await peer.send_membership(membership)
        except (SyncError, OSError) as exc:
            # The session ended meanwhile: its own loops report that.
            log.debug("membership not sent to %s: %s", peer.peer_site_id, exc)
            continue
        statistics.gossip_sent += sent
    return collected


def _held_back(state: CollectPass | None) -> str:
    """What keeps deletes every member holds from going, on WebSocket (status).

    Only when some do wait (docs/adr/0015, "A session's vector can overtake
    its batch"): a member behind on the frontier is status' `holding_back`.
    """
    if state is None or not state.unsettled:
        return ""
    holder, origin = state.held_back_by
    waiting = (
        "1 delete held by every member waits"
        if state.unsettled == 1
        else f"{state.unsettled:,} deletes held by every member wait"
    )
    if not holder:
        return f"{waiting}: not every life they ended is known to be held everywhere yet"
    return (
        f"{waiting}: site {holder} does not hold the writes of site {origin} as far as that"
        " site had written when a pass saw the deletes held everywhere; they go once every"
        " life they ended is held everywhere (docs/adr/0015)"
    )


def _fleet_held_back(
    holdings: FleetHoldings, membership: Membership, state: CollectPass | None
) -> str:
    """Which member holds a fleet node's collection back, and why (status)."""
    gone = set(membership.forgotten)
    waiting = [
        f"fleet site {site} {why}"
        for site, why in sorted(holdings.waiting.items())
        if site not in gone
    ]
    if waiting:
        return "; ".join(waiting)
    if state is None or state.ceiling is None:
        return ""
    if state.settled == {}:
        holder, origin = state.held_back_by
        if not holder:
            return "the first collection pass since the start: deletes wait for the next"
        return (
            f"site {holder} does not hold the writes of site {origin} as far as that site"
            " had written when an earlier pass began: deletes wait until every life they"
            " ended is held everywhere (docs/adr/0017)"
        )
    holder, origin = state.held_back_by
    return (
        f"site {holder} is known to hold the writes of site {origin} only up to stamp"
        f" {state.ceiling}: deletes stamped above it wait"
    )


async def _collection_pass(
    host: LifecycleHost,
    statistics: LifecycleStatistics,
    direct: dict[str, dict[str, int]],
    own_held: dict[str, int] | None = None,
) -> CollectPass:
    """`direct`: the vectors our peers in session sent us; they stand for those peers.

    `own_held`: a fleet node's holdings of the fleet sites' writes (ADR 0017).
    """
    store, call = host.store, host.store_call
    started = time.perf_counter()
    state: CollectPass = await call(store.begin_collection, direct, own_held=own_held)
    while not host.stopping:
        step = await call(store.collect_step, state, host.config.lifecycle_batch_rows)
        if step.done:
            break
    statistics.passes += 1
    statistics.collected += state.collected
    statistics.last_pass_ms = (time.perf_counter() - started) * 1000
    if state.collected:
        log.info(
            "collected %d tombstones (%s)",
            state.collected,
            ", ".join(
                f"{table}: {count}" for table, count in sorted(state.collected_by_table.items())
            ),
        )
    return state
