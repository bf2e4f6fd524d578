"""Catching up with a peer is visible: progress, rows per second, time left.

The estimate is a pure function (first tests); then a node bootstrapping
from a peer over loopback shows it in its statistics, and `syncmesh status
--url URL --watch` follows it until the node has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import sys
from pathlib import Path

from syncmesh.api import running_node
from syncmesh.chaos.proxy import LinkProxy
from syncmesh.node import NodeConfig
from syncmesh.node.catchup import CatchUp
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import wait_until

ROWS = 20_000
LINK_BYTES_PER_S = 20_000
TIMEOUT_S = 60.0


def test_progress_rate_and_time_left_come_from_recent_batches() -> None:
    catchup = CatchUp(start=1_000)
    assert catchup.estimate(1_000, 1_000, 0.0) is None  # nothing to read
    first = catchup.estimate(1_000, 2_000, 0.0)
    assert first is not None
    assert (first.progress, first.rows_per_s, first.eta_s) == (0.0, 0.0, None)
    catchup.note(10.0, 1_200, 400)
    catchup.note(12.0, 1_600, 1_200)  # 400 seqs and 800 rows in 2 s
    estimate = catchup.estimate(1_600, 2_000, 12.0)
    assert estimate is not None
    assert estimate.progress == 0.6
    assert estimate.rows_per_s == 400.0
    assert estimate.eta_s == 2.0  # 400 seqs left at 200 a second
    assert catchup.estimate(2_000, 2_000, 13.0) is None  # caught up
    stale = catchup.estimate(1_600, 2_000, 100.0)  # no batch for a long time: no pace
    assert stale is not None
    assert stale.eta_s is None


def test_a_first_contact_measures_from_the_first_batch_not_from_zero() -> None:
    head = 1_000_000 << 16  # seqs are HLC values, far from 0
    catchup = CatchUp(start=0)
    catchup.note(0.0, head - 19, 1_000)  # the first of 20 groups of a backfill
    catchup.note(1.0, head - 10, 10_000)
    estimate = catchup.estimate(head - 10, head, 1.0)
    assert estimate is not None
    assert estimate.progress == 0.5
    assert estimate.eta_s is not None
    assert round(estimate.eta_s, 3) == 1.111  # 10 seqs left at 9 a second


def make_db(path: Path, rows: int = 0) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)")
        connection.executemany(
            "INSERT INTO items VALUES (?, 'x', ?)", [(f"k{i}", i) for i in range(rows)]
        )
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["items"])
    finally:
        store.close()
    return path


def count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT count(*) FROM items").fetchone()[0])


async def test_a_bootstrapping_node_shows_its_progress(tmp_path: Path) -> None:
    source = make_db(tmp_path / "source.db", ROWS)
    fresh = make_db(tmp_path / "fresh.db")
    async with running_node(NodeConfig(database_path=str(source), listen_port=0)) as node_a:
        # A slow link (the chaos harness's proxy, capped): the catch-up lasts
        # seconds, long enough for a watcher process to see it.
        link = LinkProxy("slow", int(node_a.listen.rsplit(":", 1)[1]), random.Random(1))
        link.backward.bandwidth_bytes_per_s = LINK_BYTES_PER_S
        await link.start()
        config = NodeConfig(
            database_path=str(fresh),
            listen_port=0,
            peer_urls=(f"http://127.0.0.1:{link.port}",),
        )
        async with running_node(config) as node_b:
            watcher = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "syncmesh",
                "status",
                "--url",
                f"http://{node_b.listen}",
                "--watch",
                "--watch-timeout",
                str(TIMEOUT_S),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            seen: list[tuple[float, float, float | None]] = []

            async def midway() -> bool:
                for peer in (await node_b.statistics()).peers:
                    if peer.catchup_progress is not None and peer.catchup_rows_per_s > 0:
                        seen.append(
                            (peer.catchup_progress, peer.catchup_rows_per_s, peer.catchup_eta_s)
                        )
                return bool(seen)

            await wait_until(midway, TIMEOUT_S, "the node to report progress mid-way")
            progress, rate, eta = seen[0]
            assert 0.0 <= progress < 1.0
            assert rate > 0
            assert eta is None or eta >= 0
            await wait_until(lambda: count(fresh) == ROWS, TIMEOUT_S, "the bootstrap to finish")

            async def caught_up() -> bool:
                peers = (await node_b.statistics()).peers
                return bool(peers) and all(p.catchup_progress is None for p in peers)

            await wait_until(caught_up, TIMEOUT_S, "the progress to clear once caught up")
            out, err = await asyncio.wait_for(watcher.communicate(), TIMEOUT_S)
        await link.close()
    assert watcher.returncode == 0, err.decode()
    said = out.decode() + err.decode()
    assert "caught up with every peer" in said
    assert "rows/s" in said  # off a terminal: a line per poll while behind
