"""The version vector and restore detection.

Owns how the vector moves: V[self] following our own captures
(`set_own`), V = max(V, sender's V) on a batch that reaches the sender's
head (`merge`, capped below what we hold only in quarantine and by the
drift limit, `drift_bound`), and noticing that this file is an old copy
(`mark_run_start` at open, `note_peer` on a peer's vector).  The
facade keeps the methods of the same purpose and delegates here; every function
runs inside the caller's transaction unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import uuid

from syncmesh.clock import COUNTER_MAX, pack, wall_ms_of
from syncmesh.store.sqlite.context import StoreContext

log = logging.getLogger(__name__)


def mark_run_start(ctx: StoreContext) -> None:
    """Remember where this run's own stamps begin (restore detection).

    Own writes of earlier runs are stamped at most `own_floor` (our vector
    entry as the file holds it); this run's at least `run_start`, because
    the clock is moved there now.  A peer claiming own writes between the
    two means the file lost writes it once made: it is an old copy.
    """
    ctx.own_floor = ctx.vector().get(ctx.site_id(), 0)
    now_ms = max(ctx.clock.physical_ms(), wall_ms_of(ctx.clock.last))
    ctx.run_start = pack(now_ms, 0)
    ctx.clock.restore(ctx.run_start)


def set_own(ctx: StoreContext, hlc: int) -> None:
    """V[self] follows our clock, unless a restore left own writes missing."""
    if ctx.state()["restore_floor"] > 0:
        return
    ctx.connection.execute(
        "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES"
        " ((SELECT site_id FROM _syncmesh_state), ?)"
        " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
        (hlc,),
    )


def merge(ctx: StoreContext, sender_vector: dict[str, int]) -> None:
    """V = max(V, sender's V), capped below changes we hold only in quarantine."""
    caps: dict[str, int] = {}
    for (stamps_json,) in ctx.connection.execute("SELECT min_stamps FROM _syncmesh_quarantine"):
        for site, hlc in json.loads(stamps_json).items():
            caps[site] = min(caps.get(site, hlc - 1), hlc - 1)
    own = ctx.site_id()
    for site, hlc in sender_vector.items():
        # A claim beyond the drift limit is clamped to it: every write stamped
        # later was quarantined, not applied, and the cap keeps us below it.
        capped = min(hlc, caps.get(site, hlc), drift_bound(ctx))
        ctx.connection.execute(
            "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES (?, ?)"
            " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
            (site, capped),
        )
    floor = ctx.state()["restore_floor"]
    if floor > 0 and ctx.vector().get(own, 0) >= floor:
        log.warning("own writes up to the restore floor are back; leaving restore mode")
        ctx.connection.execute("UPDATE _syncmesh_state SET restore_floor = 0")


def drift_bound(ctx: StoreContext) -> int:
    """The greatest stamp not refused as being from the future."""
    return pack(ctx.clock.physical_ms() + ctx.clock.drift_ms_max, COUNTER_MAX)


def note_peer(ctx: StoreContext, peer_vector: dict[str, int]) -> bool:
    """Detect that this file was restored from an old copy; True if detected now.

    A peer holding own-site writes beyond what our vector claims means we
    lost writes that we made (the file is older than our history).  Then:
    our clock jumps past them (new writes must win over the lost ones),
    our vector stops claiming own writes until peers return them, and a
    new incarnation tells every peer to re-read our feed from the start.
    """
    own = ctx.site_id()
    claimed = peer_vector.get(own, 0)
    ctx.clock.check(claimed, own)  # a claim from the future is a broken or hostile peer
    with ctx.transaction():
        ours = ctx.vector().get(own, 0)
        lost_this_run = ctx.own_floor < claimed < ctx.run_start
        if claimed <= ours and not lost_this_run:
            return False
        ctx.clock.restore(claimed)
        state = ctx.state()
        first = state["restore_floor"] == 0
        ctx.connection.execute(
            "UPDATE _syncmesh_state SET restore_floor = max(restore_floor, ?), hlc = max(hlc, ?)",
            (claimed, claimed),
        )
        if first:
            ctx.connection.execute(
                "UPDATE _syncmesh_state SET incarnation = ?", (uuid.uuid4().hex,)
            )
            # Claim no more own writes than the file held when this run began:
            # a capture since then may have moved V[self] past the lost ones.
            ctx.connection.execute(
                "UPDATE _syncmesh_vector SET hlc = min(hlc, ?) WHERE site_id = ?",
                (ctx.own_floor, own),
            )
    if first:
        log.warning(
            "this file is older than its peers' view of it (restored from a"
            " backup?): new incarnation, re-syncing own writes from peers"
        )
    return first
