"""Re-check a synced file's tracked tables after an application's migration.

A migration tool (Django's `migrate`, `alembic upgrade`) changes tables
that syncmesh tracks.  A node serving the file notices the change in its
capture loop (`PRAGMA schema_version`) and reconciles on its own: then
the node is the one owner of the reconcile, and this only says so (two
processes reconciling the same DDL at once would each plan it from what
they had read before the other's).  With no node running, this reconciles
in the migrating process right after the migration commits, so the
triggers are back before the application writes again, and tells the
person running the migration what syncmesh did and what is left to fix,
in the migration's own output.

It never raises for an operating error: a migration that succeeded must
not be reported as failed because of syncmesh.  Everything it could not do
is a line in `Recheck.problems`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from syncmesh.errors import NotInitialized, SyncError
from syncmesh.node.lockfile import running_holder
from syncmesh.store.open import open_store

# The table every syncmesh file has (`syncmesh init`), as the chaos checkers read it.
BOOKKEEPING_TABLE = "_syncmesh_state"
NOT_SYNCED = "not a syncmesh file yet (`syncmesh track` its tables to sync them)"


@dataclass(frozen=True, slots=True)
class Recheck:
    """What a re-check did: `changes` handled, `problems` left (each a sentence)."""

    database: str
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    synced: bool = True  # False: the file is not a syncmesh file (nothing to do)

    def lines(self) -> list[str]:
        """One line per change and per problem, prefixed for a migration's output."""
        if not self.synced:
            return [f"syncmesh: {self.database}: {problem}" for problem in self.problems]
        return [
            *(f"syncmesh: {self.database}: {change}" for change in self.changes),
            *(f"syncmesh: {self.database}: problem: {problem}" for problem in self.problems),
        ]


class Writer(Protocol):
    """Where a migration prints (a text stream, Django's `OutputWrapper`)."""

    def write(self, text: str, /) -> object: ...


def report(result: Recheck, log: logging.Logger, stdout: Writer | None) -> None:
    """Print the re-check's lines to the migration's output, and log them.

    Problems are logged as warnings only when they were not printed: with
    no logging configured, Python shows warnings on stderr, and the
    operator would read each problem twice.
    """
    printed = stdout is not None
    for change in result.changes:
        log.info("%s: %s", result.database, change)
    for problem in result.problems:
        serious = result.synced and not printed
        log.log(logging.WARNING if serious else logging.INFO, "%s: %s", result.database, problem)
    if stdout is not None:
        for line in result.lines():
            stdout.write(line + "\n")


def is_in_memory(name: str) -> bool:
    """True for SQLite's in-memory databases (a test run's database): nothing to sync."""
    return name in ("", ":memory:") or "mode=memory" in name


def has_bookkeeping(path: str) -> bool:
    """Read-only: has `syncmesh init` run on the file?

    Asked before opening the store, because opening switches the file to
    WAL: a database syncmesh does not sync must stay as it was.  A file
    that cannot be read here is left to `open_store` to name the problem.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                (BOOKKEEPING_TABLE,),
            ).fetchone()
    except sqlite3.Error:
        return True
    return found is not None


def recheck_tracked_tables(database: str | Path) -> Recheck:
    """Reconcile the tracked tables of the syncmesh file `database` with its schema now.

    A file served by a running node is left to that node.  Otherwise opens
    the store, runs `Store.reconcile_schema()` where the store has it
    (issue 14), then reads `Store.schema_problems()`.  A file that is
    missing or not initialised is left alone, untouched by syncmesh.
    """
    name = str(database)
    if is_in_memory(name):
        return Recheck(name, synced=False)
    if not Path(name).exists():
        return Recheck(name, problems=[f"{name} does not exist"], synced=False)
    if not has_bookkeeping(name):
        return Recheck(name, problems=[NOT_SYNCED], synced=False)
    holder = running_holder(name)
    if holder is not None:
        return Recheck(
            name,
            changes=[
                f"served by pid {holder.pid}, which follows the schema change itself"
                f" (`syncmesh status {name}` shows its view)"
            ],
        )
    try:
        store = open_store(name)
    except SyncError as exc:
        return Recheck(name, problems=[f"cannot open it: {exc}"])
    try:
        changes = store.reconcile_schema()
        problems = store.schema_problems()
    except NotInitialized:
        return Recheck(name, problems=[NOT_SYNCED], synced=False)
    except SyncError as exc:
        return Recheck(name, problems=[f"re-check failed: {exc}"])
    finally:
        store.close()
    return Recheck(name, changes=changes, problems=problems)
