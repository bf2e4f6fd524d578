"""A byte-counting TCP proxy on 127.0.0.1, run on its own thread.

The wire scenario puts one between two nodes (the dialling node is given the
proxy's address as its peer URL) and reads how many bytes crossed it each
way: everything the kernel carried, WebSocket framing, HTTP upgrade, ACKs,
heartbeats included.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HOST = "127.0.0.1"
CHUNK_BYTES = 256 * 1024
START_TIMEOUT_S = 10.0


class CountingProxy:
    """Forwards HOST:`port` to HOST:`target_port`; counts bytes per direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.forward_bytes = 0  # dialler -> listener
        self.backward_bytes = 0  # listener -> dialler
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="bench-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def counters(self) -> tuple[int, int]:
        return self.forward_bytes, self.backward_bytes

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=START_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        forward = asyncio.create_task(self._pump(reader, up_writer, forward=True))
        backward = asyncio.create_task(self._pump(up_reader, writer, forward=False))
        for task in (forward, backward):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait([forward, backward], return_when=asyncio.FIRST_COMPLETED)
        for task in (forward, backward):
            task.cancel()
        for stream in (writer, up_writer):
            with contextlib.suppress(Exception):
                stream.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, forward: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                chunk = await reader.read(CHUNK_BYTES)
                if not chunk:
                    return
                if forward:
                    self.forward_bytes += len(chunk)
                else:
                    self.backward_bytes += len(chunk)
                writer.write(chunk)
                await writer.drain()


@contextmanager
def counting_proxy(target_port: int) -> Iterator[CountingProxy]:
    proxy = CountingProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
