"""Mixed schema versions at the store (issue 14, ADR 0013 "Mixed schema versions").

Two or three real stores, the DDL by the sqlite3 shell at one store at a
time, writes on every side throughout, batches through the wire codec
where the codec carries everything the test needs.  What must hold:
shared columns keep syncing; the cells of a column a store does not have
yet wait there with their stamps and land when it adds the column; a
store without the column never claims, in its vector, writes it holds
only as waiting cells; renames map both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from bench import schema_bytes
from syncmesh.clock import HybridClock
from syncmesh.model import SqlValue, Stamp
from syncmesh.protocol.codec import decode, encode
from syncmesh.protocol.messages import Batch
from syncmesh.store.records import ApplyResult
from syncmesh.store.sqlite import SqliteStore, quarantine
from tests.helpers import ManualClock, rows_with_types, run_cli, sqlite3_shell
from tests.schema_steps import add_column, drop_column, rename_column


class MakeStore(Protocol):
    def __call__(self, name: str, clock: ManualClock | None = None) -> SqliteStore: ...


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[SqliteStore] = []

    def make(name: str, clock: ManualClock | None = None) -> SqliteStore:
        hybrid = None if clock is None else HybridClock(clock, drift_ms_max=60_000)
        store = SqliteStore.open(tmp_path / f"{name}.db", clock=hybrid)
        store.init()
        store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
        store.track(["items"])
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def pull(
    src: SqliteStore,
    dst: SqliteStore,
    *,
    tables: list[str] | None = None,
    adopt_vector: bool = True,
    codec: bool = True,
) -> ApplyResult:
    """`dst` reads `src`'s feed after its cursor, up to the head, and applies it."""
    cursor = dst.peer_cursor(src.site_id)
    if cursor is None:
        dst.reset_peer_cursor(src.site_id, src.incarnation, src.head_seq(), "")
        cursor = dst.peer_cursor(src.site_id)
        assert cursor is not None
    src.capture()
    batch = src.read_batch(cursor.cursor, dst.vector(), 100_000, tables)
    assert batch.to_seq == src.head_seq()
    if codec:
        message = decode(encode(Batch(batch)))
        assert isinstance(message, Batch)
        batch = message.batch
    return dst.apply_batch(src.site_id, batch, adopt_vector=adopt_vector)


def sync(left: SqliteStore, right: SqliteStore, *, codec: bool = True) -> None:
    pull(left, right, codec=codec)
    pull(right, left, codec=codec)


def write(store: SqliteStore, sql: str, *params: SqlValue) -> None:
    store.connection.execute(sql, params)
    store.capture()


def shell(store: SqliteStore, sql: str) -> str:
    return sqlite3_shell(Path(store.context.path), sql)


def cell_version(store: SqliteStore, key: str, column: str) -> Stamp:
    """The stamp of `column` of row `key` as `store` holds it (its feed from 0)."""
    for change in store.read_batch(0, {}, 100_000).rows:
        if change.pk == (key,):
            return change.state.cells[column].stamp
    raise AssertionError(f"no row {key!r}")


def cell_stamp(store: SqliteStore, key: str, column: str) -> int:
    """The HLC of `column` of row `key` as `store` holds it."""
    return cell_version(store, key, column).hlc


def test_an_added_column_waits_at_the_old_side_and_converges_once_it_migrates(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k0', 'zero')")
    sync(a, b)
    add_column(a, "items", "extra TEXT DEFAULT 'dflt'")
    # Writes on both sides while only `a` has the column.
    write(a, "INSERT INTO items (id, name, extra) VALUES ('k1', 'one', 'e1')")
    write(a, "UPDATE items SET extra = 'e0' WHERE id = 'k0'")
    write(b, "INSERT INTO items VALUES ('k2', 'two')")
    write(b, "UPDATE items SET name = 'ZERO' WHERE id = 'k0'")
    sync(a, b)
    sync(a, b)

    # Shared columns converge; the old side's insert has the column's DEFAULT.
    assert shell(a, "SELECT id, name, extra FROM items ORDER BY id") == (
        "k0|ZERO|e0\nk1|one|e1\nk2|two|dflt\n"
    )
    assert shell(b, "SELECT id, name FROM items ORDER BY id") == "k0|ZERO\nk1|one\nk2|two\n"
    # The new column's values wait at b, and b claims none of them.
    status = b.status()
    assert status.waiting_cells == {"items": {"extra": 2}}
    assert status.quarantined_rows == 0
    oldest_waiting = min(cell_stamp(a, "k0", "extra"), cell_stamp(a, "k1", "extra"))
    assert b.vector()[a.site_id] < oldest_waiting

    add_column(b, "items", "extra TEXT DEFAULT 'dflt'")
    assert b.status().waiting_cells == {}
    sync(a, b)
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")
    assert shell(b, "SELECT id, name, extra FROM items ORDER BY id") == (
        "k0|ZERO|e0\nk1|one|e1\nk2|two|dflt\n"
    )
    # Once nothing waits, b's vector covers a's writes again (the next batch at a's head).
    write(a, "UPDATE items SET name = 'later' WHERE id = 'k2'")
    sync(a, b)
    assert b.vector()[a.site_id] >= cell_stamp(a, "k2", "name")
    # The update of another column leaves the unwritten `extra` at its DEFAULT.
    assert shell(b, "SELECT extra FROM items WHERE id = 'k2'") == "dflt\n"
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")


def test_a_column_never_written_in_a_row_holds_its_default_at_every_site(
    make_store: MakeStore,
) -> None:
    """b (old) inserts; a and c (new) get the row, c through a: both with the DEFAULT."""
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    for store in (a, c):
        add_column(store, "items", "extra TEXT NOT NULL DEFAULT 'dflt'")
    write(b, "INSERT INTO items VALUES ('k', 'from b')")
    pull(b, a)
    pull(a, c)
    write(a, "UPDATE items SET name = 'renamed at a' WHERE id = 'k'")
    pull(a, c)
    for store in (a, c):
        assert shell(store, "SELECT id, name, extra FROM items") == "k|renamed at a|dflt\n"
    # A value written later travels as any write.
    write(c, "UPDATE items SET extra = 'set at c' WHERE id = 'k'")
    pull(c, a)
    assert shell(a, "SELECT extra FROM items") == "set at c\n"


def test_the_greatest_waiting_write_of_a_cell_wins(make_store: MakeStore) -> None:
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    write(a, "INSERT INTO items VALUES ('k', 'n')")
    sync(a, b)
    sync(a, c)
    for store in (a, c):
        add_column(store, "items", "extra TEXT")
    write(a, "UPDATE items SET extra = 'from a' WHERE id = 'k'")
    write(c, "UPDATE items SET extra = 'from c' WHERE id = 'k'")
    stamps = {a: cell_version(a, "k", "extra"), c: cell_version(c, "k", "extra")}
    later, earlier = sorted(stamps, key=lambda store: stamps[store], reverse=True)
    # b hears the later write first, the earlier one second: the later one stays.
    pull(later, b)
    pull(earlier, b)
    assert b.status().waiting_cells == {"items": {"extra": 1}}
    add_column(b, "items", "extra TEXT")
    expected = "from a" if later is a else "from c"
    assert shell(b, "SELECT extra FROM items") == f"{expected}\n"


def test_a_waiting_cell_of_a_past_life_of_the_row_does_not_come_back(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a"), make_store("b")
    add_column(a, "items", "extra TEXT DEFAULT 'dflt'")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old life')")
    sync(a, b)
    assert b.status().waiting_cells == {"items": {"extra": 1}}
    # b deletes the row and inserts it again: a new life, without `extra`.
    write(b, "DELETE FROM items WHERE id = 'k'")
    write(b, "INSERT INTO items VALUES ('k', 'new life')")
    add_column(b, "items", "extra TEXT DEFAULT 'dflt'")
    sync(a, b)
    sync(a, b)
    for store in (a, b):
        assert shell(store, "SELECT id, name, extra FROM items") == "k|new life|dflt\n"
    assert b.status().waiting_cells == {}


def test_a_relay_without_the_column_loses_nothing_and_claims_nothing_false(
    make_store: MakeStore,
) -> None:
    """A - B - C: A and C have `extra`, B (the relay) has not migrated yet."""
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    for store in (a, c):
        add_column(store, "items", "extra INTEGER")
    write(a, "INSERT INTO items VALUES ('k1', 'one', 1)")
    write(a, "INSERT INTO items VALUES ('k2', 'two', 2)")
    pull(a, b)
    # Even adopting b's vector, c claims none of a's `extra` writes: b's
    # vector is capped below the cells it holds as waiting.
    pull(b, c, adopt_vector=True)
    assert shell(c, "SELECT id, name, extra FROM items ORDER BY id") == "k1|one|\nk2|two|\n"
    assert c.vector().get(a.site_id, 0) < cell_stamp(a, "k1", "extra")
    # So a, asked by c's vector, still sends them.
    batch = a.read_batch(0, c.vector(), 1000)
    assert {change.pk for change in batch.rows if "extra" in change.state.cells} == {
        ("k1",),
        ("k2",),
    }
    # B migrates: its waiting cells land, and reach c through b alone.
    add_column(b, "items", "extra INTEGER")
    write(a, "UPDATE items SET extra = 22 WHERE id = 'k2'")
    pull(a, b)
    pull(b, c)
    assert shell(c, "SELECT id, name, extra FROM items ORDER BY id") == "k1|one|1\nk2|two|22\n"
    assert rows_with_types(a.connection, "items") == rows_with_types(c.connection, "items")
    assert rows_with_types(b.connection, "items") == rows_with_types(c.connection, "items")


def test_without_adopting_the_vector_rows_apply_and_the_cursor_moves(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k', 'n')")
    before = b.vector()
    pull(a, b, adopt_vector=False)
    assert shell(b, "SELECT id, name FROM items") == "k|n\n"
    cursor = b.peer_cursor(a.site_id)
    assert cursor is not None
    assert cursor.cursor == a.head_seq()
    assert b.vector() == before
    pull(a, b, adopt_vector=True)  # an empty slice at a's head, with a's vector
    assert b.vector()[a.site_id] == a.vector()[a.site_id]


def test_a_dropped_column_is_not_resurrected_when_its_name_is_added_again(
    make_store: MakeStore,
) -> None:
    a_clock, b_clock = ManualClock(), ManualClock()
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    for store in (a, b):
        add_column(store, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'v1')")
    sync(a, b)
    a_clock.advance(10)
    write(a, "UPDATE items SET extra = 'v2' WHERE id = 'k'")  # before b drops the column
    b_clock.advance(20)
    drop_column(b, "items", "extra")
    pull(a, b)  # a still has the column: its cells are discarded at b, and counted
    status = b.status()
    assert status.discarded_cells == {"items": {"extra": 1}}
    assert status.waiting_cells == {}
    assert status.quarantined_rows == 0
    add_column(b, "items", "extra TEXT")  # the name comes back: a new column
    # Everything is sent again (a node that gains a table does this): the old
    # values, stamped before the drop here, stay out of the new column.
    b.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    with b.context.transaction():
        b.connection.execute("DELETE FROM _syncmesh_vector WHERE site_id = ?", (a.site_id,))
    pull(a, b)
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|\n"
    assert b.status().discarded_cells == {"items": {"extra": 2}}
    # a's column is the old one (created before b's drop), even for a write
    # made after b added the name again: it stays out too.
    a_clock.advance(30)
    write(a, "UPDATE items SET extra = 'v3' WHERE id = 'k'")
    pull(a, b)
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|\n"
    # Once a too has dropped the name and added it again, its writes land.
    a_clock.advance(10)
    drop_column(a, "items", "extra")
    add_column(a, "items", "extra TEXT")
    write(a, "UPDATE items SET extra = 'v4' WHERE id = 'k'")
    pull(a, b)
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|v4\n"


def test_a_column_renamed_at_one_side_syncs_both_ways(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    write(a, "INSERT INTO items VALUES ('k0', 'zero')")
    sync(a, b)
    rename_column(a, "items", "name", "title")
    # a writes under the new name, b under the old one.
    write(a, "INSERT INTO items (id, title) VALUES ('k1', 'one at a')")
    write(b, "INSERT INTO items (id, name) VALUES ('k2', 'two at b')")
    write(b, "UPDATE items SET name = 'zero at b' WHERE id = 'k0'")
    # Former names travel in the batch (the codec's part is schema-node's).
    sync(a, b, codec=False)
    assert shell(a, "SELECT id, title FROM items ORDER BY id") == (
        "k0|zero at b\nk1|one at a\nk2|two at b\n"
    )
    assert shell(b, "SELECT id, name FROM items ORDER BY id") == (
        "k0|zero at b\nk1|one at a\nk2|two at b\n"
    )
    assert a.status().waiting_cells == b.status().waiting_cells == {}
    # b renames too: nothing moves, both agree.
    rename_column(b, "items", "name", "title")
    sync(a, b, codec=False)
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")


def test_the_receiver_maps_an_old_name_by_its_own_former_names(make_store: MakeStore) -> None:
    """Without the sender's former names (an old sender): ours are enough one way."""
    a, b = make_store("a"), make_store("b")
    rename_column(a, "items", "name", "title")
    write(b, "INSERT INTO items (id, name) VALUES ('k', 'from b')")
    pull(b, a)  # through the codec, which does not carry former names yet
    assert shell(a, "SELECT id, title FROM items") == "k|from b\n"


def test_the_feed_leaves_out_tables_the_receiver_does_not_track(make_store: MakeStore) -> None:
    a = make_store("a")
    a.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    a.track(["notes"])
    write(a, "INSERT INTO items VALUES ('k', 'n')")
    write(a, "INSERT INTO notes VALUES ('n', 'b')")
    everything = a.read_batch(0, {}, 1000)
    assert {table.table for table in everything.tables} == {"items", "notes"}
    only_items = a.read_batch(0, {}, 1000, ["items", "elsewhere"])
    assert [table.table for table in only_items.tables] == ["items"]
    assert only_items.to_seq == everything.to_seq == a.head_seq()


def test_the_feed_carries_former_names_of_renamed_columns(make_store: MakeStore) -> None:
    a = make_store("a")
    write(a, "INSERT INTO items VALUES ('k', 'n')")
    plain = a.read_batch(0, {}, 1000)
    assert plain.tables[0].former == ()
    rename_column(a, "items", "name", "title")
    write(a, "UPDATE items SET title = 't' WHERE id = 'k'")
    (table,) = a.read_batch(0, {}, 1000).tables
    assert table.columns == ("title",)
    assert table.former == (("name",),)


def test_rows_of_a_table_not_tracked_here_are_quarantined(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    a.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    a.track(["notes"])
    write(a, "INSERT INTO notes VALUES ('n', 'b')")
    write(a, "INSERT INTO items VALUES ('k', 'n')")
    result = pull(a, b)  # an old sender: it sends every table
    assert result.quarantined_rows == 1
    (entry,) = b.quarantine()
    assert entry["table"] == "notes"
    assert "not tracked here" in str(entry["reason"])
    assert shell(b, "SELECT id, name FROM items") == "k|n\n"


def test_a_quarantined_row_written_under_an_old_name_lands_in_the_renamed_column(
    make_store: MakeStore,
) -> None:
    """Quarantined before the rename here (say, for clock drift): retried after it."""
    a, b = make_store("a"), make_store("b")
    write(b, "INSERT INTO items VALUES ('k', 'under the old name')")
    (change,) = b.read_batch(0, {}, 1000).rows
    rename_column(a, "items", "name", "title")
    with a.context.transaction():
        quarantine.add(a.context, change, b.site_id, "a stamp lies beyond the allowed clock drift")
    assert a.retry_quarantine() == 1
    assert shell(a, "SELECT id, title FROM items") == "k|under the old name\n"
    assert a.status().waiting_cells == {}


def test_quarantined_rows_with_a_column_not_here_apply_the_rest_on_retry(
    make_store: MakeStore,
) -> None:
    """A row quarantined by an older version for "other columns" is split on retry."""
    a, b = make_store("a"), make_store("b")
    add_column(a, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'e')")
    (change,) = a.read_batch(0, {}, 1000).rows
    with b.context.transaction():
        quarantine.add(b.context, change, a.site_id, "the peer's columns differ from ours")
    assert b.retry_quarantine() == 1
    assert b.quarantine() == []
    assert shell(b, "SELECT id, name FROM items") == "k|n\n"
    assert b.status().waiting_cells == {"items": {"extra": 1}}
    add_column(b, "items", "extra TEXT")
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|e\n"


def test_the_add_column_bench_sends_no_row_for_the_column_itself(tmp_path: Path) -> None:
    """bench.schema_bytes at a tiny size: the figures it reports are what it claims."""
    figures = {figure: value for figure, value, _unit in schema_bytes.run(2_000, 10, tmp_path)}
    assert figures["ADD COLUMN: rows A sent B"] == 0
    assert figures["10 values written: rows A sent B"] == 10
    assert figures["B (not migrated yet): cells waiting for the column"] == 10
    assert figures["B: values in the column after it migrated"] == 10


def test_syncmesh_status_shows_cells_waiting_for_a_column(make_store: MakeStore) -> None:
    """Not an error: `syncmesh status` of the file lists them per table and column."""
    a, b = make_store("a"), make_store("b")
    add_column(a, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k1', 'one', 'e1')")
    write(a, "INSERT INTO items VALUES ('k2', 'two', 'e2')")
    pull(a, b)
    result = run_cli("status", b.context.path)
    assert result.returncode == 0, result.stderr
    assert "items.extra: 2 cells, for a column not added here yet" in result.stdout


def test_waiting_cells_land_in_a_table_with_a_not_null_column(tmp_path: Path) -> None:
    """Regression (found by the Alembic rollout): a waiting cell merged once its column
    appears writes only that column of a held row.  As an upsert it failed, because
    SQLite checks NOT NULL on the row it would insert before it sees the conflict: the
    cell was quarantined ("NOT NULL constraint failed") and health went 503."""
    stores = []
    for name in ("a", "b"):
        store = SqliteStore.open(tmp_path / f"{name}.db")
        store.init()
        store.connection.execute(
            "CREATE TABLE items (id TEXT PRIMARY KEY, title TEXT NOT NULL, qty INTEGER)"
        )
        store.track(["items"])
        stores.append(store)
    a, b = stores
    try:
        a.connection.execute("INSERT INTO items VALUES ('k', 'kept', 1)")
        sync(a, b)
        add_column(a, "items", "note TEXT")
        a.connection.execute("UPDATE items SET note = 'from a' WHERE id = 'k'")
        sync(a, b)  # b has no `note` yet: the cell waits there
        add_column(b, "items", "note TEXT")
        assert b.quarantine() == []
        assert rows_with_types(b.connection, "items") == rows_with_types(a.connection, "items")
        assert b.connection.execute("SELECT title, note FROM items").fetchall() == [
            ("kept", "from a")
        ]
    finally:
        for store in stores:
            store.close()


def test_a_row_new_here_takes_the_default_a_column_was_added_with_after_a_rebuild_dropped_it(
    make_store: MakeStore,
) -> None:
    """Found by the long convergence state machine: a rebuild that copies columns by name
    (as Django's and Alembic's batch mode do) left the added column without its DEFAULT at
    c; a row from b (without the column) was then NULL there and 'dflt' at a, with equal
    digests (default-stamped cells are left out of them), so verify saw nothing."""
    a, b, c = make_store("a"), make_store("b"), make_store("c")
    for store in (a, c):
        add_column(store, "items", "extra TEXT DEFAULT 'dflt'")
    shell(
        c,
        "BEGIN; CREATE TABLE items_new (id TEXT PRIMARY KEY, name TEXT, extra TEXT);"
        " INSERT INTO items_new SELECT id, name, extra FROM items; DROP TABLE items;"
        " ALTER TABLE items_new RENAME TO items; COMMIT;",
    )
    assert c.reconcile_schema()
    write(b, "INSERT INTO items VALUES ('k', 'from b')")
    pull(b, a)
    pull(b, c)
    for store in (a, c):
        assert shell(store, "SELECT id, name, extra FROM items") == "k|from b|dflt\n"
    sync(a, c)
    assert rows_with_types(a.connection, "items") == rows_with_types(c.connection, "items")
    # A row c's own writers insert now takes the table's DEFAULT as it is today, and syncs.
    write(c, "INSERT INTO items (id, name) VALUES ('mine', 'at c')")
    sync(a, c)
    assert shell(a, "SELECT extra IS NULL FROM items WHERE id = 'mine'") == "1\n"


def test_a_row_from_an_older_schema_refused_for_drift_takes_the_default_on_retry(
    make_store: MakeStore,
) -> None:
    """Found by the state machine: the row was quarantined in our columns, with a NULL
    cell for the column its sender lacks, and its retry wrote that NULL over the
    column's DEFAULT; the sites that got the row in time held the DEFAULT."""
    a_clock, b_clock = ManualClock(1_700_000_000_000), ManualClock(1_700_000_000_000 - 100_000)
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    add_column(b, "items", "extra TEXT DEFAULT 'dflt'")
    write(a, "INSERT INTO items VALUES ('k', 'from a')")
    result = pull(a, b)
    assert result.drift_refused_rows == 1  # b's clock is 100 s behind a's stamp
    (entry,) = b.quarantine()
    assert "ahead of the local clock" in str(entry["reason"])
    b_clock.set(1_700_000_000_000 + 1_000)
    assert b.retry_quarantine() == 1
    assert shell(b, "SELECT id, name, extra FROM items") == "k|from a|dflt\n"
    # Once a migrates too, both hold the same row.
    add_column(a, "items", "extra TEXT DEFAULT 'dflt'")
    sync(a, b)
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")


def test_a_row_from_an_older_schema_refused_by_a_constraint_takes_the_default_on_retry(
    make_store: MakeStore,
) -> None:
    """The same for a row a constraint turned away: it is kept as the sender sent it."""
    a, b = make_store("a"), make_store("b")
    add_column(b, "items", "extra TEXT DEFAULT 'dflt'")
    shell(b, "CREATE UNIQUE INDEX items_name ON items (name)")
    write(b, "INSERT INTO items VALUES ('k1', 'taken', 'mine')")
    write(a, "INSERT INTO items VALUES ('k2', 'taken')")
    pull(a, b)
    assert [entry["pk"] for entry in b.quarantine()] == ["'k2'"]
    write(b, "DELETE FROM items WHERE id = 'k1'")
    assert b.retry_quarantine() == 1
    assert shell(b, "SELECT id, name, extra FROM items") == "k2|taken|dflt\n"


def test_a_row_refused_for_drift_from_a_site_that_renamed_a_column_lands_in_ours(
    make_store: MakeStore,
) -> None:
    """The entry keeps each cell under our name for its column: the sender's former
    names (which the retry's batch no longer carries) are not needed to map it."""
    a_clock, b_clock = ManualClock(1_700_000_000_000), ManualClock(1_700_000_000_000 - 100_000)
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    rename_column(a, "items", "name", "title")
    write(a, "INSERT INTO items (id, title) VALUES ('k', 'renamed at a')")
    assert pull(a, b).drift_refused_rows == 1
    b_clock.set(1_700_000_000_000 + 1_000)
    assert b.retry_quarantine() == 1
    assert shell(b, "SELECT id, name FROM items") == "k|renamed at a\n"
    assert b.status().waiting_cells == {}


def test_quarantined_rows_naming_other_columns_are_retried_each_in_its_own_shape(
    make_store: MakeStore,
) -> None:
    """Found by the state machine: retried in one batch with the union of the columns,
    a row sent before its sender added a column read as holding no stamp for it,
    where every other site holds the shared default stamp: the trees never agreed."""
    a_clock, b_clock = ManualClock(1_700_000_000_000), ManualClock(1_700_000_000_000 - 100_000)
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    add_column(b, "items", "extra TEXT DEFAULT 'dflt'")
    write(a, "INSERT INTO items VALUES ('k1', 'before a migrated')")
    assert pull(a, b).drift_refused_rows == 1
    add_column(a, "items", "extra TEXT DEFAULT 'dflt'")
    write(a, "INSERT INTO items VALUES ('k2', 'after', 'e2')")
    assert pull(a, b).drift_refused_rows == 1
    b_clock.set(1_700_000_000_000 + 1_000)
    assert b.retry_quarantine() == 2
    assert shell(b, "SELECT id, extra FROM items ORDER BY id") == "k1|dflt\nk2|e2\n"
    assert cell_version(b, "k1", "extra") == cell_version(a, "k1", "extra")
    sync(a, b)
    assert a.summaries(["items"])["items"].root() == b.summaries(["items"])["items"].root()
    assert a.deep_summary("items")[0].root() == b.deep_summary("items")[0].root()


def test_a_late_write_to_a_dropped_column_stays_out_of_the_column_added_again(
    make_store: MakeStore,
) -> None:
    """Two rolling deploys: drop `extra`, then add it again.  A write made to the old
    column at a site that had not dropped it yet, delivered after the other site added
    the name again, is of the old column (its sender's column was created before the
    drop): it must not land in the new one, wherever and whenever it arrives."""
    a_clock, b_clock = ManualClock(), ManualClock()
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    for store in (a, b):
        add_column(store, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'v1')")
    sync(a, b)
    b_clock.advance(10)
    drop_column(b, "items", "extra")  # the first deploy reaches b
    a_clock.advance(20)
    write(a, "UPDATE items SET extra = 'late' WHERE id = 'k'")  # a has not dropped it yet
    b_clock.advance(40)
    add_column(b, "items", "extra TEXT")  # b already runs the second deploy
    pull(a, b)  # the late write arrives only now: it is of the old column
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|\n"
    assert b.status().parked_cells == {}
    a_clock.advance(10)
    drop_column(a, "items", "extra")  # the first deploy reaches a, then the second
    a_clock.advance(40)
    add_column(a, "items", "extra TEXT")
    sync(a, b)
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")


def test_cells_of_a_name_added_again_elsewhere_are_parked_and_land_when_it_is_added_here(
    make_store: MakeStore,
) -> None:
    """The cells wait, holding the vector below them as waiting cells do, and show in status."""
    a_clock, b_clock = ManualClock(), ManualClock()
    a, b = make_store("a", a_clock), make_store("b", b_clock)
    for store in (a, b):
        add_column(store, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'v1')")
    sync(a, b)
    for clock in (a_clock, b_clock):
        clock.advance(10)
    drop_column(a, "items", "extra")
    drop_column(b, "items", "extra")
    a_clock.advance(10)
    add_column(a, "items", "extra TEXT")
    write(a, "UPDATE items SET extra = 'new' WHERE id = 'k'")
    pull(a, b)
    status = b.status()
    assert status.parked_cells == {"items": {"extra": 1}}
    assert status.waiting_cells == {}
    shown = run_cli("status", b.context.path)
    assert shown.returncode == 0, shown.stderr
    assert "items.extra: 1 cells, for the name if it is added again here" in shown.stdout
    assert b.vector()[a.site_id] < cell_stamp(a, "k", "extra")  # b cannot relay it
    b_clock.advance(30)
    add_column(b, "items", "extra TEXT")
    assert b.status().parked_cells == {}
    assert shell(b, "SELECT id, name, extra FROM items") == "k|n|new\n"
    sync(a, b)
    assert b.vector()[a.site_id] >= cell_stamp(a, "k", "extra")
    assert rows_with_types(a.connection, "items") == rows_with_types(b.connection, "items")


def test_a_site_that_adopts_the_vector_of_one_holding_parked_cells_still_gets_them(
    make_store: MakeStore,
) -> None:
    """Found by the chaos `drop+readd` plan: c learns a's write only through b's vector
    claims while b holds it parked; without the cap c would never be sent it."""
    clocks = [ManualClock(), ManualClock(), ManualClock()]
    a, b, c = (make_store(name, clock) for name, clock in zip("abc", clocks, strict=True))
    for store in (a, b, c):
        add_column(store, "items", "extra TEXT")
    write(a, "INSERT INTO items VALUES ('k', 'n', 'v1')")
    for store in (b, c):
        sync(a, store)
    for clock in clocks:
        clock.advance(10)
    for store in (a, b, c):
        drop_column(store, "items", "extra")
    clocks[0].advance(10)
    add_column(a, "items", "extra TEXT")
    write(a, "UPDATE items SET extra = 'new' WHERE id = 'k'")
    pull(a, b)  # parked at b
    pull(b, c)  # c, with b's columns, adopts b's vector
    assert c.vector().get(a.site_id, 0) < cell_stamp(a, "k", "extra")
    clocks[2].advance(30)
    add_column(c, "items", "extra TEXT")
    # a's feed from the start, filtered by what c claims, still has the write.
    c.reset_peer_cursor(a.site_id, a.incarnation, a.head_seq(), "")
    batch = a.read_batch(0, c.vector(), 100_000)
    c.apply_batch(a.site_id, batch)
    assert shell(c, "SELECT id, extra FROM items") == "k|new\n"
