"""Scenario peers (issue 17): syncmesh side by side with pysyncobj and NATS JetStream KV.

The same workload on each, in every repeat of one run: WRITES writes of about
100 bytes (a 32-character key and about 68 bytes of value) on a 3-node
cluster on 127.0.0.1, written at one node as fast as the system takes them,
with each system's own pipelining:

- pysyncobj (`ReplDict`, Raft, 3 processes; bench/peer_syncobj.py):
  `set(..., sync=False)` from a thread of the first member.  State in
  memory only (no journal file): a member that restarts recovers from the
  others, a cluster that stops loses everything.
- NATS JetStream (3 clustered `nats-server`s, a KV bucket with 3 replicas;
  bench/peer_nats.py): PUTS_IN_FLIGHT puts in flight.  A put is acknowledged
  once 2 of 3 servers stored it in their file store; not fsynced per write.
- syncmesh (bench/nodes.py: 3 `syncmesh serve` processes, chain a<-b<-c and
  mesh): an application connection writes a's file in transactions of
  TXN_ROWS rows (WAL, `synchronous=NORMAL`: durable across a process
  crash at commit, across a power loss at the next checkpoint's sync).

Each run reports rows/s until the last write is visible at all 3 nodes
(from the first write) and the p50/p99 of each write's latency until it is
visible at all 3 (from the moment before it was written; for syncmesh
before its transaction began).  Visibility is polled every 0.5 ms at every
node (pysyncobj: the dictionary's size in each member; NATS: a watcher
client at each server; syncmesh: `PRAGMA data_version`, then the new rows,
in each file; at a, the commit).  syncmesh's rates carry pysyncobj's rate
of the same repeat as their baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import peer_nats
from bench.common import INSERT_SQL, Figure, connected
from bench.latency import Poller, percentile
from bench.nodes import CHAIN, MESH, Topology, cluster
from bench.peer_syncobj import peer_key
from syncmesh.chaos.natsservers import free_port

SCENARIO = "peers"
WRITES = 20_000
TXN_ROWS = 100  # syncmesh: rows per application transaction
RUN_TIMEOUT_S = 60.0  # per system and repeat; a slower run reports a lower bound
SYSTEMS = ("pysyncobj", "nats", "syncmesh chain", "syncmesh mesh")
SYNCMESH_TOPOLOGIES: dict[str, Topology] = {"syncmesh chain": CHAIN, "syncmesh mesh": MESH}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One system's run: the moment before each write, and when each node saw it (0: never)."""

    written: list[float]
    seen: list[list[float]]

    def visible_at_all(self) -> list[float]:
        """Per write, when the last node saw it; 0 where some node never did."""
        return [0.0 if min(times) == 0 else max(times) for times in zip(*self.seen, strict=True)]

    def rate(self) -> tuple[float, int]:
        """(writes/s from the first write until the last is visible at all, writes missing)."""
        everywhere = self.visible_at_all()
        missing = sum(1 for at in everywhere if at == 0)
        delivered = len(everywhere) - missing
        if not delivered:
            return 0.0, missing
        return delivered / (max(everywhere) - min(self.written)), missing

    def latencies_ms(self) -> list[float]:
        return [
            (at - written) * 1000
            for written, at in zip(self.written, self.visible_at_all(), strict=True)
            if at
        ]


def _syncobj_run(directory: Path, writes: int) -> Outcome:
    ports = [free_port() for _ in range(3)]
    members = []
    logs = []
    try:
        for index, port in enumerate(ports):
            partners = ",".join(str(p) for p in ports if p != port)
            command = [sys.executable, "-m", "bench.peer_syncobj", str(port), partners, str(writes)]
            logs.append((directory / f"syncobj{index}.log").open("wb"))
            members.append(
                subprocess.Popen(
                    command + (["--writer"] if index == 0 else []),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=logs[-1],
                    text=True,
                    cwd=Path(__file__).resolve().parent.parent,
                )
            )
        for member in members:
            assert member.stdout is not None
            line = member.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a pysyncobj member did not start: {line!r}")
        writer = members[0]
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        for member in members:  # each prints "done" within its own time limit
            assert member.stdout is not None
            member.stdout.readline()
        results = []
        for member in members:
            assert member.stdin is not None
            assert member.stdout is not None
            member.stdin.write("stop\n")
            member.stdin.flush()
            results.append(json.loads(member.stdout.readline()))
        return Outcome(results[0]["written"], [result["seen"] for result in results])
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
            member.wait(timeout=10)
            for pipe in (member.stdin, member.stdout):
                if pipe is not None:
                    pipe.close()
        for log in logs:
            log.close()


def _nats_run(directory: Path, writes: int) -> Outcome:
    with peer_nats.nats_cluster(directory) as urls:
        written, seen = peer_nats.run_kv(urls, writes, RUN_TIMEOUT_S)
    return Outcome(written, seen)


def _syncmesh_rows(writes: int) -> list[tuple[str, str, int, float]]:
    """About 100 bytes a row: a 32-character key, 52 characters of name, two numbers."""
    return [(peer_key(i), f"item {i:08d} ".ljust(52, "x"), i, i * 0.25) for i in range(writes)]


def _syncmesh_run(directory: Path, topology: Topology, writes: int) -> Outcome:
    rows = _syncmesh_rows(writes)
    written = [0.0] * writes
    at_a = [0.0] * writes
    with cluster(directory, topology) as nodes:
        pollers = [Poller(nodes[name].path, RUN_TIMEOUT_S + 10) for name in ("b", "c")]
        for poller in pollers:
            poller.start()
        try:
            started = time.perf_counter()
            with connected(nodes["a"].path) as writer:
                for start in range(0, writes, TXN_ROWS):
                    begun = time.perf_counter()
                    writer.execute("BEGIN")
                    writer.executemany(INSERT_SQL, rows[start : start + TXN_ROWS])
                    writer.execute("COMMIT")
                    committed = time.perf_counter()
                    for index in range(start, min(writes, start + TXN_ROWS)):
                        written[index] = begun
                        at_a[index] = committed
            deadline = started + RUN_TIMEOUT_S
            while time.perf_counter() < deadline and any(
                len(poller.seen) < writes for poller in pollers
            ):
                time.sleep(0.005)
        finally:
            for poller in pollers:
                poller.stop()
    seen = [at_a] + [[poller.seen.get(i, 0.0) for i in range(writes)] for poller in pollers]
    return Outcome(written, seen)


def run(repeats: int, writes: int, log: Callable[[str], None]) -> list[Figure]:
    rates = {
        system: Figure(
            SCENARIO,
            f"{system}: writes/s until all {writes:,} visible at 3 nodes",
            "writes/s",
            baseline_name="pysyncobj" if system.startswith("syncmesh") else "",
        )
        for system in SYSTEMS
    }
    p50 = {
        system: Figure(SCENARIO, f"{system}: write->visible at all 3, p50", "ms")
        for system in SYSTEMS
    }
    p99 = {
        system: Figure(SCENARIO, f"{system}: write->visible at all 3, p99", "ms")
        for system in SYSTEMS
    }
    for repeat in range(repeats):
        baseline = 0.0
        for system in SYSTEMS:
            with tempfile.TemporaryDirectory(prefix="syncmesh-bench-peers-") as name:
                directory = Path(name)
                if system == "pysyncobj":
                    outcome = _syncobj_run(directory, writes)
                elif system == "nats":
                    outcome = _nats_run(directory, writes)
                else:
                    outcome = _syncmesh_run(directory, SYNCMESH_TOPOLOGIES[system], writes)
            rate, missing = outcome.rate()
            if system == "pysyncobj":
                baseline = rate
            if missing:
                rates[
                    system
                ].note = f"{missing} writes not visible everywhere within {RUN_TIMEOUT_S:.0f} s"
            rates[system].add(rate, baseline if rates[system].baseline_name else None)
            latencies = outcome.latencies_ms()
            if latencies:
                p50[system].add(percentile(latencies, 0.5))
                p99[system].add(percentile(latencies, 0.99))
            log(
                f"  peers {system} {repeat + 1}/{repeats}: {rate:,.0f} writes/s,"
                f" p50 {percentile(latencies, 0.5) if latencies else 0:.1f} ms,"
                f" p99 {percentile(latencies, 0.99) if latencies else 0:.1f} ms, {missing} missing"
            )
    return [figure for system in SYSTEMS for figure in (rates[system], p50[system], p99[system])]
