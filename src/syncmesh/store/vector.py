"""The version vector and restore detection.

Owns how the vector moves: V[self] following our own captures
(`set_own`), V = max(V, sender's V) on a batch that reaches the sender's
head (`merge`, capped below what we hold only in quarantine and by the
drift limit, `drift_bound`), and noticing that this file is an old copy
(`mark_run_start` at open, `note_peer` on a peer's vector).  `Store`
keeps the methods of the same purpose and delegates here; every function
runs inside the caller's transaction unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING

from syncmesh.clock import COUNTER_MAX, pack, wall_ms_of

if TYPE_CHECKING:
    from syncmesh.store.sqlite import Store

log = logging.getLogger(__name__)


def mark_run_start(store: Store) -> None:
    """Remember where this run's own stamps begin (restore detection).

    Own writes of earlier runs are stamped at most `_own_floor` (our vector
    entry as the file holds it); this run's at least `_run_start`, because
    the clock is moved there now.  A peer claiming own writes between the
    two means the file lost writes it once made: it is an old copy.
    """
    store._own_floor = store.vector().get(store.site_id, 0)
    now_ms = max(store._clock.physical_ms(), wall_ms_of(store._clock.last))
    store._run_start = pack(now_ms, 0)
    store._clock.restore(store._run_start)


def set_own(store: Store, hlc: int) -> None:
    """V[self] follows our clock, unless a restore left own writes missing."""
    if store._state()["restore_floor"] > 0:
        return
    store._connection.execute(
        "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES"
        " ((SELECT site_id FROM _syncmesh_state), ?)"
        " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
        (hlc,),
    )


def merge(store: Store, sender_vector: dict[str, int]) -> None:
    """V = max(V, sender's V), capped below changes we hold only in quarantine."""
    caps: dict[str, int] = {}
    for (stamps_json,) in store._connection.execute("SELECT min_stamps FROM _syncmesh_quarantine"):
        for site, hlc in json.loads(stamps_json).items():
            caps[site] = min(caps.get(site, hlc - 1), hlc - 1)
    own = store.site_id
    for site, hlc in sender_vector.items():
        # A claim beyond the drift limit is clamped to it: every write stamped
        # later was quarantined, not applied, and the cap keeps us below it.
        capped = min(hlc, caps.get(site, hlc), drift_bound(store))
        store._connection.execute(
            "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES (?, ?)"
            " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
            (site, capped),
        )
    floor = store._state()["restore_floor"]
    if floor > 0 and store.vector().get(own, 0) >= floor:
        log.warning("own writes up to the restore floor are back; leaving restore mode")
        store._connection.execute("UPDATE _syncmesh_state SET restore_floor = 0")


def drift_bound(store: Store) -> int:
    """The greatest stamp not refused as being from the future."""
    return pack(store._clock.physical_ms() + store._clock.drift_ms_max, COUNTER_MAX)


def note_peer(store: Store, peer_vector: dict[str, int]) -> bool:
    """Detect that this file was restored from an old copy; True if detected now.

    A peer holding own-site writes beyond what our vector claims means we
    lost writes that we made (the file is older than our history).  Then:
    our clock jumps past them (new writes must win over the lost ones),
    our vector stops claiming own writes until peers return them, and a
    new incarnation tells every peer to re-read our feed from the start.
    """
    own = store.site_id
    claimed = peer_vector.get(own, 0)
    store._clock.check(claimed, own)  # a claim from the future is a broken or hostile peer
    with store._transaction():
        ours = store.vector().get(own, 0)
        lost_this_run = store._own_floor < claimed < store._run_start
        if claimed <= ours and not lost_this_run:
            return False
        store._clock.restore(claimed)
        state = store._state()
        first = state["restore_floor"] == 0
        store._connection.execute(
            "UPDATE _syncmesh_state SET restore_floor = max(restore_floor, ?), hlc = max(hlc, ?)",
            (claimed, claimed),
        )
        if first:
            store._connection.execute(
                "UPDATE _syncmesh_state SET incarnation = ?", (uuid.uuid4().hex,)
            )
            # Claim no more own writes than the file held when this run began:
            # a capture since then may have moved V[self] past the lost ones.
            store._connection.execute(
                "UPDATE _syncmesh_vector SET hlc = min(hlc, ?) WHERE site_id = ?",
                (store._own_floor, own),
            )
    if first:
        log.warning(
            "this file is older than its peers' view of it (restored from a"
            " backup?): new incarnation, re-syncing own writes from peers"
        )
    return first
