"""Scenario 7: what a node costs when nothing is written.

Three node processes in a mesh (every pair in a session, heartbeats
running), with a few rows synced first so the sessions have done real work.
After a quiet spell of QUIET_S (the capture loop slows its polling once the
file has been quiet for a while), each node's CPU time (user + system, from
/proc/PID/stat) is read over `seconds`.  The figure is the median node's
share of one core; the busiest node is reported beside it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import INSERT_SQL, Figure, connected, make_rows, write_in_transactions
from bench.nodes import MESH, cluster

SCENARIO = "idle"
QUIET_S = 7.0
WARM_ROWS = 1_000
VISIBLE_TIMEOUT_S = 20.0


def run(repeats: int, seconds: float, log: Callable[[str], None]) -> list[Figure]:
    median = Figure(
        SCENARIO, f"CPU of a node with no writes, over {seconds:.0f} s", "%", target="value <= 1"
    )
    busiest = Figure(SCENARIO, "CPU of the busiest of the 3 nodes", "%")
    for repeat in range(repeats):
        with (
            tempfile.TemporaryDirectory(prefix="syncmesh-bench-idle-") as name,
            cluster(Path(name), MESH) as nodes,
        ):
            rows = make_rows(WARM_ROWS, seed=300 + repeat)
            with connected(nodes["a"].path) as writer:
                write_in_transactions(writer, INSERT_SQL, rows)
            deadline = time.monotonic() + VISIBLE_TIMEOUT_S
            for node in nodes.values():
                with connected(node.path, read_only=True) as reader:
                    while time.monotonic() < deadline:
                        count = reader.execute("SELECT count(*) FROM items").fetchone()[0]
                        if count >= WARM_ROWS:
                            break
                        time.sleep(0.05)
            time.sleep(QUIET_S)
            before = {n.name: n.cpu_seconds() for n in nodes.values()}
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            shares = sorted(
                100 * (n.cpu_seconds() - before[n.name]) / elapsed for n in nodes.values()
            )
        median.add(shares[len(shares) // 2])
        busiest.add(shares[-1])
        log(f"  idle {repeat + 1}/{repeats}: CPU {', '.join(f'{s:.2f}%' for s in shares)}")
    return [median, busiest]
