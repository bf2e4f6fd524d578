"""Tables with generated columns sync their other columns; each site computes the rest.

A generated column (`GENERATED ALWAYS AS (...)`, VIRTUAL or STORED, as
Django's `GeneratedField` and SQLAlchemy's `Computed` make them) cannot be
written by anyone, and SQLite computes it from the row's other columns on
every write.  `track` used to refuse such a table; now the column is left
out of what is synced (docs/keys.md), at track time and when a migration
adds one to a tracked table while the node runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all, run_cli, sqlite3_shell
from tests.nodeproc import Cluster, make_db, query, wait_converged, wait_for
from tests.test_multiprocess import shell

ORDERS = (
    "CREATE TABLE orders (id TEXT PRIMARY KEY, qty INTEGER, price REAL,"
    " total REAL GENERATED ALWAYS AS (qty * price) VIRTUAL,"
    " label TEXT GENERATED ALWAYS AS ('#' || id) STORED)"
)
CONVERGE_S = 45.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    stores = []
    for name in "ab":
        store = SqliteStore.open(
            tmp_path / f"{name}.db", clock=HybridClock(ManualClock(), drift_ms_max=60_000)
        )
        store.init()
        store.connection.execute(ORDERS)
        store.track(["orders"])
        stores.append(store)
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def dump(store: SqliteStore) -> str:
    return sqlite3_shell(Path(store.context.path), "SELECT * FROM orders ORDER BY id")


def test_generated_columns_are_left_out_of_the_synced_columns(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, _ = pair
    assert [spec.value_columns for spec in a.specs()] == [("qty", "price")]


def test_a_table_with_generated_columns_converges_with_each_site_computing_them(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    a.connection.execute("INSERT INTO orders (id, qty, price) VALUES ('o1', 2, 1.5)")
    b.connection.execute("INSERT INTO orders (id, qty, price) VALUES ('o2', 3, 2.0)")
    for store in pair:
        store.capture()
    exchange_all(a, b)
    exchange_all(b, a)
    b.connection.execute("UPDATE orders SET qty = 10 WHERE id = 'o1'")
    b.capture()
    exchange_all(b, a)
    assert dump(a) == dump(b) == "o1|10|1.5|15.0|#o1\no2|3|2.0|6.0|#o2\n"


def test_a_generated_column_added_while_tracked_changes_nothing_synced(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    a.connection.execute("INSERT INTO orders (id, qty, price) VALUES ('o1', 2, 1.5)")
    a.capture()
    exchange_all(a, b)
    sqlite3_shell(
        Path(a.context.path),
        "ALTER TABLE orders ADD COLUMN double_qty INTEGER GENERATED ALWAYS AS (qty * 2) VIRTUAL",
    )
    a.reconcile_schema()
    assert a.schema_problems() == []
    assert [spec.value_columns for spec in a.specs()] == [("qty", "price")]
    a.connection.execute("UPDATE orders SET qty = 4 WHERE id = 'o1'")
    a.capture()
    exchange_all(a, b)
    assert b.status().waiting_cells == {}  # b lacks double_qty: nothing of it was sent
    assert dump(b) == "o1|4|1.5|6.0|#o1\n"
    assert sqlite3_shell(Path(a.context.path), "SELECT double_qty FROM orders") == "8\n"


def test_track_refusing_one_table_tracks_none_and_reports_no_rows_joining(
    tmp_path: Path,
) -> None:
    """The CLI: all or nothing, and no line claims a table's rows joined the feed."""
    path = tmp_path / "app.db"
    sqlite3_shell(
        path,
        "CREATE TABLE good (id TEXT PRIMARY KEY, v); INSERT INTO good VALUES ('g', 1);"
        " CREATE TABLE keyless (v);",
    )
    result = run_cli("track", str(path), "good", "keyless")
    assert result.returncode == 1
    assert "'keyless' has no PRIMARY KEY" in result.stderr
    assert "(no table was tracked)" in result.stderr
    assert "joined the feed" not in result.stdout + result.stderr
    assert sqlite3_shell(path, "SELECT count(*) FROM _syncmesh_tables") == "0\n"


@pytest.mark.multiprocess
def test_real_nodes_sync_a_table_with_generated_columns_through_a_migration(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`syncmesh serve` on both sites, the sqlite3 shell writing and migrating."""
    make_db(tmp_path / "a.db", ORDERS)
    make_db(tmp_path / "b.db", ORDERS)
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    shell(a.db, "INSERT INTO orders (id, qty, price) VALUES ('o1', 2, 1.5)")
    shell(b.db, "INSERT INTO orders (id, qty, price) VALUES ('o2', 3, 2.0)")
    wait_converged([a.db, b.db], "orders", CONVERGE_S, describe=cluster.logs)
    # A rolling migration adds a generated column at a first; writes go on.
    shell(a.db, "ALTER TABLE orders ADD COLUMN big INTEGER GENERATED ALWAYS AS (qty > 5) VIRTUAL")
    shell(a.db, "UPDATE orders SET qty = 7 WHERE id = 'o2'")
    wait_for(
        lambda: query(b.db, "SELECT qty, total FROM orders WHERE id = 'o2'") == [(7, 14.0)],
        CONVERGE_S,
        "a's update at b",
        describe=cluster.logs,
    )
    assert query(a.db, "SELECT big FROM orders ORDER BY id") == [(0,), (1,)]
    for node in (a, b):
        code, body = node.health()
        assert code == 200, body
