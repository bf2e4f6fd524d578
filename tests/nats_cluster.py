"""The real 3-server NATS JetStream cluster of the NATS tests, and a proxy that freezes.

`NatsCluster` and `NatsServer` live in the product
(`syncmesh.chaos.natsservers`), because `syncmesh chaos --transport nats`
starts the same cluster: one copy of the code that starts and waits for
the servers.  A missing `nats-server` binary is a test failure that says
how to install it (`NatsServerError`), never a skip: the NATS tests must
run in CI.  Tests share one cluster per module and keep apart by using
their own syncmesh cluster name (one stream each).

`FreezableProxy` is a loopback TCP proxy in front of one server that a
test can freeze (bytes stop moving both ways, nothing is closed: a
network path that hangs) and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from syncmesh.chaos.natsservers import NatsCluster, NatsServer, nats_server_binary
from tests.nodeproc import HOST, free_port

__all__ = ["FreezableProxy", "NatsCluster", "NatsServer", "nats_server_binary"]


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
