"""One chaos node: `syncmesh serve` with a clock the harness can move.

    python -m syncmesh.chaos.nodemain DATABASE --port-file FILE [--peer URL ...]
        [--nats URL ... --cluster NAME] --clock-file FILE --drift-ms N

It listens on a port the OS picks and writes it to `--port-file` once it
is bound: a port chosen beforehand could be taken in between (by one of
the harness's own proxies, say).

The physical clock is the system's plus an offset in milliseconds read from
`--clock-file`, again whenever the process gets SIGUSR1: the harness writes
the file, then signals, so a node's clock is set ahead, behind or jumped
back while it runs (the engine's clock seam; libfaketime breaks Python's
thread timeouts).  Timings are shortened so that faults are noticed and
healed within the seconds a schedule lasts.

With `--nats` the node syncs through a fleet stream (`[transport.nats]`,
docs/nats.md) instead of, or beside, its peers; its stream's state is
read every half second (not 2 s), so that the harness sees quiescence soon.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
import time
from pathlib import Path

from syncmesh.api import running_node
from syncmesh.node import NodeConfig
from syncmesh.node.config import FleetConfig

HEARTBEAT_S = 1.0
BACKOFF_MAX_S = 1.0
QUARANTINE_RETRY_S = 1.0
CONNECT_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 3.0
VERIFY_INTERVAL_S = 2.0
VERIFY_SETTLE_S = 0.3
LIFECYCLE_INTERVAL_S = 1.0
FLEET_STATUS_INTERVAL_S = 0.5


class FileOffsetClock:
    """The system clock shifted by the offset (ms) written in a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.offset_ms = 0
        self.reload()

    def reload(self) -> None:
        try:
            self.offset_ms = int(self._path.read_text().strip() or 0)
        except (OSError, ValueError) as exc:
            logging.getLogger("syncmesh.chaos").error("clock file %s: %s", self._path, exc)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


def chaos_config(
    database: str,
    peers: list[str],
    drift_ms: int,
    *,
    collect: bool = True,
    nats: tuple[str, ...] = (),
    cluster: str = "default",
) -> NodeConfig:
    fleet = None
    if nats:
        fleet = FleetConfig(
            servers=nats, cluster=cluster, status_interval_s=FLEET_STATUS_INTERVAL_S
        )
    return NodeConfig(
        database_path=database,
        listen_port=0,
        peer_urls=tuple(peers),
        clock_drift_ms_max=drift_ms,
        heartbeat_s=HEARTBEAT_S,
        backoff_max_s=BACKOFF_MAX_S,
        quarantine_retry_s=QUARANTINE_RETRY_S,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        # Verify runs under the faults too: a failed or cut one must log a
        # warning, never a traceback (the internal-error checker).
        verify_interval_s=VERIFY_INTERVAL_S,
        verify_settle_s=VERIFY_SETTLE_S,
        # Tombstone collection every second, under every fault (issue 16): the
        # checkers read a key with no shadow row whose last life was deleted
        # as collected, and check that no deleted row comes back.
        lifecycle_interval_s=LIFECYCLE_INTERVAL_S if collect else 0.0,
        fleet=fleet,
    )


async def _run(config: NodeConfig, clock: FileOffsetClock, port_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, clock.reload)
    async with running_node(config, physical_clock=clock) as node:
        print(f"chaos node {node.store.site_id} on {node.listen}", file=sys.stderr, flush=True)
        partial = port_file.with_suffix(".partial")
        partial.write_text(node.listen.rsplit(":", 1)[1] + "\n")
        partial.replace(port_file)  # whole or absent, never half written
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m syncmesh.chaos.nodemain")
    parser.add_argument("database")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--nats", action="append", default=[], help="a NATS server URL")
    parser.add_argument("--cluster", default="default", help="the fleet's cluster name")
    parser.add_argument("--clock-file", type=Path, required=True)
    parser.add_argument("--drift-ms", type=int, required=True)
    parser.add_argument(
        "--no-collection",
        action="store_true",
        help="no tombstone collection (a schedule with the restore fault: see run.py)",
    )
    args = parser.parse_args(argv)
    # The harness sends SIGUSR2 to a node that stopped answering: every
    # thread's stack goes to the log, which says where a hung node is stuck.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = chaos_config(
        args.database,
        args.peer,
        args.drift_ms,
        collect=not args.no_collection,
        nats=tuple(args.nats),
        cluster=args.cluster,
    )
    asyncio.run(_run(config, FileOffsetClock(args.clock_file), args.port_file))


if __name__ == "__main__":
    main()
