"""Snapshot bootstrap: serving a consistent copy of our file, and joining from one.

docs/adr/0016-snapshot-bootstrap.md.  A new node, or one refused as too
stale (forgotten, or asleep past the GC horizon), copies a peer's file at
one point of its feed instead of replaying the feed row by row, takes a new
site id, and is then an ordinary member that continues the peer's feed
from that point.

- `SnapshotServer` (the node's `transport.base.SnapshotHost`): admits the
  asker like a verify request (its certificate must name a configured
  peer), registers the joiner's announced site id as a member holding our
  vector (so that no delete made after the snapshot is collected before
  the joiner holds it), takes the snapshot off the store thread and off
  the event loop (`store.open.take_snapshot`: SQLite's backup API in one
  read transaction, at a point where every write was captured; sync goes
  on meanwhile), trimmed to the tables the peer may
  receive, and keeps it for `SNAPSHOT_KEEP_S` for the download (resumable).
- `join`: the asking side, over any `transport.base.SnapshotSource`.

The description (`SnapshotInfo.as_json` plus `id`) is JSON: the file and
the description are all a transport has to carry (a NATS bootstrap can
ship the same two things; see `store.open`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncmesh.errors import RefusedError, StoreError, SyncError, TransportError
from syncmesh.node.admission import Admitted, admit
from syncmesh.node.config import NodeConfig
from syncmesh.store import Store
from syncmesh.store.open import install_snapshot, take_snapshot
from syncmesh.store.records import JoinReport, SnapshotInfo
from syncmesh.transport.base import (
    PeerIdentity,
    Refusal,
    SnapshotOffer,
    SnapshotSource,
)

log = logging.getLogger(__name__)

SNAPSHOT_KEEP_S = 600.0  # a snapshot offered stays downloadable this long
SNAPSHOTS_KEPT_MAX = 2  # older snapshots are deleted when a new one is taken
CAPTURE_TIMEOUT_S = 60.0  # a capture asked for by the copying thread
SITE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
PARTIAL_SUFFIX = ".joining"

StoreCall = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class _Offered:
    path: Path
    peer: str  # the certificate name it was offered to ("" without TLS)
    taken_at: float  # monotonic


@dataclass(slots=True)
class SnapshotStatistics:
    """Snapshots this node served in this run (status, /metrics)."""

    taken: int = 0
    refused: int = 0
    bytes_last: int = 0
    seconds_last: float = 0.0
    taking: bool = False  # a snapshot is being taken now


class SnapshotServer:
    """The serving side of snapshot bootstrap (`transport.base.SnapshotHost`)."""

    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        call: StoreCall,
        *,
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        self._store = store
        self._call = call
        self._stopping = stopping
        self._lock = asyncio.Lock()  # one snapshot at a time: each is a full copy
        self._offered: dict[str, _Offered] = {}
        self._directory: Path | None = None
        self.statistics = SnapshotStatistics()

    def _admit(self, peer: PeerIdentity) -> Admitted | Refusal:
        return admit(peer, self._config, stopping=self._stopping(), inbound=None)

    async def offer_snapshot(
        self, peer: PeerIdentity, read_body: Callable[[], Awaitable[bytes]]
    ) -> Refusal | SnapshotOffer:
        admitted = self._admit(peer)
        if isinstance(admitted, Refusal):
            return admitted
        body = await read_body()
        try:
            joiner = joiner_site(body)
            if joiner == self._store.site_id:
                raise ValueError("the joiner announced this node's own site id")
            await self._call(self._store.register_joiner, joiner)
            rights = admitted.peer
            may_receive = None if rights is None or rights.receive is None else rights.may_receive
            async with self._lock:
                info, snapshot_id = await self._take(may_receive, rights.name if rights else "")
        except (ValueError, SyncError, OSError) as exc:
            self.statistics.refused += 1
            log.warning(
                "no snapshot for %s: %s (a site it named and that never joins holds collection"
                " back until forgotten)",
                peer.address,
                exc,
            )
            return SnapshotOffer(False, str(exc).encode())
        log.info(
            "snapshot %s (%d bytes, head %d) offered to %s, joining as site %s",
            snapshot_id,
            info.bytes,
            info.head_seq,
            peer.address,
            joiner,
        )
        return SnapshotOffer(True, json.dumps({"id": snapshot_id, **info.as_json()}).encode())

    async def _take(
        self, may_receive: Callable[[str], bool] | None, peer_name: str
    ) -> tuple[SnapshotInfo, str]:
        self._expire()
        if self._directory is None:
            self._directory = _snapshot_directory(self._config.database_path)
        snapshot_id = uuid.uuid4().hex
        target = self._directory / f"{snapshot_id}.db"
        started = time.perf_counter()
        loop = asyncio.get_running_loop()

        async def capture_now() -> None:
            await self._call(self._store.capture)

        def capture() -> None:
            # From the copying thread: the store thread captures, the copy is tried again.
            done = asyncio.run_coroutine_threadsafe(capture_now(), loop)
            done.result(timeout=CAPTURE_TIMEOUT_S)

        self.statistics.taking = True
        try:
            info = await asyncio.to_thread(
                take_snapshot, self._config.database_path, target, may_receive, capture
            )
        finally:
            self.statistics.taking = False
        self.statistics.taken += 1
        self.statistics.bytes_last = info.bytes
        self.statistics.seconds_last = time.perf_counter() - started
        self._offered[snapshot_id] = _Offered(target, peer_name, time.monotonic())
        return info, snapshot_id

    def _expire(self) -> None:
        """Delete snapshots past their time, and all but the newest few."""
        now = time.monotonic()
        newest = sorted(self._offered, key=lambda key: self._offered[key].taken_at)
        keep = set(newest[-(SNAPSHOTS_KEPT_MAX - 1) :]) if SNAPSHOTS_KEPT_MAX > 1 else set()
        for snapshot_id in newest:
            offered = self._offered[snapshot_id]
            if snapshot_id not in keep or now - offered.taken_at > SNAPSHOT_KEEP_S:
                offered.path.unlink(missing_ok=True)
                del self._offered[snapshot_id]

    def snapshot_file(self, peer: PeerIdentity, snapshot_id: str) -> Refusal | Path | None:
        admitted = self._admit(peer)
        if isinstance(admitted, Refusal):
            return admitted
        self._expire()
        offered = self._offered.get(snapshot_id)
        name = admitted.peer.name if admitted.peer is not None else ""
        if offered is None or offered.peer != name:
            return None  # only the peer it was trimmed for may read it
        return offered.path

    def close(self) -> None:
        """Delete every snapshot kept (the node stops)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        self._offered.clear()


def _snapshot_directory(database: str) -> Path:
    """A fresh directory next to the database: the same file system, and its free space."""
    parent = Path(database).resolve().parent
    return Path(tempfile.mkdtemp(prefix=".syncmesh-snapshots-", dir=parent))


def joiner_site(body: bytes) -> str:
    """The site id the joiner announces; ValueError naming what is wrong (peer input)."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the snapshot request is not JSON: {exc}") from exc
    site = document.get("site") if isinstance(document, dict) else None
    if not isinstance(site, str) or not SITE_ID_PATTERN.fullmatch(site):
        raise ValueError("the snapshot request names no site id (32 lower-case hex digits)")
    return site


async def join(
    database: Path,
    source: SnapshotSource,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> JoinReport:
    """Make `database` a new member of the cluster from a snapshot of the node at `source`.

    A file at `database` is moved aside (a refused site: docs/operations.md).
    No node may be serving `database` (the caller checks its serve lock).
    """
    site = uuid.uuid4().hex
    status, body = await source.request(json.dumps({"site": site}).encode())
    if status == 409:
        raise RefusedError(f"{source.url} gives no snapshot: {body.decode(errors='replace')[:500]}")
    if status != 200:
        raise TransportError(source.url, f"HTTP {status}: {body.decode(errors='replace')[:500]}")
    try:
        document = json.loads(body)
        snapshot_id = str(document["id"])
        info = SnapshotInfo.from_json(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise TransportError(source.url, f"unreadable snapshot description: {exc}") from exc
    partial = Path(f"{database}{PARTIAL_SUFFIX}")
    await asyncio.to_thread(partial.unlink, missing_ok=True)
    try:
        await source.download(
            snapshot_id,
            partial,
            info.bytes,
            (lambda done: progress(done, info.bytes)) if progress else (lambda _done: None),
        )
        return await asyncio.to_thread(_install, partial, database, site, info, source.url)
    except BaseException:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        # The source waits for this site now (a member from the request on).
        log.warning(
            "the join did not finish; %s now counts site %s as a member, which holds tombstone"
            " collection back: join again, or run `syncmesh forget` for %s on a node's file",
            source.url,
            site,
            site,
        )
        raise


def _install(partial: Path, database: Path, site: str, info: SnapshotInfo, url: str) -> JoinReport:
    """The downloaded snapshot at `partial` into place (blocking: a thread's)."""
    try:
        size = partial.stat().st_size
        if size != info.bytes:
            raise StoreError(
                f"the snapshot from {url} has {size} bytes, not {info.bytes}: run the join again"
            )
        return install_snapshot(partial, database, site, info, url)
    finally:
        partial.unlink(missing_ok=True)
