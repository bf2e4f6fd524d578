"""The periodic verify of a WebSocket peer judges only replicas that are caught up.

Two real `syncmesh serve` processes on 127.0.0.1.  b bulk-inserts rows while
a dials it; a's pull takes several verify intervals (small batches, one in
flight).  A verify in that time compares replicas that are merely not caught
up: rows in flight are no divergence, so status must say the verify waits,
never that rows differ.  Once a has caught up the verify runs again, finds
the replicas identical, and still finds a real divergence: a row deleted
behind the engine's back with the sqlite3 shell.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.helpers import sqlite3_shell
from tests.nodeproc import Cluster, NodeProcess, make_db, row_count

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
BULK_ROWS = 2_000
TIMEOUT_S = 60.0
POLL_S = 0.05
# a verifies b every 0.3 s, re-reading differing rows after 0.1 s; b sends a
# at most 10 rows a batch, one batch unacknowledged at a time, so a's pull
# of the bulk takes a number of verify intervals.
VERIFY_ENV = {
    "SYNCMESH_SYNC_VERIFY_INTERVAL_S": "0.3",
    "SYNCMESH_SYNC_VERIFY_SETTLE_S": "0.1",
    "SYNCMESH_LIMITS_ROWS_PER_MESSAGE_MAX": "10",
}
SLOW_SENDER_ENV = {
    "SYNCMESH_LIMITS_BATCH_ROWS_MAX": "10",
    "SYNCMESH_LIMITS_BATCHES_IN_FLIGHT_MAX": "1",
}


def peer_of(status: dict[str, Any], url: str) -> dict[str, Any]:
    return next(peer for peer in status["peers"] if peer["address"] == url)


def verify_metric(node: NodeProcess, name: str) -> list[float]:
    """The values of `syncmesh_peer_verify_<name>` in the node's /metrics."""
    with node.open_url("/metrics", timeout_s=5) as answer:
        text = answer.read().decode()
    return [
        float(value)
        for value in re.findall(rf"^syncmesh_peer_verify_{name}{{[^}}]*}} (\S+)$", text, re.M)
    ]


def bulk_insert(path: Path, first: int, count: int) -> None:
    """`count` rows in transactions of 100 rows, as an application's import would."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as connection:
        for start in range(first, first + count, 100):
            with connection:
                connection.executemany(
                    "INSERT INTO items VALUES (?, ?, ?)",
                    [(f"k-{index}", f"name {index}", index) for index in range(start, start + 100)],
                )


def test_a_peer_being_caught_up_is_never_reported_divergent(
    cluster: Cluster, tmp_path: Path
) -> None:
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    bulk_insert(b_db, 0, 100)
    b = cluster.node("b", b_db, env=SLOW_SENDER_ENV)
    a = cluster.node("a", a_db, peers=[b], env=VERIFY_ENV)
    cluster.start(b, a)

    def verified_after(since_ms: int) -> dict[str, Any] | None:
        peer = peer_of(a.status(), b.url)
        return peer if peer.get("verified_ms", 0) > since_ms else None

    deadline = time.monotonic() + TIMEOUT_S
    while (first := verified_after(0)) is None or row_count(a_db, "items") < 100:
        assert time.monotonic() < deadline, "a never verified b after the first rows"
        time.sleep(POLL_S)
    assert first["verify_identical"] is True, first

    bulk_insert(b_db, 100, BULK_ROWS)
    # While a pulls the bulk: every status a gives says no row differs; it
    # says that it waits while it is behind.
    waiting_seen: list[str] = []
    waiting_metrics: list[float] = []
    polls = 0
    deadline = time.monotonic() + TIMEOUT_S
    while row_count(a_db, "items") < BULK_ROWS + 100:
        assert time.monotonic() < deadline, "a did not catch up with b's bulk insert"
        peer = peer_of(a.status(), b.url)
        polls += 1
        assert not peer.get("verify_divergent_rows"), (polls, peer)
        assert peer.get("verify_identical") is not False or peer.get("verify_error"), peer
        if peer.get("verify_waiting"):
            waiting_seen.append(peer["verify_waiting"])
            waiting_metrics.extend(verify_metric(a, "waiting"))
        time.sleep(POLL_S)
    assert waiting_seen, f"a never said its verify of b waits ({polls} polls)"
    assert all("catching up" in reason for reason in waiting_seen), waiting_seen
    assert 1.0 in waiting_metrics, waiting_metrics

    # Caught up: a verify runs again, and finds the replicas identical.
    caught_up_ms = int(time.time() * 1000)
    deadline = time.monotonic() + TIMEOUT_S
    while (after := verified_after(caught_up_ms)) is None:
        assert time.monotonic() < deadline, "a never verified b again after catching up"
        time.sleep(POLL_S)
    assert after["verify_identical"] is True, after
    assert after["verify_waiting"] == "", after
    assert verify_metric(a, "waiting") == [0.0]

    # A real divergence, with both caught up: a row of a's vanishes behind
    # the engine's back (no capture, so no feed brings it back).  While a
    # runs it keeps its hash trees up to date from its own captures and
    # applies, so the row is removed while a is stopped, as a repair by hand
    # would; a started again rebuilds its trees from the file.
    a.stop()
    sqlite3_shell(
        a_db,
        "UPDATE _syncmesh_state SET applying = 1;"
        " DELETE FROM items WHERE id = 'k-7';"
        " DELETE FROM _syncmesh_shadow_items WHERE k0 = 'k-7';"
        " UPDATE _syncmesh_state SET applying = 0;",
    )
    a.start().wait_until_ready()
    restarted_ms = int(time.time() * 1000)
    deadline = time.monotonic() + TIMEOUT_S
    while (found := verified_after(restarted_ms)) is None:
        assert time.monotonic() < deadline, "a never verified b after its restart"
        time.sleep(POLL_S)
    assert found["verify_identical"] is False, found
    assert found["verify_divergent_rows"] == 1, found
    assert found["verify_waiting"] == "", found
