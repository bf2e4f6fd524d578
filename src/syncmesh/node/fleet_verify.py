"""Answering verify and repair requests of fleet sites (NATS request/reply).

A node on a fleet answers verify requests on a subject of its own
(`transport.nats_verify`), through the same `VerifyServer.answer_verify`
as `POST /sync/v1/verify`, so the exchange, its limits and the table
rights are the same.  Only the admission differs, because a fleet
request carries no certificate: the asker is the site id it claims
(which the transport ties to its NATS user through the reply subject),
and that must be a site this node knows on the fleet, from the stream.
Its rights are those of `[peers.<site id>]` when the configuration names
it so (ADR 0008: `receive` limits what it may read here, `send` what it
may push), else every table: the stream already gives every fleet site
every table of every other site.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from syncmesh.errors import TransportError
from syncmesh.node.admission import Admitted
from syncmesh.node.config import NodeConfig, is_site_id
from syncmesh.node.verify import StoreCall
from syncmesh.node.verify_server import VerifyServer
from syncmesh.store.base import VerifyStore
from syncmesh.transport.base import (
    FleetVerifyResponder,
    PeerIdentity,
    Refusal,
    RefusalReason,
    VerifyAnswer,
)

log = logging.getLogger(__name__)

SUBSCRIBE_RETRY_S_MAX = 30.0  # a failed subscription is tried again, doubling up to this
MARKER_RECHECK_S = 10.0  # a site found without a state marker is looked up again after this
UNMARKED_KEPT_MAX = 1_000  # sites remembered as without one (a flood of made-up ids)


def admit_fleet_site(
    identity: PeerIdentity,
    config: NodeConfig,
    *,
    known_sites: Collection[str],
    own_site: str,
    stopping: bool,
) -> Admitted | Refusal:
    """Admit a verify request that came through the fleet, or say why not."""
    if stopping:
        return Refusal(RefusalReason.SHUTTING_DOWN)
    site = identity.site or ""
    if site == own_site:
        return Refusal(RefusalReason.NOT_A_PEER, certificate=f"site {site} is this site itself")
    if site not in known_sites:
        return Refusal(
            RefusalReason.NOT_A_PEER,
            certificate=f"site {site} is not a site this node knows on the fleet",
        )
    return Admitted(config.peer_named(site))


class FleetVerifyService:
    """The fleet's verify responder of one node, with its own admission."""

    def __init__(
        self,
        config: NodeConfig,
        store: VerifyStore,
        call: StoreCall,
        responder: FleetVerifyResponder,
        *,
        known_sites: Callable[[], Collection[str]],
        stopping: Callable[[], bool],
        has_marker: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """`known_sites`: the other sites the node's fleet knows now (from the stream);
        `has_marker`: whether a site published its state marker on the fleet (a site
        that never wrote is known by nothing else, yet verifies its fleet too)."""
        self._config = config
        self._store = store
        self._responder = responder
        self._known_sites = known_sites
        self._stopping = stopping
        self._has_marker = has_marker
        # Sites admitted on their marker; and when a site was last found without one.
        self._marked: set[str] = set()
        self._unmarked: dict[str, float] = {}
        self.refused_requests = 0
        self.server = VerifyServer(store, call, config.message_bytes_max, admit=self._admit)

    async def answer_verify(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | VerifyAnswer:
        """The `transport.VerifyHost` the responder serves: an asker unknown from the
        stream is looked up once on the state stream before the admission."""
        site = peer.site or ""
        if (
            self._has_marker is not None
            and is_site_id(site)
            and site not in self._marked
            and site not in self._known_sites()
            and time.monotonic() - self._unmarked.get(site, -MARKER_RECHECK_S) >= MARKER_RECHECK_S
        ):
            if await self._has_marker(site):
                self._marked.add(site)
                self._unmarked.pop(site, None)
            else:
                if len(self._unmarked) >= UNMARKED_KEPT_MAX:
                    self._unmarked.clear()
                self._unmarked[site] = time.monotonic()
        return await self.server.answer_verify(peer, read_body)

    def _admit(self, peer: PeerIdentity) -> Admitted | Refusal:
        verdict = admit_fleet_site(
            peer,
            self._config,
            known_sites={*self._known_sites(), *self._marked},
            own_site=self._store.site_id,
            stopping=self._stopping(),
        )
        if isinstance(verdict, Refusal) and verdict.reason is RefusalReason.NOT_A_PEER:
            self.refused_requests += 1
            log.warning("refused a verify request over the fleet: %s", verdict.certificate)
        return verdict

    async def run(self) -> None:
        """Subscribe, trying again with growing pauses while the servers are out of reach."""
        delay_s = self._config.backoff_initial_s
        while True:
            try:
                await self._responder.serve(self._store.site_id, self)
                return
            except TransportError as exc:
                log.warning(
                    "cannot answer verify requests over the fleet yet (%s); again in %.1f s",
                    exc,
                    delay_s,
                )
            await asyncio.sleep(delay_s)
            delay_s = min(SUBSCRIBE_RETRY_S_MAX, delay_s * 2)

    async def close(self) -> None:
        await self._responder.close()
