"""Snapshot bootstrap: a consistent copy of a store, and installing one under a new site.

A node joins a cluster, or re-joins after it was refused (forgotten, or
asleep past the GC horizon: ADR 0015 rule 3), from a copy of a peer's file
instead of replaying the peer's feed row by row (docs/adr/0016).

- `write_snapshot` (the serving side) copies the file with SQLite's backup
  API on a connection of its own, inside one read transaction: the copy
  is the file at one point of its feed, and writers (the application, the
  node's store thread) go on meanwhile.  It copies only at a point where
  every write was captured (a write still in a capture log would be
  captured again by the joiner, as its own).  The copy is then
  trimmed to what the joiner may receive: application tables that are
  not tracked go, and so do tracked tables outside the joiner's rights;
  the conflict ledger (this node's history) and the runs of its own
  restore detection go too, and a `VACUUM` leaves no free page that could
  carry them (or rows deleted at the source).  What stays is what a member needs: the
  tracked tables, their shadow rows, the vector, the peers' cursors, the
  quarantine and waiting cells (their stamps cap the vector), the
  membership, the horizons and the cl floor.
- `install_snapshot` (the joining side) gives the copy the joiner's new
  site id (the source's own stamps move to an ordinal of their own, as
  `init --new-site-id` does), sets the cursor on the source at the
  snapshot's head (the joiner continues the source's feed from there), and
  moves it into place.  A file that was there (a refused site) is moved
  aside, never merged: its rows could bring deleted rows back.  Its own
  writes that the snapshot does not hold are listed in the side file's
  `_syncmesh_unsynced` table for the operator.

Both are plain functions of files, not of a running store: another
transport (a NATS object store, say) can ship the same file and metadata.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from xxhash import xxh3_128

from syncmesh.errors import StoreError
from syncmesh.schema import quote_identifier
from syncmesh.store.records import JoinReport, SnapshotInfo
from syncmesh.store.sqlite import opening
from syncmesh.store.sqlite.ddl import log_name
from syncmesh.store.sqlite.introspect import application_tables
from syncmesh.store.sqlite.store import SqliteStore

log = logging.getLogger(__name__)

CHECKSUM_CHUNK_BYTES = 4 << 20
CAPTURE_ATTEMPTS_MAX = 50  # copies tried, each after a capture, before giving up
# Tables of the node's own history, not of the data: a joiner starts them empty.
LOCAL_HISTORY_TABLES = ("_syncmesh_conflicts", "_syncmesh_conflict_totals", "_syncmesh_runs")
SIDE_FILE_INFIX = ".before-join-"


@contextlib.contextmanager
def _plain(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection of our own, outside any store: no functions, no upgrade."""
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        connection.execute(f"PRAGMA busy_timeout = {opening.BUSY_TIMEOUT_MS}")
        yield connection
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    finally:
        connection.close()


def checksum_of(path: Path) -> str:
    """xxh3-128 of the file's bytes, hex: what a joiner compares after the transfer."""
    digest = xxh3_128()
    with path.open("rb") as file:
        while chunk := file.read(CHECKSUM_CHUNK_BYTES):
            digest.update(chunk)
    return str(digest.hexdigest())


def write_snapshot(
    database: Path,
    target: Path,
    may_receive: Callable[[str], bool] | None = None,
    capture: Callable[[], object] | None = None,
) -> SnapshotInfo:
    """A consistent copy of `database` at `target`, trimmed for a joiner; its metadata.

    `may_receive(table)`: whether the joiner may receive a tracked table
    (its rights); None for every table.  `capture()`: has the node serving
    the file capture its pending writes (None: nobody serves it).  Takes no
    write lock on `database` (a read transaction for the copy); the
    trimming works on `target` only.
    """
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    _copy_captured(database, target, capture)
    copied_s = time.perf_counter() - started
    with _plain(target) as copy:
        tracked = [name for (name,) in copy.execute("SELECT name FROM _syncmesh_tables")]
        excluded = [name for name in tracked if may_receive is not None and not may_receive(name)]
        untracked = [name for name in application_tables(copy) if name not in tracked]
    if excluded:
        store = SqliteStore.open(target)
        try:
            store.untrack(excluded)
        finally:
            store.close()
    with _plain(target) as copy:
        # Freed pages are zeroed, and the file is rewritten below if any are
        # left: the joiner must not find a table it may not read in them, nor
        # rows deleted at the source.
        copy.execute("PRAGMA secure_delete = ON")
        copy.execute("BEGIN IMMEDIATE")
        for name in [*excluded, *untracked]:
            copy.execute(f"DROP TABLE {quote_identifier(name)}")
        for name in LOCAL_HISTORY_TABLES:
            if copy.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (name,)).fetchone():
                copy.execute(f"DELETE FROM {name}")
        copy.execute("UPDATE _syncmesh_state SET restore_floor = 0, applying = 0")
        copy.execute("COMMIT")
        if copy.execute("PRAGMA freelist_count").fetchone()[0]:
            copy.execute("VACUUM")
        copy.execute("PRAGMA journal_mode = DELETE")
        info = _info_of(copy, target)
    log.info(
        "snapshot of %s: %d bytes, tables %s (copied in %.2f s%s)",
        database,
        info.bytes,
        ", ".join(info.tables) or "none",
        copied_s,
        f"; left out {', '.join(excluded + untracked)}" if excluded or untracked else "",
    )
    return info


def _copy_captured(database: Path, target: Path, capture: Callable[[], object] | None) -> None:
    """Copy `database` to `target` at a point where every write was captured.

    A write the application committed but the node has not captured yet is
    only in a capture log: copied, the joiner would capture it as its own
    write, under its own site id.  So the copy is taken (SQLite's backup API,
    inside one read transaction: one point of the feed, no write lock) only
    when every log is empty; otherwise the serving node captures, and the
    copy is tried again.
    """
    opening.create_private(target)
    for _attempt in range(CAPTURE_ATTEMPTS_MAX):
        with _plain(database, read_only=True) as source:
            source.execute("BEGIN")
            if _is_syncmesh(source) and not _has_pending_writes(source):
                with contextlib.closing(sqlite3.connect(target)) as copy:
                    source.backup(copy)
                source.execute("COMMIT")
                return
            is_syncmesh = _is_syncmesh(source)
            source.execute("COMMIT")
        if not is_syncmesh:
            raise StoreError(f"{database} is not a syncmesh file (`syncmesh init` it first)")
        if capture is None:
            raise StoreError(
                f"{database} has writes that were never captured: serve it with `syncmesh"
                " serve` (its node captures them), then take the snapshot"
            )
        capture()
    raise StoreError(
        f"{database} is written faster than its node captures: no moment without pending"
        f" writes in {CAPTURE_ATTEMPTS_MAX} tries; try the join again"
    )


def _is_syncmesh(connection: sqlite3.Connection) -> bool:
    return (
        connection.execute("SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_state'").fetchone()
        is not None
    )


def _has_pending_writes(connection: sqlite3.Connection) -> bool:
    """Whether any capture log holds a write (inside the caller's read transaction)."""
    logs = [
        log_name(str(table))
        for (table,) in connection.execute("SELECT name FROM _syncmesh_tables").fetchall()
    ]
    logs = [
        name
        for name in logs
        if connection.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (name,)).fetchone()
    ]
    return any(
        connection.execute(f"SELECT 1 FROM {quote_identifier(name)} LIMIT 1").fetchone()
        for name in logs
    )


def _info_of(copy: sqlite3.Connection, target: Path) -> SnapshotInfo:
    site, incarnation, seq = copy.execute(
        "SELECT site_id, incarnation, seq FROM _syncmesh_state"
    ).fetchone()
    vector = {
        str(site_id): int(hlc)
        for site_id, hlc in copy.execute("SELECT site_id, hlc FROM _syncmesh_vector")
    }
    tables = tuple(sorted(name for (name,) in copy.execute("SELECT name FROM _syncmesh_tables")))
    return SnapshotInfo(
        source_site=str(site),
        source_incarnation=str(incarnation),
        head_seq=int(seq),
        vector=vector,
        tables=tables,
        bytes=target.stat().st_size,
        checksum=checksum_of(target),
    )


def install_snapshot(
    snapshot: Path, database: Path, site_id: str, info: SnapshotInfo, source_url: str = ""
) -> JoinReport:
    """Make `snapshot` the file at `database`, as site `site_id`; move a file there aside.

    `info` is what the source said of the snapshot; the file must match its
    checksum.  The cursor on the source is set at the snapshot's head, so
    the joiner reads only the source's writes since.
    """
    os.chmod(snapshot, opening.DATABASE_FILE_MODE)
    if checksum_of(snapshot) != info.checksum:
        raise StoreError(
            f"the snapshot at {snapshot} does not match the checksum its source sent: the"
            " transfer was damaged; run the join again"
        )
    store = SqliteStore.open(snapshot)
    try:
        ctx = store.context
        ctx.require_init()
        if store.site_id != info.source_site:
            raise StoreError(f"the snapshot names site {store.site_id}, not {info.source_site}")
        opening.new_site_id(ctx, site_id)
        with ctx.transaction():
            ctx.connection.execute("DELETE FROM _syncmesh_runs")
            ctx.connection.execute(
                "INSERT INTO _syncmesh_peers (site_id, incarnation, cursor, head_seq, address)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (site_id) DO UPDATE SET"
                " incarnation = excluded.incarnation, cursor = excluded.cursor,"
                " head_seq = excluded.head_seq, address = excluded.address",
                (
                    info.source_site,
                    info.source_incarnation,
                    info.head_seq,
                    info.head_seq,
                    source_url,
                ),
            )
        tables = tuple(spec.name for spec in store.specs())
        now_ms = ctx.clock.physical_ms()  # the one clock (for the side file's name)
    finally:
        store.close()
    with _plain(snapshot) as copy:
        copy.execute("PRAGMA journal_mode = DELETE")
    side_file = ""
    unsynced: dict[str, int] = {}
    if database.exists() and not _empty_file(database):
        side_file, unsynced = _move_aside(database, info.vector, now_ms)
    os.replace(snapshot, database)
    log.info("%s joined as site %s from a snapshot of site %s", database, site_id, info.source_site)
    return JoinReport(site_id, info.source_site, tables, side_file, unsynced)


def _empty_file(database: Path) -> bool:
    """No byte at `database` nor in its WAL: nothing to keep aside.

    `syncmesh join` creates the file it locks (the serve lock is a flock on
    the database file, node.lockfile) when there is none yet.
    """
    wal = Path(f"{database}-wal")
    return database.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)


def _move_aside(database: Path, held: dict[str, int], now_ms: int) -> tuple[str, dict[str, int]]:
    """Move the file at `database` aside; list its own writes that `held` lacks in it.

    The file is not merged into anything: a refused site's rows may be rows
    the cluster deleted and collected.  Its own writes stamped after what
    the snapshot holds of them were never synced; the operator finds them
    in the side file's `_syncmesh_unsynced` (table, key as JSON).
    """
    when = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ms / 1000))
    side = Path(f"{database}{SIDE_FILE_INFIX}{when}")
    unsynced: dict[str, int] = {}
    try:
        with _plain(database) as old:
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            old.execute("PRAGMA journal_mode = DELETE")  # one file: nothing left in a WAL
    except StoreError as exc:
        raise StoreError(
            f"cannot move {database} aside ({exc}): another process has it open; stop the"
            " application's writers too, then join again"
        ) from exc
    os.replace(database, side)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    store = SqliteStore.open(side)
    try:
        ctx = store.context
        if not ctx.initialized():
            return str(side), unsynced
        ctx.load()
        store.capture()  # writes made since the node stopped are own writes too
        floor = held.get(store.site_id, 0)
        with ctx.transaction():
            ctx.connection.execute(
                "CREATE TABLE IF NOT EXISTS _syncmesh_unsynced (table_name TEXT NOT NULL,"
                " pk TEXT NOT NULL)"
            )
            for table in ctx.tables.values():
                keys = ", ".join(f"k{index}" for index in range(table.key_count))
                own = ["(cl_site = 0 AND cl_hlc > :floor)"]
                own += [f"(s{slot} = 0 AND h{slot} > :floor)" for slot in table.slots]
                cursor = ctx.connection.execute(
                    "INSERT INTO _syncmesh_unsynced (table_name, pk)"
                    f" SELECT :table, json_array({keys}) FROM {table.shadow}"
                    f" WHERE {' OR '.join(own)}",
                    {"table": table.spec.name, "floor": floor},
                )
                if cursor.rowcount:
                    unsynced[table.spec.name] = cursor.rowcount
    finally:
        store.close()
    log.warning(
        "%s moved aside to %s; %d of its own writes were not synced (its _syncmesh_unsynced)",
        database,
        side,
        sum(unsynced.values()),
    )
    return str(side), unsynced
