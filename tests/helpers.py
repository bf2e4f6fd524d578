"""Shared test helpers: an injectable physical clock, table dumps, polling waits."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncmesh.model import SqlValue
from syncmesh.protocol import Batch, decode, encode
from syncmesh.schema import quote_identifier
from syncmesh.store import ApplyResult
from syncmesh.store.sqlite import SqliteStore

TypedRow = tuple[tuple[SqlValue, str], ...]

POLL_INTERVAL_S = 0.02


class ManualClock:
    """A physical clock that moves only when a test moves it (also backwards)."""

    def __init__(self, ms: int = 1_700_000_000_000) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, delta_ms: int) -> None:
        self.ms += delta_ms

    def set(self, ms: int) -> None:
        self.ms = ms


def rows_with_types(connection: sqlite3.Connection, table: str) -> list[TypedRow]:
    """Every row of `table` as ((value, typeof(value)), ...) per column, in a fixed order.

    The order is SQLite's own (BINARY collation on every column), so rows with
    values of mixed storage classes sort deterministically; comparing two
    dumps compares values *and* storage classes (1 vs 1.0 vs '1').
    """
    quoted = quote_identifier(table)
    columns = [str(row[1]) for row in connection.execute(f"PRAGMA table_info({quoted})")]
    assert columns, f"table {table!r} has no columns (does it exist?)"
    selected = ", ".join(
        f"{quote_identifier(column)}, typeof({quote_identifier(column)})" for column in columns
    )
    order = ", ".join(f"{quote_identifier(column)} COLLATE BINARY" for column in columns)
    rows = connection.execute(f"SELECT {selected} FROM {quoted} ORDER BY {order}").fetchall()
    return [
        tuple((row[2 * index], str(row[2 * index + 1])) for index in range(len(columns)))
        for row in rows
    ]


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
) -> None:
    """Poll `predicate` every 20 ms until it is true; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def wait_until_sync(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Blocking variant of `wait_until`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def exchange(src: SqliteStore, dst: SqliteStore, rows_max: int = 1_000) -> ApplyResult:
    """One pull of `dst` from `src`: read one batch after dst's cursor and apply it.

    A first contact (no cursor yet) starts reading src's feed from 0.  A src
    whose incarnation changed is left to the caller (see the restore test).
    """
    cursor = dst.peer_cursor(src.site_id)
    if cursor is None:
        dst.reset_peer_cursor(src.site_id, src.incarnation, src.head_seq(), "")
        cursor = dst.peer_cursor(src.site_id)
        assert cursor is not None
    batch = src.read_batch(cursor.cursor, dst.vector(), rows_max)
    # Through the wire codec, as between nodes: what one node sends, the
    # trust boundary of the other must accept (and read back the same).
    message = decode(encode(Batch(batch)))
    assert isinstance(message, Batch)
    return dst.apply_batch(src.site_id, message.batch)


def exchange_all(src: SqliteStore, dst: SqliteStore, rows_max: int = 1_000) -> int:
    """Pull until `dst` has read `src`'s feed up to its head; returns rows applied."""
    applied = 0
    for _ in range(10_000):
        before = dst.peer_cursor(src.site_id)
        applied += exchange(src, dst, rows_max).applied_rows
        cursor = dst.peer_cursor(src.site_id)
        assert cursor is not None
        if cursor.cursor >= src.head_seq():
            return applied
        if before is not None and before.cursor == cursor.cursor:
            # The feed stops before a row with uncaptured writes; the node's
            # capture loop would stamp it within milliseconds.
            src.capture()
    raise AssertionError("exchange_all did not reach the head")


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m syncmesh ARGS` as a user runs it; never raises on its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "syncmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def sqlite3_shell(path: Path, sql: str) -> str:
    """Run `sql` through the sqlite3 command-line shell, as a user would; what it prints.

    A missing shell is a failure naming the fix, never a skip.
    """
    found = shutil.which("sqlite3")
    if found is None:
        pytest.fail("the sqlite3 command-line shell is required (apt-get install sqlite3)")
    result = subprocess.run(
        [found, "-bail", "-cmd", ".timeout 10000", str(path), sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"sqlite3 {sql!r} exited {result.returncode}: {result.stderr}"
    return result.stdout


@contextlib.asynccontextmanager
async def served_route(
    method: str, path: str, handler: Callable[[web.Request], Awaitable[Any]]
) -> AsyncIterator[int]:
    """A real aiohttp server on 127.0.0.1 answering `method path` with `handler`;
    yields its port, and is cleaned up on exit."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
