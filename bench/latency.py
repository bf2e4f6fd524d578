"""Scenario 3: write->visible latency under light load, two node processes.

B dials A.  This process writes one row at A every WRITE_INTERVAL_S (a
one-row transaction; `qty` numbers the writes) while a thread polls B's file
in a tight loop (PRAGMA data_version every POLL_S; on a change, read the
numbers present).  Latency = first poll that shows the row - the moment
just before its INSERT at A.

Baseline, same repeat: the same writer and poller on one plain file, i.e.
the floor of this measurement (local commit -> visible to another
connection, plus the poller's own granularity).

The curve (issue 17): the same pair of nodes, paced single-row writes at
each rate of RATES transactions per second, in turn (RATE_SECONDS of
writes at each rate, at most RATE_WRITES_MAX and at least RATE_WRITES_MIN
writes).  Each rate's p50 and p99 are given above the local floor of the
same repeat (the floor's percentile subtracted from the rate's): the time
syncmesh adds to a commit, whatever the write rate.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from bench.common import INSERT_SQL, Figure, connected, create_items
from bench.nodes import PAIR, cluster

SCENARIO = "latency"
WRITE_INTERVAL_S = 0.020
POLL_S = 0.0005
WARMUP_WRITES = 5
SETTLE_TIMEOUT_S = 5.0  # after the last write, for the last rows to show up
RATES = (1, 10, 50, 100, 200, 500, 1000)  # single-row transactions per second
RATE_SECONDS = 8.0  # of writes at each rate, bounded by:
RATE_WRITES_MIN = 10
RATE_WRITES_MAX = 400
FLOOR_WRITES = 200  # the curve's local floor: this many writes at FLOOR_RATE
FLOOR_RATE = 200


class SitesPoller(threading.Thread):
    """Notes, per file, the first moment each write number is visible in it (`seen_at`)."""

    def __init__(
        self, paths: Mapping[str, Path], max_runtime_s: float, poll_s: float = POLL_S
    ) -> None:
        super().__init__(name="bench-poller", daemon=True)
        self._poll_s = poll_s
        self.seen_at: dict[str, dict[int, float]] = {name: {} for name in paths}
        self._paths = dict(paths)
        self._stop_event = threading.Event()
        self._max_runtime_s = max_runtime_s

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        deadline = time.perf_counter() + self._max_runtime_s
        with contextlib.ExitStack() as stack:
            connections = {
                name: stack.enter_context(connected(path, read_only=True))
                for name, path in self._paths.items()
            }
            versions: dict[str, int] = {}
            rowids = dict.fromkeys(connections, 0)  # rows arrive with growing rowids: new ones only
            while not self._stop_event.is_set() and time.perf_counter() < deadline:
                for name, connection in connections.items():
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                    if versions.get(name) == version:
                        continue
                    versions[name] = version
                    now = time.perf_counter()
                    seen = self.seen_at[name]
                    for rowid, number in connection.execute(
                        "SELECT rowid, qty FROM items WHERE rowid > ?", (rowids[name],)
                    ):
                        rowids[name] = max(rowids[name], rowid)
                        seen.setdefault(number, now)
                time.sleep(self._poll_s)


class Poller(SitesPoller):
    """Notes the first moment each write number is visible in the file at `path` (`seen`)."""

    def __init__(self, path: Path, max_runtime_s: float) -> None:
        super().__init__({"": path}, max_runtime_s)
        self.seen = self.seen_at[""]


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


def rate_writes(rate: int) -> int:
    """How many writes the curve makes at `rate` per second (bounded in count and time)."""
    return max(RATE_WRITES_MIN, min(RATE_WRITES_MAX, round(rate * RATE_SECONDS)))


def _paced_writes(
    writer: sqlite3.Connection, numbers: range, interval_s: float, written: dict[int, float]
) -> None:
    """One single-row transaction per number, `interval_s` apart; each one's start noted."""
    started = time.perf_counter()
    for index, number in enumerate(numbers):
        written[number] = time.perf_counter()
        writer.execute(INSERT_SQL, (uuid.uuid4().hex, f"write {number}", number, 1.0))
        pause = started + (index + 1) * interval_s - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def _wait_seen(poller: Poller, numbers: Iterable[int], timeout_s: float) -> None:
    wanted = list(numbers)
    deadline = time.perf_counter() + timeout_s
    while any(n not in poller.seen for n in wanted) and time.perf_counter() < deadline:
        time.sleep(0.005)


def measure_curve(
    writer_path: Path, reader_path: Path, rates: Sequence[int]
) -> dict[int, tuple[list[float], int]]:
    """Per rate: (latencies in ms of the rows seen, rows never seen), one poller for all."""
    budget_s = sum(rate_writes(r) / r + 2 * SETTLE_TIMEOUT_S for r in rates) + 10
    poller = Poller(reader_path, budget_s)
    poller.start()
    found: dict[int, tuple[list[float], int]] = {}
    next_number = 0
    try:
        with connected(writer_path) as writer:
            for rate in rates:
                # One warm-up write wakes the sessions after the pause between rates.
                warm_up = -1 - next_number
                writer.execute(INSERT_SQL, (uuid.uuid4().hex, "warm-up", warm_up, 0.0))
                _wait_seen(poller, [warm_up], SETTLE_TIMEOUT_S)
                numbers = range(next_number, next_number + rate_writes(rate))
                next_number = numbers.stop
                written: dict[int, float] = {}
                _paced_writes(writer, numbers, 1 / rate, written)
                _wait_seen(poller, numbers, SETTLE_TIMEOUT_S)
                latencies = [
                    (poller.seen[n] - at) * 1000 for n, at in written.items() if n in poller.seen
                ]
                found[rate] = (latencies, len(written) - len(latencies))
    finally:
        poller.stop()
    return found


def curve_figures(rates: Sequence[int]) -> dict[int, tuple[Figure, Figure]]:
    return {
        rate: (
            Figure(
                SCENARIO,
                f"curve: p50 above the local floor at {rate} txn/s ({rate_writes(rate)} writes)",
                "ms",
                target="value <= 1.0",
            ),
            Figure(
                SCENARIO,
                f"curve: p99 above the local floor at {rate} txn/s",
                "ms",
                target="value <= 3",
            ),
        )
        for rate in rates
    }


def run_curve(
    repeats: int, log: Callable[[str], None], rates: Sequence[int] = RATES
) -> list[Figure]:
    """The issue-17 curve: latency above the local floor at every write rate."""
    figures = curve_figures(rates)
    floor_p50 = Figure(
        SCENARIO, f"curve: local floor p50 ({FLOOR_WRITES} writes at {FLOOR_RATE}/s)", "ms"
    )
    floor_p99 = Figure(SCENARIO, "curve: local floor p99", "ms")
    missing = Figure(SCENARIO, "curve: writes not visible within 5 s, all rates", "rows")
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-curve-") as name:
            directory = Path(name)
            plain = directory / "plain.db"
            create_items(plain)
            floor, _ = measure(plain, plain, FLOOR_WRITES, 1 / FLOOR_RATE)
            with cluster(directory, PAIR) as nodes:
                found = measure_curve(nodes["a"].path, nodes["b"].path, rates)
        base50, base99 = percentile(floor, 0.5), percentile(floor, 0.99)
        floor_p50.add(base50)
        floor_p99.add(base99)
        missing.add(sum(lost for _, lost in found.values()))
        line = []
        for rate, (latencies, _lost) in found.items():
            if not latencies:
                continue
            p50, p99 = percentile(latencies, 0.5) - base50, percentile(latencies, 0.99) - base99
            figures[rate][0].add(p50)
            figures[rate][1].add(p99)
            line.append(f"{rate}/s {p50:.2f}/{p99:.2f}")
        log(
            f"  curve {repeat + 1}/{repeats} (p50/p99 ms above floor {base50:.3f}/{base99:.3f}): "
            + ", ".join(line)
        )
    return [floor_p50, floor_p99, *(f for pair in figures.values() for f in pair), missing]


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
