"""The registration point of store backends: `open_store` picks one.

This is the one module outside `syncmesh.store.sqlite` that imports it
(import-linter's "protected" and "forbidden" contracts in pyproject.toml
keep it so).  A new backend (PostgreSQL, say) is its own package under
`syncmesh.store` plus a branch here; `node`, `api`, `cli` and `chaos` see
only the `syncmesh.store.base.Store` protocol.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from syncmesh.clock import HybridClock
from syncmesh.store.base import CONFLICT_LEDGER_ROWS_MAX_DEFAULT, Store
from syncmesh.store.records import OrphanPolicy
from syncmesh.store.sqlite import SqliteStore


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
