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
from tests.schema_steps import add_column, drop_column


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
