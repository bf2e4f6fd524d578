"""Scenario `snapshot` (issue 16): a new node by snapshot bootstrap, next to the replay.

Per repeat, with fresh files and processes, on the `bootstrap` scenario's
source (bench/bulk.py: N rows of 100 bytes, tracked):

1. the baseline: SQLite copies the table file to file (`INSERT ... SELECT`
   across an ATTACHed file), as in `bootstrap`;
2. **snapshot**: node a serves the source; `syncmesh join b.db --from a` runs
   as its own process, timed from its start until it exits with b.db in
   place (the copy at a, the transfer, the checks, the new identity).  Its
   peak RSS comes from wait4's rusage;
3. **replay**: node c starts on an empty tracked file and dials a, timed
   until all N rows are in c's file (the `bootstrap` scenario's method).

"snapshot / replay" is the ratio of 2 to 3 in the same repeat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bulk import plain_copy_seconds, prepare_source
from bench.common import Figure, connected
from bench.nodes import NodeProcess, prepare_database

SNAPSHOT = "snapshot"
JOIN_TIMEOUT_S = 300.0
REPLAY_TIMEOUT_S = 300.0
POLL_S = 0.05


class _Figures:
    def __init__(self, rows: int) -> None:
        size = f"{rows:,} rows ({rows * 100 / 1e6:g} MB)"
        self.join_s = Figure(
            SNAPSHOT,
            f"syncmesh join: a new node from a snapshot of {size}",
            "s",
            baseline_name="SQLite file-to-file copy",
            target="value <= 8",
        )
        self.replay_s = Figure(
            SNAPSHOT,
            f"replay: an empty node syncs {size} from the feed",
            "s",
            baseline_name="SQLite file-to-file copy",
        )
        self.versus = Figure(
            SNAPSHOT, "snapshot bootstrap against replay", "s", baseline_name="replay"
        )
        self.join_rss = Figure(
            SNAPSHOT, "peak RSS of `syncmesh join`", "MiB", target="value <= 150"
        )
        self.replay_rss = Figure(SNAPSHOT, "peak RSS of the replaying node", "MiB")
        self.source_rss = Figure(SNAPSHOT, "peak RSS of a, the source", "MiB")
        self.file_mb = Figure(SNAPSHOT, "the snapshot file (b's file)", "MB")

    def all(self) -> list[Figure]:
        return [
            self.join_s,
            self.replay_s,
            self.versus,
            self.join_rss,
            self.replay_rss,
            self.source_rss,
            self.file_mb,
        ]


def _join(source_url: str, target: Path) -> tuple[float, float]:
    """Run `syncmesh join`; (seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "syncmesh", "join", str(target), "--from", source_url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = started + JOIN_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            raise RuntimeError(f"syncmesh join did not finish in {JOIN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S / 5)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    if process.returncode != 0:
        raise RuntimeError(f"syncmesh join failed ({process.returncode}): {stderr}")
    return elapsed, usage.ru_maxrss / 1024  # KiB on Linux


def _rows_in(path: Path) -> int:
    with connected(path, read_only=True) as reader:
        return int(reader.execute("SELECT coalesce(max(rowid), 0) FROM items").fetchone()[0])


def _replay(source_url: str, node: NodeProcess, rows: int) -> float:
    """Seconds from the start of an empty node dialling the source until it holds `rows`."""
    prepare_database(node.path)
    started = time.perf_counter()
    node.start([source_url])
    node.wait_listening()
    deadline = started + REPLAY_TIMEOUT_S
    while _rows_in(node.path) < rows:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the replay did not finish in {REPLAY_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return time.perf_counter() - started


def run(repeats: int, rows: int, log: Callable[[str], None]) -> list[Figure]:
    figures = _Figures(rows)
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-snapshot-") as name:
            directory = Path(name)
            a = NodeProcess("a", directory)
            replaying = NodeProcess("c", directory)
            prepare_source(a.path, rows, seed=700 + repeat)
            baseline_s = plain_copy_seconds(a.path, directory)
            a.start([])
            try:
                url = a.wait_listening()
                joined = directory / "b.db"
                join_s, join_rss = _join(url, joined)
                present = _rows_in(joined)
                if present != rows:
                    raise RuntimeError(f"the joined file holds {present:,} rows, not {rows:,}")
                try:
                    replay_s = _replay(url, replaying, rows)
                    figures.replay_rss.add(replaying.peak_rss_mb())
                finally:
                    replaying.stop()
                figures.source_rss.add(a.peak_rss_mb())
            finally:
                a.stop()
            figures.join_s.add(join_s, baseline_s)
            figures.replay_s.add(replay_s, baseline_s)
            figures.versus.add(join_s, replay_s)
            figures.join_rss.add(join_rss)
            figures.file_mb.add(joined.stat().st_size / 1e6)
            log(
                f"  snapshot {repeat + 1}/{repeats}: join {join_s:.2f} s, replay {replay_s:.2f} s,"
                f" copy {baseline_s:.2f} s"
            )
    return figures.all()
