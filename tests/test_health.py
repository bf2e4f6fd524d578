"""`/v1/health` tells the truth: 503 with the reasons whenever the node does not sync.

Nodes in one process over real loopback sockets, on real SQLite files, with
the faults made the way a user makes them: a peer that is not there, a
renamed column, dropped triggers, an invalid UTF-8 value written with the
`sqlite3` shell's help, a UNIQUE index that quarantines rows.  Each test
asserts the reason named by `syncmesh.node.health`, which the dashboard's
"degraded" (tests/test_dashboard.py) and `/v1/status`'s `health` share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from syncmesh.api import running_node
from syncmesh.node import Node
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import run_cli, wait_until
from tests.test_node import config, execute, make_db

TIMEOUT_S = 40.0  # a bound for waits on states; the machine may be busy


async def health(node: Node) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{node.listen}/v1/health") as response,
    ):
        return response.status, await response.json()


async def status_health(node: Node) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{node.listen}/v1/status") as response,
    ):
        document: dict[str, Any] = await response.json()
        return dict(document["health"])


async def wait_for_reason(node: Node, needle: str) -> list[str]:
    """Wait until /v1/health answers 503 with a reason containing `needle`; the reasons."""
    seen: list[Any] = []

    async def unhealthy() -> bool:
        code, body = await health(node)
        seen[:] = [code, body]
        return code == 503 and any(needle in reason for reason in body["reasons"])

    await wait_until(unhealthy, TIMEOUT_S, f"503 naming {needle!r} (last: {seen})")
    reasons: list[str] = seen[1]["reasons"]
    assert seen[1]["ok"] is False
    # The status document carries the same verdict, for the dashboard.
    assert any(needle in reason for reason in (await status_health(node))["reasons"])
    return reasons


async def wait_healthy(node: Node) -> None:
    async def healthy() -> bool:
        code, body = await health(node)
        return code == 200 and body == {"ok": True, "reasons": []}

    await wait_until(healthy, TIMEOUT_S, "200 from /v1/health")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_peer_makes_the_node_unhealthy_after_the_threshold(
    tmp_path: Path,
) -> None:
    """Goal: a configured peer down longer than health.peer_down_s_max is a 503 reason,
    with the error's time in the status and no "ssl:default" on plain http."""
    a = make_db(tmp_path / "a.db")
    url = f"http://127.0.0.1:{closed_port()}"
    cfg = replace(config(a, health_peer_down_s_max=0.3, backoff_max_s=0.2), peer_urls=(url,))
    async with running_node(cfg) as node:
        reasons = await wait_for_reason(node, "has not kept a session")
        [reason] = [r for r in reasons if url in r]
        assert "cannot connect" in reason
        assert "ssl:default" not in reason
        [peer] = (await node.statistics()).peers
        assert peer.last_error_ms > 0
        assert peer.down_since_ms > 0
        assert "ssl:default" not in peer.last_error


async def test_a_peer_down_for_less_than_the_threshold_is_not_a_reason(tmp_path: Path) -> None:
    """Goal: a peer that just went away does not page anyone before the threshold."""
    a = make_db(tmp_path / "a.db")
    cfg = replace(
        config(a, health_peer_down_s_max=3600.0, backoff_max_s=0.2),
        peer_urls=(f"http://127.0.0.1:{closed_port()}",),
    )
    async with running_node(cfg) as node:

        async def failed_twice() -> bool:
            return (await node.statistics()).peers[0].reconnects >= 2

        await wait_until(failed_twice, TIMEOUT_S, "two failed dials")
        assert await health(node) == (200, {"ok": True, "reasons": []})


async def test_a_renamed_column_no_longer_wedges_the_feed(tmp_path: Path) -> None:
    """Goal: the wedged cluster of issue 18, after issue 14's store side.  The node whose
    column was renamed follows the rename (its store reconciles before it reads the feed),
    so its feed no longer fails with "no such column".  How two nodes whose columns
    differ exchange rows is the protocol's part of issue 14 (schema-node)."""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    execute(b, "ALTER TABLE items RENAME COLUMN qty TO quantity")
    execute(b, "INSERT INTO items VALUES ('x', 'b', 1)")
    async with (
        running_node(config(a)) as node_a,
        running_node(config(b, node_a, health_peer_down_s_max=0.3)) as node_b,
    ):

        async def followed() -> bool:
            with contextlib.closing(sqlite3.connect(b)) as connection:
                [spec] = connection.execute(
                    "SELECT spec FROM _syncmesh_tables WHERE name = 'items'"
                ).fetchone()
            decoded = json.loads(spec)
            return bool(decoded["columns"][-1] == "quantity" and ["qty"] in decoded["former"])

        await wait_until(followed, TIMEOUT_S, "b's store followed the rename")
        for node in (node_a, node_b):
            reasons = (await status_health(node))["reasons"]
            assert not any("no such column" in reason for reason in reasons), reasons


async def test_a_refused_peer_is_a_reason(tmp_path: Path) -> None:
    """Goal: sessions refused (here: B's file is a copy of A's) make the dialling node
    unhealthy, and the reason says why the peer refused."""
    a = make_db(tmp_path / "a.db")
    b = tmp_path / "b.db"
    shutil.copy(a, b)
    async with (
        running_node(config(a)) as node_a,
        running_node(config(b, node_a, health_peer_down_s_max=0.3)) as node_b,
    ):
        reasons = await wait_for_reason(node_b, "has not kept a session")
        assert any("one database file is a copy" in reason for reason in reasons), reasons


async def test_a_dropped_capture_trigger_is_put_back_by_the_node(tmp_path: Path) -> None:
    """Goal: a tracked table that lost a capture trigger is not left silent (issue 14):
    the running node puts the trigger back by itself (its capture loop reconciles the
    schema), so later writes are captured and reach the peer, with no command run."""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    execute(a, "INSERT INTO items VALUES ('x', 'a', 1)")
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)):
        await wait_healthy(node_a)
        trigger = "_syncmesh_update0_items"  # the update trigger of `name`
        execute(a, f'DROP TRIGGER "{trigger}"')

        def trigger_back() -> bool:
            with contextlib.closing(sqlite3.connect(a)) as connection:
                found = connection.execute(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND name = ?", (trigger,)
                ).fetchone()
            return found is not None

        await wait_until(trigger_back, TIMEOUT_S, "the node to put the trigger back")
        execute(a, "UPDATE items SET name = 'after the repair' WHERE id = 'x'")

        def synced() -> bool:
            with contextlib.closing(sqlite3.connect(b)) as connection:
                rows = connection.execute("SELECT name FROM items WHERE id = 'x'").fetchall()
            return rows == [("after the repair",)]

        await wait_until(synced, TIMEOUT_S, "the update made after the repair at b")
        await wait_healthy(node_a)


async def test_a_feed_that_fails_repeatedly_is_a_reason(tmp_path: Path) -> None:
    """Goal: a feed that cannot be read (a shadow table another program altered, as a
    damaged file can leave it) names the failing feed read once it failed three
    times.  (Neither TEXT that is not UTF-8 nor a corrupt shadow row fails the feed
    any more: issue 12, defect 4 and "one bad row"; tests/test_integrity_feed.py.)"""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    store = SqliteStore.open(a)
    try:
        store.connection.execute("INSERT INTO items VALUES ('bad', 'n', 1)")
        store.capture()
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(a)) as connection, connection:
        connection.execute("ALTER TABLE _syncmesh_shadow_items RENAME COLUMN seq TO gone")
    async with (
        running_node(config(a)) as node_a,
        running_node(config(b, node_a, backoff_max_s=0.1)) as _node_b,
    ):
        reasons = await wait_for_reason(node_a, "reading the feed for a peer failed")
        assert any("times in a row" in reason for reason in reasons)


async def test_a_store_whose_status_cannot_be_read_is_a_reason_not_a_500(tmp_path: Path) -> None:
    """Goal: /v1/health answers whatever state the file is in: a bookkeeping table
    another program took away (the conflict totals, renamed) makes the store's
    status unreadable, and health says so with a 503 and the reason, not a 500."""
    a = make_db(tmp_path / "a.db")
    async with running_node(config(a)) as node_a:
        await wait_healthy(node_a)
        with contextlib.closing(sqlite3.connect(a)) as connection, connection:
            connection.execute("ALTER TABLE _syncmesh_conflict_totals RENAME TO _syncmesh_gone")
        reasons: list[str] = []

        async def unreadable() -> bool:
            code, body = await health(node_a)
            reasons[:] = body["reasons"]
            return code == 503 and any("the store cannot be read" in r for r in reasons)

        await wait_until(unreadable, TIMEOUT_S, "503 naming the unreadable store")
        assert any("_syncmesh_conflict_totals" in reason for reason in reasons)
        # The status document (the dashboard's, `syncmesh status`'s) says the same.
        assert any(
            "the store cannot be read" in r for r in (await status_health(node_a))["reasons"]
        )


async def test_growing_quarantine_is_a_reason_until_it_stops_growing(tmp_path: Path) -> None:
    """Goal: rows quarantined recently are a 503 reason; once quarantine has not grown
    for health.quarantine_window_s, the node is well again (rows still quarantined)."""
    schema = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT UNIQUE, qty INTEGER)"
    a, b = make_db(tmp_path / "a.db", schema), make_db(tmp_path / "b.db", schema)
    execute(a, "INSERT INTO items VALUES ('from-a', 'same name', 1)")
    execute(b, "INSERT INTO items VALUES ('from-b', 'same name', 2)")
    window = {"health_quarantine_window_s": 1.5}
    async with (
        running_node(config(a, **window)) as node_a,
        running_node(config(b, node_a, **window)) as node_b,
    ):
        reasons = await wait_for_reason(node_a, "quarantine is growing")
        assert any("syncmesh quarantine list" in reason for reason in reasons)
        assert (await node_a.statistics()).store.quarantined_rows > 0
        await wait_healthy(node_a)
        assert (await node_a.statistics()).store.quarantined_rows > 0
        await wait_healthy(node_b)


async def test_a_last_error_carries_its_time_and_is_past_once_streaming(tmp_path: Path) -> None:
    """Goal: the last error of a peer says when it happened, and once the session streams
    again `syncmesh status` shows it as past (the dashboard: tests/test_dashboard.py)."""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    port = closed_port()
    cfg_b = replace(config(b, backoff_max_s=0.2), peer_urls=(f"http://127.0.0.1:{port}",))
    async with running_node(cfg_b) as node_b:

        async def failed_once() -> bool:
            return bool((await node_b.statistics()).peers[0].last_error)

        await wait_until(failed_once, TIMEOUT_S, "b's first failed dial")
        async with running_node(config(a, listen_port=port)):

            async def streaming() -> bool:
                return (await node_b.statistics()).peers[0].state == "streaming"

            await wait_until(streaming, TIMEOUT_S, "b streaming with a")
            [peer] = (await node_b.statistics()).peers
            assert peer.last_error_ms > 0
            assert "cannot connect" in peer.last_error
            result = await asyncio.to_thread(run_cli, "status", "--url", f"http://{node_b.listen}")
            assert result.returncode == 0, result.stderr
            assert re.search(
                r"last error of \S+ at \d\d:\d\d:\d\d UTC \(past: streaming again since\):"
                r" .*cannot connect",
                result.stdout.replace("\n", " "),
            ), result.stdout


async def test_a_capture_that_fails_repeatedly_is_a_reason_until_it_succeeds(
    tmp_path: Path,
) -> None:
    """Goal: captures failing three times in a row (here: a stray trigger that aborts
    every write to the shadow table, as a tool could leave behind) are a 503 reason;
    once the cause is gone the next capture succeeds and the reason clears."""
    a = make_db(tmp_path / "a.db")
    async with running_node(config(a)) as node:
        await wait_healthy(node)
        for when in ("INSERT", "UPDATE"):
            execute(
                a,
                f"CREATE TRIGGER stray_{when.lower()} BEFORE {when} ON _syncmesh_shadow_items"
                " BEGIN SELECT RAISE(ABORT, 'stray trigger'); END",
            )
        for index in range(3):
            execute(a, "INSERT INTO items VALUES (?, 'a', ?)", f"k{index}", index)

            async def failed(times: int = index + 1) -> bool:
                entry = node.health.failures.get("capture")
                return entry is not None and entry.in_a_row >= times

            await wait_until(failed, TIMEOUT_S, f"capture failure {index + 1}")
        reasons = await wait_for_reason(node, "capture failed 3 times in a row")
        assert any("stray trigger" in reason for reason in reasons), reasons
        execute(a, "DROP TRIGGER stray_insert")
        execute(a, "DROP TRIGGER stray_update")
        await wait_healthy(node)

        def pending() -> int:
            with contextlib.closing(sqlite3.connect(a, timeout=10)) as connection:
                count: int = connection.execute(
                    "SELECT count(*) FROM _syncmesh_log_items"
                ).fetchone()[0]
            return count

        async def captured() -> bool:
            return pending() == 0

        await wait_until(captured, TIMEOUT_S, "the waiting writes captured")
