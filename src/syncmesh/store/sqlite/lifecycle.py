"""Membership, causal stability and tombstone collection (docs/adr/0015).

Owns `_syncmesh_members` (every site known here, with its vector as last
heard), `_syncmesh_horizon` (per table and origin, the stamp below which
tombstones were collected) and `_syncmesh_lifecycle` (the cl floor and the
counters).  The stability frontier of an origin is the least that any
member is known to hold of its writes; a tombstone whose causal-length
stamp is at or below it is held, or beaten, everywhere, and goes.

Collection runs in steps (`collect_step`), each one short transaction over
at most `rows_max` shadow rows of one table, so that the node's store
worker interleaves them with the sessions' batches: sync never waits for
more than one step.
"""

from __future__ import annotations

import json
import logging

from syncmesh.clock import wall_ms_of
from syncmesh.errors import StoreError
from syncmesh.model import Membership, SqlValue
from syncmesh.store.records import CollectPass, CollectStep, LifecycleStatus
from syncmesh.store.sqlite import capture
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import DEFAULT_CELL_SITE
from syncmesh.store.sqlite.execute import execute_one
from syncmesh.store.sqlite.table import TableSql
from syncmesh.store.sqlite.vector import merge as merge_vector
from syncmesh.store.summary import LEAF_MASK

log = logging.getLogger(__name__)

Key = tuple[SqlValue, ...]
Vector = dict[str, int]


def _max_merge(into: Vector, vector: Vector) -> bool:
    """`into` = max(into, vector); True if it grew."""
    grew = False
    for site, hlc in vector.items():
        if hlc > into.get(site, 0):
            into[site] = hlc
            grew = True
    return grew


def _members(ctx: StoreContext) -> dict[str, tuple[Vector, int, int]]:
    """site -> (seen, forgotten_ms, heard_ms)."""
    return {
        site: (json.loads(seen), forgotten, heard)
        for site, seen, forgotten, heard in ctx.connection.execute(
            "SELECT site_id, seen, forgotten_ms, heard_ms FROM _syncmesh_members"
        )
    }


def _write_seen(ctx: StoreContext, site: str, seen: Vector, now_ms: int) -> None:
    ctx.connection.execute(
        "INSERT INTO _syncmesh_members (site_id, seen, heard_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (site_id) DO UPDATE SET seen = excluded.seen, heard_ms = excluded.heard_ms",
        (site, json.dumps(seen, sort_keys=True, separators=(",", ":")), now_ms),
    )


def _add_site(ctx: StoreContext, site: str) -> None:
    """Make `site` a member (known, vector unknown) unless it is one or was forgotten."""
    if site and site != DEFAULT_CELL_SITE:
        ctx.connection.execute(
            "INSERT OR IGNORE INTO _syncmesh_members (site_id) VALUES (?)", (site,)
        )


def refresh(ctx: StoreContext) -> None:
    """Our own row follows our vector (its high-water mark); every site seen is a member.

    Inside the caller's transaction.  A site is seen when its stamps are in
    our shadow rows (the site map) or our vector names it.
    """
    own = ctx.site_id()
    vector = ctx.vector()
    for (site,) in ctx.connection.execute("SELECT site_id FROM _syncmesh_sites").fetchall():
        _add_site(ctx, site)
    for site in vector:
        _add_site(ctx, site)
    members = _members(ctx)
    seen = members.get(own, ({}, 0, 0))[0]
    if _max_merge(seen, vector) or own not in members:
        _write_seen(ctx, own, seen, ctx.clock.physical_ms())


def membership(ctx: StoreContext) -> Membership:
    """What we know of the cluster's sites, to gossip (HELLO, MEMBERS)."""
    with ctx.transaction():
        refresh(ctx)
        members = _members(ctx)
        (floor,) = ctx.connection.execute("SELECT cl_floor FROM _syncmesh_lifecycle").fetchone()
    return Membership(
        {site: seen for site, (seen, forgotten, _) in members.items() if not forgotten},
        tuple(sorted(site for site, (_, forgotten, _) in members.items() if forgotten)),
        int(floor),
        _horizon(ctx),
    )


def _horizon(ctx: StoreContext) -> Vector:
    """Per origin, the greatest stamp of a tombstone this node collected: what a peer
    must hold of that origin's writes to sync with us (rule 3, `refusal`), and what
    our gossip says we collected.

    Not the pass's frontier (`hlc`, which rule 1 drops late arrivals by): on a
    fleet the frontier is a site's claimed mark (ADR 0017), a stamp past its
    last write, which no peer's vector can reach: a WebSocket replica that
    held every delete collected here was refused as one that slept past the
    horizon.  A peer holding every collected delete holds no life they ended.
    Collections made before the greatest stamp was kept (`deleted` NULL)
    count with their frontier, as before.
    """
    return {
        site: int(hlc)
        for site, hlc in ctx.connection.execute(
            "SELECT site_id, max(coalesce(deleted, hlc)) FROM _syncmesh_horizon"
            " WHERE coalesce(deleted, hlc) > 0 GROUP BY site_id"
        )
    }


def learn_vectors(ctx: StoreContext, vectors: dict[str, Vector]) -> None:
    """Fold in the vectors peers sent us (PULL, ACK, HAVE, a batch's): what each holds."""
    if not vectors:
        return
    with ctx.transaction():
        members = _members(ctx)
        now_ms = ctx.clock.physical_ms()
        for site, vector in vectors.items():
            seen, forgotten, _ = members.get(site, ({}, 0, 0))
            if forgotten:
                continue
            if _max_merge(seen, vector) or site not in members:
                _write_seen(ctx, site, seen, now_ms)


def refusal(
    ctx: StoreContext, peer: str, vector: Vector, head_seq: int, gossip: Membership | None
) -> str | None:
    """Why a peer whose HELLO says this must not sync with us; None if it may.

    Read-only.  A forgotten site, or one that holds less of some origin's
    writes than we collected tombstones of (it slept past the horizon, or
    its file was restored from an old copy), could bring deleted rows back:
    its live rows of keys we collected would never meet their tombstone.
    A newcomer (its vector names no site but itself) never received a row.
    """
    row = ctx.connection.execute(
        "SELECT forgotten_ms FROM _syncmesh_members WHERE site_id = ?", (peer,)
    ).fetchone()
    if row is not None and row[0] > 0:
        return (
            f"site {peer} was forgotten (`syncmesh forget`): it was decommissioned, and its"
            " rows could bring back rows deleted since; to return, re-join it from a peer's"
            " snapshot (`syncmesh join DATABASE --from URL`: the old file is moved aside), or"
            " give it a new identity on an empty database file"
        )
    if set(vector) <= {peer}:
        # A newcomer: it never received a write, so it holds no row that a
        # collected delete beat (its own first writes excepted, ADR 0015).
        return None
    held = dict(vector)
    if gossip is not None:
        _max_merge(held, gossip.seen.get(peer, {}))
    for origin, collected in sorted(_horizon(ctx).items()):
        if held.get(origin, 0) < collected:
            return (
                f"site {peer} holds the writes of site {origin} only up to stamp"
                f" {held.get(origin, 0)}, but deleted rows up to stamp {collected} were collected"
                " here: it slept past the GC horizon (or its file was restored from an old"
                " copy), and its rows could bring deleted rows back; re-join it from a peer's"
                " snapshot (`syncmesh join DATABASE --from URL`: the old file is moved aside),"
                " or with a new identity on an empty database file, or forget it"
            )
    return None


def note_hello(
    ctx: StoreContext, peer: str, vector: Vector, head_seq: int, gossip: Membership | None
) -> str | None:
    """Admit a peer's HELLO (refusal text, or None) and learn what it tells of the cluster."""
    with ctx.transaction():
        refused = refusal(ctx, peer, vector, head_seq, gossip)
        if refused is None and gossip is not None:
            refused = _refused_by(ctx, peer, gossip)
        if refused is not None:
            return refused
        _add_site(ctx, peer)
        heard = {peer: dict(vector)}
        if gossip is not None:
            _learn_gossip(ctx, gossip, heard)
        members = _members(ctx)
        now_ms = ctx.clock.physical_ms()
        own = ctx.site_id()
        for site, vector_heard in heard.items():
            if site == own:
                continue  # our own row is our own vector: nobody knows it better
            seen, forgotten, _ = members.get(site, ({}, 0, 0))
            if not forgotten and (_max_merge(seen, vector_heard) or site not in members):
                _write_seen(ctx, site, seen, now_ms)
    return None


def _refused_by(ctx: StoreContext, peer: str, gossip: Membership) -> str | None:
    """Why the peer will refuse *us* (its HELLO tells): so that our side says it too.

    The peer refuses in its own handshake and hangs up; we may never read
    its REFUSE, as we send our PULL at the same moment.
    """
    own = ctx.site_id()
    if own in gossip.forgotten:
        return (
            f"this site ({own}) was forgotten in the cluster (`syncmesh forget`; peer {peer}"
            " says so): it was decommissioned, and its rows could bring back rows deleted"
            " since; to return, re-join from a peer's snapshot (`syncmesh join DATABASE --from"
            " URL`: the old file is moved aside), or give it a new identity on an empty"
            " database file"
        )
    vector = ctx.vector()
    if set(vector) <= {own}:
        return None  # a newcomer: the peer admits it
    held = _members(ctx).get(own, ({}, 0, 0))[0]
    _max_merge(held, vector)
    for origin, collected in sorted(gossip.horizon.items()):
        if held.get(origin, 0) < collected:
            return (
                f"this site holds the writes of site {origin} only up to stamp"
                f" {held.get(origin, 0)}, but peer {peer} collected deleted rows up to stamp"
                f" {collected}: this node slept past the GC horizon (or its file was restored"
                " from an old copy), and its rows could bring deleted rows back; re-join from"
                " a peer's snapshot (`syncmesh join DATABASE --from URL`: the old file is"
                " moved aside), or with a new identity on an empty database file"
            )
    return None


def _learn_gossip(ctx: StoreContext, gossip: Membership, heard: dict[str, Vector]) -> None:
    """Forgotten sites (union), members' vectors (max) and the cl floor (max) from a peer."""
    own = ctx.site_id()
    now_ms = ctx.clock.physical_ms()
    for site in gossip.forgotten:
        if site == own:
            log.error(
                "a peer says this site (%s) was forgotten (`syncmesh forget`): other nodes"
                " will refuse it; give it a new identity on an empty database file",
                own,
            )
            continue
        ctx.connection.execute(
            "INSERT INTO _syncmesh_members (site_id, forgotten_ms) VALUES (?, ?)"
            " ON CONFLICT (site_id) DO UPDATE SET forgotten_ms = excluded.forgotten_ms"
            " WHERE forgotten_ms = 0",
            (site, now_ms),
        )
    for site, seen in gossip.seen.items():
        _add_site(ctx, site)
        _max_merge(heard.setdefault(site, {}), seen)
    ctx.connection.execute(
        "UPDATE _syncmesh_lifecycle SET cl_floor = max(cl_floor, ?)",
        (gossip.cl_floor - gossip.cl_floor % 2,),
    )


def note_gossip(ctx: StoreContext, peer: str, gossip: Membership) -> None:
    """A MEMBERS message from a peer in session with us."""
    with ctx.transaction():
        heard: dict[str, Vector] = {}
        _learn_gossip(ctx, gossip, heard)
        members = _members(ctx)
        now_ms = ctx.clock.physical_ms()
        own = ctx.site_id()
        for site, vector_heard in heard.items():
            seen, forgotten, _ = members.get(site, ({}, 0, 0))
            if site != own and not forgotten and _max_merge(seen, vector_heard):
                _write_seen(ctx, site, seen, now_ms)
    del peer  # the message speaks for the cluster, not only for its sender


def register_joiner(ctx: StoreContext, site: str) -> None:
    """A node about to join from our snapshot, as `site`: a member holding our vector.

    Called before the snapshot is taken, so the snapshot holds at least
    this vector and the claim is true of it.  From now on our frontier waits
    for the joiner: a delete made after the snapshot is not collected before
    the joiner holds it, or the joiner's copy of the row would live on.  A
    joiner that never comes holds collection back until it is forgotten.
    """
    if site == ctx.site_id():
        raise StoreError(f"a joiner cannot take this node's own site id {site}")
    with ctx.transaction():
        refresh(ctx)
        members = _members(ctx)
        seen, forgotten, _ = members.get(site, ({}, 0, 0))
        if forgotten:
            raise StoreError(f"site {site} was forgotten here: a joiner needs a new site id")
        _max_merge(seen, ctx.vector())
        _write_seen(ctx, site, seen, ctx.clock.physical_ms())


def forget(ctx: StoreContext, site: str) -> bool:
    """Take `site` out of the membership for good; False if it was forgotten already.

    Its own writes held here stay, and still sync; what goes is the wait
    for what it holds.
    """
    if site == ctx.site_id():
        raise StoreError(
            f"{site} is this file's own site id: forget it on the other nodes, or give this"
            " file a new identity (`syncmesh init --new-site-id`)"
        )
    with ctx.transaction():
        refresh(ctx)
        members = _members(ctx)
        if site not in members:
            known = ", ".join(sorted(members)) or "none"
            raise StoreError(f"site {site} is not a member here (members: {known})")
        if members[site][1] > 0:
            return False
        ctx.connection.execute(
            "INSERT INTO _syncmesh_members (site_id, forgotten_ms) VALUES (?, ?)"
            " ON CONFLICT (site_id) DO UPDATE SET forgotten_ms = excluded.forgotten_ms",
            (site, max(1, ctx.clock.physical_ms())),
        )
    log.warning("site %s forgotten: it no longer holds tombstone collection back", site)
    return True


def frontier(
    ctx: StoreContext, direct: dict[str, Vector] | None = None, own_held: Vector | None = None
) -> tuple[Vector, dict[str, Vector]]:
    """Per origin, the least any member holds of its writes; and the members' vectors.

    For ourselves, our current vector (not its high-water mark): a table
    tracked since is being synced afresh, and the horizon we record must
    stay below what we hold (rule 1 relies on it).  For a peer in session
    with us (`direct`), the vector it sent us in that session, not what
    gossip says of it: a batch it read before it held a delete may still be
    on its way to us, ahead of the message that says it holds it, while
    gossip from a third node can overtake it.

    `own_held` (a node on a fleet stream, docs/adr/0017): what we hold of
    the fleet sites' writes, which our vector does not say (the stream's
    batches carry none); our own entry is then only our writes already on
    the stream, not every write we made: a delete not published yet is
    held by nobody else, whatever the others' claims say.
    """
    own = ctx.site_id()
    vectors = {
        site: seen
        for site, (seen, forgotten, _) in _members(ctx).items()
        if not forgotten and site != own
    }
    for site, vector in (direct or {}).items():
        if site in vectors:
            vectors[site] = vector
    vectors[own] = ctx.vector()
    if own_held is not None:
        mine = {origin: hlc for origin, hlc in vectors[own].items() if origin != own}
        _max_merge(mine, {origin: hlc for origin, hlc in own_held.items() if origin != own})
        mine[own] = own_held.get(own, 0)
        vectors[own] = mine
    origins = {origin for vector in vectors.values() for origin in vector}
    return {
        origin: min(vector.get(origin, 0) for vector in vectors.values()) for origin in origins
    }, vectors


def begin_pass(
    ctx: StoreContext, direct: dict[str, Vector], own_held: Vector | None = None
) -> CollectPass:
    """Refresh the membership and fix the frontier for one pass over the tables.

    `direct`: the vectors of the peers in session with us, as they sent them.
    `own_held` (a fleet node): what we hold of the fleet sites' writes; the
    pass then also has a *ceiling*, the least frontier entry over the
    origins that are not forgotten (docs/adr/0017).  A tombstone stamped
    at or below it was deleted after every life it ended began, and each
    such life was stamped at or below the horizon this pass records for
    its stamping site, so rule 1 drops it when it arrives late, whatever
    path it takes: an old batch read again, a copy from the compacted
    state stream.  That holds for lives the deleting node had seen; for
    the others (concurrent first inserts) a fleet pass also collects only
    below an earlier pass that has settled (`_settled`).

    A WebSocket pass collects only below a pass that has settled too, this
    one included (docs/adr/0015, "A session's vector can overtake its
    batch"): a peer's ACK or HAVE may reach us before a batch it read
    before it held the delete, so its word does not bound what is still
    on its way to us; the settled pass bounds every life the delete ended.
    """
    with ctx.transaction():
        refresh(ctx)
        stable, vectors = frontier(ctx, direct, own_held)
        if own_held is None:
            settled, waiting_for = _settled(ctx, stable, vectors, fleet=False)
            return CollectPass(
                stable, sorted(ctx.tables), held_back_by=waiting_for, settled=settled
            )
        # Over the origins of writes (a site that never wrote started no
        # life), but not a forgotten site's: it writes no more, and its
        # last writes would hold the ceiling back for good.
        gone = {site for site, (_, forgotten, _) in _members(ctx).items() if forgotten}
        origins = {origin: hlc for origin, hlc in stable.items() if origin not in gone}
        origin = min(origins, key=lambda name: (origins[name], name))
        holder = min(vectors, key=lambda site: (vectors[site].get(origin, 0), site))
        settled, waiting_for = _settled(ctx, stable, vectors, fleet=True)
    return CollectPass(
        stable,
        sorted(ctx.tables),
        origins[origin],
        held_back_by=(holder, origin) if settled else waiting_for,
        settled=settled,
    )


PASSES_KEPT = 64  # earlier passes a node remembers (the oldest go first)


def _settled(
    ctx: StoreContext, stable: Vector, vectors: dict[str, Vector], *, fleet: bool
) -> tuple[Vector, tuple[str, str]]:
    """Per origin, the frontier of the latest earlier pass that has settled for it.

    Why (docs/adr/0017, "Concurrent first inserts"): a delete ends every
    life of its row with a lower causal length, also lives it never saw,
    stamped later than the delete (another site's first insert of the same
    key, concurrent with the deleted life).  Rule 1 drops a late copy of
    such a life only if its stamp is at or below our horizon for the site
    that stamped it, and neither the delete's stamp nor the ceiling bounds
    that stamp.  What does: each site stamped its lives that the delete
    ended before it applied the delete, so below its own entry in any
    vector (a claim's mark, a peer's vector) that shows it holding the
    delete; the deleting site's own lives are below the delete's stamp.
    So an earlier pass has *settled* for origin O once the frontier now
    covers the own entry that pass had for every member but O: a tombstone
    of O at or below that pass's frontier then goes, and the horizon we
    record for each site is above every life the delete ended, whichever
    path a copy of it takes.  A member that was none then (its own entry
    unknown) waits for a later pass.  The cost: a delete goes about two
    claim rounds later.

    A WebSocket pass (`fleet` False, docs/adr/0015) is one of the passes
    it looks at: the argument needs the delete held everywhere at the pass
    and that pass's own entries held everywhere now, not that the two be
    apart, so a quiet cluster collects at once.  Its own entry for us is
    our vector's (it follows our captures, and every life of ours was
    captured before we applied a delete that ended it), not the clock's
    last stamp: the clock also moves past stamps we observe, which no peer
    would ever hold of us, and no pass would settle.  In restore mode our
    vector's entry stands still while we stamp: there the clock's stamp.
    A fleet node's own entry in `vectors` is its mark, which may predate
    its last writes: there too the clock's.

    Returns the settled frontier (an origin left out: none yet) and, if it
    is empty (a WebSocket pass: if it leaves an origin out), (a member, an
    origin) that keeps the oldest pass remembered from settling, for status
    (("", ""): nothing to tell yet).
    """
    own = ctx.site_id()
    marks = {site: vector.get(site, 0) for site, vector in vectors.items()}
    # Our lives are our captured writes: what bounds them (see above).
    marks[own] = max(marks.get(own, 0), ctx.vector().get(own, 0))
    if fleet or ctx.state()["restore_floor"] > 0:
        marks[own] = max(marks[own], ctx.clock.last)
    passes = ctx.passes
    if not fleet:
        passes.append((dict(stable), marks))
    # Passes that knew every member now, newest first, with the members (still
    # members: a site forgotten since no longer counts) whose own entry of then
    # the frontier does not cover yet.
    candidates = [
        (
            index,
            passes[index][0],
            {
                site
                for site, mark in passes[index][1].items()
                if site in vectors and stable.get(site, 0) < mark
            },
        )
        for index in range(len(passes) - 1, -1, -1)
        if set(vectors) <= set(passes[index][1])
    ]
    settled: Vector = {}
    oldest_needed = len(passes)
    for origin, hlc in stable.items():
        for index, earlier, behind in candidates:
            if behind <= {origin}:
                settled[origin] = min(hlc, earlier.get(origin, 0))
                oldest_needed = min(oldest_needed, index)
                break
    if len(settled) == len(stable):
        del passes[:oldest_needed]  # older passes settle less: never needed again
    waiting_for = ("", "")
    # A fleet pass tells only when nothing settled (else its ceiling tells);
    # a WebSocket pass whenever an origin did not.
    if (not settled if fleet else len(settled) < len(stable)) and candidates:
        lagging = sorted(candidates[-1][2])
        if lagging:
            origin = lagging[0]
            holder = min(vectors, key=lambda site: (vectors[site].get(origin, 0), site))
            waiting_for = (holder, origin)
    if fleet:
        passes.append((dict(stable), marks))
    del passes[:-PASSES_KEPT]
    return settled, waiting_for


def collect_step(ctx: StoreContext, state: CollectPass, rows_max: int) -> CollectStep:
    """Look at the next `rows_max` shadow rows of the pass; collect the stable tombstones."""
    assert rows_max > 0
    while state.table_index < len(state.tables):
        table = ctx.tables.get(state.tables[state.table_index])
        if table is None or _blocked(ctx, table.spec.name):
            state.table_index, state.after = state.table_index + 1, None
            continue
        collected, last = _collect_some(ctx, table, state, rows_max)
        if last is None:
            state.table_index, state.after = state.table_index + 1, None
        else:
            state.after = last
        return CollectStep(collected, state.table_index >= len(state.tables))
    return CollectStep(0, True)


def _blocked(ctx: StoreContext, table: str) -> bool:
    """Rows of `table` in quarantine, or cells waiting or parked: its tombstones wait.

    Their retry, or their merge once their column is here, merges an old
    state of a row against what is held: against nothing, once collected.
    """
    return (
        ctx.connection.execute(
            "SELECT 1 FROM _syncmesh_quarantine WHERE table_name = ?"
            " UNION ALL SELECT 1 FROM _syncmesh_waiting WHERE table_name = ?"
            " UNION ALL SELECT 1 FROM _syncmesh_parked WHERE table_name = ? LIMIT 1",
            (table, table, table),
        ).fetchone()
        is not None
    )


def _scan_sql(table: TableSql, after: bool) -> str:
    keys = table.names.shadow_keys
    where = ""
    if after:
        where = f" WHERE ({keys}) > ({', '.join('?' * table.key_count)})"
    return (
        f"SELECT {keys}, cl, cl_hlc, cl_site, kh, dg FROM {table.shadow}{where}"
        f" ORDER BY {keys} LIMIT ?"
    )


def _collect_some(
    ctx: StoreContext, table: TableSql, state: CollectPass, rows_max: int
) -> tuple[int, Key | None]:
    """One step over one table: (collected, last key looked at, or None at the table's end)."""
    keys = table.key_count
    sites = ctx.require_init()
    parameters: list[SqlValue] = [*(state.after or ()), rows_max]
    with ctx.transaction("DEFERRED"):
        rows = execute_one(
            ctx.connection, _scan_sql(table, state.after is not None), parameters
        ).fetchall()
    last = tuple(rows[-1][:keys]) if len(rows) == rows_max else None
    stable = []
    for row in rows:
        cl, cl_hlc, cl_site = row[keys], row[keys + 1], row[keys + 2]
        if (
            cl % 2 == 0
            and cl_hlc is not None
            and cl_site is not None
            and cl_hlc <= state.frontier.get(sites.site(cl_site), 0)
            and (state.ceiling is None or cl_hlc <= state.ceiling)
        ):
            if state.settled is None or cl_hlc <= state.settled.get(sites.site(cl_site), 0):
                stable.append(row)
            else:
                state.unsettled += 1  # held everywhere, but not every life it ended
    if not stable:
        return 0, last
    return _delete(ctx, table, state, stable), last


def _delete(ctx: StoreContext, table: TableSql, state: CollectPass, stable: list[object]) -> int:
    """Delete the stable tombstones (still as scanned) in one write transaction."""
    keys = table.key_count
    delete_sql = f"DELETE FROM {table.shadow} WHERE {table.names.keys_where} AND cl = ?"
    collected = 0
    top_cl = 0
    deleted: dict[str, int] = {}  # per origin, the greatest stamp collected in this step
    sites = ctx.require_init()
    with ctx.transaction():
        # A re-insert not captured yet must meet the tombstone, not a missing row.
        capture.capture_pending(ctx)
        for row in stable:
            assert isinstance(row, tuple)
            key, cl, hashed, digest = row[:keys], row[keys], row[keys + 3], row[keys + 4]
            cursor = execute_one(ctx.connection, delete_sql, [*key, cl])
            if cursor.rowcount != 1:
                continue  # changed since the scan (a re-insert, a merge): not stable any more
            collected += 1
            top_cl = max(top_cl, int(cl))
            origin = sites.site(int(row[keys + 2]))
            deleted[origin] = max(deleted.get(origin, 0), int(row[keys + 1]))
            if hashed is not None and digest is not None:
                ctx.summaries.note(table.spec.name, int(hashed) & LEAF_MASK, int(digest))
        if collected:
            # A row kept from before the greatest stamp was (`deleted` NULL)
            # stays unknown: what it collected then may lie above anything
            # collected since.
            ctx.connection.executemany(
                "INSERT INTO _syncmesh_horizon (table_name, site_id, hlc, deleted)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (table_name, site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc),"
                " deleted = CASE WHEN _syncmesh_horizon.deleted IS NULL THEN NULL"
                " ELSE max(_syncmesh_horizon.deleted, excluded.deleted) END",
                [
                    (table.spec.name, site, hlc, deleted.get(site, 0))
                    for site, hlc in state.frontier.items()
                    if hlc > 0
                ],
            )
            # We hold every write of an origin up to a delete of it we collected
            # (the frontier's own entry covered it: our vector, on a fleet with
            # what the usable claims show we hold, ADR 0017).  Said in our vector
            # (a stamp the origin issued, capped below what waits in quarantine),
            # so that a WebSocket peer that adopts it, or a joiner that copies
            # it, holds what rule 3 asks (`refusal`); a fleet node's vector
            # otherwise never covered the fleet sites' writes.  Not for a
            # forgotten site: it is gone, and a fleet node whose vector named a
            # site off the stream would start relaying its rows (node.fleet).
            own = ctx.site_id()
            forgotten = {site for site, (_, gone, _) in _members(ctx).items() if gone}
            merge_vector(
                ctx,
                {
                    origin: stamp
                    for origin, stamp in deleted.items()
                    if origin not in (own, DEFAULT_CELL_SITE) and origin not in forgotten
                },
                own_claims=False,
            )
            ctx.connection.execute(
                "UPDATE _syncmesh_lifecycle SET cl_floor = max(cl_floor, ?),"
                " collected = collected + ?",
                (top_cl, collected),
            )
    state.collected += collected
    name = table.spec.name
    state.collected_by_table[name] = state.collected_by_table.get(name, 0) + collected
    return collected


def status(ctx: StoreContext) -> LifecycleStatus:
    """Inside the caller's read transaction."""
    own = ctx.site_id()
    members = _members(ctx)
    stable, vectors = frontier(ctx)
    ours = vectors[own]
    behind: dict[str, int] = {}
    lag: dict[str, int | None] = {}
    for origin, hlc in stable.items():
        if hlc >= ours.get(origin, 0):
            continue
        for site, vector in vectors.items():
            if site != own and vector.get(origin, 0) == hlc:
                behind[site] = behind.get(site, 0) + 1
                # A member that holds nothing of the origin (a 0 stamp: nothing
                # heard of it yet, as in a node's first seconds) is behind by an
                # unknown time, not by the time since 1970 (new-user report).
                known = lag.get(site, 0)
                lag[site] = (
                    None
                    if hlc == 0 or known is None
                    else max(known, wall_ms_of(ours.get(origin, 0)) - wall_ms_of(hlc))
                )
    holding = ""
    if behind:
        holding = max(behind, key=lambda site: (behind[site], -members.get(site, ({}, 0, 0))[2]))
    waiting = 0
    for table in ctx.tables.values():
        waiting += int(
            ctx.connection.execute(
                f"SELECT count(*) FROM {table.shadow} WHERE cl % 2 = 0"
            ).fetchone()[0]
        )
    floor, collected, dropped = ctx.connection.execute(
        "SELECT cl_floor, collected, stale_dropped FROM _syncmesh_lifecycle"
    ).fetchone()
    return LifecycleStatus(
        tuple(sorted({own} | {site for site, (_, gone, _) in members.items() if not gone})),
        tuple(sorted(site for site, (_, gone, _) in members.items() if gone)),
        stable,
        holding,
        lag.get(holding, 0) if holding else 0,
        waiting,
        int(collected),
        int(dropped),
        int(floor),
    )
