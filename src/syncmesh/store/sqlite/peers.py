"""Peers' cursors, and applying a peer's batch where its cursor says it continues.

`apply_batch` is the transaction that makes sync exactly-once: the
capture of pending local writes, the merge of the batch's rows, the
resolution of the foreign-key orphans they left (orphans.py), the peer's
new cursor, the version vector and the clock floor commit together or not
at all.
"""

from __future__ import annotations

from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch
from syncmesh.store.records import ApplyResult, PeerCursor
from syncmesh.store.sqlite import apply, capture, orphans, vector
from syncmesh.store.sqlite.context import StoreContext

PEER_COLUMNS = "site_id, incarnation, cursor, head_seq, address, applied_rows, last_applied_ms"


def peer_cursor(ctx: StoreContext, site_id: str) -> PeerCursor | None:
    row = ctx.connection.execute(
        f"SELECT {PEER_COLUMNS} FROM _syncmesh_peers WHERE site_id = ?", (site_id,)
    ).fetchone()
    return None if row is None else PeerCursor(*row)


def peer_cursors(ctx: StoreContext) -> list[PeerCursor]:
    return [
        PeerCursor(*row)
        for row in ctx.connection.execute(
            f"SELECT {PEER_COLUMNS} FROM _syncmesh_peers ORDER BY site_id"
        )
    ]


def reset_peer_cursor(
    ctx: StoreContext, site_id: str, incarnation: str, head_seq: int, address: str
) -> None:
    """Start reading the peer's feed from 0 (a new peer, or it was restored)."""
    with ctx.transaction():
        ctx.connection.execute(
            "INSERT INTO _syncmesh_peers (site_id, incarnation, cursor, head_seq, address)"
            " VALUES (?, ?, 0, ?, ?) ON CONFLICT (site_id) DO UPDATE SET"
            " incarnation = excluded.incarnation, cursor = 0,"
            " head_seq = excluded.head_seq, address = excluded.address",
            (site_id, incarnation, head_seq, address),
        )


def apply_batch(
    ctx: StoreContext,
    peer_site_id: str,
    batch: ChangeBatch,
    *,
    adopt_vector: bool = True,
    own_claims: bool = True,
) -> ApplyResult:
    """Merge a peer's batch and advance its cursor and our vector, atomically.

    With `adopt_vector=False` the rows apply and the cursor moves, but the
    batch's vector claims are not merged: the peer lacks a table or column
    we track, so it cannot have relayed all of what it claims (ADR 0013).
    With `own_claims=False` the sender read the batch while our PULL told
    it we were not restoring, so it left our own writes out: its claim
    about them is not adopted (`vector.merge`).
    Raises StoreError if the batch does not continue the stored cursor
    (a gap or a replay of an old slice); nothing is applied then.
    """
    sites = ctx.require_init()
    with ctx.transaction():
        peer = peer_cursor(ctx, peer_site_id)
        if peer is None or peer.incarnation != batch.incarnation or peer.cursor != batch.from_seq:
            raise StoreError(
                f"batch ({batch.from_seq}, {batch.to_seq}] from {peer_site_id} does not"
                f" continue our cursor {None if peer is None else peer.cursor}"
            )
        local = orphans.keys_out(ctx)
        capture.capture_pending(ctx, keys_out=local)
        result = apply.merge_rows(ctx, peer_site_id, batch, sites)
        # Foreign-key orphans the merge (or the local writes) left: resolved
        # by policy as local writes, in this transaction (orphans.py).
        orphans.resolve(
            ctx, *orphans.merged(orphans.captured_keys(local), orphans.batch_keys(ctx, batch))
        )
        ctx.connection.execute(
            "UPDATE _syncmesh_peers SET cursor = ?, head_seq = ?,"
            " applied_rows = applied_rows + ?, last_applied_ms = ? WHERE site_id = ?",
            (
                batch.to_seq,
                batch.head_seq,
                result.applied_rows,
                ctx.clock.physical_ms(),
                peer_site_id,
            ),
        )
        if batch.vector is not None and adopt_vector:
            vector.merge(ctx, batch.vector, own_claims=own_claims)
        else:
            # No vector claims these writes: HELLO's `held` must (restore detection).
            vector.note_stamps_held(ctx, batch)
        # If the merge's restore check asked, or a claim from beyond the drift
        # limit has come within it: this run's stamps below lost writes renewed.
        vector.settle_future_claim(ctx)
        capture.restamp_below_lost_writes(ctx)
        ctx.connection.execute("UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (ctx.clock.last,))
    return result


def note_peer_vector(
    ctx: StoreContext, peer_vector: dict[str, int], peer_held: dict[str, int] | None = None
) -> bool:
    """The restore check of a peer's HELLO (`vector.note_peer`); True if detected now.

    Then own writes of this run that the lost ones hide from peers are
    stamped anew (`capture.restamp_below_lost_writes`), before any of our
    feed is read for the peer.
    """
    first = vector.note_peer(ctx, peer_vector, peer_held)
    renew_hidden_stamps(ctx)
    return first


def renew_hidden_stamps(ctx: StoreContext) -> None:
    """Stamp anew this run's own writes that lost ones hide, if a restore check asked,
    or once the clock may pass a claim found beyond the drift limit (`vector`)."""
    if ctx.restamp_window is None and not ctx.future_claim:
        return
    with ctx.transaction():
        vector.settle_future_claim(ctx)
        capture.restamp_below_lost_writes(ctx)


def note_stream_claims(
    ctx: StoreContext, claims: list[int], chain_incarnation: str, chain_end: int
) -> bool:
    """The restore check of the own stamps found on our own fleet subject; True if detected now.

    Each claim (the greatest own stamp of one of our messages that ends
    past `vector.stream_scan_floor`) goes through the check of a HELLO's
    claim (`vector.note_peer`: drift, a copy writing elsewhere, `_detect`),
    the greatest first, so that a lower claim inside a gap lowers our entry
    after a greater one of this run's own writes was judged.  While
    restoring, a chain of our incarnation that ends past our head cannot
    be continued: the incarnation is renewed (`vector.renew_incarnation_if`)
    and the clock moves past the chain's end, so new seqs follow it.
    Then own writes of this run below the lost ones are stamped anew, as
    after a HELLO (`capture.restamp_below_lost_writes`).
    """
    own = ctx.site_id()
    first = False
    for claimed in sorted(set(claims), reverse=True):
        first = vector.note_peer(ctx, {own: claimed}) or first
    if ctx.state()["restore_floor"] > 0 and chain_end > ctx.state()["seq"]:
        ctx.clock.check(chain_end, own)
        with ctx.transaction():
            if vector.renew_incarnation_if(ctx, chain_incarnation):
                ctx.clock.restore(chain_end)
                ctx.connection.execute(
                    "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (ctx.clock.last,)
                )
    renew_hidden_stamps(ctx)
    return first


def own_writes_back(ctx: StoreContext, upto: int) -> bool:
    """Leave restore mode: own writes up to `upto` are merged back (`vector.own_writes_back`)."""
    ctx.require_init()
    with ctx.transaction():
        return vector.own_writes_back(ctx, upto)
