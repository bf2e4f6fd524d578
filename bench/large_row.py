"""Scenario large_row: one 30 MiB TEXT row between two node processes (new-user report).

Two nodes (b dials a) with a 1 s heartbeat (a pong must come within 0.5 s).
Per repeat, on fresh files and processes:

1. baseline: for IDLE_S, GET /v1/openapi.json of both nodes every 20 ms
   (answered by the event loop alone, no store call); the slowest answer;
2. the row is written at a with the sqlite3 shell, as the user did, while
   the same poll runs until the row is at b (bounded by ARRIVAL_TIMEOUT_S);
   the slowest answer is the figure (ratio: against the baseline), with
   the seconds until the row is at b and the sessions that ended meanwhile
   (b's `reconnects` of a, from /v1/status, after the row arrived).

A session that drops on the row is what the report was about: the target
is none.  The slowest answer says how long an event loop was held.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure, connected
from bench.nodes import PAIR, NodeProcess, cluster

SCENARIO = "large_row"
ROW_CHARS = 30 << 20  # hex of 15 MiB of random bytes
HEARTBEAT_ENV = {"SYNCMESH_PEERS_HEARTBEAT_S": "1.0"}
IDLE_S = 3.0
POLL_S = 0.02
ARRIVAL_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0


class _Poller:
    """GET /v1/openapi.json of `nodes` every POLL_S on a thread; the slowest answer, in s."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self._urls = [f"{node.url}/v1/openapi.json" for node in nodes]
        self._stop = threading.Event()
        self.slowest_s = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HTTP_TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self._urls:
                started = time.monotonic()
                with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as answer:
                    answer.read()
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            time.sleep(POLL_S)


def _reconnects(nodes: list[NodeProcess]) -> int:
    """Sessions the dialler started again after one ended (`reconnects` of /v1/status)."""
    return sum(peer["reconnects"] for node in nodes for peer in node.status()["peers"])


def run(repeats: int, log: Callable[[str], None]) -> list[Figure]:
    shell = shutil.which("sqlite3")
    if shell is None:
        raise RuntimeError("the sqlite3 command-line shell is needed (apt-get install sqlite3)")
    stall = Figure(
        SCENARIO,
        "slowest event-loop answer while a 30 MiB row goes a -> b",
        "s",
        baseline_name="the same with nothing written",
    )
    drops = Figure(SCENARIO, "sessions ended while the row went over", "count", target="value <= 0")
    arrival = Figure(SCENARIO, "seconds until the 30 MiB row is at b", "s")
    for repeat in range(repeats):
        with (
            tempfile.TemporaryDirectory(prefix="syncmesh-bench-large-row-") as name,
            cluster(Path(name), PAIR, env=HEARTBEAT_ENV) as nodes,
        ):
            pair = [nodes["a"], nodes["b"]]
            with _Poller(pair) as idle:
                time.sleep(IDLE_S)
            ended_before = _reconnects(pair)
            with _Poller(pair) as busy:
                started = time.monotonic()
                subprocess.run(
                    [
                        shell,
                        "-cmd",
                        ".timeout 10000",
                        str(nodes["a"].path),
                        "INSERT INTO items (id, name) VALUES"
                        f" ('big', hex(randomblob({ROW_CHARS // 2})))",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=ARRIVAL_TIMEOUT_S,
                )
                arrived_s = float("nan")
                with connected(nodes["b"].path, read_only=True) as reader:
                    while time.monotonic() - started < ARRIVAL_TIMEOUT_S:
                        found = reader.execute(
                            "SELECT length(name) FROM items WHERE id = 'big'"
                        ).fetchone()
                        if found is not None and found[0] == ROW_CHARS:
                            arrived_s = time.monotonic() - started
                            break
                        time.sleep(POLL_S)
            ended = _reconnects(pair) - ended_before
        stall.add(busy.slowest_s, idle.slowest_s)
        drops.add(ended)
        arrival.add(arrived_s)
        log(
            f"  large_row {repeat + 1}/{repeats}: at b after {arrived_s:.1f} s, {ended} sessions"
            f" ended, slowest answer {busy.slowest_s:.3f} s (idle {idle.slowest_s:.3f} s)"
        )
    return [stall, drops, arrival]
