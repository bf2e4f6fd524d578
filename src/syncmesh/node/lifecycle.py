"""The node's tombstone collection and membership gossip (ADR 0015).

Every `lifecycle_interval_s`, one round:

1. the vectors our peers sent us (PULL, ACK, HAVE, a batch's) are folded
   into the membership: what each of them holds;
2. a collection pass: the store fixes the stability frontier, then looks
   at `lifecycle_batch_rows` shadow rows per step, each step one store
   call, so the sessions' batches interleave with it and sync never waits
   for more than one step;
3. our membership goes to every peer in session that speaks it (MEMBERS).

A pass is skipped while a peer this node dials was never met (no HELLO,
in this run or an earlier one): it may be a member we have not heard of
yet (a newcomer that has written), and collecting without it could make
us refuse it.

A node on a fleet stream (NATS, docs/nats.md) collects nothing: the stream's
sites send no vectors, so nothing tells which of our deletes they hold.  A
node that held no other site's stamps yet took itself for its only member
and collected its own deletes while the stream was out of reach, before
they were published: they were lost, and older writes of the keys came
back (issue 15, found by `syncmesh chaos --transport nats`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncmesh.errors import StoreError, SyncError
from syncmesh.model import Membership
from syncmesh.node.config import NodeConfig
from syncmesh.store import Store

log = logging.getLogger(__name__)

FLEET_SKIP = (
    "on a fleet stream: its sites send no vectors, so no delete is known to be held by all"
    " (docs/nats.md, Tombstones)"
)

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


@dataclass(slots=True)
class LifecycleStatistics:
    """What the rounds did in this run (for status and /metrics)."""

    rounds: int = 0
    passes: int = 0
    collected: int = 0  # tombstones collected by this run's passes
    last_pass_ms: float = 0.0  # how long the last pass took, steps and waits included
    skipped: str = ""  # why the last round did not collect ("" if it did)
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
    statistics.rounds += 1
    collected = 0
    unmet = await host.unmet_dialled_peers()
    if host.config.fleet is not None:
        statistics.skipped = FLEET_SKIP
    elif unmet:
        statistics.skipped = f"never met the peer at {', '.join(unmet)}: it may be a member"
    else:
        statistics.skipped = ""
        collected = await _collection_pass(host, statistics, heard)
    membership = await call(store.membership)
    for peer in peers:
        try:
            sent = await peer.send_membership(membership)
        except (SyncError, OSError) as exc:
            # The session ended meanwhile: its own loops report that.
            log.debug("membership not sent to %s: %s", peer.peer_site_id, exc)
            continue
        statistics.gossip_sent += sent
    return collected


async def _collection_pass(
    host: LifecycleHost, statistics: LifecycleStatistics, direct: dict[str, dict[str, int]]
) -> int:
    """`direct`: the vectors our peers in session sent us; they stand for those peers."""
    store, call = host.store, host.store_call
    started = time.perf_counter()
    state = await call(store.begin_collection, direct)
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
    return int(state.collected)
