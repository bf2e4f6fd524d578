"""The node follows schema changes while it runs (ADR 0013): patterns, DDL, untrack.

`[tables] track` patterns are matched at `serve` and whenever the database's
tables change; DDL on a tracked table is handled by the capture loop
(`Store.reconcile_schema`), which restarts the sessions; `syncmesh untrack`
works on a served file.  Nodes run in this process on loopback sockets;
`serve` and the CLI as a user runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from syncmesh.api import running_node
from syncmesh.node import Node
from syncmesh.node.config import is_pattern, tables_matching
from syncmesh.node.patterns import track_matches
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import run_cli, sqlite3_shell, wait_until, wait_until_sync
from tests.nodeproc import free_port
from tests.test_node import TIMEOUT_S, config, execute, make_db, peer_of


def _wait_for_status(port: int) -> dict[str, Any]:
    """GET /v1/status of the node serving on `port`, as soon as it answers (20 s at most)."""
    answer: list[dict[str, Any]] = []

    def answered() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as r:
                answer.append(json.loads(r.read()))
                return True
        except OSError:
            return False

    wait_until_sync(answered, 20.0, f"the node on port {port} to answer")
    return answer[-1]


# -- patterns ---------------------------------------------------------------------------


def test_patterns_match_the_applications_tables_only() -> None:
    tables = ["_syncmesh_state", "app_a", "app_b", "items", "sqlite_sequence", "App_c"]
    assert tables_matching(["*"], tables) == ["app_a", "app_b", "items", "App_c"]
    assert tables_matching(["app_*"], tables) == ["app_a", "app_b"]  # case-sensitive
    assert tables_matching(["items", "app_?"], tables) == ["app_a", "app_b", "items"]
    assert tables_matching(["_syncmesh*", "sqlite_*"], tables) == []
    assert tables_matching([], tables) == []
    assert [name for name in ["*", "app_*", "a?", "[ab]", "items"] if is_pattern(name)] == [
        "*",
        "app_*",
        "a?",
        "[ab]",
    ]


def test_track_matches_tracks_each_new_match_and_skips_one_it_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One table without a primary key does not keep the others from being tracked."""
    store = SqliteStore.open(tmp_path / "a.db")
    try:
        store.init()
        for sql in (
            "CREATE TABLE app_a (id TEXT PRIMARY KEY, v TEXT)",
            "CREATE TABLE app_b (v TEXT)",  # no primary key
            "CREATE TABLE app_c (id TEXT PRIMARY KEY, v TEXT)",
            "CREATE TABLE other (id TEXT PRIMARY KEY)",
        ):
            store.connection.execute(sql)
        assert track_matches(store, ["app_*"]) == ["app_a", "app_c"]
        assert sorted(spec.name for spec in store.specs()) == ["app_a", "app_c"]
        [refusal] = [r for r in caplog.records if "cannot be tracked" in r.getMessage()]
        assert refusal.levelname == "WARNING"
        assert "app_b" in refusal.getMessage()
        assert "primary key" in refusal.getMessage().lower()
        assert track_matches(store, ["app_*"]) == []  # tracked already: nothing new
    finally:
        store.close()


def test_a_pattern_tracks_an_integer_key_table_only_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pattern is no back door around the integer-key refusal (issue 14, part 5)."""
    store = SqliteStore.open(tmp_path / "a.db")
    try:
        store.init()
        store.connection.execute("CREATE TABLE app_log (id INTEGER PRIMARY KEY, line TEXT)")
        assert track_matches(store, ["app_*"]) == []
        [refusal] = [r for r in caplog.records if "cannot be tracked" in r.getMessage()]
        assert "app_log" in refusal.getMessage()
        assert track_matches(store, ["app_*"], allow_integer_keys=["app_log"]) == ["app_log"]
    finally:
        store.close()


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


async def test_a_table_created_while_nodes_run_is_tracked_by_the_pattern_and_syncs(
    tmp_path: Path,
) -> None:
    """Goal: with `[tables] track = ["*"]`, a table a migration creates on running nodes
    is tracked by each node without a command, and its rows sync."""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    async with (
        running_node(config(a, track_patterns=("*",))) as node_a,
        running_node(config(b, node_a, track_patterns=("*",))) as node_b,
    ):
        await wait_until(
            lambda: _has_peer_streaming(node_b), TIMEOUT_S, "B's session with A to stream"
        )
        for path in (a, b):
            sqlite3_shell(path, "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);")

        async def both_track_notes() -> bool:
            tables = [set((await node.statistics()).store.tables) for node in (node_a, node_b)]
            return all("notes" in names for names in tables)

        await wait_until(both_track_notes, TIMEOUT_S, "both nodes to track notes")
        await wait_until(
            lambda: _has_peer_streaming(node_b), TIMEOUT_S, "B's session to stream again"
        )
        execute(a, "INSERT INTO notes VALUES ('n1', 'from a')")

        async def notes_at_b() -> bool:
            return await asyncio.to_thread(_rows, b, "notes") == [("n1", "from a")]

        await wait_until(notes_at_b, TIMEOUT_S, "the note at B")
        assert (await peer_of(node_b, dialed=True)).schema_differences == ()


async def _has_peer_streaming(node: Node) -> bool:
    return any(peer.state == "streaming" for peer in (await node.statistics()).peers)


def test_serve_tracks_the_tables_a_pattern_matches(tmp_path: Path) -> None:
    """Goal: `serve` with `[tables] track = ["app_*"]` tracks the matching tables at
    start, skips (with a warning) one it cannot track, and tracks a table created
    later by a migration (the sqlite3 shell) while it runs."""
    database = tmp_path / "app.db"
    sqlite3_shell(
        database,
        "CREATE TABLE app_items (id TEXT PRIMARY KEY, name TEXT);"
        " CREATE TABLE app_log (line TEXT);"  # no primary key: skipped
        " CREATE TABLE other (id TEXT PRIMARY KEY);",
    )
    port = free_port()
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndatabase = "{database.as_posix()}"\nlisten = "127.0.0.1:{port}"\n'
        '[tables]\ntrack = ["app_*"]\n[logging]\nformat = "json"\n',
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "syncmesh", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = _wait_for_status(port)
        assert status["store"]["tables"] == {"app_items": 0}
        sqlite3_shell(
            database,
            "CREATE TABLE app_orders (id TEXT PRIMARY KEY, item TEXT);"
            " INSERT INTO app_orders VALUES ('o1', 'i1');",
        )
        wait_until_sync(
            lambda: "app_orders" in _wait_for_status(port)["store"]["tables"],
            20.0,
            "the node to track app_orders",
        )
        assert _wait_for_status(port)["store"]["tables"] == {"app_items": 0, "app_orders": 1}
        # `track` of a table no pattern matches, while the node runs: it says the node follows.
        result = run_cli("track", str(database), "other")
        assert result.returncode == 0, result.stderr
        assert f"the node serving {database} (pid {process.pid}) reloads" in result.stdout
        wait_until_sync(
            lambda: "other" in _wait_for_status(port)["store"]["tables"],
            20.0,
            "the node to reload its tables",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in logged]
    assert any("app_log matches [tables] track" in m for m in messages), err
    assert any("tracking table app_orders: it matches" in m for m in messages), err


# -- DDL while the node runs ---------------------------------------------------------------


async def test_ddl_is_handled_by_the_capture_loop_and_restarts_sessions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Goal: an ALTER TABLE on a running node is handled without a restart or a command:
    the change is logged at INFO, the sessions restart (peers get a fresh HELLO, which
    names the new column), and the node stays healthy."""
    caplog.set_level("INFO")
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)) as node_b:
        await wait_until(lambda: _has_peer_streaming(node_b), TIMEOUT_S, "B to stream")
        epoch = node_a.schema_epoch
        sqlite3_shell(a, "ALTER TABLE items ADD COLUMN note TEXT;")

        async def told() -> bool:
            peer = await peer_of(node_b, dialed=True)
            return peer.state == "streaming" and peer.schema_differences != ()

        await wait_until(told, TIMEOUT_S, "B to hear of A's new column")
        assert node_a.schema_epoch > epoch
        assert any("schema change handled" in r.getMessage() for r in caplog.records)
        assert (await node_a.statistics()).store.schema_problems == []


# -- untrack ------------------------------------------------------------------------------


def test_untrack_stops_syncing_a_table_and_keeps_its_rows(tmp_path: Path) -> None:
    database = make_db(tmp_path / "a.db")
    execute(database, "INSERT INTO items VALUES ('x', 'kept', 1)")
    result = run_cli("untrack", str(database), "items")
    assert result.returncode == 0, result.stderr
    assert "stopped tracking items; tracking no tables" in result.stdout
    assert _rows(database, "items") == [("x", "kept", 1)]
    triggers = sqlite3_shell(database, "SELECT count(*) FROM sqlite_schema WHERE type='trigger';")
    assert triggers.strip() == "0"
    again = run_cli("untrack", str(database), "items")
    assert again.returncode == 1
    assert "items" in again.stderr


def test_untrack_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    result = run_cli("untrack", str(tmp_path / "none.db"), "items")
    assert result.returncode == 1
    assert "does not exist" in result.stderr
