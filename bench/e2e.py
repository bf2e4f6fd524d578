"""Scenario 2: end-to-end throughput through three real node processes.

Per repeat and topology (chain A<-B<-C: B dials A, C dials B; mesh: every
pair has a session), with fresh files and fresh processes:

1. baseline: the same rows inserted into a plain, untracked file (the raw
   SQLite rate on this machine at this moment);
2. the rows inserted at A's file, TXN_ROWS rows per transaction, as fast as
   possible, by this process (an application beside the node);
3. rows/s = rows / time from the first insert until every row is visible in
   B's and C's files (read-only connections polling for the last key, then
   count(*) to confirm).
4. in the mesh, once every sender's rows are acknowledged: the rows B and
   C received from their peers (`rows_in` of /v1/status) beyond one per
   row written, in % of the rows: what the b-c link carried twice.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import spy
from bench.common import (
    INSERT_SQL,
    Figure,
    Row,
    connected,
    create_items,
    make_rows,
    write_in_transactions,
)
from bench.nodes import CHAIN, MESH, NodeProcess, Topology, cluster

SCENARIO = "e2e"
TARGET = "value >= 60000"
RUN_TIMEOUT_S = 20.0  # from the first insert; a slower run is reported as a lower bound
POLL_S = 0.01
SETTLE_TIMEOUT_S = 10.0  # for every sender's rows to be acknowledged, after the last is visible
RESULTS = Path(__file__).resolve().parent / "results"
TOPOLOGIES: dict[str, Topology] = {"chain": CHAIN, "mesh": MESH}


def raw_insert_rate(directory: Path, rows: list[Row]) -> float:
    """Rows/s of inserting `rows` into a fresh plain table (the baseline)."""
    path = directory / "raw.db"
    create_items(path)
    with connected(path) as connection:
        started = time.perf_counter()
        write_in_transactions(connection, INSERT_SQL, rows)
        elapsed = time.perf_counter() - started
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return len(rows) / elapsed


def _visible(connection: sqlite3.Connection, last_key: str, total: int) -> int:
    """Rows of `items` visible now; cheap (one key lookup) until the last key shows up."""
    if connection.execute("SELECT 1 FROM items WHERE id = ?", (last_key,)).fetchone() is None:
        return 0
    return int(connection.execute("SELECT count(*) FROM items").fetchone()[0])


class RunResult:
    def __init__(self) -> None:
        self.insert_s = 0.0
        self.visible_s: dict[str, float] = {}
        self.visible_rows: dict[str, int] = {}
        self.cpu_s: dict[str, float] = {}
        self.timed_out = False
        self.extra_received_pct = 0.0


def _settled(nodes: dict[str, NodeProcess]) -> bool:
    """Every session's sender has its rows acknowledged (nothing more in flight)."""
    return all(
        peer["out_lag_changes"] == 0 for node in nodes.values() for peer in node.status()["peers"]
    )


def extra_received_pct(nodes: dict[str, NodeProcess], rows: int) -> float:
    """Rows the receiving nodes got beyond one per row written, in % of the rows."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not _settled(nodes) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    _writer, *receivers = nodes.values()
    received = sum(int(p["rows_in"]) for node in receivers for p in node.status()["peers"])
    return 100 * (received - rows * len(receivers)) / (rows * len(receivers))


def run_once(nodes: dict[str, NodeProcess], rows: list[Row], timeout_s: float) -> RunResult:
    result = RunResult()
    writer_node, *watched = nodes.values()
    cpu_before = {name: node.cpu_seconds() for name, node in nodes.items()}
    readers = {
        node.name: sqlite3.connect(f"file:{node.path}?mode=ro", uri=True) for node in watched
    }
    try:
        with connected(writer_node.path) as writer:
            started = time.perf_counter()
            write_in_transactions(writer, INSERT_SQL, rows)
            result.insert_s = time.perf_counter() - started
        last_key, total = rows[-1][0], len(rows)
        deadline = started + timeout_s
        while len(result.visible_s) < len(readers):
            now = time.perf_counter()
            for name, reader in readers.items():
                if name not in result.visible_s and _visible(reader, last_key, total) >= total:
                    result.visible_s[name] = now - started
            if now > deadline:
                result.timed_out = True
                break
            time.sleep(POLL_S)
        for name, reader in readers.items():
            result.visible_rows[name] = int(
                reader.execute("SELECT count(*) FROM items").fetchone()[0]
            )
    finally:
        for reader in readers.values():
            reader.close()
    result.cpu_s = {name: node.cpu_seconds() - cpu_before[name] for name, node in nodes.items()}
    if len(nodes) == 3 and not result.timed_out:
        result.extra_received_pct = extra_received_pct(nodes, len(rows))
    return result


def run(
    repeats: int,
    rows_count: int,
    log: Callable[[str], None],
    timeout_s: float = RUN_TIMEOUT_S,
    py_spy: str | None = None,
    profiles: dict[str, Any] | None = None,
) -> list[Figure]:
    """The figures; with `py_spy`, each topology's first repeat is sampled into `profiles`."""
    figures: list[Figure] = []
    for topology_name, topology in TOPOLOGIES.items():
        label = f"{topology_name} {'<-'.join(topology) if topology_name == 'chain' else 'a,b,c'}"
        rate = Figure(
            SCENARIO,
            f"{label}: rows/s until all {rows_count:,} visible on b and c",
            "rows/s",
            baseline_name="raw insert",
            target=TARGET,
        )
        insert = Figure(
            SCENARIO,
            f"{label}: insert rate at a (nodes running)",
            "rows/s",
            baseline_name="raw insert",
        )
        visible = {
            name: Figure(SCENARIO, f"{label}: seconds until all visible on {name}", "s")
            for name in list(topology)[1:]
        }
        cpu = {
            name: Figure(SCENARIO, f"{label}: node {name} CPU (% of one core)", "%")
            for name in topology
        }
        twice = Figure(
            SCENARIO,
            f"{label}: rows b and c received beyond one per row (% of rows)",
            "%",
            target="value <= 5" if topology_name == "mesh" else "",
        )
        figures += [rate, insert, *visible.values(), *cpu.values(), twice]
        for repeat in range(repeats):
            rows = make_rows(rows_count, seed=100 + repeat)
            with tempfile.TemporaryDirectory(prefix=f"syncmesh-bench-{topology_name}-") as name:
                directory = Path(name)
                baseline = raw_insert_rate(directory, rows)
                with cluster(directory, topology) as nodes:
                    if py_spy is not None and repeat == 0:
                        label = f"{topology_name}"
                        with spy.recording(py_spy, nodes, RESULTS, label) as outputs:
                            result = run_once(nodes, rows, timeout_s)
                        summaries = {n: spy.summarize(path) for n, path in outputs.items()}
                        if profiles is not None:
                            profiles[topology_name] = summaries
                        for node_name, summary in summaries.items():
                            for thread, shares in summary.items():
                                log(
                                    f"  py-spy {topology_name} {node_name} {thread} thread: "
                                    + ", ".join(f"{k} {v:.0f}%" for k, v in shares.items())
                                )
                    else:
                        result = run_once(nodes, rows, timeout_s)
            elapsed = max(result.visible_s.values(), default=timeout_s)
            if result.timed_out:
                elapsed = timeout_s
                rate.note = f"a repeat timed out after {timeout_s:.0f} s: its rate is a lower bound"
            delivered = min(result.visible_rows.values())
            rate.add(delivered / elapsed, baseline)
            insert.add(rows_count / result.insert_s, baseline)
            for node_name, seconds in result.visible_s.items():
                visible[node_name].add(seconds)
            for node_name, cpu_s in result.cpu_s.items():
                cpu[node_name].add(100 * cpu_s / elapsed)
            if not result.timed_out:
                twice.add(result.extra_received_pct)
            log(
                f"  e2e {topology_name} {repeat + 1}/{repeats}: {delivered / elapsed:,.0f} rows/s"
                f" (raw {baseline:,.0f}; insert at a {rows_count / result.insert_s:,.0f} rows/s;"
                f" visible {', '.join(f'{n} {s:.1f} s' for n, s in result.visible_s.items())}"
                + (
                    "; TIMED OUT)"
                    if result.timed_out
                    else f"; {result.extra_received_pct:.1f} % extra)"
                )
            )
    return figures
