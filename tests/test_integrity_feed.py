"""A corrupt shadow row never stops the feed (issue 12: "one bad row never stops a node").

Another program can write anything into a shadow table.  Before, a stamp
holding text crashed the feed's filter on every read (or, shipped, made the
peer refuse the whole batch on every session), and a `pasts` that is not
JSON failed the feed's SQL: no later write of that node reached anyone.
Now the row is held back with its table, key and reason (log, status,
metrics), batches carry no vector meanwhile, everything else flows, and the
row ships once a new write has stamped it afresh.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.protocol import Batch, decode, encode
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all
from tests.helpers import sqlite3_shell as shell
from tests.nodeproc import Cluster, NodeProcess, make_db, query, wait_for

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
SYNC_S = 20.0
BASE_MS = 1_700_000_000_000

# (shadow column, garbage) pairs another program could write; h1 is qty's stamp.
CORRUPTIONS = {
    "text stamp": ("h1", "'garbage'"),
    "negative stamp": ("h1", "-5"),
    "unknown site": ("s1", "99"),
    "text causal length": ("cl_hlc", "'zz'"),
    "pasts not json": ("pasts", "'junk'"),
    "past naming an unknown site": ("pasts", """'{"1":{"p":"{\\"7\\":5}"}}'"""),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(
        tmp_path / "a.db", clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
    )
    opened.init()
    opened.connection.execute(SCHEMA)
    opened.track(["items"])
    yield opened
    opened.close()


@pytest.mark.parametrize(("column", "garbage"), CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_shadow_row_is_held_back_and_the_rest_ships(
    store: SqliteStore, column: str, garbage: str
) -> None:
    store.connection.execute("INSERT INTO items VALUES ('bad', 'x', 1), ('good', 'y', 2)")
    store.capture()
    store.connection.execute(
        f"UPDATE _syncmesh_shadow_items SET {column} = {garbage} WHERE k0 = 'bad'"
    )
    batch = store.read_batch(0, {}, 100)
    decoded = decode(encode(Batch(batch)))  # a peer takes it
    assert isinstance(decoded, Batch)
    assert [row.pk for row in decoded.batch.rows] == [("good",)]
    assert batch.to_seq == batch.head_seq
    assert batch.vector is None, "a batch holding a row back must not claim it"
    [problem] = store.status().row_problems
    assert problem.startswith("table 'items', key ('bad'): shadow row has "), problem
    assert "write the row again" in problem


def test_a_fixed_row_ships_and_the_vector_comes_back(store: SqliteStore) -> None:
    store.connection.execute("INSERT INTO items VALUES ('bad', 'x', 1)")
    store.capture()
    store.connection.execute("UPDATE _syncmesh_shadow_items SET h1 = 'garbage'")
    assert store.read_batch(0, {}, 100).row_count == 0
    store.connection.execute("UPDATE items SET name = 'fixed', qty = 3 WHERE id = 'bad'")
    store.capture()
    batch = store.read_batch(0, {}, 100)
    assert [row.pk for row in batch.rows] == [("bad",)]
    assert batch.vector is not None
    assert store.status().row_problems == []


# -- the same on real nodes, corrupted with the sqlite3 shell --------------------------


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        print(cluster.logs())  # pytest shows it only when the test failed


def names(node: NodeProcess) -> dict[str, str]:
    return {str(key): str(name) for key, name in query(node.db, "SELECT id, name FROM items")}


def metric(node: NodeProcess, name: str) -> float:
    with node.open_url("/metrics", timeout_s=5.0) as response:
        text = response.read().decode()
    [line] = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


@pytest.mark.multiprocess
def test_a_shadow_row_corrupted_with_the_shell_never_stops_the_node(
    nodes: Cluster, tmp_path: Path
) -> None:
    """Goal: the feed goes on past a corrupt shadow row, names it, and ships it once fixed.

    Method: a row synced to b has its qty stamp overwritten with text by the
    sqlite3 shell, then its name updated, which moves it to a new seq: the
    feed reads it again.  Writes after it must reach b; a must report the
    row (log, status, metrics); a write of every column fixes it, with no
    restart.
    """
    a = nodes.node("a", make_db(tmp_path / "a.db", SCHEMA))
    b = nodes.node("b", make_db(tmp_path / "b.db", SCHEMA), peers=[a])
    nodes.start(a, b)
    shell(a.db, "INSERT INTO items VALUES ('bad', 'first', 1)")
    wait_for(lambda: names(b).get("bad") == "first", SYNC_S, "the row to reach b")
    shell(a.db, "UPDATE _syncmesh_shadow_items SET h1 = 'garbage' WHERE k0 = 'bad'")
    shell(a.db, "UPDATE items SET name = 'second' WHERE id = 'bad'")
    shell(a.db, "INSERT INTO items VALUES ('good', 'after it', 2)")
    wait_for(
        lambda: names(b).get("good") == "after it",
        SYNC_S,
        "the write after the corrupt row to reach b",
        describe=nodes.logs,
    )
    assert names(b)["bad"] == "first", "the corrupt row shipped"
    a.wait_for_log("row held back from the feed: table 'items', key ('bad')")
    [problem] = a.status()["store"]["row_problems"]
    assert "stamp 'garbage'" in problem, problem
    assert metric(a, "syncmesh_row_problems") == 1
    shell(a.db, "UPDATE items SET name = 'fixed', qty = 3 WHERE id = 'bad'")
    wait_for(lambda: names(b).get("bad") == "fixed", SYNC_S, "the fixed row to reach b")
    wait_for(lambda: not a.status()["store"]["row_problems"], SYNC_S, "the problem to clear")
    assert metric(a, "syncmesh_row_problems") == 0
    assert not nodes.internal_errors(), nodes.internal_errors()


def test_a_peer_row_for_a_key_whose_shadow_row_here_is_corrupt_is_quarantined(
    store: SqliteStore, tmp_path: Path
) -> None:
    """The apply side: the rest of the batch lands, that key's row waits in the quarantine."""
    peer = SqliteStore.open(
        tmp_path / "peer.db", clock=HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
    )
    try:
        peer.init()
        peer.connection.execute(SCHEMA)
        peer.track(["items"])
        peer.connection.execute("INSERT INTO items VALUES ('bad', 'x', 1)")
        peer.capture()
        exchange_all(peer, store)
        store.connection.execute("UPDATE _syncmesh_shadow_items SET pasts = 'junk'")
        peer.connection.execute("UPDATE items SET name = 'x2' WHERE id = 'bad'")
        peer.connection.execute("INSERT INTO items VALUES ('good', 'y', 2)")
        peer.capture()
        exchange_all(peer, store)
        rows = store.connection.execute("SELECT id, name FROM items ORDER BY id").fetchall()
        assert rows == [
            ("bad", "x"),
            ("good", "y"),
        ]
        [entry] = store.quarantine()
        assert entry["pk"] == "'bad'"
        assert "our shadow row of this key has past" in str(entry["reason"])
        # Fixed by a local write of the row: the retry merges the peer's row.
        store.connection.execute("DELETE FROM items WHERE id = 'bad'")
        store.connection.execute("INSERT INTO items VALUES ('bad', 'local', 9)")
        store.capture()
        assert store.retry_quarantine() == 1
        assert store.quarantine() == []
    finally:
        peer.close()
