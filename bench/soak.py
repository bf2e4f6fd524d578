"""Scenario `soak` (issue 16): three nodes under a steady churn; does the file level off?

Three `syncmesh serve` nodes in a mesh, each written by its own client
thread at `rate / 3` transactions a second: inserts of new random keys,
updates and deletes of keys it inserted, around `LIVE_ROWS_PER_NODE` live
rows per node (an insert when below, a delete when above, else one of the
three), so that deletes keep coming for as long as the soak runs.  Without
tombstone collection every delete leaves a shadow row for ever and the
files grow with the number of deletes; with it (ADR 0015, the nodes'
default `lifecycle.interval_s`) they level off once the first tombstones
are collected.

Every `sample_s` it records, per node: the database file's bytes, its
WAL's (whose size is its high-water mark: SQLite reuses a WAL from the
start after a checkpoint, and truncates it only with `journal_size_limit`),
shadow rows, tombstones waiting (`/v1/status`) and the node's RSS.
Bounded: the run stops after `minutes`, and each client after
`rate * minutes * 60 * 1.1 / 3` transactions.  The figures: the final
file size against the size at a quarter of the run (after the first
collections), per node; tombstones waiting at the end; deletes in all.
`--soak-plot FILE` also draws the table (needs matplotlib).
"""

from __future__ import annotations

import importlib
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Figure, connected
from bench.nodes import MESH, NodeProcess, cluster

SOAK = "soak"
LIVE_ROWS_PER_NODE = 2_000  # the default; --soak-live-rows
OVERRUN = 1.1  # a client stops after this many times its share of transactions


@dataclass(frozen=True, slots=True)
class Sample:
    minute: float
    node: str
    file_bytes: int  # the database file
    wal_bytes: int  # its WAL (its size is the high-water mark of the WAL since start)
    shadow_rows: int
    tombstones: int
    rss_mb: float
    deletes: int  # by every client so far


class ChurnClient:
    """One node's application: inserts, updates, deletes around a live set (a thread)."""

    def __init__(
        self, path: Path, rate: float, transactions_max: int, live_rows: int, seed: int
    ) -> None:
        self._path = path
        self._live_rows = live_rows
        self._pause_s = 1.0 / rate
        self._transactions_max = transactions_max
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.transactions = 0
        self.deletes = 0
        self.error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        live: list[str] = []
        rng = self._rng
        next_at = time.monotonic()
        try:
            with connected(self._path) as connection:
                while not self._stop.is_set() and self.transactions < self._transactions_max:
                    self._one(connection, live, rng)
                    self.transactions += 1
                    next_at += self._pause_s
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # reported in the figures' note, not swallowed
            self.error = repr(exc)

    def _one(self, connection: sqlite3.Connection, live: list[str], rng: random.Random) -> None:
        if len(live) < self._live_rows:
            choice = "insert"
        elif len(live) > self._live_rows:
            choice = "delete"
        else:
            choice = rng.choice(("insert", "update", "delete"))
        if choice == "insert":
            key = f"{rng.getrandbits(128):032x}"
            connection.execute(
                "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)",
                (key, f"name {rng.getrandbits(64):016x}", rng.randrange(1000), rng.random()),
            )
            live.append(key)
        elif choice == "update":
            connection.execute(
                "UPDATE items SET qty = qty + 1 WHERE id = ?", (live[rng.randrange(len(live))],)
            )
        else:
            key = live.pop(rng.randrange(len(live)))
            connection.execute("DELETE FROM items WHERE id = ?", (key,))
            self.deletes += 1


def _sample(minute: float, node: NodeProcess, deletes: int) -> Sample:
    status = node.status()
    lifecycle = status["store"].get("lifecycle") or {}
    wal = Path(f"{node.path}-wal")
    with connected(node.path, read_only=True) as reader:
        shadow = int(reader.execute("SELECT count(*) FROM _syncmesh_shadow_items").fetchone()[0])
    return Sample(
        round(minute, 2),
        node.name,
        node.path.stat().st_size,
        wal.stat().st_size if wal.exists() else 0,
        shadow,
        int(lifecycle.get("tombstones_waiting", 0)),
        node.peak_rss_mb(),
        deletes,
    )


def soak(
    minutes: float, rate: float, sample_s: float, live_rows: int, log: Callable[[str], None]
) -> tuple[list[Sample], str]:
    """Run the soak; the samples, and what went wrong in a client ("" if nothing)."""
    samples: list[Sample] = []
    with (
        tempfile.TemporaryDirectory(prefix="syncmesh-bench-soak-") as name,
        cluster(Path(name), MESH) as nodes,
    ):
        share = rate / len(nodes)
        transactions_max = int(share * minutes * 60 * OVERRUN)
        clients = [
            ChurnClient(node.path, share, transactions_max, live_rows, seed=900 + index)
            for index, node in enumerate(nodes.values())
        ]
        started = time.monotonic()
        for client in clients:
            client.start()
        try:
            deadline = started + minutes * 60
            next_sample = started
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    deletes = sum(client.deletes for client in clients)
                    taken = [_sample((now - started) / 60, n, deletes) for n in nodes.values()]
                    samples.extend(taken)
                    log(_line(taken))
                    next_sample += sample_s
                if now >= deadline:
                    break
                time.sleep(min(1.0, max(0.0, min(next_sample, deadline) - time.monotonic())))
        finally:
            for client in clients:
                client.stop()
    errors = "; ".join(client.error for client in clients if client.error)
    return samples, errors


def _line(taken: list[Sample]) -> str:
    return f"  {taken[0].minute:6.2f} min: " + "; ".join(
        f"{s.node} {s.file_bytes / 1e6:.2f} MB + WAL {s.wal_bytes / 1e6:.2f} MB,"
        f" {s.shadow_rows} shadow, {s.tombstones} tombstones,"
        f" {s.rss_mb:.0f} MiB"
        for s in taken
    )


def table(samples: list[Sample]) -> str:
    """The samples as a Markdown table, one row per sample time (node a, b, c across)."""
    nodes = sorted({sample.node for sample in samples})
    by_time: dict[float, dict[str, Sample]] = {}
    for sample in samples:
        by_time.setdefault(sample.minute, {})[sample.node] = sample
    header = "| minute | deletes so far | " + " | ".join(
        f"{node}: file MB, WAL MB, shadow rows, tombstones, RSS MiB" for node in nodes
    )
    lines = [header + " |", "|" + " --- |" * (2 + len(nodes))]
    for minute, row in sorted(by_time.items()):
        cells = [
            f"{row[node].file_bytes / 1e6:.2f}, {row[node].wal_bytes / 1e6:.2f},"
            f" {row[node].shadow_rows:,},"
            f" {row[node].tombstones:,}, {row[node].rss_mb:.0f}"
            if node in row
            else "-"
            for node in nodes
        ]
        deletes = max(sample.deletes for sample in row.values())
        lines.append(f"| {minute:.2f} | {deletes:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(samples: list[Sample], path: Path) -> bool:
    """File size and tombstones per node over the soak as a PNG; False without matplotlib."""
    try:  # optional: matplotlib is not a dependency of syncmesh
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        pyplot: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    figure, (sizes, waiting) = pyplot.subplots(2, 1, sharex=True, figsize=(8, 6))
    for index, node in enumerate(sorted({sample.node for sample in samples})):
        mine = [sample for sample in samples if sample.node == node]
        minutes = [sample.minute for sample in mine]
        color = f"C{index}"
        sizes.plot(
            minutes, [sample.file_bytes / 1e6 for sample in mine], color=color, label=f"{node}"
        )
        sizes.plot(
            minutes,
            [sample.wal_bytes / 1e6 for sample in mine],
            color=color,
            linestyle="--",
            label=f"{node}, WAL (high-water)",
        )
        waiting.plot(minutes, [sample.tombstones for sample in mine], color=color, label=node)
    sizes.set_ylabel("MB")
    waiting.set_ylabel("tombstones waiting")
    waiting.set_xlabel("minutes")
    sizes.legend(fontsize="small", ncol=3)
    waiting.legend(fontsize="small")
    sizes.set_title("bench soak: 3 nodes, churn, tombstone collection on")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True


def run(
    minutes: float,
    rate: float,
    sample_s: float,
    log: Callable[[str], None],
    *,
    live_rows: int = LIVE_ROWS_PER_NODE,
    plot_path: Path | None = None,
) -> list[Figure]:
    samples, errors = soak(minutes, rate, sample_s, live_rows, log)
    log(table(samples))
    if plot_path is not None:
        log(f"  plot: {plot_path}" if plot(samples, plot_path) else "  plot: needs matplotlib")
    early_minute = minutes / 4
    figures = []
    for node in sorted({sample.node for sample in samples}):
        mine = [sample for sample in samples if sample.node == node]
        early = min(mine, key=lambda sample: abs(sample.minute - early_minute))
        final = mine[-1]
        size = Figure(
            SOAK,
            f"node {node}: file at the end, against at {early.minute:g} min",
            "MB",
            baseline_name=f"file at {early.minute:g} min",
            target="ratio <= 1.2",
            note=errors,
        )
        size.add(final.file_bytes / 1e6, early.file_bytes / 1e6)
        wal = Figure(SOAK, f"node {node}: WAL at the end (its high-water mark)", "MB")
        wal.add(final.wal_bytes / 1e6)
        tombstones = Figure(SOAK, f"node {node}: tombstones waiting at the end", "rows")
        tombstones.add(final.tombstones)
        shadow = Figure(SOAK, f"node {node}: shadow rows at the end", "rows")
        shadow.add(final.shadow_rows)
        figures += [size, wal, tombstones, shadow]
    deletes = Figure(SOAK, f"deletes in {minutes:g} min, all clients", "rows")
    deletes.add(max((sample.deletes for sample in samples), default=0))
    return [*figures, deletes]
