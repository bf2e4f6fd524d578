"""The conflict ledger with real stores: what is recorded, where, once, and for how long.

A conflict is two concurrent writes to one cell: neither writer's node had
received the other's value (or a value that knew it) before it wrote.  Each
node records the conflicts its own merges resolve (docs/adr/0007).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from syncmesh.clock import HybridClock
from syncmesh.model import (
    Cell,
    ChangeBatch,
    RowChange,
    RowState,
    Stamp,
    from_json_safe,
    json_safe,
    row_from_plain,
    row_to_plain,
)
from syncmesh.store import ConflictRecord
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000
ITEMS_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"

MakeStore = Callable[..., SqliteStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[SqliteStore] = []

    def make(name: str, *, rows_max: int = 10_000, ms: int = BASE_MS) -> SqliteStore:
        clock = HybridClock(ManualClock(ms), drift_ms_max=60_000)
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=clock, conflict_ledger_rows_max=rows_max
        )
        opened.append(store)
        store.init()
        store.connection.execute(ITEMS_DDL)
        store.track(["items"])
        return store

    yield make
    for store in opened:
        store.close()


def write(store: SqliteStore, sql: str, *params: object) -> None:
    """A local write, captured at once (as the node's capture loop would)."""
    store.connection.execute(sql, params)
    store.capture()


def sync(*stores: SqliteStore) -> None:
    """Every store pulls every other's feed to its head, twice round."""
    for _ in range(2):
        for source in stores:
            for target in stores:
                if source is not target:
                    exchange_all(source, target)


def sync_at_once(*stores: SqliteStore) -> None:
    """Every store reads its feed for every other first, then all apply: a session's timing.

    In a session both ends send what they hold before either has merged the
    other's writes.  A node that merged first would relay only the winner,
    and the loser's other side would never see the conflict.
    """
    batches = []
    for source in stores:
        for target in stores:
            if source is not target:
                cursor = target.peer_cursor(source.site_id)
                if cursor is None:
                    target.reset_peer_cursor(source.site_id, source.incarnation, 0, "")
                from_seq = 0 if cursor is None else cursor.cursor
                batches.append(
                    (source, target, source.read_batch(from_seq, target.vector(), 10**6))
                )
    for source, target, batch in batches:
        target.apply_batch(source.site_id, batch)
    sync(*stores)


def ledger(store: SqliteStore) -> list[ConflictRecord]:
    return store.conflicts(limit=1_000)


def stamp_of(store: SqliteStore, key: str, column: str) -> Stamp:
    [change] = [row for row in store.read_batch(0, {}, 1_000).rows if row.pk == (key,)]
    return change.state.cells[column].stamp


def test_concurrent_updates_are_recorded_once_on_both_sides(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "UPDATE items SET name = 'from a' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'from b' WHERE id = 'k'")
    a_stamp, b_stamp = stamp_of(a, "k", "name"), stamp_of(b, "k", "name")
    sync_at_once(a, b)
    winner, loser = (a_stamp, b_stamp) if a_stamp > b_stamp else (b_stamp, a_stamp)
    values = {a_stamp: "from a", b_stamp: "from b"}
    for store in (a, b):
        [record] = ledger(store)
        assert (record.table, record.pk, record.column) == ("items", ("k",), "name")
        assert (record.winner.value, record.winner.hlc, record.winner.site_id) == (
            values[winner],
            winner.hlc,
            winner.site_id,
        )
        assert (record.loser.value, record.loser.hlc, record.loser.site_id) == (
            values[loser],
            loser.hlc,
            loser.site_id,
        )
        assert record.resolved_ms > 0
        assert store.status().conflicts == {"items": 1}
    # The other column was written once, at the insert: no conflict there.
    assert a.connection.execute("SELECT name FROM items").fetchone() == (values[winner],)


def test_a_causal_overwrite_is_no_conflict(make_store: MakeStore) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('k', 'a1', 1)")
    sync(a, b, c)
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")  # b had seen a1
    sync(a, b, c)
    write(a, "UPDATE items SET name = 'a2' WHERE id = 'k'")  # a had seen b1
    sync(a, b, c)
    for store in (a, b, c):
        assert ledger(store) == []
        assert store.connection.execute("SELECT name FROM items").fetchone() == ("a2",)


def test_a_chain_of_overwrites_arriving_out_of_order_is_no_conflict(
    make_store: MakeStore,
) -> None:
    """a's value was overwritten at b, and b's at c; a gets c's value before b's.

    c's write replaced b1, not a1, and a1 is older than b1, but that alone
    would not prove c's writer knew a1: the past does (b1 knew a1, c knew b1).
    """
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('k', 'a1', 1)")
    exchange_all(a, b)
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")
    exchange_all(b, c)
    write(c, "UPDATE items SET name = 'c1' WHERE id = 'k'")
    exchange_all(c, a)  # a: a1 -> c1, b1 never seen
    sync(a, b, c)
    for store in (a, b, c):
        assert ledger(store) == []


def test_two_writes_on_one_side_against_one_on_the_other_are_a_conflict(
    make_store: MakeStore,
) -> None:
    """b writes twice while cut off, a once: a's value is lost, and both sides say so.

    The stamp order alone would call this causal on both sides: b's second
    write replaced b's first, which is newer than a's write.
    """
    a, b = make_store("a"), make_store("b", ms=BASE_MS + 1_000)
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "UPDATE items SET name = 'a1' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b2' WHERE id = 'k'")
    assert stamp_of(a, "k", "name") < stamp_of(b, "k", "name")
    sync_at_once(a, b)
    for store in (a, b):
        [record] = ledger(store)
        assert (record.winner.value, record.loser.value) == ("b2", "a1")


def test_a_node_that_only_sees_the_winner_records_nothing(make_store: MakeStore) -> None:
    """c holds neither write when the winner reaches it: no merge of c resolved anything."""
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b, c)
    write(a, "UPDATE items SET name = 'a1' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")
    sync_at_once(a, b)
    sync(a, c)  # c pulls the merged state from a: the loser is not in it
    assert len(ledger(a)) == len(ledger(b)) == 1
    assert ledger(c) == []
    sync(a, b, c)
    assert ledger(c) == []


def test_redelivery_and_relays_record_a_conflict_once(make_store: MakeStore) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b, c)
    write(a, "UPDATE items SET name = 'a1', qty = 10 WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b1', qty = 20 WHERE id = 'k'")
    # c gets the loser first, then the winner both directly and relayed.
    a_first = stamp_of(a, "k", "name") < stamp_of(b, "k", "name")
    first, second = (a, b) if a_first else (b, a)
    exchange_all(first, c)
    exchange_all(second, c)
    sync_at_once(a, b, c)
    expected = {("items", ("k",), "name"), ("items", ("k",), "qty")}
    for store in (a, b, c):
        records = ledger(store)
        assert {(r.table, r.pk, r.column) for r in records} == expected, store.site_id
        assert len(records) == 2
    # Redelivery: c reads both feeds again from the start.
    for source in (a, b):
        c.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")
        exchange_all(source, c)
    assert len(ledger(c)) == 2
    assert c.status().conflicts == {"items": 2}


def test_a_local_value_that_wins_is_recorded_and_its_loser_known(
    make_store: MakeStore,
) -> None:
    """b keeps its value over a's; b's next write knew a's value, so a sees no conflict in it."""
    a, b = make_store("a"), make_store("b", ms=BASE_MS + 1_000)
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "UPDATE items SET name = 'a1' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")
    assert stamp_of(b, "k", "name") > stamp_of(a, "k", "name")  # b's clock is ahead
    exchange_all(a, b)  # a1 loses at b: recorded, and b now knows a1
    [record] = ledger(b)
    assert (record.winner.value, record.loser.value) == ("b1", "a1")
    write(b, "UPDATE items SET name = 'b2' WHERE id = 'k'")
    exchange_all(b, a)  # a holds a1; b2 knew it
    assert ledger(a) == []
    assert a.connection.execute("SELECT name FROM items").fetchone() == ("b2",)


def test_writes_of_the_same_value_are_no_conflict(make_store: MakeStore) -> None:
    """Nobody's value was lost.  1 and 1.0 are different values, as SQLite keeps them apart."""
    a, b = make_store("a"), make_store("b")
    for store in (a, b):
        store.connection.execute("CREATE TABLE untyped (id TEXT PRIMARY KEY, v, w)")
        store.track(["untyped"])
    write(a, "INSERT INTO untyped VALUES ('k', 'start', 0)")
    sync(a, b)
    write(a, "UPDATE untyped SET v = 'same', w = 1.0 WHERE id = 'k'")
    write(b, "UPDATE untyped SET v = 'same', w = 1 WHERE id = 'k'")
    sync_at_once(a, b)
    for store in (a, b):
        [record] = ledger(store)
        assert record.column == "w"
        assert {type(record.winner.value), type(record.loser.value)} == {int, float}


def test_concurrent_inserts_of_one_key_are_conflicts_per_differing_column(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'same', 1)")
    write(b, "INSERT INTO items VALUES ('k', 'same', 2)")
    sync_at_once(a, b)
    for store in (a, b):
        assert [record.column for record in ledger(store)] == ["qty"]


def test_delete_against_update_is_not_a_cell_conflict(make_store: MakeStore) -> None:
    """Causal length decides (the delete wins); the ledger holds cell conflicts only."""
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "DELETE FROM items WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")
    sync(a, b)
    for store in (a, b):
        assert store.connection.execute("SELECT count(*) FROM items").fetchone() == (0,)
        assert ledger(store) == []


def test_a_new_life_starts_with_no_past(make_store: MakeStore) -> None:
    """Re-inserted on both sides (a new life each): their writes know nothing of each other."""
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "UPDATE items SET name = 'a0' WHERE id = 'k'")
    sync(a, b)
    write(a, "DELETE FROM items WHERE id = 'k'")
    sync(a, b)
    write(a, "INSERT INTO items VALUES ('k', 'a-again', 1)")
    write(b, "INSERT INTO items VALUES ('k', 'b-again', 1)")
    sync_at_once(a, b)
    for store in (a, b):
        assert [record.column for record in ledger(store)] == ["name"]


def test_retention_drops_the_oldest_beyond_the_limit(make_store: MakeStore) -> None:
    a, b = make_store("a", rows_max=3), make_store("b", rows_max=3)
    for index in range(5):
        write(a, "INSERT INTO items VALUES (?, 'start', 1)", f"k{index}")
    sync(a, b)
    for index in range(5):
        key = f"k{index}"
        write(a, "UPDATE items SET name = 'a' WHERE id = ?", key)
        write(b, "UPDATE items SET name = 'b' WHERE id = ?", key)
        sync_at_once(a, b)  # one conflict per round, in key order
    for store in (a, b):
        assert [record.pk for record in ledger(store)] == [("k4",), ("k3",), ("k2",)]
        assert store.status().conflicts == {"items": 5}  # the count keeps them all


def test_listing_filters_by_table_time_and_count(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    for index in range(3):
        write(a, "INSERT INTO items VALUES (?, 'start', 1)", f"k{index}")
    sync(a, b)
    for index in range(3):
        write(a, "UPDATE items SET name = 'a' WHERE id = ?", f"k{index}")
        write(b, "UPDATE items SET name = 'b' WHERE id = ?", f"k{index}")
    sync_at_once(a, b)
    everything = a.conflicts(limit=100)
    assert len(everything) == 3
    assert [r.id for r in everything] == sorted((r.id for r in everything), reverse=True)
    assert len(a.conflicts(limit=2)) == 2
    assert a.conflicts(table="other") == []
    newest = max(record.resolved_ms for record in everything)
    assert a.conflicts(since_ms=newest + 1) == []
    assert len(a.conflicts(since_ms=newest)) >= 1


def test_keys_and_values_keep_their_storage_class(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    for store in (a, b):
        store.connection.execute("CREATE TABLE blobs (id BLOB PRIMARY KEY, data)")
        store.track(["blobs"])
    write(a, "INSERT INTO blobs VALUES (x'00ff', 1)")
    sync(a, b)
    write(a, "UPDATE blobs SET data = x'01' WHERE id = x'00ff'")
    write(b, "UPDATE blobs SET data = 1.5 WHERE id = x'00ff'")
    sync_at_once(a, b)
    [record] = a.conflicts(table="blobs")
    assert record.pk == (b"\x00\xff",)
    assert {record.winner.value, record.loser.value} == {b"\x01", 1.5}
    for value in (None, 1, 1.0, "1", b"1", float("inf"), float("-inf")):
        assert from_json_safe(json_safe(value)) == value
        assert type(from_json_safe(json_safe(value))) is type(value)


def test_a_quarantined_row_keeps_its_cells_past() -> None:
    cell = Cell("v", Stamp(9, "b"), (("a", 5), ("c", 7)))
    change = RowChange("items", ("k",), RowState(1, Stamp(1, "a"), {"name": cell}))
    assert row_from_plain(msgpack.unpackb(msgpack.packb(row_to_plain(change)))) == change
    # An entry stored before cells had pasts: four fields per cell, an empty past.
    old = ["items", ["k"], 1, 1, "a", [["name", "v", 9, "b"]]]
    assert row_from_plain(old).state.cells["name"] == Cell("v", Stamp(9, "b"))


def test_a_new_site_id_keeps_what_pasts_say_of_the_old_one(make_store: MakeStore) -> None:
    """A copy given a new identity: pasts naming the old id (ordinal 0) must keep naming it."""
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'a1', 1)")
    a1 = stamp_of(a, "k", "name")
    sync(a, b)
    write(b, "UPDATE items SET name = 'b1' WHERE id = 'k'")  # its past names a1
    sync(a, b)
    a.new_site_id()
    [change] = a.read_batch(0, {}, 100).rows
    assert change.state.cells["name"].past == ((a1.site_id, a1.hlc),)
    assert a.site_id != a1.site_id


def test_a_file_from_before_the_ledger_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore.open(path)
    store.init()
    store.connection.execute(ITEMS_DDL)
    store.track(["items"])
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE _syncmesh_shadow_items DROP COLUMN pasts")
        connection.execute("DROP TABLE _syncmesh_conflicts")
        connection.execute("DROP TABLE _syncmesh_conflict_totals")
    connection.close()
    store = SqliteStore.open(path)
    try:
        write(store, "INSERT INTO items VALUES ('k', 'v', 1)")
        write(store, "UPDATE items SET name = 'w' WHERE id = 'k'")
        assert store.conflicts() == []
        assert store.status().conflicts == {"items": 0}
    finally:
        store.close()


def test_one_key_twice_in_a_batch_is_resolved_and_learned(make_store: MakeStore) -> None:
    """A batch holding a new key twice (a quarantine retry can): the loser is learned.

    The first row takes the fast path; the second loses to it, so the node
    now knows the second write, and its own next write of the cell knows both.
    """
    b = make_store("b")
    x, y = Stamp(BASE_MS << 16, "x" * 32), Stamp((BASE_MS + 5) << 16, "y" * 32)

    def row(value: str, stamp: Stamp) -> RowChange:
        cells = {"name": Cell(value, stamp), "qty": Cell(1, stamp)}
        return RowChange("items", ("k",), RowState(1, stamp, cells))

    batch = ChangeBatch.of_rows(
        "inc", 0, 1, 1, None, [row("y wins", y), row("x loses", x)], {"items": ("name", "qty")}
    )
    b.reset_peer_cursor("peer", "inc", 1, "")
    assert b.apply_batch("peer", batch).conflicts == 1
    [record] = ledger(b)
    assert (record.winner.value, record.loser.value) == ("y wins", "x loses")
    write(b, "UPDATE items SET name = 'b' WHERE id = 'k'")
    [change] = b.read_batch(0, {}, 100).rows
    assert change.state.cells["name"].past == ((x.site_id, x.hlc), (y.site_id, y.hlc))


def test_the_stores_bookkeeping_times_come_from_its_injected_clock(
    make_store: MakeStore,
) -> None:
    """Goal: one clock.  A conflict's `resolved_ms`, a peer's `last_applied_ms` and a
    quarantine entry's `created_ms` are the store's injected clock, not the system's.

    Method: two stores on a manual clock far in the past (2023) resolve a
    conflict, and one quarantines a row of a table only the other tracks.
    """
    a, b = make_store("a"), make_store("b")
    a.connection.execute("CREATE TABLE only_a (id TEXT PRIMARY KEY, v TEXT)")
    a.track(["only_a"])
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync(a, b)
    write(a, "UPDATE items SET name = 'from a' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'from b' WHERE id = 'k'")
    write(a, "INSERT INTO only_a VALUES ('q', 'x')")
    sync_at_once(a, b)
    [record] = ledger(b)
    assert record.resolved_ms == BASE_MS
    cursor = b.peer_cursor(a.site_id)
    assert cursor is not None
    assert cursor.last_applied_ms == BASE_MS
    [entry] = b.quarantine()
    assert (entry["table"], entry["created_ms"]) == ("only_a", BASE_MS)


def test_a_column_added_site_by_site_records_no_conflict(make_store: MakeStore) -> None:
    """Goal: a rolling ADD COLUMN resolves no conflict (new-user report): cells that hold
    the column's default, or a row from a site without the column, are nobody's write,
    so replacing them loses no value.  A real concurrent write to the column still is one."""
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'bolt', 1), ('j', 'nut', 2)")
    sync(a, b)
    write(a, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
    write(a, "UPDATE items SET note = 'set at a' WHERE id = 'k'")
    sync(a, b)
    write(b, "UPDATE items SET name = 'bolt at b' WHERE id = 'k'")  # b lacks `note`
    sync(a, b)
    write(b, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
    sync(a, b)
    write(b, "UPDATE items SET note = 'set at b' WHERE id = 'j'")  # over the default
    sync(a, b)
    for store in (a, b):
        rows = store.connection.execute("SELECT id, name, note FROM items ORDER BY id").fetchall()
        assert rows == [("j", "nut", "set at b"), ("k", "bolt at b", "set at a")]
        assert ledger(store) == []
        assert sum(store.status().conflicts.values()) == 0
    write(a, "UPDATE items SET note = 'from a' WHERE id = 'j'")
    write(b, "UPDATE items SET note = 'from b' WHERE id = 'j'")
    sync_at_once(a, b)
    for store in (a, b):
        [record] = ledger(store)
        assert (record.pk, record.column) == (("j",), "note")
        assert {record.winner.value, record.loser.value} == {"from a", "from b"}
