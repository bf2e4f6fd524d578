"""Scenario 3: write->visible latency under light load, two node processes.

B dials A.  This process writes one row at A every WRITE_INTERVAL_S (a
one-row transaction; `qty` numbers the writes) while a thread polls B's file
in a tight loop (PRAGMA data_version every POLL_S; on a change, read the
numbers present).  Latency = first poll that shows the row - the moment
just before its INSERT at A.

Baseline, same repeat: the same writer and poller on one plain file, i.e.
the floor of this measurement (local commit -> visible to another
connection, plus the poller's own granularity).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.common import INSERT_SQL, Figure, connected, create_items
from bench.nodes import PAIR, cluster

SCENARIO = "latency"
WRITE_INTERVAL_S = 0.020
POLL_S = 0.0005
WARMUP_WRITES = 5
SETTLE_TIMEOUT_S = 5.0  # after the last write, for the last rows to show up


class Poller(threading.Thread):
    """Notes the first moment each write number is visible in the file at `path`."""

    def __init__(self, path: Path, max_runtime_s: float) -> None:
        super().__init__(name="bench-poller", daemon=True)
        self.seen: dict[int, float] = {}
        self._path = path
        self._stop_event = threading.Event()
        self._max_runtime_s = max_runtime_s

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        deadline = time.perf_counter() + self._max_runtime_s
        with connected(self._path, read_only=True) as connection:
            last_version = None
            while not self._stop_event.is_set() and time.perf_counter() < deadline:
                version = connection.execute("PRAGMA data_version").fetchone()[0]
                if version != last_version:
                    last_version = version
                    now = time.perf_counter()
                    for (number,) in connection.execute("SELECT qty FROM items"):
                        if number not in self.seen:
                            self.seen[number] = now
                time.sleep(POLL_S)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(
    writer_path: Path, reader_path: Path, writes: int, interval_s: float
) -> tuple[list[float], int]:
    """(latencies in ms of the rows seen, rows never seen) for `writes` paced writes."""
    budget_s = (writes + WARMUP_WRITES) * interval_s + 2 * SETTLE_TIMEOUT_S + 5
    poller = Poller(reader_path, budget_s)
    poller.start()
    written: dict[int, float] = {}
    try:
        with connected(writer_path) as writer:
            # Warm-up writes (negative numbers) wake every session and cache.
            for number in range(-WARMUP_WRITES, 0):
                writer.execute(INSERT_SQL, (uuid.uuid4().hex, "warm-up", number, 0.0))
                time.sleep(interval_s)
            settle = time.perf_counter() + SETTLE_TIMEOUT_S
            while -1 not in poller.seen and time.perf_counter() < settle:
                time.sleep(0.005)
            started = time.perf_counter()
            for number in range(writes):
                written[number] = time.perf_counter()
                writer.execute(INSERT_SQL, (uuid.uuid4().hex, f"write {number}", number, 1.0))
                pause = started + (number + 1) * interval_s - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        settle = time.perf_counter() + SETTLE_TIMEOUT_S
        while len([n for n in written if n in poller.seen]) < writes:
            if time.perf_counter() > settle:
                break
            time.sleep(0.005)
    finally:
        poller.stop()
    latencies = [(poller.seen[n] - at) * 1000 for n, at in written.items() if n in poller.seen]
    return latencies, writes - len(latencies)


def run(repeats: int, writes: int, log: Callable[[str], None]) -> list[Figure]:
    p50 = Figure(
        SCENARIO,
        f"a->b p50 of {writes} writes every {WRITE_INTERVAL_S * 1000:.0f} ms",
        "ms",
        baseline_name="local floor",
        target="value <= 2",
    )
    p99 = Figure(
        SCENARIO,
        f"a->b p99 of {writes} writes",
        "ms",
        baseline_name="local floor",
        target="value <= 10",
    )
    worst = Figure(SCENARIO, f"a->b max of {writes} writes", "ms")
    lost = Figure(SCENARIO, f"writes not visible within {SETTLE_TIMEOUT_S:.0f} s", "rows")
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-latency-") as name:
            directory = Path(name)
            plain = directory / "plain.db"
            create_items(plain)
            floor, _ = measure(plain, plain, min(writes, 100), WRITE_INTERVAL_S / 4)
            with cluster(directory, PAIR) as nodes:
                latencies, missing = measure(
                    nodes["a"].path, nodes["b"].path, writes, WRITE_INTERVAL_S
                )
        if not latencies:
            lost.add(missing)
            log(f"  latency {repeat + 1}/{repeats}: no write became visible")
            continue
        p50.add(percentile(latencies, 0.50), percentile(floor, 0.50))
        p99.add(percentile(latencies, 0.99), percentile(floor, 0.99))
        worst.add(max(latencies))
        lost.add(missing)
        log(
            f"  latency {repeat + 1}/{repeats}: p50 {percentile(latencies, 0.5):.2f} ms,"
            f" p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms,"
            f" {missing} missing (local floor p50 {percentile(floor, 0.5):.3f} ms)"
        )
    return [p50, p99, worst, lost]
