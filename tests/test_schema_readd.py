"""A column dropped at every site, then added again under its name (issue 14).

Found by the chaos `migrate` fault's `drop+readd` plan (docs/chaos.md):
two rolling deploys, the first drops `b` at every site, the second adds a
new `b`.  A site that has re-added `b` writes it; a site that has dropped
`b` but not re-added it yet receives those cells while `b` is a *dropped
name* there, and discards them (`apply.dropped_here`: "the column will not
come back under that identity").  Before the fix nothing sent them again
once it re-added `b`, so the two sites held different values for good.
Now a batch carries each column's creation stamp at its sender: a column
created after the receiver's drop of the name is the new one, and its
cells are parked there until the receiver adds the name again (ADR 0013,
"Notes from the implementation").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.protocol.codec import decode, encode
from syncmesh.protocol.messages import Batch
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, sqlite3_shell
from tests.schema_steps import add_column, drop_column, rename_column


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore, ManualClock, ManualClock]]:
    clocks = ManualClock(), ManualClock()
    opened = []
    for name, clock in zip("ab", clocks, strict=True):
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=HybridClock(clock, drift_ms_max=60_000)
        )
        store.init()
        store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, b TEXT)")
        store.track(["items"])
        opened.append(store)
    yield opened[0], opened[1], clocks[0], clocks[1]
    for store in opened:
        store.close()


def pull(src: SqliteStore, dst: SqliteStore) -> None:
    """`dst` applies `src`'s feed after its cursor, through the wire codec."""
    cursor = dst.peer_cursor(src.site_id)
    if cursor is None:
        dst.reset_peer_cursor(src.site_id, src.incarnation, src.head_seq(), "")
        cursor = dst.peer_cursor(src.site_id)
        assert cursor is not None
    src.capture()
    message = decode(encode(Batch(src.read_batch(cursor.cursor, dst.vector(), 100_000))))
    assert isinstance(message, Batch)
    dst.apply_batch(src.site_id, message.batch)


def write(store: SqliteStore, sql: str) -> None:
    store.connection.execute(sql)
    store.capture()


def rows(store: SqliteStore) -> str:
    return sqlite3_shell(Path(store.context.path), "SELECT id, name, b FROM items")


def test_a_column_re_added_after_every_site_dropped_it_converges(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    a, b, a_clock, b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    pull(b, a)
    # The first rolling deploy: every site drops b.
    a_clock.advance(10)
    b_clock.advance(10)
    drop_column(a, "items", "b")
    drop_column(b, "items", "b")
    # The second one: a adds b again and writes it before b has added it.
    a_clock.advance(10)
    b_clock.advance(10)
    add_column(a, "items", "b TEXT")
    a_clock.advance(10)
    write(a, "UPDATE items SET b = 'new' WHERE id = 'k'")
    pull(a, b)  # b has no column b yet: the cell must wait there, as any new column's
    b_clock.advance(20)
    add_column(b, "items", "b TEXT")
    pull(a, b)
    pull(b, a)
    assert rows(a) == "k|n|new\n"  # the old value is not resurrected
    assert rows(b) == rows(a)


def test_a_column_re_added_behind_a_site_whose_clock_runs_ahead_converges(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """The re-added column is told by its generation, not by comparing two sites' clocks.

    b's clock runs 30 s ahead of a's (within the drift limit), and a has
    heard nothing from b since, so a's re-add of `b` is stamped before
    b's drop of it.  By the creation-stamp rule b took a's new column for
    the old one and discarded its cells (the chaos `skew` fault found it);
    by the column's generation (the drops of its name at its sender: one)
    against b's drops of the name (one), it is the new column, parked at b
    until b adds the name again.
    """
    a, b, a_clock, b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    pull(b, a)
    b_clock.advance(30_000)
    drop_column(b, "items", "b")
    a_clock.advance(10)
    drop_column(a, "items", "b")
    a_clock.advance(10)
    add_column(a, "items", "b TEXT")
    a_clock.advance(10)
    write(a, "UPDATE items SET b = 'new' WHERE id = 'k'")
    assert a.clock.last < b.context.tables["items"].layout.dropped[-1].dropped_hlc
    pull(a, b)  # b has dropped b and not added it again: a's cells are parked
    b_clock.advance(10)
    add_column(b, "items", "b TEXT")
    pull(a, b)
    pull(b, a)
    assert rows(a) == "k|n|new\n"
    assert rows(b) == rows(a)


def test_late_writes_to_the_old_column_stay_out_under_skew_too(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """The other side of the rule: a's clock runs ahead, b writes the old column late.

    b has not dropped `b` yet when it writes it (generation 0 there, the
    old column); a has dropped and re-added it.  However the clocks stand,
    b's late write must not land in a's new column.
    """
    a, b, a_clock, b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    pull(b, a)
    a_clock.advance(10)
    drop_column(a, "items", "b")
    a_clock.advance(10)
    add_column(a, "items", "b TEXT")
    b_clock.advance(30_000)  # b's late write is stamped after a's re-add
    write(b, "UPDATE items SET b = 'late to the old one' WHERE id = 'k'")
    pull(b, a)
    assert rows(a) == "k|n|\n"


def test_a_column_re_added_before_another_site_dropped_it_waits_there_for_its_re_add(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """a drops `b` and adds it again before b has dropped it (a rolling deploy that
    overtook itself, as a killed node makes the chaos plan do); a writes the new `b`.

    b's `b` is still the old column (generation 0), a's the new one
    (generation 1): landing in b's old column, the write was dropped with
    it at b's drop and never sent again.  Now it is parked at b, kept out
    of b's vector, and lands when b has dropped and added `b` too.
    """
    a, b, a_clock, b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    pull(b, a)
    a_clock.advance(10)
    drop_column(a, "items", "b")
    a_clock.advance(10)
    add_column(a, "items", "b TEXT")
    a_clock.advance(10)
    write(a, "UPDATE items SET b = 'new' WHERE id = 'k'")
    pull(a, b)
    assert rows(b) == "k|n|old\n"  # not into the old column
    new_write = a.clock.last
    assert b.vector().get(a.site_id, 0) < new_write  # not claimed: b cannot relay it
    b_clock.advance(40)
    drop_column(b, "items", "b")
    b_clock.advance(10)
    add_column(b, "items", "b TEXT")
    pull(a, b)
    pull(b, a)
    assert rows(a) == "k|n|new\n"
    assert rows(b) == rows(a)


def test_a_file_whose_parked_cells_have_no_generation_gets_the_column_at_open(
    tmp_path: Path,
) -> None:
    """`_syncmesh_parked` from before generations: the column is added (0: unsaid)."""
    path = tmp_path / "old.db"
    store = SqliteStore.open(path)
    store.init()
    store.connection.execute("ALTER TABLE _syncmesh_parked DROP COLUMN generation")
    store.close()
    store = SqliteStore.open(path)
    try:
        columns = [
            row[1] for row in store.connection.execute("PRAGMA table_info(_syncmesh_parked)")
        ]
        assert columns[-1] == "generation"
    finally:
        store.close()


def test_a_site_that_tracks_the_table_after_the_re_add_takes_the_new_column(
    tmp_path: Path,
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """A late joiner: `b` tracked fresh after a dropped and re-added it.

    Its column is generation 0 (no drop to count) but was created after
    a's: it is the new column, and a's writes to it land there.
    """
    a, _b, a_clock, _b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    a_clock.advance(10)
    drop_column(a, "items", "b")
    a_clock.advance(10)
    add_column(a, "items", "b TEXT")
    a_clock.advance(10)
    write(a, "UPDATE items SET b = 'new' WHERE id = 'k'")
    late_clock = ManualClock(a_clock.ms + 1_000)
    late = SqliteStore.open(
        tmp_path / "late.db", clock=HybridClock(late_clock, drift_ms_max=60_000)
    )
    try:
        late.init()
        late.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, b TEXT)")
        late.track(["items"])
        pull(a, late)
        assert rows(late) == "k|n|new\n"
    finally:
        late.close()


# A row refused for its stamps (from a clock ahead of ours) is kept in the
# quarantine in our column names; the schema may change before its retry.
# The retry must judge its cells by the column they were refused in, by our
# own creation stamps, not by the cells' stamps: from a clock ahead, those
# read as written after our drop.  Found by the long state-machine run
# (a cell parked for good capped the vector, and no tombstone could go).


def _refused_for_drift(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> tuple[SqliteStore, SqliteStore, ManualClock]:
    a, b, a_clock, b_clock = stores
    a_clock.advance(70_000)  # beyond b's drift limit (60 s)
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    assert [entry["pk"] for entry in b.quarantine()] == ["'k'"]
    return a, b, b_clock


def test_a_quarantined_cell_of_a_column_dropped_here_since_is_discarded_not_parked(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    a, b, b_clock = _refused_for_drift(stores)
    drop_column(b, "items", "b")
    b_clock.advance(70_000)  # the clock caught up: the row is in bounds now
    b.retry_quarantine()
    assert b.quarantine() == []
    assert sqlite3_shell(Path(b.context.path), "SELECT id, name FROM items") == "k|n\n"
    assert b.status().parked_cells == {}  # a parked cell caps the vector for good
    pull(a, b)  # a complete batch: b may claim what a holds
    assert b.vector()[a.site_id] == a.vector()[a.site_id]


def test_a_quarantined_cell_of_a_column_dropped_and_re_added_here_stays_out_of_the_new_one(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    _, b, b_clock = _refused_for_drift(stores)
    drop_column(b, "items", "b")
    b_clock.advance(10)
    add_column(b, "items", "b TEXT")
    b_clock.advance(70_000)
    b.retry_quarantine()
    assert b.quarantine() == []
    assert rows(b) == "k|n|\n"  # 'old' was written to the column dropped here
    assert b.status().parked_cells == {}


def test_a_quarantine_from_an_older_syncmesh_gets_the_creation_stamps_column(
    tmp_path: Path,
) -> None:
    """Its entries keep NULL there: unknown, so the cells' stamps decide, as before."""
    clock = ManualClock()
    path = tmp_path / "old.db"
    store = SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=60_000))
    store.init()
    store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    store.track(["items"])
    store.close()
    sqlite3_shell(path, "ALTER TABLE _syncmesh_quarantine DROP COLUMN column_created")
    store = SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=60_000))
    try:
        columns = sqlite3_shell(path, "SELECT name FROM pragma_table_info('_syncmesh_quarantine')")
        assert "column_created" in columns.split()
    finally:
        store.close()


def test_cells_by_the_old_name_of_a_column_renamed_then_dropped_here_are_discarded(
    stores: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """Found by the long state-machine run: they waited for good for a column named `b`."""
    a, b, _, b_clock = stores
    write(a, "INSERT INTO items VALUES ('k', 'n', 'old')")
    pull(a, b)
    rename_column(a, "items", "b", "c")
    drop_column(a, "items", "c")
    b_clock.advance(10)
    write(b, "UPDATE items SET b = 'late' WHERE id = 'k'")  # b has not renamed b yet
    pull(b, a)
    assert a.status().waiting_cells == {}
    assert sqlite3_shell(Path(a.context.path), "SELECT id, name FROM items") == "k|n\n"
