"""Scenario 6: sustained mixed load at all three nodes of a mesh; replication lag.

Three node processes, every pair in a session (the mesh).  One writer
thread writes at every node in turn, `rate` transactions per second per
node, for `seconds` (and at most rate x seconds transactions per node).  Each
transaction holds `ops` random operations on that node's own rows (half
inserts, 30% updates of one column, 20% deletes; inserts only until rows
exist) and one *marker* row, `m-<node>-<n>`.  A node ships and applies
whole local transactions, so a marker becoming visible at a peer means its
transaction did.

One poller thread watches every node's file (read-only connections,
`PRAGMA data_version` every POLL_S; on a change it looks up the markers of
the other two nodes that it has not seen yet).  A transaction's lag at a
peer is the first poll that shows its marker minus the moment just before
its BEGIN.  Every (transaction, peer) pair is one sample: p50, p99 and max
over them all.  Markers not seen within SETTLE_TIMEOUT_S after the last
write are counted as missing.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure, connected
from bench.latency import percentile
from bench.nodes import MESH, cluster

SCENARIO = "mixed"
POLL_S = 0.001
SETTLE_TIMEOUT_S = 10.0
LOOKUP_MAX = 200  # markers looked up per query
INSERT_SQL = "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)"


class _Markers:
    """Markers written (time before BEGIN) and seen per observing node; thread-safe."""

    def __init__(self, names: list[str]) -> None:
        self.lock = threading.Lock()
        self.written: dict[str, float] = {}
        # observer -> marker ids written elsewhere and not yet seen there
        self.pending: dict[str, dict[str, float]] = {name: {} for name in names}
        self.lags_ms: list[float] = []

    def wrote(self, origin: str, marker: str, at: float) -> None:
        with self.lock:
            self.written[marker] = at
            for observer, pending in self.pending.items():
                if observer != origin:
                    pending[marker] = at

    def waiting(self, observer: str) -> list[str]:
        with self.lock:
            return list(self.pending[observer])[:LOOKUP_MAX]

    def seen(self, observer: str, markers: list[str], now: float) -> None:
        with self.lock:
            pending = self.pending[observer]
            for marker in markers:
                at = pending.pop(marker, None)
                if at is not None:
                    self.lags_ms.append((now - at) * 1000)

    def missing(self) -> int:
        with self.lock:
            return sum(len(pending) for pending in self.pending.values())


class _Poller(threading.Thread):
    def __init__(self, paths: dict[str, Path], markers: _Markers, max_runtime_s: float) -> None:
        super().__init__(name="bench-mixed-poller", daemon=True)
        self._paths = paths
        self._markers = markers
        self._stop_event = threading.Event()
        self._max_runtime_s = max_runtime_s
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    def _run(self) -> None:
        deadline = time.perf_counter() + self._max_runtime_s
        readers = {
            name: sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            for name, path in self._paths.items()
        }
        try:
            versions: dict[str, int] = {}
            while not self._stop_event.is_set() and time.perf_counter() < deadline:
                for name, reader in readers.items():
                    version = int(reader.execute("PRAGMA data_version").fetchone()[0])
                    if version == versions.get(name):
                        continue
                    versions[name] = version
                    waiting = self._markers.waiting(name)
                    if not waiting:
                        continue
                    now = time.perf_counter()
                    marks = ",".join("?" * len(waiting))
                    found = [
                        str(row[0])
                        for row in reader.execute(
                            f"SELECT id FROM items WHERE id IN ({marks})", waiting
                        )
                    ]
                    if found:
                        self._markers.seen(name, found, now)
                    if len(waiting) == LOOKUP_MAX:
                        versions.pop(name)  # more may be there: look again next round
                time.sleep(POLL_S)
        finally:
            for reader in readers.values():
                reader.close()


def _write_load(
    paths: dict[str, Path],
    markers: _Markers,
    rate: float,
    ops: int,
    seconds: float,
    seed: int,
) -> int:
    """Paced transactions at every node; returns the operations written (markers excluded)."""
    rng = random.Random(seed)
    writers = {name: connected(path) for name, path in paths.items()}
    connections = {name: manager.__enter__() for name, manager in writers.items()}
    live: dict[str, list[str]] = {name: [] for name in paths}
    written_ops = 0
    interval_s = 1.0 / rate
    transactions_max = max(1, round(rate * seconds))
    try:
        started = time.perf_counter()
        deadline = started + seconds
        for number in range(transactions_max):
            if time.perf_counter() > deadline:
                break
            for name, connection in connections.items():
                rows = live[name]
                at = time.perf_counter()
                connection.execute("BEGIN")
                for _ in range(ops):
                    draw = rng.random()
                    if draw < 0.5 or len(rows) < 2:
                        key = f"{rng.getrandbits(128):032x}"
                        connection.execute(INSERT_SQL, (key, f"row of {name}", number, 1.0))
                        rows.append(key)
                    elif draw < 0.8:
                        key = rows[rng.randrange(len(rows))]
                        connection.execute("UPDATE items SET qty = ? WHERE id = ?", (number, key))
                    else:
                        index = rng.randrange(len(rows))
                        rows[index], rows[-1] = rows[-1], rows[index]
                        connection.execute("DELETE FROM items WHERE id = ?", (rows.pop(),))
                    written_ops += 1
                marker = f"m-{name}-{number}"
                connection.execute(INSERT_SQL, (marker, "marker", number, 0.0))
                connection.execute("COMMIT")
                markers.wrote(name, marker, at)
            pause = started + (number + 1) * interval_s - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    finally:
        for manager in writers.values():
            manager.__exit__(None, None, None)
    return written_ops


def run(
    repeats: int,
    seconds: float,
    rate: float,
    ops: int,
    log: Callable[[str], None],
) -> list[Figure]:
    label = f"{rate:.0f} txns/s x ({ops} ops + 1 marker) at each of 3 nodes, {seconds:.0f} s"
    p50 = Figure(SCENARIO, f"lag p50, {label}", "ms")
    p99 = Figure(SCENARIO, "lag p99", "ms", target="value <= 100")
    worst = Figure(SCENARIO, "lag max", "ms")
    missing = Figure(SCENARIO, f"markers not visible within {SETTLE_TIMEOUT_S:.0f} s", "count")
    throughput = Figure(SCENARIO, "operations written, all nodes", "ops/s")
    cpu = Figure(SCENARIO, "CPU per node, median of the 3", "%")
    for repeat in range(repeats):
        with (
            tempfile.TemporaryDirectory(prefix="syncmesh-bench-mixed-") as name,
            cluster(Path(name), MESH) as nodes,
        ):
            paths = {node.name: node.path for node in nodes.values()}
            markers = _Markers(list(paths))
            poller = _Poller(paths, markers, seconds + 2 * SETTLE_TIMEOUT_S + 10)
            cpu_before = {node.name: node.cpu_seconds() for node in nodes.values()}
            poller.start()
            try:
                started = time.perf_counter()
                written = _write_load(paths, markers, rate, ops, seconds, seed=700 + repeat)
                wrote_s = time.perf_counter() - started
                settle = time.perf_counter() + SETTLE_TIMEOUT_S
                while markers.missing() and time.perf_counter() < settle:
                    time.sleep(0.01)
                cpu_s = {n.name: n.cpu_seconds() - cpu_before[n.name] for n in nodes.values()}
            finally:
                poller.stop()
            if poller.error is not None:
                raise RuntimeError(f"the poller failed: {poller.error!r}")
        lags = markers.lags_ms
        missing.add(markers.missing())
        throughput.add(written / wrote_s)
        shares = sorted(100 * value / wrote_s for value in cpu_s.values())
        cpu.add(shares[len(shares) // 2])
        if not lags:
            log(f"  mixed {repeat + 1}/{repeats}: no marker became visible")
            continue
        p50.add(percentile(lags, 0.50))
        p99.add(percentile(lags, 0.99))
        worst.add(max(lags))
        log(
            f"  mixed {repeat + 1}/{repeats}: {len(lags):,} lags, p50"
            f" {percentile(lags, 0.5):.1f} ms, p99 {percentile(lags, 0.99):.1f} ms, max"
            f" {max(lags):.1f} ms, {markers.missing()} missing; {written / wrote_s:,.0f} ops/s;"
            f" CPU {', '.join(f'{v:.0f}%' for v in shares)}"
        )
    return [p50, p99, worst, missing, throughput, cpu]
