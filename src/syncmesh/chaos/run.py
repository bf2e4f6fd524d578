"""One chaos schedule, end to end, and a run of many.

A schedule: fresh files for N nodes, one TCP proxy per link, the nodes and
one workload client per node as real processes; the faults of the schedule
applied and healed on time while a sampler reads every file for torn
transactions and clock floors; then heal everything, let the clients read
back their stamps, wait for quiescence, and run the checkers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from syncmesh.chaos.adversarial import ADVERSARIAL_CASCADES, ADVERSARIAL_TABLES
from syncmesh.chaos.checkers import (
    ClockCheck,
    ClockSample,
    DroppedCells,
    Held,
    Violation,
    WriteTally,
    check_captured,
    check_clocks,
    check_convergence,
    check_echo,
    check_held,
    check_indexes,
    check_logs,
    check_no_fleet_gap,
    check_no_resurrection,
    check_orders,
    check_phantom_rows,
    check_phantoms,
    check_schema,
    check_waiting,
    check_writes,
    constraint_quarantines,
    dead_everywhere,
    held_by,
    in_final_shape,
    refused_by_constraint,
    rows_repaired_by_verify,
    torn_orders_in,
    waiting_in_quarantine,
)
from syncmesh.chaos.cluster import ChaosNode, prepare_database, start_client
from syncmesh.chaos.faults import FAULT_KINDS, Fault, Schedule, make_schedule, migration_times
from syncmesh.chaos.history import Replica, Write, read_history, read_replica
from syncmesh.chaos.migrations import (
    DEFAULT_PLANS,
    MIGRATION_PLANS,
    PLANS,
    WORKLOAD_TABLE,
    MigrationPlan,
)
from syncmesh.chaos.natsservers import NatsCluster
from syncmesh.chaos.proxy import LinkProxy
from syncmesh.chaos.workload import KV_COLUMNS
from syncmesh.errors import SyncError
from syncmesh.node.bootstrap import join
from syncmesh.node.verify import VerifyClient, VerifyReport, direct_call, verify
from syncmesh.store import Store
from syncmesh.store.open import open_store
from syncmesh.transport import HttpSnapshotSource, HttpVerifyExchange

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.25
QUARANTINE_POLL_S = 1.0
CLIENT_SETTLE_S = 20.0
CLIENT_EXIT_SLACK_S = 30.0
CONNECT_TIMEOUT_S = 30.0
QUIESCE_POLL_S = 0.5
STACK_DUMP_WAIT_S = 0.5  # for a hung node to write its stacks before it is stopped
STACK_LINES_MAX = 80  # of a hung node's stack dump, in the report
REFUSAL_TIMEOUT_S = 20.0  # a node back from `sleep` is refused by then, or a snapshot source is up
FLAP_INTERVAL_S = (0.2, 1.0)
RESET_INTERVAL_S = (0.3, 1.5)
# A `restore` puts the copy back once another node holds a row the node wrote
# since the copy (so every restore takes back something to recover, however
# loaded the machine), or after this much longer than drawn.
RESTORE_HELD_WAIT_S = 60.0
RESTORE_HELD_POLL_S = 0.1
RESET_AFTER_BYTES = (1, 64 * 1024)
ECHO_BYTES_PER_CHANGE_MAX = 4096
# Over NATS a change is published twice (the changes and the state stream), read
# by every other site, and read again after a partition or a killed server
# (redelivery, a fresh consumer): runs under load measured 600 to 4,700 bytes
# per change.  An echo storm is orders of magnitude more.
NATS_ECHO_BYTES_PER_CHANGE_MAX = 8192
VERIFY_SETTLE_S = 0.3  # nothing is written after quiescence: one short re-read suffices
NATS_CLUSTER = "chaos"  # the syncmesh cluster (stream SYNCMESH_CHAOS) of a schedule over NATS


@dataclass(slots=True)
class RunOptions:
    seed: int = 1
    nodes: int = 5
    duration_s: float = 10.0
    schedules: int = 1
    first: int = 0  # index of the first schedule (to reproduce one: --only)
    topology: str = "mesh"
    kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    faults_per_schedule: int = 4
    drift_ms: int = 5_000
    quiesce_timeout_s: float = 90.0
    echo_bytes_per_change_max: int | None = None  # None: by transport (above)
    workdir: Path | None = None
    keep: bool = False  # keep every schedule's files (failed ones are always kept)
    adversarial: tuple[str, ...] = ()  # features of the adversarial workload (chaos.adversarial)
    plans: tuple[str, ...] = DEFAULT_PLANS  # what the `migrate` fault deals (chaos.migrations)
    # "nats": the nodes sync through a 3-server JetStream cluster of the schedule's
    # own (chaos.natsservers), each node's connections through proxies (issue 15).
    transport: str = "websocket"


@dataclass(slots=True)
class ScheduleResult:
    schedule: Schedule
    violations: list[Violation] = field(default_factory=list)
    writes: int = 0
    failed_writes: int = 0
    tally: WriteTally = field(default_factory=WriteTally)
    bytes_on_wire: int = 0
    changes_applied: int = 0
    drift_refusals: int = 0
    restores: int = 0
    # `forget` and `sleep` (issue 16): nodes forgotten, refused on their return,
    # and re-joined from a snapshot.
    forgotten: int = 0
    refused: int = 0
    rejoined: int = 0
    migration: str = ""  # the plan of the schedule's `migrate` fault, if any
    writes_restore_exempt: int = 0  # made at a restored node after its copy, held nowhere else
    # Rows holding a cell the restored node wrote after its copy, held by another
    # node when the copy was put back: what the restore lost and must get back.
    rows_held_at_restore: int = 0
    # Judged at a replica whose quarantine holds them: a constraint turned them away there.
    writes_quarantined: int = 0
    torn_samples: int = 0
    nats_server_restarts: int = 0  # --transport nats: nats-servers started again after a kill
    verified_pairs: int = 0  # `syncmesh verify` exchanges that ran after quiescence
    rows_repaired: int = 0  # divergent rows the nodes' periodic verify merged (a feed missed them)
    resets: int = 0
    frames_duplicated: int = 0
    frames_reordered: int = 0
    quiesce_s: float | None = None
    elapsed_s: float = 0.0
    directory: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.schedule.seed,
            "schedule": self.schedule.index,
            "topology": self.schedule.topology,
            "faults": [fault.kind for fault in self.schedule.faults],
            "violations": [f"{v.checker}: {v.message}" for v in self.violations],
            "writes": self.writes,
            "failed_writes": self.failed_writes,
            "writes_exact": self.tally.exact,
            "writes_superseded_life": self.tally.superseded_life,
            "writes_unverified": self.tally.unverified,
            "keys_collected": self.tally.collected,
            "orders": self.tally.orders,
            "bytes_on_wire": self.bytes_on_wire,
            "changes_applied": self.changes_applied,
            "drift_refusals": self.drift_refusals,
            "restores": self.restores,
            "forgotten": self.forgotten,
            "refused": self.refused,
            "rejoined": self.rejoined,
            "migration": self.migration,
            "writes_restore_exempt": self.writes_restore_exempt,
            "rows_held_at_restore": self.rows_held_at_restore,
            "writes_quarantined": self.writes_quarantined,
            "torn_samples": self.torn_samples,
            "transport": self.schedule.transport,
            "nats_server_restarts": self.nats_server_restarts,
            "verified_pairs": self.verified_pairs,
            "rows_repaired": self.rows_repaired,
            "resets": self.resets,
            "frames_duplicated": self.frames_duplicated,
            "frames_reordered": self.frames_reordered,
            "quiesce_s": self.quiesce_s,
            "elapsed_s": round(self.elapsed_s, 2),
            "directory": self.directory,
        }


class ScheduleRun:
    """Everything one schedule owns; `run()` returns its result."""

    def __init__(self, schedule: Schedule, options: RunOptions, directory: Path) -> None:
        self.schedule = schedule
        self.options = options
        self.directory = directory
        self.rng = random.Random(f"{schedule.seed}:{schedule.index}:net")
        self.result = ScheduleResult(schedule, directory=str(directory))
        self.nodes: list[ChaosNode] = []
        self.proxies: list[LinkProxy] = []
        # --transport nats: the schedule's JetStream cluster, and per node one proxy
        # in front of each server (the node's fleet URLs), so that a partition cuts it off.
        self.nats: NatsCluster | None = None
        self.nats_proxies: dict[int, list[LinkProxy]] = {}
        self.nats_cuts: Counter[int] = Counter()
        self.cuts: Counter[int] = Counter()
        self.clock_samples: list[ClockSample] = []
        self.torn: set[str] = set()
        self.drift_refusals: set[str] = set()
        self.http: aiohttp.ClientSession | None = None
        self.writes: list[Write] = []
        self._t0 = 0.0  # when the workload started: fault times count from here
        self._restarts: set[asyncio.Task[None]] = set()
        self._rejoins: set[asyncio.Task[None]] = set()
        self.restored: list[_Restored] = []
        # Per node under a `restore`: its copy and the copy's clock floor.
        self._copies: dict[str, tuple[Path, int]] = {}
        # The schedule's rolling schema changes: the plan, and when each node's client
        # runs each of its steps.
        self.plan: MigrationPlan | None = None
        self.migrate_at: dict[int, tuple[float, ...]] = {}
        self.dropped_cells: DroppedCells = set()  # written into columns the plan dropped
        for fault in schedule.faults:
            if fault.kind == "migrate":
                self.plan = PLANS[MIGRATION_PLANS[int(fault.params["plan"])]]
                self.migrate_at = migration_times(fault)
                self.result.migration = self.plan.name
                break

    async def run(self) -> ScheduleResult:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as self.http:
            try:
                await self._start()
                await self._workload_with_faults()
                await self._quiesce()
                await self._verify_links()
                self._check()
            finally:
                await self._teardown()
        self.result.elapsed_s = time.monotonic() - started
        return self.result

    # -- set up ---------------------------------------------------------------------------

    async def _start(self) -> None:
        schedule = self.schedule
        peer_urls: dict[int, list[str]] = {n: [] for n in range(schedule.nodes)}
        # A restored node is below what its peers may have collected: they
        # refuse it, and it re-joins only by `syncmesh join` (ADR 0015, rule
        # 3), which the restore fault does not do.  Its schedules run without
        # collection, so that they check restore detection (issue 12).
        collect = not any(fault.kind == "restore" for fault in schedule.faults)
        nats_urls: dict[int, tuple[str, ...]] = {}
        if schedule.transport == "nats":
            nats_urls = await self._start_nats()
        self.nodes = [
            ChaosNode(
                n,
                self.directory,
                peer_urls[n],
                schedule.drift_ms,
                collect=collect,
                nats_urls=nats_urls.get(n, ()),
                nats_cluster=NATS_CLUSTER,
            )
            for n in range(schedule.nodes)
        ]
        for listener, dialler in schedule.links:
            # The target port is set once the listener has bound one (_ready).
            proxy = LinkProxy(f"n{dialler}->n{listener}", 0, self.rng)
            await proxy.start()
            self.proxies.append(proxy)
            peer_urls[dialler].append(f"http://127.0.0.1:{proxy.port}")
        adversarial = self.options.adversarial
        await asyncio.gather(
            *(asyncio.to_thread(prepare_database, node.db, adversarial) for node in self.nodes)
        )
        for node in self.nodes:
            node.start()
        await asyncio.gather(*(self._ready(node) for node in self.nodes))
        await self._wait(self._all_streaming, CONNECT_TIMEOUT_S, "every link to connect")

    async def _start_nats(self) -> dict[int, tuple[str, ...]]:
        """The schedule's 3-server JetStream cluster, formed; per node its proxies' URLs.

        Every node reaches every server through a proxy of its own: a
        `nats-partition` cuts one node's proxies, and the bytes the nodes
        send and receive are counted as on WebSocket links.  The servers
        do not advertise other addresses (`no_advertise`), so a client
        stays on its proxies when it reconnects.
        """
        self.nats = NatsCluster(self.directory / "nats", cluster_name="chaos", prefix="nats")
        await asyncio.to_thread(self.nats.start)
        urls: dict[int, tuple[str, ...]] = {}
        for n in range(self.schedule.nodes):
            proxies = []
            for server in self.nats.servers:
                proxy = LinkProxy(f"n{n}->{server.name}", server.client_port, self.rng)
                await proxy.start()
                proxies.append(proxy)
            self.nats_proxies[n] = proxies
            urls[n] = tuple(f"nats://127.0.0.1:{proxy.port}" for proxy in proxies)
        return urls

    def _all_proxies(self) -> list[LinkProxy]:
        return self.proxies + [p for proxies in self.nats_proxies.values() for p in proxies]

    # -- the fault phase ------------------------------------------------------------------------

    async def _workload_with_faults(self) -> None:
        schedule = self.schedule
        histories = [self.directory / f"{node.name}.history.jsonl" for node in self.nodes]
        clients = [
            start_client(
                node,
                seed=(schedule.seed * 1_000_003 + schedule.index) * 101 + node.index,
                duration_s=schedule.duration_s,
                settle_s=CLIENT_SETTLE_S,
                out=out,
                adversarial=self.options.adversarial,
                migration=self._migration_of(node),
            )
            for node, out in zip(self.nodes, histories, strict=True)
        ]
        self._t0 = time.monotonic()
        sampler = asyncio.create_task(self._sample())
        try:
            await asyncio.gather(*(self._fault(fault) for fault in schedule.faults))
            await asyncio.sleep(max(0.0, schedule.duration_s - self._since_start()))
        finally:
            self._heal_all()
            # A node on its way back from `forget` or `sleep` finishes its re-join first.
            await asyncio.gather(*self._rejoins)
            for node in self.nodes:
                if not node.running:
                    node.start()
            await asyncio.gather(*(self._ready(n) for n in self.nodes if not n.ready))
        deadline = CLIENT_SETTLE_S + CLIENT_EXIT_SLACK_S
        for node, client in zip(self.nodes, clients, strict=True):
            try:
                await asyncio.to_thread(client.wait, deadline)
            except subprocess.TimeoutExpired:
                # A client that cannot end waits on its node's file (a migration
                # step retried on "database is locked"): the node may hang with
                # a write lock held.  Its stacks say where (CI keeps no files).
                client.kill()
                raise RuntimeError(
                    f"the workload client of {node.name} did not end within {deadline:.0f} s"
                    f" (see {node.name}.client.log)" + await self._stacks_of(self.nodes)
                ) from None
            except Exception:
                client.kill()
                raise
            if client.returncode != 0:
                raise RuntimeError(f"a workload client failed: see {self.directory}")
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        self.writes = read_history(histories)
        if self.plan is not None:
            self.writes, self.dropped_cells = in_final_shape(self.writes, self.plan)
        self.result.writes = len(self.writes)
        self.result.failed_writes = sum(
            int(path.with_suffix(".failed").read_text()) for path in histories
        )

    def _migration_of(self, node: ChaosNode) -> tuple[str, tuple[float, ...]] | None:
        if self.plan is None:
            return None
        return self.plan.name, self.migrate_at[node.index]

    def _since_start(self) -> float:
        return time.monotonic() - self._t0

    async def _fault(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.start_s - self._since_start()))
        end = fault.end_s
        heal = self._apply(fault)
        try:
            if fault.kind == "flap":
                proxy = self.proxies[fault.links[0]]
                while self._since_start() < end:
                    proxy.set_cut(not proxy.cut)
                    await asyncio.sleep(min(self.rng.uniform(*FLAP_INTERVAL_S), end))
                proxy.set_cut(self.cuts[fault.links[0]] > 0)
            elif fault.kind == "reset":
                while self._since_start() < end:
                    for index in fault.links:
                        self.proxies[index].reset_after(self.rng.randint(*RESET_AFTER_BYTES))
                    await asyncio.sleep(self.rng.uniform(*RESET_INTERVAL_S))
            else:
                await asyncio.sleep(max(0.0, end - self._since_start()))
                if fault.kind == "restore":
                    await self._until_held_elsewhere(self.nodes[fault.nodes[0]])
        finally:
            heal()

    def _apply(self, fault: Fault) -> Callable[[], None]:
        """Start `fault`; returns what heals it."""
        kind, links = fault.kind, fault.links
        if kind in ("nats-kill", "nats-pause"):
            assert self.nats is not None
            server = self.nats.servers[int(fault.params["server"])]
            if kind == "nats-pause":
                server.pause()
                return server.resume
            server.kill()
            return lambda: self._restart_server(server.name)
        if kind == "nats-partition":
            return self._cut_off_nats(fault.nodes[0])
        if kind in ("isolate", "halves"):
            group = set(fault.nodes)
            crossing = [
                index
                for index, (listener, dialler) in enumerate(self.schedule.links)
                if (listener in group) != (dialler in group)
            ]
            return self._cut(crossing)
        if kind == "oneway":
            proxy = self.proxies[links[0]]
            direction = proxy.forward if fault.params["forward"] else proxy.backward
            direction.blackout = True
            return lambda: setattr(direction, "blackout", False)
        if kind == "flap":
            return lambda: None
        if kind in ("delay", "bandwidth", "lossy", "duplicate", "reorder"):
            return self._shape_links(fault)
        if kind == "reset":
            return lambda: None  # each reset is over once it happened
        if kind == "migrate":
            return lambda: None  # each node's client runs it, at its time (_migration_of)
        node = self.nodes[fault.nodes[0]]
        if kind == "kill":
            node.kill()
            return lambda: self._restart(node)
        if kind == "replay":
            cursors = _read_cursors(node.db)
            return lambda: self._replay(node, cursors)
        if kind == "restore":
            copy = self.directory / f"{node.name}.restore-{len(self.restored)}.db"
            floor = _copy_file(node.db, copy)
            self._copies[node.name] = (copy, floor)
            return lambda: self._restore(node, copy, floor)
        if kind in ("forget", "sleep"):
            return self._forget(node, kind)
        if kind == "pause":
            node.pause()
            return node.resume
        node.set_clock(int(fault.params["offset_ms"]))
        return lambda: node.set_clock(0)

    def _forget(self, node: ChaosNode, kind: str) -> Callable[[], None]:
        """Kill `node` and forget its site at every other node.

        Both kinds: no node collects past a member it waits for, so a node
        "sleeps past the horizon" only once the cluster gave up on it; it is
        forgotten everywhere before it may come back (`sleep`), so that any
        peer it reaches refuses it (membership is learned, not agreed: a peer
        that had not heard of the forget could rightly sync with it).

        What the others hold now was acknowledged beyond `node`: none of it
        may be lost (`held-write`); its writes held nowhere else may be, as
        after a restore (its file is replaced by the snapshot it re-joins
        from).  Returns what brings it back (`_return`).
        """
        node.kill()
        site = _site_of(node.db)
        others = [other for other in self.nodes if other is not node]
        held = {other.name: held_by(read_replica(other.name, other.db)) for other in others}
        self.restored.append(_Restored(node.name, 0, held))
        for other in others:
            store = open_store(other.db)
            try:
                store.forget_site(site)
            finally:
                store.close()
        self.result.forgotten += 1

        def bring_back() -> None:
            task = asyncio.create_task(self._return(node, kind))
            self._rejoins.add(task)
            task.add_done_callback(self._rejoins.discard)

        return bring_back

    async def _return(self, node: ChaosNode, kind: str) -> None:
        """`sleep`: the node comes back on its old file and must be refused; then, as after
        `forget`, it re-joins from a snapshot of a running node and starts as a new site."""
        if kind == "sleep":
            mark = len(_read_text(node.log_path))
            node.start()
            await self._ready(node)
            deadline = time.monotonic() + REFUSAL_TIMEOUT_S
            refused = False
            while not refused and time.monotonic() < deadline:
                text = _read_text(node.log_path)[mark:]
                if "established" in text:
                    break
                refused = "was forgotten" in text or "slept past the GC horizon" in text
                if not refused:
                    await asyncio.sleep(QUIESCE_POLL_S)
            if refused:
                self.result.refused += 1
            else:
                self.result.violations.append(
                    Violation(
                        "refusal",
                        f"{node.name}, forgotten at every node while it slept, was not refused"
                        f" on its return (a session, or no refusal within {REFUSAL_TIMEOUT_S:g} s)",
                    )
                )
            node.kill()
        source = await self._snapshot_source(node)
        joined = self.directory / f"{node.name}.join-{self.result.rejoined}.db"
        await join(joined, HttpSnapshotSource(source.url))
        # Through SQLite, so that the client's open connection stays valid: the
        # application writes on, now as the new site.
        await asyncio.to_thread(_write_file, joined, node.db)
        await asyncio.to_thread(_remove_database, joined)
        node.start()
        await self._ready(node)
        self.result.rejoined += 1

    async def _snapshot_source(self, node: ChaosNode) -> ChaosNode:
        """A running neighbour to copy (dialled directly: the faults are on the proxies)."""
        deadline = time.monotonic() + REFUSAL_TIMEOUT_S
        while True:
            for other in self.nodes:
                if other is not node and other.running and other.ready and not other.paused:
                    return other
            if time.monotonic() > deadline:
                raise RuntimeError(f"no running node for {node.name} to re-join from")
            await asyncio.sleep(QUIESCE_POLL_S)

    async def _ready(self, node: ChaosNode) -> None:
        """Wait until `node` answers, then point the proxies in front of it at its port."""
        assert self.http is not None
        await node.wait_ready(self.http)
        for proxy, (listener, _dialler) in zip(self.proxies, self.schedule.links, strict=True):
            if listener == node.index:
                proxy.target_port = node.port

    def _restart(self, node: ChaosNode) -> None:
        if not node.running:
            node.start()
            task = asyncio.create_task(self._ready(node))
            self._restarts.add(task)
            task.add_done_callback(self._restarted)

    def _restarted(self, task: asyncio.Task[None]) -> None:
        """A restart's wait is over.  One that failed (a later fault killed the node
        again before it answered, or it could not start) is not judged here: the
        heal starts every node again and waits for each, and one that cannot start
        then is a harness violation."""
        self._restarts.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("chaos: a restart did not finish: %s", task.exception())

    def _replay(self, node: ChaosNode, cursors: list[tuple[str, str, int]]) -> None:
        """Restart `node` with its cursors as they were: its peers resend what it holds."""
        node.kill()
        _rewind_cursors(node.db, cursors)
        self._restart(node)

    async def _until_held_elsewhere(self, node: ChaosNode) -> None:
        """Wait until another node holds a row `node` wrote since its copy (at most a while).

        Whether a restore takes back anything that must come back depended
        on timing: under load, the node's writes after the copy had not
        reached a peer within the fault, the restore lost nothing held, and
        the evidence that recovery works (`rows_held_at_restore`) was 0 in
        CI (issue 12).  Waiting for that state makes each restore exercise
        the recovery, unless the node stays cut off for the whole wait.
        """
        copy, floor = self._copies[node.name]
        site = await asyncio.to_thread(_site_of, copy)
        deadline = time.monotonic() + RESTORE_HELD_WAIT_S
        while time.monotonic() < deadline:
            held = await asyncio.to_thread(self._held_by_others, node)
            if _rows_written_since(held, site, floor):
                return
            await asyncio.sleep(RESTORE_HELD_POLL_S)

    def _held_by_others(self, node: ChaosNode) -> dict[str, Held]:
        return {
            other.name: held_by(read_replica(other.name, other.db))
            for other in self.nodes
            if other is not node
        }

    def _restore(self, node: ChaosNode, copy: Path, floor: int) -> None:
        """Stop `node`, put the old copy of its file in place, start it again.

        What the other nodes hold at that moment had left `node`: none of it
        may be lost (checker `held-write`).  The copy is written into the
        file through SQLite's backup API, so the workload client's open
        connection stays valid, as an application's would across a restore
        done with SQLite's own tools.
        """
        node.kill()
        held = self._held_by_others(node)
        self.result.rows_held_at_restore += _rows_written_since(held, _site_of(copy), floor)
        _write_file(copy, node.db)
        self.restored.append(_Restored(node.name, floor, held))
        self.result.restores += 1
        self._restart(node)

    def _restart_server(self, name: str) -> None:
        """A killed nats-server starts again on its store directory and configuration."""
        assert self.nats is not None
        for server in self.nats.servers:
            if server.name == name and not server.running:
                server.start()

    def _cut_off_nats(self, node: int) -> Callable[[], None]:
        """Cut `node` off from every nats-server (its proxies reset and refuse)."""
        self.nats_cuts[node] += 1
        for proxy in self.nats_proxies[node]:
            proxy.set_cut(True)

        def heal() -> None:
            self.nats_cuts[node] -= 1
            for proxy in self.nats_proxies[node]:
                proxy.set_cut(self.nats_cuts[node] > 0)

        return heal

    def _cut(self, link_indexes: list[int]) -> Callable[[], None]:
        for index in link_indexes:
            self.cuts[index] += 1
            self.proxies[index].set_cut(True)

        def heal() -> None:
            for index in link_indexes:
                self.cuts[index] -= 1
                self.proxies[index].set_cut(self.cuts[index] > 0)

        return heal

    def _shape_links(self, fault: Fault) -> Callable[[], None]:
        directions = [
            direction
            for index in fault.links
            for direction in (self.proxies[index].forward, self.proxies[index].backward)
        ]
        params = fault.params
        for direction in directions:
            if fault.kind == "delay":
                direction.delay_ms = params["delay_ms"]
                direction.jitter_ms = params["delay_ms"] / 2
            elif fault.kind == "bandwidth":
                direction.bandwidth_bytes_per_s = params["bytes_per_s"]
            elif fault.kind == "lossy":
                direction.stall_probability = params["stall"]
                direction.stall_ms_max = 300
            elif fault.kind == "duplicate":
                direction.duplicate_probability = params["probability"]
            else:
                direction.reorder_probability = params["probability"]
        if fault.kind in ("duplicate", "reorder"):
            for index in fault.links:  # new connections cut their streams into frames
                self.proxies[index].frame_mode = True
                self.proxies[index].reset_after(0)

        def heal() -> None:
            for direction in directions:
                if fault.kind == "delay":
                    direction.delay_ms = direction.jitter_ms = 0
                elif fault.kind == "bandwidth":
                    direction.bandwidth_bytes_per_s = 0
                elif fault.kind == "lossy":
                    direction.stall_probability = 0
                elif fault.kind == "duplicate":
                    direction.duplicate_probability = 0
                else:
                    direction.reorder_probability = 0

        return heal

    def _heal_all(self) -> None:
        self.cuts.clear()
        self.nats_cuts.clear()
        for proxy in self._all_proxies():
            proxy.heal()
        if self.nats is not None:
            for server in self.nats.servers:
                server.resume()
                if not server.running:
                    server.start()
        for node in self.nodes:
            node.resume()
            if node.offset_ms:
                node.set_clock(0)

    async def _sample(self) -> None:
        """Read every file for torn orders and clock floors, while the faults run."""
        last_quarantine = 0.0
        while True:
            for node in self.nodes:
                problems, hlc = await asyncio.to_thread(_read_sample, node.db)
                self.result.torn_samples += 1
                self.torn.update(f"{node.name}: {problem}" for problem in problems)
                if hlc is not None:
                    self.clock_samples.append(
                        ClockSample(node.name, time.time_ns() // 1_000_000, node.offset_ms, hlc)
                    )
            if time.monotonic() - last_quarantine > QUARANTINE_POLL_S:
                last_quarantine = time.monotonic()
                await self._poll_quarantine()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def _poll_quarantine(self) -> None:
        assert self.http is not None
        for node in self.nodes:
            if not node.ready or node.paused:
                continue
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with self.http.get(f"{node.url}/v1/quarantine") as response:
                    for row in await response.json():
                        if "ahead of the local clock" in str(row.get("reason", "")):
                            self.drift_refusals.add(f"{node.name}:{row.get('id')}")

    # -- after the faults -----------------------------------------------------------------------

    async def _status(self, node: ChaosNode) -> dict[str, Any] | None:
        assert self.http is not None
        try:
            async with self.http.get(f"{node.url}/v1/status") as response:
                document: dict[str, Any] = await response.json()
                return document
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None

    async def _all_streaming(self) -> bool:
        statuses = await asyncio.gather(*(self._status(node) for node in self.nodes))
        if self.schedule.transport == "nats":
            return all_applied_from_stream(statuses)
        expected: Counter[int] = Counter()
        for listener, dialler in self.schedule.links:
            expected[listener] += 1
            expected[dialler] += 1
        for node, status in zip(self.nodes, statuses, strict=True):
            if status is None:
                return False
            streaming = [p for p in status["peers"] if p["state"] == "streaming"]
            if len(streaming) < expected[node.index]:
                return False
            if any(peer["lag_ms"] != 0 for peer in status["peers"]):  # None: not known yet
                return False
        return True

    async def _quiesce(self) -> None:
        started = time.monotonic()
        deadline = started + self.options.quiesce_timeout_s
        previous: list[str] | None = None
        while time.monotonic() < deadline:
            if await self._all_streaming():
                replicas = await asyncio.to_thread(self._replicas)
                # Rows a constraint turned away wait in a quarantine for an
                # operator, and sites rightly differ in them (issue 12); any
                # other quarantine entry must resolve first.
                refused = refused_by_constraint(replicas)
                digests = [replica.digest(refused, tombstones=False) for replica in replicas]
                if waiting_in_quarantine(replicas):
                    digests = []
                if digests and len(set(digests)) == 1 and digests == previous:
                    self.result.quiesce_s = round(time.monotonic() - started, 2)
                    return
                previous = digests
            else:
                previous = None
            await asyncio.sleep(QUIESCE_POLL_S)
        silent = await self._silent_nodes()
        self.result.violations.append(
            Violation(
                "liveness",
                f"no quiescence within {self.options.quiesce_timeout_s} s of healing"
                + (
                    f"; {', '.join(silent)} did not answer /v1/status (a hung node: the stacks"
                    " of its threads are at the end of its log)"
                    if silent
                    else ""
                ),
            )
        )
        # CI keeps no files: the stacks travel in the report.
        for name in silent:
            node = next(node for node in self.nodes if node.name == name)
            stacks = stack_dump(_read_text(node.log_path))
            if stacks:
                self.result.violations.append(
                    Violation("liveness", f"{name} hung; its threads:\n{stacks}")
                )

    async def _stacks_of(self, nodes: list[ChaosNode]) -> str:
        """Every running node's threads' stacks (faulthandler), as report text."""
        running = [node for node in nodes if node.running and not node.paused]
        for node in running:
            node.dump_stacks()
        if not running:
            return ""
        await asyncio.sleep(STACK_DUMP_WAIT_S)
        return "".join(
            f"\n{node.name}'s threads:\n{stack_dump(_read_text(node.log_path))}" for node in running
        )

    async def _silent_nodes(self) -> list[str]:
        """The running nodes that do not answer /v1/status; each dumps its threads' stacks.

        A node whose event loop hangs (a deadlock, a call that never returns)
        looks like one that is merely slow to converge; its stacks, written
        to its log by faulthandler (nodemain), say where it is stuck.
        """
        statuses = await asyncio.gather(*(self._status(node) for node in self.nodes))
        silent = []
        for node, status in zip(self.nodes, statuses, strict=True):
            if status is None and node.running and not node.paused:
                node.dump_stacks()
                silent.append(node.name)
        if silent:
            await asyncio.sleep(STACK_DUMP_WAIT_S)
        return silent

    async def _verify_links(self) -> None:
        """Once the replicas are equal, `syncmesh verify` between linked nodes must say so.

        Run from each dialler's file against its listener's node, as an
        operator would; a verify that reports rows the canonical dumps do
        not differ in is a violation (false divergence after chaos).
        """
        if any(violation.checker == "liveness" for violation in self.result.violations):
            return
        # Rows a constraint turned away differ between sites by design (issue 12),
        # and so do deleted rows whose tombstone one node collected already.
        replicas = await asyncio.to_thread(self._replicas)
        refused = refused_by_constraint(replicas) | dead_everywhere(replicas)
        pairs = [
            (self.nodes[dialler], self.nodes[listener]) for listener, dialler in self.schedule.links
        ]
        if self.schedule.transport == "nats":
            # No links: every pair of sites, over NATS request/reply (docs/nats.md).
            pairs = list(itertools.combinations(self.nodes, 2))
        for asker, node in pairs:
            store = open_store(asker.db)
            try:
                report = await self._verify_one(store, node)
                self.result.verified_pairs += 1
            except SyncError as exc:
                self.result.violations.append(
                    Violation("verify", f"{asker.name} could not verify {node.name}: {exc}")
                )
                continue
            finally:
                store.close()
            unexplained = [
                (table, key)
                for table, found in report.differences.items()
                for key in found.divergent
                if (table, tuple(key)) not in refused
            ]
            if unexplained or report.unsettled_rows or report.not_shared:
                self.result.violations.append(
                    Violation(
                        "verify",
                        f"{asker.name} vs {node.name}: {len(unexplained)} rows differ (no"
                        f" constraint's quarantine explains them, first {unexplained[:3]}) and"
                        f" {report.unsettled_rows} still change although the replicas are equal",
                    )
                )

    async def _verify_one(self, store: Store, node: ChaosNode) -> VerifyReport:
        """`syncmesh verify` of `store` against `node`: over HTTP, or over NATS request/reply
        to the node's site (straight to the servers, not through the proxies)."""
        if self.nats is None:
            async with VerifyClient(HttpVerifyExchange(node.url)) as client:
                return await verify(store, direct_call, client, settle_s=VERIFY_SETTLE_S)
        from syncmesh.transport.nats_verify import NatsVerifyConnection

        servers = tuple(self.nats.urls)
        own, site = store.site_id, await asyncio.to_thread(_site_of, node.db)
        async with (
            NatsVerifyConnection(servers, NATS_CLUSTER, own) as connection,
            VerifyClient(connection.exchange(site)) as client,
        ):
            return await verify(store, direct_call, client, settle_s=VERIFY_SETTLE_S)

    def _replicas(self) -> list[Replica]:
        return [read_replica(node.name, node.db) for node in self.nodes]

    def _check(self) -> None:
        result = self.result
        replicas = self._replicas()
        violations = result.violations
        refused = refused_by_constraint(replicas)
        violations.extend(check_convergence(replicas, refused, tombstones=False))
        violations.extend(check_captured(replicas))
        kv_table = WORKLOAD_TABLE
        if self.plan is not None:
            kv_table = self.plan.final_table
            columns = self.plan.columns(KV_COLUMNS)[-1]
            violations.extend(check_schema(replicas, kv_table, columns))
            indexes = {node.name: _indexes(node.db, kv_table) for node in self.nodes}
            violations.extend(check_indexes(indexes, self.plan.final_indexes(), kv_table))
            violations.extend(check_waiting({node.name: _waiting(node.db) for node in self.nodes}))
        # Replicas differ in the rows a constraint turned away: judge each.
        converged = not refused and not any(v.checker == "convergence" for v in violations)
        judged = [write for write in self.writes if not self._may_be_lost(write)]
        result.writes_restore_exempt = len(self.writes) - len(judged)
        restored_nodes = {restored.node for restored in self.restored}
        phantom_tables = [kv_table, *(ADVERSARIAL_TABLES if self.options.adversarial else [])]
        held_back = constraint_quarantines(replicas)
        for replica in replicas[:1] if converged else replicas:
            cascades = ADVERSARIAL_CASCADES if "fk" in self.options.adversarial else {}
            found, tally = check_writes(
                self.writes, replica, self._may_be_lost, held_back, cascades
            )
            violations.extend(found)
            for table in phantom_tables:
                if self.plan is not None and table == kv_table:
                    added, dropped = self.plan.final_defaults(), self.dropped_cells
                    found = check_phantoms(self.writes, replica, table, added, dropped)
                else:
                    found = check_phantoms(self.writes, replica, table)
                violations.extend(found)
            violations.extend(check_phantom_rows(self.writes, replica, phantom_tables))
            violations.extend(check_no_resurrection(self.writes, replica, self._may_be_lost))
            violations.extend(check_orders(judged, replica))
            for restored in self.restored:
                for other, held in restored.held.items():
                    violations.extend(
                        check_held(
                            held,
                            replica,
                            what=f"{other} (when {restored.node} was restored)",
                            held_back=held_back,
                        )
                    )
            result.tally = tally
            result.writes_quarantined += tally.quarantined
        violations.extend(Violation("torn-transaction", problem) for problem in sorted(self.torn))
        exempt = {
            f"n{fault.nodes[0]}"
            for fault in self.schedule.faults
            if fault.kind in ("beyond", "jump")
        }
        violations.extend(
            check_clocks(
                self.clock_samples, ClockCheck(self.schedule.drift_ms, exempt, restored_nodes)
            )
        )
        proxies = self._all_proxies()
        result.bytes_on_wire = sum(proxy.counters.bytes_forwarded for proxy in proxies)
        result.changes_applied = sum(_applied_rows(node.db) for node in self.nodes)
        violations.extend(
            check_echo(
                result.bytes_on_wire,
                result.changes_applied,
                self.options.echo_bytes_per_change_max
                or (
                    NATS_ECHO_BYTES_PER_CHANGE_MAX
                    if self.schedule.transport == "nats"
                    else ECHO_BYTES_PER_CHANGE_MAX
                ),
            )
        )
        logs = {node.name: _read_text(node.log_path) for node in self.nodes}
        violations.extend(check_logs(logs))
        result.rows_repaired = rows_repaired_by_verify(logs)
        if self.schedule.transport == "nats":
            violations.extend(check_no_fleet_gap(logs))
            assert self.nats is not None
            result.nats_server_restarts = sum(s.starts - 1 for s in self.nats.servers)
        result.drift_refusals = len(self.drift_refusals)
        result.resets = sum(proxy.counters.resets for proxy in proxies)
        result.frames_duplicated = sum(p.counters.frames_duplicated for p in proxies)
        result.frames_reordered = sum(p.counters.frames_reordered for p in proxies)

    def _may_be_lost(self, write: Write) -> bool:
        """A write a restore may take back: made at the restored node after its copy.

        Only if no other node held it by then (its key's state there); the
        `held-write` checker judges those that were held.  A write made just
        after the restart, before the node's first capture, counts too
        (its clock floor is still the copy's): slightly too lenient.
        """
        for restored in self.restored:
            if write.node != restored.node or write.lo < restored.floor:
                continue
            if not _held_elsewhere(write, restored):
                return True
        return False

    async def _teardown(self) -> None:
        for node in self.nodes:
            await asyncio.to_thread(node.stop)
        for proxy in self._all_proxies():
            await proxy.close()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)

    async def _wait(self, check: Callable[[], Any], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(QUIESCE_POLL_S)


def all_applied_from_stream(statuses: Sequence[Mapping[str, Any] | None]) -> bool:
    """Over NATS: every site streams and has applied everything every other site published.

    Each node's fleet is `streaming` with no gap, none of its own writes
    waits for a publish, it knows every other site, and its position on
    each one's chain has reached where that site says its chain ends
    (`published_seq`).  With the clients stopped, that is the stream's
    part of quiescence; the equal dumps are the rest.
    """
    fleets = [None if status is None else status.get("fleet") for status in statuses]
    if any(fleet is None for fleet in fleets):
        return False
    ends: dict[str, int] = {}
    for fleet in fleets:
        assert fleet is not None
        if fleet["state"] != "streaming" or fleet["gaps"] or fleet["publish_waiting_since_ms"]:
            return False
        ends[str(fleet["subject"]).rsplit(".", 1)[-1]] = int(fleet["published_seq"])
    for fleet in fleets:
        assert fleet is not None
        own = str(fleet["subject"]).rsplit(".", 1)[-1]
        positions = {str(site["site_id"]): int(site["cursor"]) for site in fleet["sites"]}
        for site, end in ends.items():
            if site != own and positions.get(site, 0) < end:
                return False
    return True


def _read_sample(path: Path) -> tuple[list[str], int | None]:
    """Torn orders and the clock floor, in one read transaction of one connection."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            connection.execute("BEGIN")
            problems = torn_orders_in(connection)
            hlc = int(connection.execute("SELECT hlc FROM _syncmesh_state").fetchone()[0])
            connection.execute("COMMIT")
        finally:
            connection.close()
    except sqlite3.Error:
        return [], None  # busy (a paused node holds a lock): the next sample will do
    return problems, hlc


@dataclass(frozen=True, slots=True)
class _Restored:
    node: str
    floor: int  # the copy's clock floor: the node's writes after it may be lost
    held: dict[str, Held]  # per other node, what it held at the restore


def _held_elsewhere(write: Write, restored: _Restored) -> bool:
    """Whether another node held `write` (its cell stamp) when `restored` happened."""
    if write.op == "delete" and write.cl is not None:
        # A tombstone keeps no cell stamps: held where the row's life is at least its own.
        return any(
            entry is not None and entry[0] >= write.cl
            for held in restored.held.values()
            for entry in [held.get((write.table, tuple(write.key)))]
        )
    if write.stamp is None:
        return False  # stamp never read back: it cannot be told, so it is not judged
    stamp = (write.stamp, write.site)
    for held in restored.held.values():
        entry = held.get((write.table, tuple(write.key)))
        if entry is not None and stamp in entry[1].values():
            return True
    return False


def _copy_file(path: Path, copy: Path) -> int:
    """A consistent copy of a live node's file (SQLite's backup API); returns its clock floor."""
    source = sqlite3.connect(path, timeout=10)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
        return int(target.execute("SELECT hlc FROM _syncmesh_state").fetchone()[0])
    finally:
        target.close()
        source.close()


def _rows_written_since(held: dict[str, Held], site: str, floor: int) -> int:
    """Rows other nodes hold with a cell `site` stamped after `floor` (a restore's copy)."""
    return len(
        {
            row
            for rows in held.values()
            for row, (_cl, stamps) in rows.items()
            if any(writer == site and hlc > floor for hlc, writer in stamps.values())
        }
    )


def _write_file(copy: Path, path: Path) -> None:
    """Replace the content of `path` by `copy`'s, through SQLite (other connections stay valid)."""
    source = sqlite3.connect(copy)
    target = sqlite3.connect(path, timeout=10)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _site_of(path: Path) -> str:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return str(connection.execute("SELECT site_id FROM _syncmesh_state").fetchone()[0])
    finally:
        connection.close()


def _read_cursors(path: Path) -> list[tuple[str, str, int]]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute("SELECT site_id, incarnation, cursor FROM _syncmesh_peers")
        return [(str(site), str(incarnation), int(cursor)) for site, incarnation, cursor in rows]
    finally:
        connection.close()


def _rewind_cursors(path: Path, cursors: list[tuple[str, str, int]]) -> None:
    """Set the stored cursors back (same peer incarnation only: an old cursor, not a wrong one)."""
    connection = sqlite3.connect(path, timeout=10)
    try:
        with connection:
            connection.executemany(
                "UPDATE _syncmesh_peers SET cursor = min(cursor, ?)"
                " WHERE site_id = ? AND incarnation = ?",
                [(cursor, site, incarnation) for site, incarnation, cursor in cursors],
            )
    finally:
        connection.close()


def stack_dump(log: str, lines_max: int = STACK_LINES_MAX) -> str:
    """The last faulthandler dump in a node's log, at most `lines_max` lines; "" if none.

    A dump is a run of thread blocks ("Thread 0x...", "Current thread
    0x...", each followed by its "  File ..." lines), blank lines between.
    """
    dumps: list[list[str]] = []
    inside = False
    for line in log.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            if not inside:
                dumps.append([])
                inside = True
            dumps[-1].append(line)
        elif inside and (line.startswith("  ") or not line.strip()):
            dumps[-1].append(line)
        else:
            inside = False
    if not dumps:
        return ""
    return "\n".join(dumps[-1][:lines_max]).rstrip()


def _read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _indexes(path: Path, table: str) -> frozenset[str]:
    """The names of the indexes an application made on `table` (not SQLite's own)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute(
            "SELECT name FROM sqlite_schema"
            " WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            [table],
        )
        return frozenset(str(row[0]) for row in rows)
    finally:
        connection.close()


def _waiting(path: Path) -> dict[tuple[str, str], int]:
    """How many cells wait for their column in `path`, per (table, column as sent)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute(
            "SELECT table_name, column_name, count(*) FROM _syncmesh_waiting"
            " GROUP BY table_name, column_name"
        )
        return {(str(table), str(column)): int(count) for table, column, count in rows}
    finally:
        connection.close()


def _applied_rows(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute("SELECT coalesce(sum(applied_rows), 0) FROM _syncmesh_peers")
        return int(row.fetchone()[0])
    finally:
        connection.close()


def run_schedules(
    options: RunOptions, on_result: Callable[[ScheduleResult], None]
) -> list[ScheduleResult]:
    """Run `options.schedules` schedules one after another; report each as it ends."""
    base = options.workdir or Path(tempfile.mkdtemp(prefix="syncmesh-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    for index in range(options.first, options.first + options.schedules):
        schedule = make_schedule(
            seed=options.seed,
            index=index,
            nodes=options.nodes,
            topology=options.topology,
            duration_s=options.duration_s,
            kinds=options.kinds,
            faults_per_schedule=options.faults_per_schedule,
            drift_ms=options.drift_ms,
            plans=options.plans,
            transport=options.transport,
        )
        directory = base / f"schedule-{index}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        try:
            result = asyncio.run(ScheduleRun(schedule, options, directory).run())
        except RuntimeError as exc:
            result = ScheduleResult(
                schedule, [Violation("harness", str(exc))], directory=str(directory)
            )
        on_result(result)
        results.append(result)
        if not result.violations and not options.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if not options.workdir and not any(r.violations for r in results) and not options.keep:
        shutil.rmtree(base, ignore_errors=True)
    return results
