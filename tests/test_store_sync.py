"""Sync between Store objects in one process: merge, relay, vector filter, recovery.

No network: `exchange(src, dst)` reads one batch of src's feed after dst's
cursor (filtered by dst's version vector) and applies it, which is what a
session does per batch.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.errors import StoreError
from syncmesh.model import SqlValue
from syncmesh.store.sqlite import SqliteStore, capture
from tests.helpers import ManualClock, exchange, exchange_all, rows_with_types

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 60_000
ITEMS_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"

MakeStore = Callable[..., SqliteStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Build initialised stores with `items` tracked; all closed at teardown."""
    opened: list[SqliteStore] = []

    def make(name: str, *, clock: ManualClock | None = None, ddl: str = ITEMS_DDL) -> SqliteStore:
        hybrid = None if clock is None else HybridClock(clock, drift_ms_max=DRIFT_MS_MAX)
        store = SqliteStore.open(tmp_path / f"{name}.db", clock=hybrid)
        opened.append(store)
        store.init()
        store.connection.execute(ddl)
        store.track(["items"])
        return store

    yield make
    for store in opened:
        store.close()


def write(store: SqliteStore, sql: str, *params: SqlValue) -> None:
    """A local write, captured at once (as the node's capture loop would)."""
    store.connection.execute(sql, params)
    store.capture()


def items(store: SqliteStore) -> list[tuple[tuple[SqlValue, str], ...]]:
    return rows_with_types(store.connection, "items")


def item(store: SqliteStore, key: str) -> tuple[SqlValue, ...] | None:
    row = store.connection.execute("SELECT name, qty FROM items WHERE id = ?", (key,)).fetchone()
    return None if row is None else tuple(row)


def cursor_of(store: SqliteStore, peer: SqliteStore) -> int:
    """How far `store` has applied `peer`'s feed."""
    cursor = store.peer_cursor(peer.site_id)
    assert cursor is not None
    return cursor.cursor


def sync_pair(left: SqliteStore, right: SqliteStore) -> None:
    exchange_all(left, right)
    exchange_all(right, left)


def snapshot(store: SqliteStore, peer: SqliteStore) -> tuple[object, ...]:
    """Everything an apply may change: rows, shadow, feed head, vector, cursor, quarantine."""
    shadow = store.connection.execute("SELECT * FROM _syncmesh_shadow_items ORDER BY k0").fetchall()
    return (
        items(store),
        shadow,
        store.head_seq(),
        store.vector(),
        store.peer_cursor(peer.site_id),
        store.quarantine(),
    )


# -- conflicts ----------------------------------------------------------------------


def test_concurrent_updates_resolve_to_greater_hlc(make_store: MakeStore) -> None:
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync_pair(a, b)
    clock_a.set(BASE_MS + 500)  # a's write is later by wall time
    clock_b.set(BASE_MS + 100)
    write(a, "UPDATE items SET name = 'from a' WHERE id = 'k'")
    write(b, "UPDATE items SET name = 'from b', qty = 2 WHERE id = 'k'")
    sync_pair(a, b)
    assert item(a, "k") == item(b, "k") == ("from a", 2)  # per column: qty only b wrote
    assert items(a) == items(b)


def test_equal_hlc_conflict_resolves_by_site_id(make_store: MakeStore) -> None:
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    clock_a.set(BASE_MS + 1_000)
    clock_b.set(BASE_MS + 1_000)
    write(a, "INSERT INTO items VALUES ('k', 'from a', 1)")
    write(b, "INSERT INTO items VALUES ('k', 'from b', 2)")
    assert a.clock.last == b.clock.last  # the same HLC on both sides
    sync_pair(a, b)
    winner = ("from a", 1) if a.site_id > b.site_id else ("from b", 2)
    assert item(a, "k") == item(b, "k") == winner


def test_causal_order_beats_clock_skew(make_store: MakeStore) -> None:
    clock_a, clock_b = ManualClock(BASE_MS + 30_000), ManualClock(BASE_MS)  # a runs ahead
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('k', 'from a', 1)")
    exchange_all(a, b)
    write(b, "UPDATE items SET name = 'from b, later' WHERE id = 'k'")  # b saw a's write
    sync_pair(a, b)
    assert item(a, "k") == item(b, "k") == ("from b, later", 1)


def test_delete_beats_concurrent_update(make_store: MakeStore) -> None:
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('k', 'start', 1)")
    sync_pair(a, b)
    clock_a.set(BASE_MS + 10)
    clock_b.set(BASE_MS + 50_000)  # the update carries the much later stamp
    write(a, "DELETE FROM items WHERE id = 'k'")
    write(b, "UPDATE items SET qty = 99 WHERE id = 'k'")
    sync_pair(a, b)
    assert item(a, "k") is None
    assert item(b, "k") is None
    assert items(a) == items(b) == []


def test_reinsert_after_delete_resurrects_with_only_new_columns(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'old name', 1)")
    sync_pair(a, b)
    write(b, "DELETE FROM items WHERE id = 'k'")
    sync_pair(a, b)
    assert item(a, "k") is None
    write(a, "INSERT INTO items (id, qty) VALUES ('k', 7)")  # re-insert without a name
    sync_pair(a, b)
    assert item(a, "k") == item(b, "k") == (None, 7)  # no 'old name' from the first life
    assert items(a) == items(b)


def test_reinsert_beats_concurrent_update_of_the_old_life(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'old name', 1)")
    sync_pair(a, b)
    a.connection.execute("DELETE FROM items WHERE id = 'k'")
    write(a, "INSERT INTO items (id, qty) VALUES ('k', 2)")
    write(b, "UPDATE items SET name = 'stale update' WHERE id = 'k'")  # made in life 1
    sync_pair(a, b)
    assert item(a, "k") == item(b, "k") == (None, 2)


# -- relay and the vector filter ------------------------------------------------------


def test_relay_through_chain_converges_without_echo(make_store: MakeStore) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('a1', 'from a', 1), ('a2', 'from a', 2)")
    write(c, "INSERT INTO items VALUES ('c1', 'from c', 3)")
    exchange_all(a, b)
    exchange_all(b, c)  # a's rows reach c through b
    exchange_all(c, b)
    exchange_all(b, a)  # c's rows reach a through b
    assert items(a) == items(b) == items(c)
    assert len(items(a)) == 3

    # No echo: b's feed, read with a's vector, holds nothing a wrote.
    for from_seq in (0, 1):
        relayed = b.read_batch(from_seq, a.vector(), 1_000)
        assert all(change.pk[0] != "a1" and change.pk[0] != "a2" for change in relayed.rows)
    write(a, "UPDATE items SET qty = 10 WHERE id = 'a1'")
    exchange_all(a, b)
    assert b.read_batch(0, a.vector(), 1_000).rows == []  # a knows everything b has


def test_mesh_relay_skips_what_the_receiver_already_holds(make_store: MakeStore) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('a1', 'x', 1), ('a2', 'y', 2)")
    write(a, "UPDATE items SET qty = 3 WHERE id = 'a2'")
    exchange_all(a, c)  # c gets a's rows directly
    exchange_all(a, b)
    relayed = b.read_batch(0, c.vector(), 1_000)
    assert relayed.rows == []
    assert exchange(b, c).applied_rows == 0
    assert items(a) == items(b) == items(c)


def test_vector_filter_ships_only_missing_cells(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'name', 1)")
    sync_pair(a, b)
    write(a, "UPDATE items SET qty = 2 WHERE id = 'k'")
    batch = a.read_batch(cursor_of(b, a), b.vector(), 1_000)
    assert len(batch.rows) == 1
    assert set(batch.rows[0].state.cells) == {"qty"}


def test_partial_backlog_leaves_vector_unchanged_and_loses_nothing(
    make_store: MakeStore,
) -> None:
    """DESIGN.md section 4: never advance V from a partial backlog or from seen stamps.

    a's feed ends up with a row stamped by a itself *after* a later-stamped
    row of a (its apply of c's change moved the row 'p' to a new seq).  A
    receiver that took V[a] from the stamps of the first partial batch would
    then filter out p's own-a cell and insert p without its name.
    """
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('p', 'p name', 1)")
    write(a, "INSERT INTO items VALUES ('q', 'q name', 2)")
    exchange_all(a, c)
    write(c, "UPDATE items SET qty = 5 WHERE id = 'p'")
    exchange_all(c, a)  # p moves to a's newest seq, its name still stamped by a, earlier
    q_stamp = a.read_batch(0, {}, 1_000).rows[0].state.cells["name"].stamp
    assert a.read_batch(0, {}, 1_000).rows[0].pk == ("q",)

    vector_before = b.vector()
    first = a.read_batch(0, b.vector(), 1)
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    assert [change.pk for change in first.rows] == [("q",)]
    assert first.to_seq < a.head_seq()
    assert first.vector is None  # cut short: carries no vector
    b.apply_batch(a.site_id, first)  # ... and the session dies here
    assert b.vector().get(a.site_id) == vector_before.get(a.site_id)
    assert b.vector().get(c.site_id) == vector_before.get(c.site_id)

    # Why it matters: with V[a] taken from the stamps seen, p's name would be skipped.
    cursor = b.peer_cursor(a.site_id)
    assert cursor is not None
    wrong = a.read_batch(cursor.cursor, {**b.vector(), a.site_id: q_stamp.hlc}, 1_000)
    assert "name" not in wrong.rows[0].state.cells

    exchange_all(a, b)  # a later, complete session
    assert item(b, "p") == ("p name", 5)
    assert items(a) == items(b) == items(c)
    assert b.vector()[a.site_id] == a.vector()[a.site_id]


def test_a_row_written_since_the_last_capture_is_not_lost_by_a_read(
    make_store: MakeStore,
) -> None:
    """A batch stops before a row with uncaptured writes, and then claims nothing.

    Regression (found by tests/test_convergence_stateful.py): read_batch
    skipped the pending row but still sent a vector covering its earlier
    cells, so the receiver later got only the newly written cell and showed
    NULL for the rest, for good.  Shipping it instead would pair the new value
    with the old stamp.
    """
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'name', 1)")
    write(a, "INSERT INTO items VALUES ('other', 'x', 0)")
    a.connection.execute("UPDATE items SET qty = 2 WHERE id = 'k'")  # not captured yet
    cursor = b.peer_cursor(a.site_id)
    assert cursor is None
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    batch = a.read_batch(0, b.vector(), 1_000)
    assert batch.rows == []  # it ends before 'k', the first row written since
    assert batch.to_seq < a.head_seq()
    assert batch.vector is None  # and claims nothing
    b.apply_batch(a.site_id, batch)
    again = a.read_batch(batch.to_seq, b.vector(), 1_000)
    assert again.to_seq == batch.to_seq  # no progress past 'k' until its capture
    a.capture()  # the node's capture loop does this within milliseconds
    exchange_all(a, b)
    assert item(b, "k") == ("name", 2)
    assert items(a) == items(b)


def test_batches_hold_whole_transactions_and_only_the_last_carries_a_vector(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a"), make_store("b")
    for index in range(5):
        a.connection.execute("BEGIN")
        a.connection.execute("INSERT INTO items VALUES (?, 'x', 1)", (f"k{index}a",))
        a.connection.execute("INSERT INTO items VALUES (?, 'y', 2)", (f"k{index}b",))
        a.connection.execute("COMMIT")
        a.capture()
    vectors = []
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    while True:
        cursor = b.peer_cursor(a.site_id)
        assert cursor is not None
        if cursor.cursor >= a.head_seq():
            break
        batch = a.read_batch(cursor.cursor, b.vector(), 3)
        assert len(batch.rows) % 2 == 0  # never half a transaction
        vectors.append(batch.vector)
        b.apply_batch(a.site_id, batch)
    assert all(vector is None for vector in vectors[:-1])
    assert vectors[-1] is not None
    assert items(a) == items(b)


# -- redelivery and atomicity -----------------------------------------------------------


def test_a_key_inserted_and_deleted_before_one_capture_ships_a_valid_tombstone(
    make_store: MakeStore,
) -> None:
    # Found by syncmesh chaos (kill): the client wrote while the node was down.
    a, b = make_store("a"), make_store("b")
    a.connection.execute("INSERT INTO items VALUES ('brief', 'x', 1)")
    a.connection.execute("DELETE FROM items WHERE id = 'brief'")
    a.connection.execute("INSERT INTO items VALUES ('kept', 'y', 2)")
    assert a.capture() == 2
    write(b, "INSERT INTO items VALUES ('brief', 'from b', 3)")  # concurrent life at b
    exchange_all(a, b)  # the batch decodes: no stamp without a site or the reverse
    assert items(a) == items(b)
    assert item(b, "kept") == ("y", 2)
    cl = "SELECT cl FROM _syncmesh_shadow_items WHERE k0 = 'brief'"
    assert a.connection.execute(cl).fetchone() == b.connection.execute(cl).fetchone()


def test_reapplying_a_batch_raises_and_changes_nothing(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'x', 1), ('j', 'y', 2)")
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    batch = a.read_batch(0, b.vector(), 1_000)
    b.apply_batch(a.site_id, batch)
    before = snapshot(b, a)
    with pytest.raises(StoreError, match="does not continue"):
        b.apply_batch(a.site_id, batch)
    assert snapshot(b, a) == before
    # A gap (a batch from beyond the cursor) is refused the same way.
    write(a, "UPDATE items SET qty = 3")
    write(a, "UPDATE items SET qty = 4")
    ahead = a.read_batch(batch.to_seq + 1, b.vector(), 1_000)
    with pytest.raises(StoreError):
        b.apply_batch(a.site_id, ahead)
    assert snapshot(b, a) == before


def test_apply_from_unknown_peer_is_refused(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'x', 1)")
    with pytest.raises(StoreError):
        b.apply_batch(a.site_id, a.read_batch(0, {}, 100))
    assert items(b) == []


CHECKED_DDL = (
    "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT,"
    " qty INTEGER CHECK (qty IS NULL OR qty >= 0))"
)


def test_row_refused_by_a_constraint_is_quarantined_and_sync_continues(
    make_store: MakeStore,
) -> None:
    a = make_store("a")
    b = make_store("b", ddl=CHECKED_DDL)  # only the receiver refuses negative quantities
    assert a.fingerprint() == b.fingerprint()
    write(a, "INSERT INTO items VALUES ('ok1', 'x', 1), ('bad', 'y', -5), ('ok2', 'z', 3)")
    bad_stamp = a.read_batch(0, {}, 100).rows[0].state.cells["qty"].stamp.hlc

    result = exchange(a, b)
    assert result.applied_rows == 2
    assert result.quarantined_rows == 1
    assert [row[0][0] for row in items(b)] == ["ok1", "ok2"]
    (entry,) = b.quarantine()
    assert entry["pk"] == "'bad'"
    assert "constraint" in str(entry["reason"])
    assert cursor_of(b, a) == a.head_seq()
    assert b.vector()[a.site_id] < bad_stamp  # capped below what b does not hold

    # Syncing carries on.
    write(a, "INSERT INTO items VALUES ('ok3', 'w', 4)")
    write(a, "UPDATE items SET name = 'x2' WHERE id = 'ok1'")
    assert exchange(a, b).applied_rows == 2
    assert item(b, "ok3") == ("w", 4)
    assert item(b, "ok1") == ("x2", 1)
    assert b.vector()[a.site_id] < bad_stamp

    # Once the origin fixes the row, it arrives (the capped vector re-ships it whole).
    write(a, "UPDATE items SET qty = 0 WHERE id = 'bad'")
    exchange(a, b)
    assert item(b, "bad") == ("y", 0)
    assert b.retry_quarantine() == 1  # the old version merges as superseded
    assert b.quarantine() == []
    exchange(a, b)
    assert items(a) == items(b)


UNIQUE_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT UNIQUE, qty INTEGER)"


def test_key_change_of_a_row_with_a_unique_column_applies_cleanly(
    make_store: MakeStore,
) -> None:
    """The old key's delete must run before the new key's insert takes its UNIQUE value.

    Regression: the apply ran upserts before deletes, so the new row hit the
    old one's UNIQUE value and was quarantined on every receiver.
    """
    a, b = make_store("a", ddl=UNIQUE_DDL), make_store("b", ddl=UNIQUE_DDL)
    write(a, "INSERT INTO items VALUES ('old', 'x@example.org', 1)")
    exchange_all(a, b)
    write(a, "UPDATE items SET id = 'new' WHERE id = 'old'")
    exchange_all(a, b)
    assert b.quarantine() == []
    assert items(b) == items(a)
    a.connection.execute("DELETE FROM items WHERE id = 'new'")
    write(a, "INSERT INTO items VALUES ('newer', 'x@example.org', 2)")  # one capture
    exchange_all(a, b)
    assert b.quarantine() == []
    assert items(b) == items(a) == [(("newer", "text"), ("x@example.org", "text"), (2, "integer"))]


def test_trigger_rolling_back_the_apply_leaves_nothing_applied(make_store: MakeStore) -> None:
    """A user trigger's RAISE(ROLLBACK) ends the whole apply transaction.

    Regression: the apply used to carry on in autocommit mode and commit half
    the batch with an advanced cursor, then report a failed COMMIT.
    """
    a, b = make_store("a"), make_store("b")
    b.connection.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON items WHEN NEW.name = 'boom'"
        " BEGIN SELECT RAISE(ROLLBACK, 'refused by trigger'); END"
    )
    write(a, "INSERT INTO items VALUES ('k1', 'ok', 1), ('k2', 'boom', 2), ('k3', 'ok', 3)")
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    before = snapshot(b, a)
    with pytest.raises(StoreError, match="refused by trigger"):
        exchange(a, b)
    assert snapshot(b, a) == before
    assert not b.connection.in_transaction
    b.connection.execute("DROP TRIGGER refuse")
    exchange(a, b)
    assert items(a) == items(b)


# -- clock drift -----------------------------------------------------------------------


def test_rows_beyond_the_drift_limit_are_quarantined_then_retried(
    make_store: MakeStore,
) -> None:
    behind_ms = 10 * 60_000
    clock_a = ManualClock(BASE_MS - behind_ms)
    clock_b = ManualClock(BASE_MS - behind_ms)  # b's physical clock stays 10 min behind
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('early', 'ok', 1)")
    clock_a.set(BASE_MS)
    write(a, "INSERT INTO items VALUES ('late', 'too far ahead', 2)")
    late_hlc = a.clock.last

    result = exchange(a, b)
    assert result.drift_refused_rows == 1
    assert result.applied_rows == 1
    assert item(b, "early") == ("ok", 1)
    assert item(b, "late") is None
    (entry,) = b.quarantine()
    assert entry["pk"] == "'late'"
    assert "ahead" in str(entry["reason"])
    assert b.vector().get(a.site_id, 0) < late_hlc  # never claims the refused write
    assert b.clock.last < late_hlc  # and never adopted its stamp

    assert b.retry_quarantine() == 0  # still too far ahead
    clock_b.set(BASE_MS)
    assert b.retry_quarantine() == 1
    assert b.quarantine() == []
    assert item(b, "late") == ("too far ahead", 2)
    assert b.clock.last >= late_hlc
    write(a, "UPDATE items SET qty = 3 WHERE id = 'early'")
    exchange_all(a, b)
    assert items(a) == items(b)
    assert b.vector()[a.site_id] == a.vector()[a.site_id]


class SteppingBackClock(ManualClock):
    """A wall clock stepped back by `step_ms` at every reading (NTP gone wild)."""

    def __init__(self, ms: int) -> None:
        super().__init__(ms)
        self.step_ms = 0

    def now_ms(self) -> int:
        reading = self.ms
        self.ms -= self.step_ms
        return reading


def test_clock_jump_back_during_an_apply_does_not_fail_the_batch(make_store: MakeStore) -> None:
    clock_a = ManualClock(BASE_MS + DRIFT_MS_MAX - 1_000)  # ahead, but within the limit
    clock_b = SteppingBackClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('near', 'the limit', 1)")
    # b's clock goes back 0.7 s at each reading: the drift bound (read once
    # per batch) still admits the row, a second check at adoption would not.
    clock_b.step_ms = 700
    result = exchange(a, b)
    assert (result.applied_rows, result.drift_refused_rows) == (1, 0)
    assert item(b, "near") == ("the limit", 1)
    assert b.clock.last >= a.clock.last  # the stamp was adopted: b's next writes sort after it


class SteppingClock(ManualClock):
    """A wall clock that moves `step_ms` further at every reading."""

    def __init__(self, ms: int, step_ms: int) -> None:
        super().__init__(ms)
        self.step_ms = step_ms

    def now_ms(self) -> int:
        self.ms += self.step_ms
        return self.ms


def test_a_transaction_at_the_drift_limit_is_not_torn_across_tables(tmp_path: Path) -> None:
    # Found by syncmesh chaos (beyond): an order was applied while its lines
    # were refused, because each table read the clock for its own bound.
    ddl = [
        "CREATE TABLE lines (id TEXT PRIMARY KEY, order_id TEXT, amount INTEGER)",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)",
    ]
    step_ms = 10
    clock_b = SteppingClock(BASE_MS, step_ms)
    # a's stamp lands between b's first and third readings plus the drift limit.
    clock_a = ManualClock(BASE_MS + DRIFT_MS_MAX + 2 * step_ms + step_ms // 2)
    stores = []
    for name, clock in (("a", clock_a), ("b", clock_b)):
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=HybridClock(clock, drift_ms_max=DRIFT_MS_MAX)
        )
        store.init()
        for statement in ddl:
            store.connection.execute(statement)
        store.track(["lines", "orders"])
        stores.append(store)
    a, b = stores
    try:
        a.connection.execute("BEGIN")
        a.connection.execute("INSERT INTO orders VALUES ('o1', 30)")
        a.connection.execute("INSERT INTO lines VALUES ('l1', 'o1', 10), ('l2', 'o1', 20)")
        a.connection.execute("COMMIT")
        a.capture()
        clock_b.ms = BASE_MS  # b's apply reads it at +10 (its seq), +20, +30 ms ...
        result = exchange(a, b)
        applied = b.connection.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM lines)"
        ).fetchone()
        assert applied in ((0, 0), (1, 2)), f"torn: {applied} (orders, lines) applied"
        assert result.drift_refused_rows in (0, 3)
    finally:
        for store in stores:
            store.close()


def test_retry_of_a_key_quarantined_twice_applies_its_final_state(
    make_store: MakeStore,
) -> None:
    """A delete and a re-insert of one key, both quarantined, retried together.

    Regression (found by tests/test_convergence_stateful.py): the merge wrote
    the re-insert's upsert and then the delete's DELETE for the same key, so
    the shadow said alive while the user table had no row, for good.
    """
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('k', 'first life', 1)")
    sync_pair(a, b)
    clock_a.advance(2 * DRIFT_MS_MAX)  # a's clock jumps ahead of b's limit
    write(a, "DELETE FROM items WHERE id = 'k'")
    assert exchange(a, b).drift_refused_rows == 1
    write(a, "INSERT INTO items (id, qty) VALUES ('k', 2)")
    assert exchange(a, b).drift_refused_rows == 1
    assert len(b.quarantine()) == 2
    assert item(b, "k") == ("first life", 1)

    clock_b.advance(2 * DRIFT_MS_MAX)
    assert b.retry_quarantine() == 2
    assert item(b, "k") == (None, 2)
    (change,) = b.read_batch(0, {}, 1_000).rows
    assert change.state.alive
    assert change.state.cl == 3
    sync_pair(a, b)
    assert items(a) == items(b)


# -- restore from an old copy ----------------------------------------------------------


def _replace_file(backup: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, target)


def test_restore_from_old_copy_recovers_lost_writes(make_store: MakeStore, tmp_path: Path) -> None:
    clock_a, clock_b = ManualClock(BASE_MS), ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=clock_b)
    write(a, "INSERT INTO items VALUES ('k1', 'v1', 1)")
    sync_pair(a, b)

    backup_path = tmp_path / "a-backup.db"
    backup = sqlite3.connect(backup_path)
    a.connection.backup(backup)
    backup.close()
    site_a, incarnation_before = a.site_id, a.incarnation

    clock_a.set(BASE_MS + 5_000)
    write(a, "UPDATE items SET name = 'lost' WHERE id = 'k1'")
    write(a, "INSERT INTO items VALUES ('k2', 'lost row', 2)")
    lost_hlc = a.clock.last
    exchange_all(a, b)
    assert b.vector()[site_a] >= lost_hlc

    a.close()
    _replace_file(backup_path, tmp_path / "a.db")
    clock_a.set(BASE_MS + 1_000)  # and the machine's clock is behind the lost writes
    a = SqliteStore.open(tmp_path / "a.db", clock=HybridClock(clock_a, drift_ms_max=DRIFT_MS_MAX))
    try:
        assert a.site_id == site_a
        assert item(a, "k1") == ("v1", 1)
        assert item(a, "k2") is None

        assert a.note_peer_vector(b.vector()) is True
        assert a.incarnation != incarnation_before
        assert a.clock.last >= b.vector()[site_a]
        assert a.restoring()
        assert a.note_peer_vector(b.vector()) is False  # noticed once

        write(a, "UPDATE items SET name = 'after restore' WHERE id = 'k1'")
        assert a.clock.last > lost_hlc  # the new write wins over the lost one

        exchange_all(b, a)  # a pulls its lost writes back from b
        assert item(a, "k2") == ("lost row", 2)
        assert item(a, "k1") == ("after restore", 1)
        assert not a.restoring()

        # b still holds a cursor into a's old incarnation: the batch is refused...
        stale = b.peer_cursor(site_a)
        assert stale is not None
        assert stale.incarnation != a.incarnation
        with pytest.raises(StoreError):
            b.apply_batch(site_a, a.read_batch(stale.cursor, b.vector(), 1_000))
        # ... so b restarts reading a from 0; the vector filter keeps that cheap.
        b.reset_peer_cursor(site_a, a.incarnation, a.head_seq(), "")
        exchange_all(a, b)
        assert items(a) == items(b)
        assert item(b, "k1") == ("after restore", 1)
        assert item(b, "k2") == ("lost row", 2)
    finally:
        a.close()


def test_restore_is_detected_after_a_local_write_before_first_contact(
    make_store: MakeStore, tmp_path: Path
) -> None:
    clock_a = ManualClock(BASE_MS)
    a, b = make_store("a", clock=clock_a), make_store("b", clock=ManualClock(BASE_MS))
    write(a, "INSERT INTO items VALUES ('k1', 'v1', 1)")
    sync_pair(a, b)
    backup = sqlite3.connect(tmp_path / "a-backup.db")
    a.connection.backup(backup)
    backup.close()
    clock_a.advance(5_000)
    write(a, "INSERT INTO items VALUES ('k2', 'lost row', 2)")
    exchange_all(a, b)
    a.close()
    _replace_file(tmp_path / "a-backup.db", tmp_path / "a.db")
    clock_a.advance(5_000)  # time moves on normally
    a = SqliteStore.open(tmp_path / "a.db", clock=HybridClock(clock_a, drift_ms_max=DRIFT_MS_MAX))
    try:
        write(a, "INSERT INTO items VALUES ('k3', 'written before contact', 3)")
        assert a.note_peer_vector(b.vector())
        exchange_all(b, a)
        cursor = b.peer_cursor(a.site_id)
        if cursor is None or cursor.incarnation != a.incarnation:
            b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
        exchange_all(a, b)
        assert items(a) == items(b)
    finally:
        a.close()


def test_no_head_vector_covers_a_row_the_receiver_never_got(make_store: MakeStore) -> None:
    """Regression (the stateful test, after reads stopped capturing): a batch held a
    row back but moved the cursor past it; the next, empty batch at the head then
    carried a vector covering the row's older cells, and after the row's capture
    the receiver was sent only the new cell and kept NULL for `n` for good.
    """
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k0', NULL, 0)")
    a.connection.execute("UPDATE items SET name = 'x' WHERE id = 'k0'")  # not captured
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    for _ in range(2):
        exchange(a, b)
    a.capture()
    exchange_all(a, b)
    assert item(b, "k0") == ("x", 0)
    assert items(a) == items(b)


def test_feed_rows_after_counts_rows_past_a_position_up_to_a_cap(make_store: MakeStore) -> None:
    """A peer's lag in changes: feed rows after the seq it acknowledged, capped."""
    a = make_store("a")
    start = a.head_seq()
    write(a, "INSERT INTO items VALUES ('k1', 'x', 1)")
    middle = a.head_seq()
    a.connection.executemany(
        "INSERT INTO items VALUES (?, 'y', 2)", [(f"m{index}",) for index in range(5)]
    )
    a.capture()
    write(a, "UPDATE items SET qty = 3 WHERE id = 'k1'")  # moves k1 to a later seq
    assert a.feed_rows_after([start, middle, a.head_seq()], 100) == [6, 6, 0]
    assert a.feed_rows_after([start], 4) == [4]
    assert a.feed_rows_after([], 4) == []


def test_rows_captured_total_counts_committed_captures_wherever_they_ran(
    make_store: MakeStore,
) -> None:
    """The throughput history's captured rows: capture(), apply's and retry's captures alike."""
    a, b = make_store("a"), make_store("b")
    base = b.rows_captured_total
    write(a, "INSERT INTO items VALUES ('a1', 'x', 1)")
    b.connection.execute("INSERT INTO items VALUES ('b1', 'y', 1)")
    b.connection.execute("INSERT INTO items VALUES ('b2', 'y', 2)")
    exchange_all(a, b)  # apply_batch stamps b's pending writes first
    assert b.rows_captured_total == base + 2
    b.connection.execute("INSERT INTO items VALUES ('b3', 'y', 3)")

    def capture_then_fail() -> None:
        with b.context.transaction():
            capture.capture_pending(b.context)
            raise RuntimeError("the transaction rolls back")

    with pytest.raises(RuntimeError):
        capture_then_fail()
    assert b.rows_captured_total == base + 2
    assert b.capture() == 1
    assert b.rows_captured_total == base + 3


def test_beyond_a_repair_never_applies_lines_whose_order_waits_in_the_drift_quarantine(
    tmp_path: Path,
) -> None:
    """The periodic verify's repair leaves a key waiting in the quarantine to its retry.

    Found by `syncmesh chaos --seed 900 --only 37 --nodes 4 --topology mesh
    --duration 6 --adversarial all --faults ...,beyond` (torn-transaction):
    an order and its lines written at a node running beyond the drift limit
    waited in a peer's drift quarantine; once the peer's clock was near
    enough, its periodic verify found some of the lines divergent (not the
    order) and merged just them, before the retry applied the whole
    transaction.  The peer showed lines without their order, and relayed
    them as a group of their own, so two more nodes showed them too.
    """
    ddl = [
        "CREATE TABLE lines (id TEXT PRIMARY KEY, order_id TEXT, amount INTEGER)",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)",
    ]
    clock_a = ManualClock(BASE_MS + 2 * DRIFT_MS_MAX)  # a runs beyond b's limit
    clock_b = ManualClock(BASE_MS)
    stores = []
    for name, clock in (("a", clock_a), ("b", clock_b)):
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=HybridClock(clock, drift_ms_max=DRIFT_MS_MAX)
        )
        store.init()
        for statement in ddl:
            store.connection.execute(statement)
        store.track(["lines", "orders"])
        stores.append(store)
    a, b = stores
    try:
        a.connection.execute("BEGIN")
        a.connection.execute("INSERT INTO orders VALUES ('o1', 30)")
        a.connection.execute("INSERT INTO lines VALUES ('l1', 'o1', 10), ('l2', 'o1', 20)")
        a.connection.execute("COMMIT")
        a.capture()
        assert exchange(a, b).drift_refused_rows == 3
        clock_b.set(BASE_MS + 2 * DRIFT_MS_MAX)  # near enough now; the retry has not run

        b.merge_repair_rows(a.site_id, a.rows_of("lines", [("l1",), ("l2",)]))

        def counts() -> tuple[int, int]:
            row = b.connection.execute(
                "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM lines)"
            ).fetchone()
            return (int(row[0]), int(row[1]))

        assert counts() in ((0, 0), (1, 2)), f"torn: {counts()} (orders, lines) at b"
        # Nor does b's feed carry the lines in a group without their order.
        shipped = {
            table.table: len(table.rows)
            for table in b.read_batch(0, {}, 1_000).tables
            if table.rows
        }
        assert shipped in ({}, {"orders": 1, "lines": 2}), f"b would relay {shipped}"
        assert b.retry_quarantine() == 3
        assert counts() == (1, 2)
        assert b.quarantine() == []
    finally:
        for store in stores:
            store.close()
