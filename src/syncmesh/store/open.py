"""The registration point of store backends: `open_store` picks one.

This is the one module outside `syncmesh.store.sqlite` that imports it
(import-linter's "protected" and "forbidden" contracts in pyproject.toml
keep it so).  A new backend (PostgreSQL, say) is its own package under
`syncmesh.store` plus a branch here; `node`, `api`, `cli` and `chaos` see
only the `syncmesh.store.base.Store` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from syncmesh.clock import HybridClock
from syncmesh.store.base import CONFLICT_LEDGER_ROWS_MAX_DEFAULT, Store
from syncmesh.store.records import JoinReport, OrphanPolicy, SnapshotInfo
from syncmesh.store.sqlite import SqliteStore, write_snapshot
from syncmesh.store.sqlite import install_snapshot as sqlite_install_snapshot


def open_store(
    path: str | Path,
    *,
    clock: HybridClock | None = None,
    conflict_ledger_rows_max: int = CONFLICT_LEDGER_ROWS_MAX_DEFAULT,
    orphan_policy: OrphanPolicy | None = None,
) -> Store:
    """Open (or create) the store at `path`; call `init()` before anything else on a new one.

    Every path is a SQLite file today.  `clock` is the node's hybrid clock
    (default: the system's, with a 60 s drift limit); `orphan_policy` what
    happens to rows whose foreign key names a deleted parent (docs/keys.md).
    """
    return SqliteStore.open(
        path,
        clock=clock,
        conflict_ledger_rows_max=conflict_ledger_rows_max,
        orphan_policy=orphan_policy,
    )


def table_problems(
    path: str | Path, tables: list[str], allow_integer_keys: Collection[str] = ()
) -> list[str]:
    """Why `tables` of the store at `path` could not be tracked (missing, no key), read-only.

    For `syncmesh config check`: it must not change, or even create, the file.
    """
    return SqliteStore.table_problems(path, tables, allow_integer_keys)


# -- snapshot bootstrap (docs/adr/0016-snapshot-bootstrap.md) -------------------------
#
# The seam for any transport that ships a store to a joining node: the
# serving side calls `Store.register_joiner(site)` on its running store, then
# `take_snapshot` (which needs no store: it reads the file on a connection
# of its own, so the node's store thread keeps syncing), and ships the file
# and its `SnapshotInfo` (`as_json`) however it likes; the joining side calls
# `install_snapshot` with the file, the same `SnapshotInfo` and the site id
# it announced.  The WebSocket transport does it over HTTP (node/bootstrap.py);
# a NATS transport can use an object store.


def take_snapshot(
    database: str | Path,
    target: str | Path,
    may_receive: Callable[[str], bool] | None = None,
    capture: Callable[[], object] | None = None,
) -> SnapshotInfo:
    """A consistent copy of the store at `database`, written to `target`, for a joiner.

    Only tracked tables the joiner `may_receive` (None: all) are in it; the
    source's write lock is never taken.  The copy is taken at a point where
    every application write was captured; `capture()` makes the running
    node capture (blocking until it did), and is called between tries.
    Blocking, seconds for a large file: run it off the event loop and off
    the store thread.
    """
    return write_snapshot(Path(database), Path(target), may_receive, capture)


def install_snapshot(
    snapshot_file: str | Path,
    database: str | Path,
    site_id: str,
    info: SnapshotInfo,
    source_url: str = "",
) -> JoinReport:
    """Make the snapshot the store at `database` under the new `site_id` (StoreError if damaged).

    A file already at `database` (a refused site) is moved aside, with its
    unsynced own writes listed in it (`JoinReport.side_file`); no node may be
    serving it.
    """
    return sqlite_install_snapshot(Path(snapshot_file), Path(database), site_id, info, source_url)
