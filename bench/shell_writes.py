"""Shell writes while a node applies a backlog: how often does `sqlite3` meet "database is locked"?

`python -m bench.shell_writes [--backlog-rows N] [--writes N] [--timeout-ms MS]`

Issue 18 saw 125 of 300 `sqlite3` shell inserts fail while a node applied
a large batch.  This script repeats that, bounded in count and time: node
a's file holds `--backlog-rows` rows; node b starts dialling a and applies
them; meanwhile `--writes` separate `sqlite3` processes each insert one row
into b's file, with `.timeout MS` (0: the shell's default, no waiting).  It
prints how many failed, how long the inserts took (median, max), and how
long the backlog took to apply.  Real processes, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from syncmesh.chaos.natsservers import free_port

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
DEADLINE_S = 300.0


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "syncmesh", *args], check=True, capture_output=True)


def _make(path: Path, rows: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(SCHEMA)
        connection.executemany(
            "INSERT INTO items VALUES (?, 'backlog', ?)", ((f"k{i}", i) for i in range(rows))
        )
    _cli("init", str(path))
    _cli("track", str(path), "items")


def _serve(path: Path, port: int, *peers: int) -> subprocess.Popen[bytes]:
    peer_args = [arg for peer in peers for arg in ("--peer", f"http://127.0.0.1:{peer}")]
    listen = ["--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    return subprocess.Popen(
        [sys.executable, "-m", "syncmesh", "serve", str(path), *listen, *peer_args],
        stderr=subprocess.DEVNULL,
    )


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5) as answer:
        document: dict[str, Any] = json.loads(answer.read())
    return document


def _wait(what: str, check: Any, deadline: float) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def _up(port: int) -> bool:
    try:
        _status(port)
    except OSError:
        return False
    return True


def run(backlog_rows: int, writes: int, timeout_ms: int) -> dict[str, Any]:
    shell = shutil.which("sqlite3")
    assert shell is not None, "needs the sqlite3 shell"
    deadline = time.monotonic() + DEADLINE_S
    with tempfile.TemporaryDirectory(prefix="syncmesh-shell-writes-") as scratch:
        a, b = Path(scratch) / "a.db", Path(scratch) / "b.db"
        _make(a, backlog_rows)
        _make(b, 0)
        port_a, port_b = free_port(), free_port()
        nodes = [_serve(a, port_a)]
        try:
            _wait("node a", lambda: _up(port_a), deadline)
            started = time.monotonic()
            nodes.append(_serve(b, port_b, port_a))
            _wait("node b", lambda: _up(port_b), deadline)
            command = [shell]
            if timeout_ms:
                command += ["-cmd", f".timeout {timeout_ms}"]
            failed, took = 0, []
            errors: dict[str, int] = {}
            for index in range(writes):
                began = time.monotonic()
                result = subprocess.run(
                    [*command, str(b), f"INSERT INTO items VALUES ('w{index}', 'shell', {index})"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                took.append(time.monotonic() - began)
                if result.returncode != 0:
                    failed += 1
                    reason = result.stderr.strip().split(":")[-1].strip()
                    errors[reason] = errors.get(reason, 0) + 1
            writes_done = time.monotonic()

            def applied() -> bool:
                rows: int = _status(port_b)["store"]["tables"]["items"]
                return rows >= backlog_rows + writes - failed

            _wait("the backlog to apply", applied, deadline)
            apply_s = time.monotonic() - started
        finally:
            for node in nodes:
                node.send_signal(signal.SIGTERM)
            for node in nodes:
                node.wait(timeout=30)
    return {
        "backlog_rows": backlog_rows,
        "writes": writes,
        "timeout_ms": timeout_ms,
        "failed": failed,
        "errors": errors,
        "insert_median_ms": round(statistics.median(took) * 1000, 1),
        "insert_max_ms": round(max(took) * 1000, 1),
        "writes_s": round(writes_done - started, 2),
        "backlog_applied_s": round(apply_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog-rows", type=int, default=300_000)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--timeout-ms", type=int, default=0)
    options = parser.parse_args()
    print(json.dumps(run(options.backlog_rows, options.writes, options.timeout_ms)))


if __name__ == "__main__":
    main()
