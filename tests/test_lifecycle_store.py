"""Membership, causal stability and tombstone collection, on real stores (ADR 0015).

Each test names the rule it checks: a tombstone goes only once every member
holds its delete; a member that is behind (offline) holds it back; a key
collected and inserted again wins over a tombstone still held elsewhere;
a row arriving for a collected key is dropped; a site that slept past the
horizon, or was forgotten, is refused with the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncmesh.clock import HybridClock
from syncmesh.model import ChangeBatch, FleetHoldings, Membership
from syncmesh.node.config import NodeConfig
from syncmesh.node.lifecycle import GossipPeer, LifecycleStatistics, lifecycle_round
from syncmesh.store import Store
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all, rows_with_types, run_cli

BASE_MS = 1_700_000_000_000


def _open(path: Path, clock: ManualClock) -> SqliteStore:
    store = SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=60_000))
    store.init()
    store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body)")
    store.track(["notes"])
    return store


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[SqliteStore]]:
    clock = ManualClock(BASE_MS)
    opened = [_open(tmp_path / f"n{index}.db", clock) for index in range(3)]
    yield opened
    for store in opened:
        store.close()


def _sync(stores: list[SqliteStore]) -> None:
    """Every store pulls every other's feed to its head, twice (relays settle)."""
    for _ in range(2):
        for source in stores:
            for target in stores:
                if source is not target:
                    exchange_all(source, target)


def _tell_everyone(stores: list[SqliteStore]) -> None:
    """What gossip does: every store learns every other's current vector."""
    for store in stores:
        store.learn_vectors(
            {other.site_id: other.vector() for other in stores if other is not store}
        )


def _tombstones(store: SqliteStore) -> int:
    return int(
        store.connection.execute(
            "SELECT count(*) FROM _syncmesh_shadow_notes WHERE cl % 2 = 0"
        ).fetchone()[0]
    )


def _write(store: SqliteStore, sql: str, *params: object) -> None:
    store.connection.execute(sql, params)
    store.capture()


def test_a_tombstone_goes_once_every_member_holds_the_delete(stores: list[SqliteStore]) -> None:
    a, b, c = stores
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _sync(stores)
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    exchange_all(a, b)  # c has not seen the delete yet
    _tell_everyone(stores)
    assert a.collect_all() == 0, "c does not hold the delete: nothing is stable"
    assert _tombstones(a) == 1
    assert a.status().lifecycle is not None
    assert a.status().lifecycle.holding_back == c.site_id  # type: ignore[union-attr]
    _sync(stores)
    _tell_everyone(stores)
    assert [store.collect_all() for store in stores] == [1, 1, 1]
    assert [_tombstones(store) for store in stores] == [0, 0, 0]
    status = a.status().lifecycle
    assert status is not None
    assert (status.tombstones_waiting, status.tombstones_collected, status.cl_floor) == (0, 1, 2)
    assert status.holding_back == ""


def test_a_member_never_heard_of_holds_collection_back(stores: list[SqliteStore]) -> None:
    a, b, c = stores
    _write(c, "INSERT INTO notes VALUES ('j', 'from c')")
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _sync(stores)
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    _sync(stores)
    # a knows b's vector but not c's: c is a member (its stamps are here), unknown.
    a.learn_vectors({b.site_id: b.vector()})
    assert a.collect_all() == 0
    a.learn_vectors({c.site_id: c.vector()})
    assert a.collect_all() == 1


def test_a_collected_key_inserted_again_wins_where_the_tombstone_is_still_held(
    stores: list[SqliteStore],
) -> None:
    a, b, _c = stores
    _write(a, "INSERT INTO notes VALUES ('k', 'old')")
    _sync(stores)
    _write(b, "DELETE FROM notes WHERE id = 'k'")
    _sync(stores)
    _tell_everyone(stores)
    assert a.collect_all() == 1  # b keeps its tombstone for now
    _write(a, "INSERT INTO notes VALUES ('k', 'new')")
    cl = a.connection.execute("SELECT cl FROM _syncmesh_shadow_notes WHERE k0 = 'k'").fetchone()
    assert cl == (3,), "a new life starts above the collected tombstone's cl (2)"
    _sync(stores)
    for store in stores:
        assert rows_with_types(store.connection, "notes") == [(("k", "text"), ("new", "text"))], (
            "the re-insert is alive everywhere"
        )


def test_a_row_arriving_for_a_collected_key_is_dropped(stores: list[SqliteStore]) -> None:
    a, b, _c = stores
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _sync(stores)
    # b's feed as it was before the delete: a batch in flight while a collects.
    stale = b.read_batch(0, {}, 1_000)
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    _sync(stores)
    _tell_everyone(stores)
    assert a.collect_all() == 1
    result = a.merge_repair_rows(b.site_id, stale)
    assert result.applied_rows == 0
    assert rows_with_types(a.connection, "notes") == []
    status = a.status().lifecycle
    assert status is not None
    assert status.stale_dropped == 1


def _collect_while_c_sleeps(stores: list[SqliteStore]) -> dict[str, int]:
    """a writes a row and deletes it; all sync; a collects the tombstone.  Returns c's
    vector from before the delete: a sleeper's, which missed it."""
    a = stores[0]
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _sync(stores)
    sleeper_vector = stores[2].vector()
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    _sync(stores)
    _tell_everyone(stores)
    assert a.collect_all() == 1
    return sleeper_vector


def test_a_site_that_slept_past_the_horizon_is_refused(
    stores: list[SqliteStore], tmp_path: Path
) -> None:
    a, _b, c = stores
    sleeper_vector = _collect_while_c_sleeps(stores)
    reason = a.note_hello(c.site_id, sleeper_vector, c.head_seq(), None)
    assert reason is not None
    assert "slept past the GC horizon" in reason
    assert a.note_hello(c.site_id, c.vector(), c.head_seq(), c.membership()) is None
    # A brand-new empty site holds nothing: admitted, and it takes the cl floor.
    fresh = _open(tmp_path / "fresh.db", ManualClock(BASE_MS))
    assert a.note_hello(fresh.site_id, fresh.vector(), fresh.head_seq(), None) is None
    assert fresh.note_hello(a.site_id, a.vector(), a.head_seq(), a.membership()) is None
    _write(fresh, "INSERT INTO notes VALUES ('k', 'fresh')")
    assert fresh.connection.execute("SELECT cl FROM _syncmesh_shadow_notes").fetchone() == (3,)
    fresh.close()


def test_a_file_from_before_the_collected_stamp_is_upgraded_and_judges_by_its_horizon(
    stores: list[SqliteStore], tmp_path: Path
) -> None:
    """The horizon's greatest collected stamp (`deleted`) is added to an older file
    on open; its earlier collections, whose greatest stamp is not known, keep
    judging peers by their frontier (rule 3), as before."""
    a, _b, c = stores
    sleeper_vector = _collect_while_c_sleeps(stores)
    path = Path(a.connection.execute("PRAGMA database_list").fetchone()[2])
    (deleted,) = a.connection.execute("SELECT max(deleted) FROM _syncmesh_horizon").fetchone()
    assert deleted is not None
    assert deleted > 0
    a.close()
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("ALTER TABLE _syncmesh_horizon DROP COLUMN deleted")
        connection.execute("UPDATE _syncmesh_horizon SET hlc = hlc + 1000")  # a frontier past it
    reopened = _open_existing(path)
    try:
        columns = {
            row[1] for row in reopened.connection.execute("PRAGMA table_info(_syncmesh_horizon)")
        }
        assert "deleted" in columns
        # A peer that holds the delete itself but not the old frontier: refused,
        # since the old collection's greatest stamp is not known.
        holds_the_delete = {**c.vector(), a.site_id: deleted}
        reason = reopened.note_hello(c.site_id, holds_the_delete, c.head_seq(), None)
        assert reason is not None
        assert "slept past the GC horizon" in reason
        assert reopened.note_hello(c.site_id, sleeper_vector, c.head_seq(), None) is not None
    finally:
        reopened.close()
        stores[0] = _open_existing(path)  # the fixture closes it


def test_a_peer_that_holds_every_collected_delete_is_admitted_past_the_frontier(
    stores: list[SqliteStore],
) -> None:
    """Rule 3 asks a peer for the greatest stamp of a delete collected here, not for the
    pass's frontier (on a fleet a site's claimed mark, past its last write, which no
    vector reaches): a replica that holds every collected delete is admitted."""
    a, _b, c = stores
    sleeper_vector = _collect_while_c_sleeps(stores)
    (deleted,) = a.connection.execute("SELECT max(deleted) FROM _syncmesh_horizon").fetchone()
    with a.connection:
        a.connection.execute("UPDATE _syncmesh_horizon SET hlc = hlc + 1000")  # a mark past it
    holds_the_delete = {**c.vector(), a.site_id: deleted}
    assert a.note_hello(c.site_id, holds_the_delete, c.head_seq(), None) is None
    reason = a.note_hello(c.site_id, sleeper_vector, c.head_seq(), None)
    assert reason is not None
    assert "slept past the GC horizon" in reason


def _open_existing(path: Path) -> SqliteStore:
    return SqliteStore.open(path, clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000))


def test_a_forgotten_site_stops_holding_back_and_is_refused(stores: list[SqliteStore]) -> None:
    a, b, c = stores
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _sync(stores)
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    exchange_all(a, b)  # c is offline for good
    _tell_everyone(stores)
    assert a.collect_all() == 0
    assert a.forget_site(c.site_id)
    assert not a.forget_site(c.site_id)
    assert a.collect_all() == 1
    reason = a.note_hello(c.site_id, c.vector(), c.head_seq(), None)
    assert reason is not None
    assert "was forgotten" in reason
    # Gossip carries it: b forgets c too, and refuses it.
    gossip = a.membership()
    assert c.site_id in gossip.forgotten
    assert c.site_id not in gossip.seen
    b.note_gossip(a.site_id, gossip)
    refused = b.note_hello(c.site_id, c.vector(), c.head_seq(), None)
    assert refused is not None
    assert "was forgotten" in refused
    assert b.collect_all() == 1


def test_gossip_merges_vectors_by_max_and_raises_the_cl_floor(stores: list[SqliteStore]) -> None:
    a, b, c = stores
    a.note_gossip(b.site_id, Membership({c.site_id: {c.site_id: 5}}, (), 7))
    a.note_gossip(b.site_id, Membership({c.site_id: {c.site_id: 3}}, (), 2))
    known = a.membership()
    assert known.seen[c.site_id] == {c.site_id: 5}
    assert known.cl_floor == 6, "the floor stays even: a new key starts alive above it"


def test_forget_on_the_command_line_names_what_is_wrong(stores: list[SqliteStore]) -> None:
    a, b, _c = stores
    _write(b, "INSERT INTO notes VALUES ('k', 'x')")
    exchange_all(b, a)
    path = a.context.path
    a.close()
    own = run_cli("forget", path, a_site := _site_of(path))
    assert own.returncode == 1
    assert f"{a_site} is this file's own site id" in own.stderr
    unknown = run_cli("forget", path, "f" * 32)
    assert unknown.returncode == 1
    assert "is not a member here" in unknown.stderr
    done = run_cli("forget", path, b.site_id)
    assert done.returncode == 0, done.stderr
    assert f"site {b.site_id} forgotten" in done.stdout
    again = run_cli("forget", path, b.site_id)
    assert "was forgotten already" in again.stdout
    status = run_cli("status", path)
    assert "forgotten" in status.stdout
    assert b.site_id in status.stdout


def _site_of(path: str) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("SELECT site_id FROM _syncmesh_state").fetchone()[0])


def _fleet_pass(
    store: SqliteStore, direct: dict[str, dict[str, int]], own_held: dict[str, int]
) -> int:
    """One collection pass of a fleet node (ADR 0017): claims as `direct`, our holdings."""
    state = store.begin_collection(direct, own_held=own_held)
    while not store.collect_step(state, 1_000).done:
        pass
    return state.collected


def test_a_fleet_pass_counts_our_deletes_only_once_on_the_stream(
    stores: list[SqliteStore],
) -> None:
    """A fleet node alone: its own delete goes only once its mark (on the stream) covers it."""
    a = stores[0]
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    assert _fleet_pass(a, {}, {}) == 0, "nothing of ours is known to be on the stream"
    assert _tombstones(a) == 1
    # Held everywhere from this pass on; it goes at the next pass that sees
    # every member's own entry of this one held (ADR 0017, concurrent first inserts).
    assert _fleet_pass(a, {}, {a.site_id: a.stamp_mark()}) == 0
    assert _fleet_pass(a, {}, {a.site_id: a.stamp_mark()}) == 1
    assert _tombstones(a) == 0


def test_a_fleet_pass_stays_below_the_ceiling_so_a_late_copy_is_dropped(
    stores: list[SqliteStore],
) -> None:
    """A delete every member holds waits until the life it ended is below every horizon.

    b inserts k, a deletes it; b's claim says it holds a's writes, and its
    own only up to a stamp below its insert (a mark taken before the read
    that published the insert).  Per-origin stability of a's delete holds,
    but the ceiling (b's origin) is below it: kept.  Once b's claim covers
    its insert, the tombstone goes, and b's old batch with the live k,
    merged again (the stream read again, a state-stream copy), is dropped.
    """
    a, b = stores[0], stores[1]
    before_insert = b.stamp_mark()
    _write(b, "INSERT INTO notes VALUES ('k', 'x')")
    old_batch = b.read_batch(0, {}, 1_000)
    exchange_all(b, a)
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    exchange_all(a, b)
    mark = a.stamp_mark()
    claim = {a.site_id: mark, b.site_id: before_insert}
    assert _fleet_pass(a, {b.site_id: claim}, {a.site_id: mark, b.site_id: before_insert}) == 0
    assert _tombstones(a) == 1
    covered = b.stamp_mark()
    claim = {a.site_id: mark, b.site_id: covered}
    assert _fleet_pass(a, {b.site_id: claim}, {a.site_id: mark, b.site_id: covered}) == 1
    a.merge_repair_rows(b.site_id, old_batch)
    assert a.connection.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
    assert a.status().lifecycle.stale_dropped == 1  # type: ignore[union-attr]


def _concurrent_first_insert(
    tmp_path: Path,
) -> tuple[SqliteStore, SqliteStore, SqliteStore, ChangeBatch]:
    """ADR 0015's play up to a's collection: (a, b, c, b's batch for a still on its way).

    a inserts and deletes k (cl 2, stamp h); the delete reaches c; b, which
    has seen neither, inserts k (cl 1, stamped above h).  b's sender reads
    its next batch for a (b's insert); then b applies a's delete, and its
    ACK, with a vector that holds the delete, reaches a first (the batch is
    compressed off the loop meanwhile).  a learns b's vector from that ACK
    and c's from gossip.
    """
    clock = ManualClock(BASE_MS)
    a, b, c = (_open(tmp_path / f"{name}.db", clock) for name in "abc")
    _write(a, "INSERT INTO notes VALUES ('k', 'from a')")
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    exchange_all(a, c)  # c holds the delete
    clock.advance(10)
    _write(b, "INSERT INTO notes VALUES ('k', 'from b')")  # b's first insert, above h
    a.reset_peer_cursor(b.site_id, b.incarnation, b.head_seq(), "")
    in_flight = b.read_batch(0, a.vector(), 1_000)
    assert in_flight.row_count == 1
    exchange_all(a, b)  # b applies a's delete: 2 beats 1
    assert rows_with_types(b.connection, "notes") == []
    for store in (a, b):  # c's own entry (its set-up's stamp) is held everywhere
        exchange_all(c, store)
    a.learn_vectors({b.site_id: b.vector(), c.site_id: c.vector()})
    return a, b, c, in_flight


def test_a_concurrent_first_insert_ended_by_a_collected_delete_stays_dead(
    tmp_path: Path,
) -> None:
    """A batch read before its sender held a delete, arriving after the vector that says it does.

    The WebSocket play of ADR 0017's defect (ADR 0015, "A session's vector
    can overtake its batch"; the setup is `_concurrent_first_insert`).  a
    knows every member holds the delete, but c and a itself hold b's writes
    only below b's insert: a horizon below it.  Collected then, b's batch
    arriving next found no shadow row and a stamp above the horizon, and k
    was alive at a, dead everywhere else.  Now a pass collects only once
    every member's own entry of a pass that saw the delete held everywhere
    is held by every member.
    """
    a, b, c, in_flight = _concurrent_first_insert(tmp_path)
    try:
        assert a.collect_all() == 0, "b's insert, ended by the delete, is not held everywhere"
        assert a.status().lifecycle.tombstones_waiting == 1  # type: ignore[union-attr]
        a.apply_batch(b.site_id, in_flight)
        assert rows_with_types(a.connection, "notes") == [], "b's insert came back at a"
        # Once every member holds b's writes up to its insert, the delete goes
        # everywhere, with a horizon above the insert: a copy merged again
        # (a repair with an old state) is dropped.
        _sync([a, b, c])
        _tell_everyone([a, b, c])
        assert [store.collect_all() for store in (a, b, c)] == [1, 1, 1]
        assert a.merge_repair_rows(b.site_id, in_flight).applied_rows == 0
        for store in (a, b, c):
            assert rows_with_types(store.connection, "notes") == []
            assert _tombstones(store) == 0
        assert a.status().lifecycle.stale_dropped == 1  # type: ignore[union-attr]
    finally:
        for store in (a, b, c):
            store.close()


class _Host:
    """A node as a collection round sees it, over one real store (no sessions, no fleet)."""

    def __init__(self, store: SqliteStore) -> None:
        self.config = NodeConfig(database_path=str(store.context.path))
        self.store: Store = store

    @property
    def stopping(self) -> bool:
        return False

    @property
    def store_call(self) -> Callable[..., Awaitable[Any]]:
        async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return call

    def gossip_peers(self) -> list[GossipPeer]:
        return []

    async def unmet_dialled_peers(self) -> list[str]:
        return []

    async def fleet_holdings(self) -> FleetHoldings | None:
        return None


def test_status_says_which_site_a_delete_held_everywhere_waits_for(tmp_path: Path) -> None:
    """While the delete waits for b's insert to be held everywhere, the round says so."""
    a, b, c, in_flight = _concurrent_first_insert(tmp_path)
    try:
        statistics = LifecycleStatistics()
        assert asyncio.run(lifecycle_round(_Host(a), statistics)) == 0
        assert statistics.held_back.startswith("1 delete held by every member waits: site ")
        assert f"the writes of site {b.site_id} as far as" in statistics.held_back
        a.apply_batch(b.site_id, in_flight)
        _sync([a, b, c])
        _tell_everyone([a, b, c])
        assert asyncio.run(lifecycle_round(_Host(a), statistics)) == 1
        assert statistics.held_back == ""
    finally:
        for store in (a, b, c):
            store.close()


class _FleetHost(_Host):
    """A fleet node as a round sees it: holdings as its fleet would give them."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        self.unlisted = ""
        self._store = store

    async def fleet_holdings(self) -> FleetHoldings | None:
        return FleetHoldings({self._store.site_id: self._store.stamp_mark()}, {}, {}, self.unlisted)


def test_a_fleet_round_that_could_not_list_the_streams_sites_collects_nothing(
    stores: list[SqliteStore],
) -> None:
    """A site on the stream that we do not know may hold a life a delete ended (ADR 0017,
    "Every site on the stream is a member"): without the listing, no pass at all."""
    a = stores[0]
    _write(a, "INSERT INTO notes VALUES ('k', 'x')")
    _write(a, "DELETE FROM notes WHERE id = 'k'")
    host, statistics = _FleetHost(a), LifecycleStatistics()
    assert asyncio.run(lifecycle_round(host, statistics)) == 0, "the first pass settles nothing"
    host.unlisted = "the fleet's sites could not be listed (stream out of reach)"
    assert asyncio.run(lifecycle_round(host, statistics)) == 0
    assert statistics.skipped == host.unlisted
    assert _tombstones(a) == 1
    host.unlisted = ""
    assert asyncio.run(lifecycle_round(host, statistics)) == 1
    assert statistics.skipped == ""
    assert _tombstones(a) == 0
