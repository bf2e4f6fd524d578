"""Who may open a session or send a verify request: one pure function, `admit`.

The sync channel and the verify route admit peers by the same rules
(docs/adr/0008-per-peer-rights.md, 0009-site-certificates.md), so they
share this function.  It reads nothing but its arguments and logs
nothing: the node logs and counts the refusal, and the transport renders
it on its wire (`transport.websocket.SYNC_REFUSALS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from syncmesh.node.config import NodeConfig, PeerConfig
from syncmesh.transport.base import PeerIdentity, Refusal, RefusalReason


@dataclass(frozen=True, slots=True)
class Admitted:
    """A peer let in; `peer` is its configuration (None without TLS: an unnamed peer)."""

    peer: PeerConfig | None


def admit(
    identity: PeerIdentity,
    config: NodeConfig,
    *,
    stopping: bool,
    inbound: Mapping[str, int] | None,
) -> Admitted | Refusal:
    """Admit `identity`, or say why not.

    `inbound`: the connections dialled in and open now, per peer name ("" for
    unnamed peers), for a session; None for a verify request, which holds no
    connection and so is not counted against the connection limits.  With
    TLS the handshake has already refused a client without a certificate of
    the cluster CA; here the site it names must be a configured peer.
    """
    if stopping:
        return Refusal(RefusalReason.SHUTTING_DOWN)
    if inbound is not None and sum(inbound.values()) >= config.inbound_sessions_max:
        return Refusal(RefusalReason.TOO_MANY_CONNECTIONS)
    if config.tls is None:
        return Admitted(None)
    name = identity.site
    peer = None if name is None else config.peer_named(name)
    if peer is None:
        what = "names no site" if name is None else f"is for site {name!r}"
        return Refusal(RefusalReason.NOT_A_PEER, certificate=what)
    if inbound is not None and inbound.get(peer.name, 0) >= config.sessions_per_peer_max:
        return Refusal(RefusalReason.TOO_MANY_FROM_SITE)
    return Admitted(peer)
