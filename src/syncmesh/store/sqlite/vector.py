"""The version vector and restore detection.

Owns how the vector moves: V[self] following our own captures
(`set_own`), V = max(V, sender's V) on a batch that reaches the sender's
head (`merge`, capped below what we hold only in quarantine or as
waiting cells of a column not here, entries
beyond the drift limit `drift_bound` left out), and noticing that this file is an old copy
(`mark_run_start` at open, `note_peer` on a peer's vector).  The
facade keeps the methods of the same purpose and delegates here; every function
runs inside the caller's transaction unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, cast

from syncmesh.clock import COUNTER_MAX, pack, wall_ms_of
from syncmesh.errors import SiteIdConflict
from syncmesh.model import CELL_FIELDS, ChangeBatch
from syncmesh.store.sqlite import waitlist
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
    # Restore mode whose lost writes lie ahead of this run's start: this run's
    # stamps below them are renewed once the clock may pass them.
    floor = ctx.state()["restore_floor"]
    ctx.future_claim = floor if floor > ctx.run_start else 0


RUNS_KEPT_MAX = 10_000  # gaps remembered (one per run that stamped); the oldest go first
# How far beyond the drift limit a claim about our own writes is still taken
# as a restore (its writes made while our clock ran that far ahead, or before
# it was set back) rather than refused as a broken or hostile peer's.
RESTORE_CLAIM_AHEAD_MS_MAX = 3_600_000


def set_own(ctx: StoreContext, hlc: int) -> None:
    """V[self] follows our clock, unless a restore left own writes missing.

    The run's first own stamp also records the run's gap (`_syncmesh_runs`),
    so that a claim inside it is recognised in later runs too: a restored
    file may capture and be restarted before the peer holding its lost
    writes says HELLO (ADR 0006, residual risks 1 and 2; issue 12, defect 2).
    """
    if not ctx.run_recorded and ctx.own_floor + 1 < ctx.run_start:
        ctx.connection.execute(
            "INSERT INTO _syncmesh_runs (own_floor, run_start) VALUES (?, ?)",
            (ctx.own_floor, ctx.run_start),
        )
        ctx.connection.execute(
            "DELETE FROM _syncmesh_runs WHERE rowid <= (SELECT max(rowid) FROM _syncmesh_runs) - ?",
            (RUNS_KEPT_MAX,),
        )
        ctx.run_recorded = True
    if ctx.state()["restore_floor"] > 0:
        return
    ctx.connection.execute(
        "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES"
        " ((SELECT site_id FROM _syncmesh_state), ?)"
        " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
        (hlc,),
    )


def merge(ctx: StoreContext, sender_vector: dict[str, int], *, own_claims: bool = True) -> None:
    """V = max(V, sender's V), capped below changes we hold only in quarantine or waiting.

    The sender's entry for our own site is a claim about our writes: it
    goes through the restore check (`_detect`) like a HELLO's, and is
    adopted only in restore mode begun before this batch, when our PULL
    asked for our own writes back.  Outside it, the sender may have left
    out own writes of ours because our vector said we hold them (issue 12,
    defect 2: a restored node adopted its lost writes' stamps this way).
    Nor from a batch the sender read before it knew we restore
    (`own_claims=False`: the session's PULL said we were not restoring, so
    the sender left every own write of ours out): a session begun before
    the restore was detected may deliver one right after the detection,
    and adopting its claim ended restore mode with the lost writes still
    missing (found by `syncmesh chaos --seed 700 --only 44 --topology star
    --faults ...,restore`: a restored hub).
    """
    caps: dict[str, int] = {}
    for (stamps_json,) in ctx.connection.execute("SELECT min_stamps FROM _syncmesh_quarantine"):
        for site, hlc in json.loads(stamps_json).items():
            caps[site] = min(caps.get(site, hlc - 1), hlc - 1)
    # Waiting cells (a column not here yet) are held but cannot be relayed.
    for site, cap in waitlist.caps(ctx).items():
        caps[site] = min(caps.get(site, cap), cap)
    own = ctx.site_id()
    bound = drift_bound(ctx)
    restoring_before = ctx.state()["restore_floor"] > 0
    # A claim far beyond the drift limit is no stamp of ours (the peer is
    # broken): it is neither checked nor adopted.  One less far is checked
    # (`_restore_evidence`: our clock went back) but not adopted.
    if own in sender_vector and _restore_evidence(ctx, sender_vector[own]):
        twin = _twin_claim(ctx, sender_vector[own])
        if twin is not None:
            raise SiteIdConflict(twin)  # the batch rolls back; the next HELLO moves past it
        if _detect(ctx, sender_vector[own]):
            _log_detected()
    for site, hlc in sender_vector.items():
        if site == own and not (
            own_claims and restoring_before and ctx.state()["restore_floor"] > 0
        ):
            continue
        # A claim beyond the drift limit is not adopted: writes stamped that
        # late were quarantined here, not applied.  It is not clamped either:
        # every entry stays a stamp its site issued (or one below a stamp we
        # quarantined), because peers check claims about their own writes
        # against the stretches in which they issued none (`_gap_floor`).
        if hlc > bound:
            continue
        if site != own:
            # Before the cap: what this site wrote, as far as anyone holds it.
            ctx.connection.execute(
                "INSERT INTO _syncmesh_seen (site_id, hlc) VALUES (?, ?)"
                " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
                (site, hlc),
            )
        capped = min(hlc, caps.get(site, hlc))
        ctx.connection.execute(
            "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES (?, ?)"
            " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
            (site, capped),
        )
    floor = ctx.state()["restore_floor"]
    if floor > 0 and ctx.vector().get(own, 0) >= floor:
        log.warning("own writes up to the restore floor are back; leaving restore mode")
        ctx.connection.execute("UPDATE _syncmesh_state SET restore_floor = 0")
        _close_gaps_below(ctx, floor)


def _close_gaps_below(ctx: StoreContext, floor: int) -> None:
    """Own writes up to `floor` are back: no gap may call a claim up to it lost again.

    A gap says "this file issued no own stamp here"; a claim inside it was
    a lost write.  Once restore mode ends, every own write up to the floor
    is held again, but the gap is still there: a peer's entry for us that
    stays at a recovered stamp (we wrote nothing since, so nothing moves it
    on) started restore mode again at every HELLO and batch, each time with
    a new incarnation, and the cluster never settled (found by the chaos
    `restore` fault under load, issue 12).  Gaps now begin at the floor.
    """
    ctx.connection.execute("DELETE FROM _syncmesh_runs WHERE run_start <= ? + 1", (floor,))
    ctx.connection.execute(
        "UPDATE _syncmesh_runs SET own_floor = ? WHERE own_floor < ?", (floor, floor)
    )
    ctx.own_floor = max(ctx.own_floor, min(floor, ctx.run_start))


def drift_bound(ctx: StoreContext) -> int:
    """The greatest stamp not refused as being from the future."""
    return pack(ctx.clock.physical_ms() + ctx.clock.drift_ms_max, COUNTER_MAX)


def _restore_evidence(ctx: StoreContext, claimed: int) -> bool:
    """Whether a claim about our own writes goes through the restore check.

    Within the drift limit, always.  Beyond it, up to
    `RESTORE_CLAIM_AHEAD_MS_MAX` more: every stamp this run issued is below
    our clock, which is below the claim, so the claimed write is one this
    file made and lost (a copy restored on a machine whose clock then went
    back, or a lost run that followed a peer's clock ahead), or a twin's.
    Refusing it as "from the future" until the clock caught up let this
    run's own writes pass the claim first, and nothing was detected
    (`syncmesh chaos --seed 600 --only 46 ... --faults ...,jump,restore`:
    lost writes; ADR 0006, residual risk 3).  The stamp itself is never
    adopted beyond the drift limit (`_detect`).
    """
    ahead_ms = wall_ms_of(claimed) - ctx.clock.physical_ms()
    return ahead_ms <= ctx.clock.drift_ms_max + RESTORE_CLAIM_AHEAD_MS_MAX


def settle_future_claim(ctx: StoreContext) -> None:
    """Once our clock may reach a claim `_detect` found beyond the drift limit, move
    the clock past it and have this run's own stamps below it renewed (in the caller's
    transaction; the caller runs `capture.restamp_below_lost_writes` next)."""
    claim = ctx.future_claim
    if not claim or claim > drift_bound(ctx):
        return
    ctx.future_claim = 0
    ctx.clock.restore(claim)
    ctx.connection.execute("UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (claim,))
    if claim >= ctx.run_start:
        low, high = ctx.run_start, claim
        if ctx.restamp_window is not None:
            high = max(high, ctx.restamp_window[1])
        ctx.restamp_window = (low, high)


def note_stamps_held(ctx: StoreContext, batch: ChangeBatch) -> None:
    """Raise `_syncmesh_seen` to the greatest stamp of each site in a batch whose vector
    we do not merge (cut short of the sender's head, or not adopted).

    Such a batch brings writes that no vector of ours claims: a batch cut
    short carries no vector, and the sender's next one may never come (the
    link drops mid-backlog).  If their site's file is then restored from a
    copy older than them, our HELLO's claim about its writes stayed below
    the copy, the restore check saw nothing, and, as our sessions leave a
    peer's own writes out unless it asks for them, the writes we held never
    went back to it (issue 12, found by `RestoreMachine` once its pulls
    filtered as a session does).  `held` now counts every stamp we hold.
    Stamps beyond the drift limit (quarantined, not applied) and our own
    are left out, as `merge` leaves them out.
    """
    if not batch.tables:
        return
    greatest = [0] * len(batch.sites)
    for table in batch.tables:
        first = table.key_count
        # Stamps are ints and sites indexes of `batch.sites` (the codec checks
        # both); typed Any here, as the loop runs per cell of every such batch.
        for row in cast(list[list[Any]], table.rows):
            # The row's causal-length stamp, then each cell's: hlc and site are
            # the 2nd and 3rd of its CELL_FIELDS (None both for an unstamped cell).
            hlc = row[first + 1]
            if hlc is not None and hlc > greatest[row[first + 2]]:
                greatest[row[first + 2]] = hlc
            for hlc, site in zip(
                row[first + 4 :: CELL_FIELDS], row[first + 5 :: CELL_FIELDS], strict=False
            ):
                if hlc is not None and hlc > greatest[site]:
                    greatest[site] = hlc
    own = ctx.site_id()
    bound = drift_bound(ctx)
    for site, hlc in zip(batch.sites, greatest, strict=True):
        if 0 < hlc <= bound and site != own:
            ctx.connection.execute(
                "INSERT INTO _syncmesh_seen (site_id, hlc) VALUES (?, ?)"
                " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
                (site, hlc),
            )


def held_claims(ctx: StoreContext) -> dict[str, int]:
    """Per site, the greatest of its writes this node knows to be held: HELLO's `held`.

    Our vector, raised by the entries reaching-head batches showed before
    the quarantine's cap (`_syncmesh_seen`).  The vector must stay below a
    row we hold only in quarantine, or a peer adopting it would never be
    sent that row; but for the restore check of the row's site, the writes
    of that site we do hold count (ADR 0006, residual risk 4: a UNIQUE
    collision at a peer hid a restore, and the writes after it stayed lost).
    """
    claims = ctx.vector()
    for site, hlc in ctx.connection.execute("SELECT site_id, hlc FROM _syncmesh_seen"):
        claims[site] = max(claims.get(site, 0), int(hlc))
    return claims


def note_peer(
    ctx: StoreContext, peer_vector: dict[str, int], peer_held: dict[str, int] | None = None
) -> bool:
    """Detect that this file was restored from an old copy; True if detected now.

    A peer holding own-site writes beyond what our vector claims means we
    lost writes that we made (the file is older than our history).  Then:
    our clock jumps past them (new writes must win over the lost ones),
    our vector stops claiming own writes until peers return them, and a
    new incarnation tells every peer to re-read our feed from the start.
    The claim is the peer's vector entry for us, or its `held` entry
    (`held_claims`) when greater.
    """
    own = ctx.site_id()
    claimed = max(peer_vector.get(own, 0), (peer_held or {}).get(own, 0))
    if not _restore_evidence(ctx, claimed):
        ctx.clock.check(claimed, own)  # far in the future: a broken or hostile peer
    twin = _twin_claim(ctx, claimed)
    if twin is not None:
        with ctx.transaction():
            # Past the copy's stamp: refused once, not for ever.  A copy that
            # goes on writing is refused again; one given its own identity
            # (`init --new-site-id`) leaves this stale claim behind.
            ctx.clock.restore(claimed)
            ctx.connection.execute(
                "UPDATE _syncmesh_state SET seq = max(seq, ?), hlc = max(hlc, ?)",
                (claimed, claimed),
            )
        raise SiteIdConflict(twin)
    with ctx.transaction():
        first = _detect(ctx, claimed)
    if first:
        _log_detected()
    return first


def _twin_claim(ctx: StoreContext, claimed: int) -> str | None:
    """Why `claimed` is an own stamp of this run that this file never issued, or None.

    Every own stamp of this run is at least `run_start`, and every own stamp
    is at most our head seq (a stamp doubles as the seq it is written
    under, and the head never goes back), so a peer holding one beyond
    both got it from another live file with our site id: a copy of this
    file that writes too, met directly or through third nodes (issue 12,
    defect 7).  A restore cannot explain it: the writes a restore lost
    were all made before this run began.  Taking the claim for a restore
    would adopt the copy's writes as our own; refusing keeps the two apart
    until the copy gets its own identity.  A claim ahead of our physical
    clock is left to the restore check: a file restored on a machine whose
    clock went back may have made its lost writes after this run's start
    (ADR 0006, residual risk 3).
    """
    state = ctx.state()
    if claimed < ctx.run_start or state["restore_floor"] > 0:
        return None
    if wall_ms_of(claimed) > ctx.clock.physical_ms():
        return None
    ours = max(state["seq"], ctx.vector().get(ctx.site_id(), 0))
    if claimed <= ours:
        return None
    return (
        f"a peer holds a write stamped with this file's site id at {claimed}, after this"
        f" process started ({ctx.run_start}) and beyond every write it made ({ours})"
    )


def _detect(ctx: StoreContext, claimed: int) -> bool:
    """The restore check of a claim about our own writes (in the caller's transaction).

    True on a first detection (restore mode was off).
    """
    own = ctx.site_id()
    ours = ctx.vector().get(own, 0)
    gap_floor = _gap_floor(ctx, claimed)
    if claimed <= ours and gap_floor is None:
        return False
    if gap_floor is not None:
        # Claim none of the own writes from the gap's start on: peers send them back.
        ctx.connection.execute(
            "UPDATE _syncmesh_vector SET hlc = min(hlc, ?) WHERE site_id = ?", (gap_floor, own)
        )
    future = claimed > drift_bound(ctx)
    if future:
        # Beyond the drift limit (`_restore_evidence`): restore mode starts now,
        # so that our vector stops claiming own writes and peers send the lost
        # ones back, but the clock is not moved that far ahead (a stamp beyond
        # the limit is never adopted): `settle_future_claim` does it, and
        # renews this run's stamps below the claim, once the clock is near.
        ctx.future_claim = max(ctx.future_claim, claimed)
    elif claimed >= ctx.run_start:
        ctx.clock.restore(claimed)
        # The lost writes were stamped ahead of this run's start (the wall
        # clock is behind them: the run that lost them followed a peer's
        # clock ahead of ours).  This run's own writes stamped up to the
        # claim are covered by every peer's vector entry for us, which
        # includes the lost ones: peers would take them for writes they
        # hold.  They are stamped anew, past the claim, right after the
        # check (capture.restamp_below_lost_writes, called by peers.py;
        # ADR 0006, residual risk 3; issue 12).
        low, high = ctx.run_start, claimed
        if ctx.restamp_window is not None:
            high = max(high, ctx.restamp_window[1])
        ctx.restamp_window = (low, high)
    else:
        ctx.clock.restore(claimed)
    state = ctx.state()
    first = state["restore_floor"] == 0
    ctx.connection.execute(
        "UPDATE _syncmesh_state SET restore_floor = max(restore_floor, ?), hlc = max(hlc, ?)",
        (claimed, ctx.clock.last if future else claimed),
    )
    if first:
        renewed = uuid.uuid4().hex
        ctx.connection.execute("UPDATE _syncmesh_state SET incarnation = ?", (renewed,))
        ctx.note_incarnation(renewed)
        # Claim no more own writes than the file held when this run began:
        # a capture since then may have moved V[self] past the lost ones.
        ctx.connection.execute(
            "UPDATE _syncmesh_vector SET hlc = min(hlc, ?) WHERE site_id = ?",
            (ctx.own_floor, own),
        )
        _reread_feeds(ctx)
    return first


def _reread_feeds(ctx: StoreContext) -> None:
    """Read every peer's feed again from the start: it may hold lost own writes behind our cursor.

    A sender leaves our own writes out unless our PULL says we restore, so
    every cursor that moved since the file was restored, in this run or an
    earlier one that noticed nothing, may have passed a lost write relayed
    by that peer: the restarted session would PULL from beyond it, the
    peer would never send it, and its claim would end restore mode without
    it (ADR 0006, "Claims from a session begun before").  Which cursors
    moved since the restore is not known (an earlier run may have moved
    them), and a peer's seqs are its own clock's, so no stamp of ours
    bounds where a lost write sits in its feed: every cursor goes back to
    0.  That costs a read of each feed, not a resend: the PULL's vector
    leaves out everything we hold.  A batch of a session begun before,
    still on its way, no longer continues its cursor and is refused.
    Chain positions on a stream (keys with a '/', node/fleet.py) stay:
    a fleet message carries only its own site's writes, never ours.
    """
    ctx.connection.execute("UPDATE _syncmesh_peers SET cursor = 0 WHERE instr(site_id, '/') = 0")


def _gap_floor(ctx: StoreContext, claimed: int) -> int | None:
    """The start of a gap (this run's, or a recorded one) holding `claimed`; None if none does.

    A gap is a stretch of stamps in which this file issued no own write: a
    claim of one there is a write the file made and lost.
    """
    floors = [ctx.own_floor] if ctx.own_floor < claimed < ctx.run_start else []
    (recorded,) = ctx.connection.execute(
        "SELECT min(own_floor) FROM _syncmesh_runs WHERE own_floor < ? AND run_start > ?",
        (claimed, claimed),
    ).fetchone()
    if recorded is not None:
        floors.append(int(recorded))
    return min(floors) if floors else None


def _log_detected() -> None:
    log.warning(
        "this file is older than its peers' view of it (restored from a"
        " backup?): new incarnation, re-syncing own writes from peers"
    )


# -- restore detection over a fleet stream (ADR 0014, "A site restored from a backup") --


def stream_scan_floor(ctx: StoreContext) -> int:
    """Own writes stamped up to this are held by this file (none lost behind it).

    Our own entry at the start of this run, or lower while a restore is
    being recovered (`_detect` lowered it to the start of the gap).  A fleet
    message of our own subject whose chain end lies past it may carry own
    stamps this file lost; one that ends at or below it cannot (an own stamp
    is at most the seq it was captured at, and a message covers seqs up to
    its end).  In a file that was never restored, the own stamps of such a
    message are all at most `own_floor` (captured before this run) or this
    run's own: none lies in a gap, so the check below finds nothing.
    """
    return min(ctx.own_floor, ctx.vector().get(ctx.site_id(), 0))


def own_stamp_max(ctx: StoreContext) -> int:
    """The greatest own stamp this file holds (a causal length's or a cell's); 0 if none.

    A scan of every shadow table, made only when a restore is recovered
    from a stream: our own entry then moves up to it, so that a restart
    does not take the own writes made meanwhile (held, but above the entry
    while restore mode kept it still) for lost ones (a false restore).
    """
    greatest = 0
    for table in ctx.tables.values():
        parts = ["max(CASE WHEN cl_site = 0 THEN cl_hlc END)"]
        parts += [f"max(CASE WHEN s{slot} = 0 THEN h{slot} END)" for slot in table.slots]
        row = ctx.connection.execute(f"SELECT {', '.join(parts)} FROM {table.shadow}").fetchone()
        greatest = max([greatest, *(int(value) for value in row if value is not None)])
    return greatest


def renew_incarnation_if(ctx: StoreContext, chain_incarnation: str) -> bool:
    """A new incarnation if ours is `chain_incarnation` while restoring; True if renewed.

    A stream chain of our incarnation that ends past our head was
    published by the copy's lost run; continuing it would give new
    messages ids and slices that receivers already hold (dropped as
    repeats).  The first detection renews the incarnation anyway; this
    covers a copy that was already restoring when it was made.
    """
    (incarnation,) = ctx.connection.execute("SELECT incarnation FROM _syncmesh_state").fetchone()
    if ctx.state()["restore_floor"] == 0 or incarnation != chain_incarnation:
        return False
    renewed = uuid.uuid4().hex
    ctx.connection.execute("UPDATE _syncmesh_state SET incarnation = ?", (renewed,))
    ctx.note_incarnation(renewed)
    return True


def own_writes_back(ctx: StoreContext, upto: int) -> bool:
    """Every own write up to `upto` is held again (merged back from a stream): leave restore mode.

    In the caller's transaction; False (nothing changes) if not restoring
    or if the restore floor lies past `upto` (a claim the stream cannot
    answer, a WebSocket peer's: that path ends it, `merge`).  Our own
    entry moves up to `upto` and to the greatest own stamp the file holds
    (`own_stamp_max`, see there), and the gaps are closed up to `upto`
    (`_close_gaps_below`: a later claim there is no lost write).
    """
    floor = ctx.state()["restore_floor"]
    if floor == 0 or upto < floor:
        return False
    held = max(upto, own_stamp_max(ctx))
    ctx.connection.execute(
        "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES"
        " ((SELECT site_id FROM _syncmesh_state), ?)"
        " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
        (held,),
    )
    log.warning(
        "own writes up to the restore floor are back (from the fleet stream); leaving restore mode"
    )
    ctx.connection.execute("UPDATE _syncmesh_state SET restore_floor = 0")
    _close_gaps_below(ctx, upto)
    return True
