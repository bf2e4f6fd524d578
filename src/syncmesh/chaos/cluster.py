"""The real processes of a chaos schedule: nodes and workload clients.

Each node is `python -m syncmesh.chaos.nodemain` on its own SQLite file, on
a port of 127.0.0.1 it reports once bound (the proxies in front of it
learn it then); its output goes to a log file beside the file.  Over NATS
it has no peers but a fleet stream (`--nats`, through its own proxies).  A node
can be killed and restarted on the same file, paused and resumed,
and have its clock moved (a file plus SIGUSR1, sent only once the node has
answered on its port: before it installs the handler, SIGUSR1 would kill it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import aiohttp

from syncmesh.chaos.adversarial import ADVERSARIAL_TABLES, adversarial_ddl
from syncmesh.chaos.workload import WORKLOAD_DDL, WORKLOAD_INTEGER_KEY_TABLES, WORKLOAD_TABLES
from syncmesh.store.open import open_store

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 2.0
POLL_S = 0.05


def prepare_database(path: Path, adversarial: tuple[str, ...] = ()) -> str:
    """A fresh node file: the workload's tables, initialised and tracked; returns its site.

    With `adversarial` features, the adversarial tables too (chaos.adversarial).
    """
    import sqlite3

    connection = sqlite3.connect(path)
    connection.executescript(WORKLOAD_DDL)
    if adversarial:
        connection.executescript(adversarial_ddl(adversarial))
    connection.close()
    store = open_store(path)
    try:
        site = store.init()
        store.track(
            WORKLOAD_TABLES + (ADVERSARIAL_TABLES if adversarial else []),
            allow_integer_keys=WORKLOAD_INTEGER_KEY_TABLES,
        )
        return site
    finally:
        store.close()


class ChaosNode:
    def __init__(
        self,
        index: int,
        directory: Path,
        peer_urls: list[str],
        drift_ms: int,
        *,
        collect: bool = True,
        nats_urls: tuple[str, ...] = (),
        nats_cluster: str = "",
    ) -> None:
        self.index = index
        self.collect = collect  # tombstone collection on (nodemain --no-collection)
        # --transport nats: the node's fleet stream (each URL a proxy in front of a
        # server, so that a partition can cut it off) and the syncmesh cluster name.
        self.nats_urls = nats_urls
        self.nats_cluster = nats_cluster
        self.name = f"n{index}"
        self.db = directory / f"{self.name}.db"
        self.log_path = directory / f"{self.name}.log"
        self.clock_file = directory / f"{self.name}.clock"
        self.port_file = directory / f"{self.name}.port"
        self.port = 0  # known once the node has bound it: see wait_ready
        self.peer_urls = peer_urls
        self.drift_ms = drift_ms
        self.offset_ms = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.paused = False
        self.starts = 0
        self._log: IO[bytes] | None = None
        self.clock_file.write_text("0\n")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is running already"
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"--- start {self.starts}\n".encode())
        self._log.flush()
        command = [
            sys.executable,
            "-m",
            "syncmesh.chaos.nodemain",
            str(self.db),
            "--port-file",
            str(self.port_file),
            "--clock-file",
            str(self.clock_file),
            "--drift-ms",
            str(self.drift_ms),
        ]
        for url in self.peer_urls:
            command += ["--peer", url]
        for url in self.nats_urls:
            command += ["--nats", url]
        if self.nats_urls:
            command += ["--cluster", self.nats_cluster]
        if not self.collect:
            command.append("--no-collection")
        self.ready = False
        self.paused = False
        self.port = 0
        self.port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=self._log)

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Until the node answers /v1/health (well or not); then it may be signalled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while True:
            if not self.running:
                raise RuntimeError(f"{self.name} exited at start: see {self.log_path}")
            if not self.port and self.port_file.exists():
                self.port = int(self.port_file.read_text())
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                if not self.port:
                    raise aiohttp.ClientError("not bound yet")
                async with session.get(f"{self.url}/v1/health") as response:
                    # 503: it runs, and names what is wrong (syncmesh.node.health).
                    if response.status in (200, 503):
                        break
            if loop.time() > deadline:
                raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S} s")
            await asyncio.sleep(POLL_S)
        self.ready = True
        self._signal(signal.SIGUSR1)  # re-read the clock, in case it moved while starting

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()
        self.ready = False
        self.paused = False

    def pause(self) -> None:
        if self.running and not self.paused:
            self._signal(signal.SIGSTOP)
            self.paused = True

    def dump_stacks(self) -> None:
        """SIGUSR2: the node writes every thread's stack to its log (nodemain's faulthandler)."""
        self._signal(signal.SIGUSR2)

    def resume(self) -> None:
        if self.paused:
            self._signal(signal.SIGCONT)
            self.paused = False

    def set_clock(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms
        self.clock_file.write_text(f"{offset_ms}\n")
        if self.ready:
            self._signal(signal.SIGUSR1)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT), then SIGKILL if it does not go."""
        if self.running:
            assert self.process is not None
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)


def start_client(
    node: ChaosNode,
    seed: int,
    duration_s: float,
    settle_s: float,
    out: Path,
    adversarial: tuple[str, ...] = (),
    migration: tuple[str, tuple[float, ...]] | None = None,
) -> subprocess.Popen[bytes]:
    """The workload client of `node`; `migration`: the plan it runs, and when each step (s)."""
    log = node.log_path.with_suffix(".client.log").open("ab")
    command = [
        sys.executable,
        "-m",
        "syncmesh.chaos.workload",
        str(node.db),
        "--node",
        node.name,
        "--node-index",
        str(node.index),
        "--seed",
        str(seed),
        "--duration-s",
        str(duration_s),
        "--settle-s",
        str(settle_s),
        "--out",
        str(out),
        "--adversarial",
        ",".join(adversarial) or "none",
    ]
    if migration is not None:
        times = ",".join(str(at) for at in migration[1])
        command += ["--migrate", migration[0], "--migrate-at-s", times]
    try:
        return subprocess.Popen(command, stdout=log, stderr=log)
    finally:
        log.close()
