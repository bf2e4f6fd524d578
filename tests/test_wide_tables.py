"""Tables with many columns: tracked, synced, and merged column by column.

Real applications have tables of a hundred columns and more.  Two limits
used to get in the way: SQLite allows a function call 127 arguments, and
the digest and pasts functions took two per value column, so `track`
refused a table of more than 61 with "too many arguments on function
syncmesh_row_digest"; and the capture log's mask has 62 bits, so an UPDATE
of a column beyond them was logged as a write of every column, stamping
every cell of the row: a concurrent update of another column at another
site was lost.  Beyond what SQLite's 2,000 columns a table allow for the
shadow table, `track` refuses the table with the count and the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all, rows_with_types, run_cli, sqlite3_shell
from tests.nodeproc import Cluster, make_db, query, wait_converged
from tests.test_multiprocess import shell

COLUMNS = 200
CONVERGE_S = 45.0


def wide_table(columns: int = COLUMNS) -> str:
    listed = ", ".join(f"c{index} TEXT" for index in range(columns))
    return f"CREATE TABLE wide (id TEXT PRIMARY KEY, {listed})"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore, ManualClock, ManualClock]]:
    clocks = ManualClock(), ManualClock()
    stores = []
    for name, clock in zip("ab", clocks, strict=True):
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=HybridClock(clock, drift_ms_max=60_000)
        )
        store.init()
        store.connection.execute(wide_table())
        store.track(["wide"])
        store.summaries(["wide"])
        stores.append(store)
    yield stores[0], stores[1], clocks[0], clocks[1]
    for store in stores:
        store.close()


def sync(a: SqliteStore, b: SqliteStore) -> None:
    for store in (a, b):
        store.capture()
    exchange_all(a, b)
    exchange_all(b, a)


def test_concurrent_updates_of_columns_beyond_the_mask_bits_both_survive(
    pair: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    a, b, a_clock, b_clock = pair
    a.connection.execute("INSERT INTO wide (id, c0) VALUES ('r', 'x')")
    sync(a, b)
    # Concurrent: a writes two wide columns and a narrow one, b another wide one, later.
    a.connection.execute("UPDATE wide SET c70 = 'a70', c150 = 'a150', c5 = 'a5' WHERE id = 'r'")
    a.capture()
    b_clock.advance(50)
    b.connection.execute("UPDATE wide SET c199 = 'b199', c64 = 'b64' WHERE id = 'r'")
    b.capture()
    a_clock.advance(100)
    sync(a, b)
    expected = {"c0": "x", "c5": "a5", "c64": "b64", "c70": "a70", "c150": "a150", "c199": "b199"}
    for store in (a, b):
        row = store.connection.execute(
            f"SELECT {', '.join(expected)} FROM wide WHERE id = 'r'"
        ).fetchone()
        assert dict(zip(expected, row, strict=True)) == expected
    assert rows_with_types(a.connection, "wide") == rows_with_types(b.connection, "wide")
    # Converged replicas have the same hash trees (the digests take every column's stamps).
    assert a.summaries(["wide"])["wide"].root() == b.summaries(["wide"])["wide"].root()


def test_an_update_of_another_sites_wide_cell_records_its_past(
    pair: tuple[SqliteStore, SqliteStore, ManualClock, ManualClock],
) -> None:
    """The conflict ledger's pasts: the capture's pasts function gets the whole mask."""
    a, b, _, b_clock = pair
    a.connection.execute("INSERT INTO wide (id, c100) VALUES ('r', 'a')")
    sync(a, b)
    b_clock.advance(10)
    b.connection.execute("UPDATE wide SET c100 = 'b' WHERE id = 'r'")
    b.capture()
    (pasts,) = b.connection.execute("SELECT pasts FROM _syncmesh_shadow_wide").fetchone()
    assert pasts is not None
    assert '"100"' in pasts  # slot 100 knows a's write it overwrote
    sync(a, b)
    assert a.conflicts() == b.conflicts() == []  # a causal overwrite, not a conflict


def test_track_refuses_a_table_too_wide_for_the_shadow_table_with_the_limit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    sqlite3_shell(path, wide_table(1_500) + ";")
    result = run_cli("track", str(path), "wide")
    assert result.returncode == 1
    assert "1500 value columns" in result.stderr
    assert "at most" in result.stderr


@pytest.mark.multiprocess
def test_real_nodes_sync_a_wide_table_written_with_the_sqlite3_shell(
    cluster: Cluster, tmp_path: Path
) -> None:
    make_db(tmp_path / "a.db", wide_table())
    make_db(tmp_path / "b.db", wide_table())
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    shell(a.db, "INSERT INTO wide (id, c0, c199) VALUES ('r', 'first', 'last')")
    wait_converged([a.db, b.db], "wide", CONVERGE_S, describe=cluster.logs)
    shell(a.db, "UPDATE wide SET c120 = 'from a' WHERE id = 'r'")
    shell(b.db, "UPDATE wide SET c180 = 'from b' WHERE id = 'r'")
    wait_converged(
        [a.db, b.db],
        "wide",
        CONVERGE_S,
        check=lambda _dump: (
            query(b.db, "SELECT c120 FROM wide")[0][0] == "from a"
            and query(a.db, "SELECT c180 FROM wide")[0][0] == "from b"
        ),
        describe=cluster.logs,
    )
    assert query(a.db, "SELECT c0, c199 FROM wide") == [("first", "last")]


def test_an_added_column_beyond_the_shadow_limit_is_a_schema_problem_with_the_fix(
    tmp_path: Path,
) -> None:
    """Reported like any table the node cannot follow, not an SQLite error in the capture."""
    store = SqliteStore.open(tmp_path / "a.db", clock=HybridClock(ManualClock(), drift_ms_max=1))
    try:
        store.init()
        store.connection.execute(wide_table(990))
        store.track(["wide"])
        for index in range(990, 1_000):
            store.connection.execute(f"ALTER TABLE wide ADD COLUMN c{index} TEXT")
        store.reconcile_schema()
        problems = store.schema_problems()
        assert len(problems) == 1
        assert "1000 value columns" in problems[0]
        assert "split the table" in problems[0]
    finally:
        store.close()


def test_a_file_whose_wide_triggers_log_every_column_gets_the_new_ones(tmp_path: Path) -> None:
    """Files from before logged -1 (every column) for slots past the mask's bits."""
    path = tmp_path / "old.db"
    store = SqliteStore.open(path, clock=HybridClock(ManualClock(), drift_ms_max=1))
    store.init()
    store.connection.execute(wide_table(70))
    store.track(["wide"])
    store.close()
    trigger = "_syncmesh_update65_wide"
    (sql,) = query(path, "SELECT sql FROM sqlite_schema WHERE name = ?", (trigger,))[0]
    assert "(3, -67," in sql
    sqlite3_shell(path, f'DROP TRIGGER "{trigger}"; ' + sql.replace("(3, -67,", "(3, -1,") + ";")
    store = SqliteStore.open(path, clock=HybridClock(ManualClock(), drift_ms_max=1))
    try:
        store.reconcile_schema()
        (sql,) = query(path, "SELECT sql FROM sqlite_schema WHERE name = ?", (trigger,))[0]
        assert "(3, -67," in sql
    finally:
        store.close()
