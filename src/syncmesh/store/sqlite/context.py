"""The SQLite backend's state, in one place: `StoreContext`.

Every service module of the backend (capture, feed, apply, vector,
quarantine, conflicts, tracking, verify, ...) is a set of functions that
take the context as their first argument and read or write its public
fields; the `SqliteStore` facade owns one context and runs each public
operation as one transaction (`StoreContext.transaction`).  Nothing is
hidden behind private attributes of another object: what a module
changes is a field named here, with its meaning.

Not thread-safe: the node calls the store from one worker thread
(docs/adr/0005-one-store-thread.md).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from syncmesh.clock import HybridClock
from syncmesh.errors import NotInitialized, StoreError
from syncmesh.model import TableSpec
from syncmesh.store.base import CONFLICT_LEDGER_ROWS_MAX_DEFAULT
from syncmesh.store.records import OrphanPolicy
from syncmesh.store.sqlite.layout import TableLayout
from syncmesh.store.sqlite.sites import SiteMap
from syncmesh.store.sqlite.table import TableSql
from syncmesh.store.summary import Summaries

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StoreContext:
    """One open syncmesh file: its connection, clock and what is cached of it."""

    _connection: sqlite3.Connection
    path: str
    clock: HybridClock
    # The ledger keeps the newest this many conflicts (docs/config.md).
    conflict_ledger_rows_max: int = CONFLICT_LEDGER_ROWS_MAX_DEFAULT
    # Keep the rows' digests and the hash trees (store.summary); off only
    # to measure what they cost (bench).
    digests: bool = True
    # The in-memory hash trees, moved by this store's own commits.
    summaries: Summaries = field(default_factory=Summaries)
    # The tracked tables by name, as `_syncmesh_tables` held them at `load`.
    tables: dict[str, TableSql] = field(default_factory=dict)
    # None until the file is initialised and loaded.
    sites: SiteMap | None = None
    # `_syncmesh_state.tables_version` at `load`: another process tracked
    # a table when it moves.
    tables_version: int = -1
    # Restore detection (vector.mark_run_start): own writes of earlier runs
    # are stamped at most `own_floor`, this run's at least `run_start`.
    own_floor: int = 0
    run_start: int = 0
    # True once this run's gap (own_floor, run_start) is in `_syncmesh_runs`
    # (written with the run's first own stamp; vector.set_own).
    run_recorded: bool = False
    # (low, high): own stamps of this run that a detected restore showed to
    # lie at or below writes the file lost, to be stamped anew
    # (vector._detect sets it, capture.restamp_below_lost_writes does it).
    restamp_window: tuple[int, int] | None = None
    # The greatest own stamp of this run renewed so far: a window starts above it.
    restamped_through: int = 0
    # A claim about our own writes from beyond the drift limit, taken as a
    # restore (the lost writes were stamped ahead of our clock): the clock
    # moves past it, and this run's own stamps below it are renewed, once the
    # physical clock is within the drift limit of it (vector.settle_future_claim).
    future_claim: int = 0
    # `PRAGMA schema_version` when `schema_problems` were last worked out.
    schema_version: int = -1
    schema_problems: list[str] = field(default_factory=list)
    # `PRAGMA schema_version` after the last `reconcile_schema`: no DDL since when equal.
    reconciled_version: int = -1
    # Tracked tables the last reconcile could not handle (gone, key changed),
    # by name: left out of `tables`, so capture, feed and apply skip them
    # until the user fixes them; their problem is in `schema_problems`.
    unsynced: dict[str, TableLayout] = field(default_factory=dict)
    # What reconciles run on the way into another operation handled (the
    # facade follows DDL before it reads or writes rows by column), kept
    # for the next `reconcile_schema()` to return, so the caller hears of it.
    schema_lines_unreported: list[str] = field(default_factory=list)
    # `tables_version` when waiting cells were last merged (`waiting.merge_ready`):
    # no column can have appeared since when equal, and a retry skips them.
    waiting_tables_version: int = -1
    # Rows stamped by committed captures since the store was opened; a
    # capture also runs inside apply_batch and retry_quarantine, and only
    # counts once its transaction commits.
    rows_captured_total: int = 0
    # Rows the feed held back, by (table, key): the reason (see feed.py).
    # Cleared for a row when it reads right again.
    row_problems: dict[tuple[str, str], str] = field(default_factory=dict)
    rows_captured_uncommitted: int = 0
    # What to do with a row whose foreign key names a deleted parent (orphans.py).
    orphan_policy: OrphanPolicy = field(default_factory=OrphanPolicy)
    # True once this run looked for orphans in whole tables (the first capture).
    orphans_scanned: bool = False
    # Orphans the policy could not resolve, by (table, key): the reason.
    orphan_problems: dict[tuple[str, tuple[Any, ...]], str] = field(default_factory=dict)
    # Why orphans are not resolved this run ("": they are): a resolution
    # rolled back a whole transaction, which a retry would repeat.
    orphans_off: str = ""
    # orphans.py's caches: the foreign keys it handles, and the counts of
    # status, each with the file's versions it was worked out at.
    orphan_keys: tuple[tuple[int, ...], list[Any]] | None = None
    orphan_counts: tuple[tuple[int, ...], dict[str, int]] | None = None
    # The node's earlier collection passes (lifecycle.begin_pass, docs/adr/0015
    # and 0017): (frontier, each member's own entry), oldest first.  In memory
    # only: after a restart a fleet node's first pass collects nothing, and a
    # WebSocket node's first pass only what that pass itself settles.
    passes: list[tuple[dict[str, int], dict[str, int]]] = field(default_factory=list)
    # Quarantine entries (table, pk text, reason) the running retry took out
    # to try again: refused again for the same reason, they are no news, and
    # a warning at every retry (each second) buried the first (quarantine.add).
    retrying: frozenset[tuple[str, str, str]] = frozenset()
    # (site id, incarnation), kept in memory: read by callers on any thread
    # (an event loop's status, verify and metrics code) without touching the
    # connection.  Set by `load`, and where either changes.
    identity: tuple[str, str] | None = None
    # The one thread allowed to use the connection once a node bound it
    # (`bind_thread`, the node's store thread); None: any (tests, the CLI).
    owner_thread: int | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, on the owner thread only (ADR 0005).

        A SQLite call on another thread while the store thread is inside a
        statement can deadlock the process: that thread waits for the
        connection's mutex holding Python's GIL (reading a row's columns),
        while the store thread, holding the mutex mid-statement, waits for
        the GIL to run one of the engine's SQL functions.  A node hung like
        that for good (`syncmesh chaos`, rolling migrations, under load):
        no session, no status, its write lock held.  So such a call fails
        at once, naming the thread, instead.
        """
        owner = self.owner_thread
        if owner is not None and owner != threading.get_ident():
            raise StoreError(
                f"{self.path}: the store's connection was used from thread"
                f" {threading.current_thread().name!r}, not the store thread: only the"
                " store thread may call SQLite (docs/adr/0005-one-store-thread.md)"
            )
        return self._connection

    def bind_thread(self) -> None:
        """From now on only the calling thread may use the connection."""
        self.owner_thread = threading.get_ident()

    def close(self) -> None:
        """Close the connection, from any thread (the node's store thread has ended)."""
        self.owner_thread = None
        self._connection.close()

    @contextmanager
    def transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT; a failure rolls back; sqlite3 errors leave as StoreError."""
        connection = self.connection
        try:
            connection.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction on {self.path}: {exc}") from exc
        # A write of ours keeps the in-memory hash trees in step (store.summary).
        tracked = mode == "IMMEDIATE" and self.sites is not None
        try:
            if tracked:
                self.summaries.begin(self.head())
            yield connection
            head = self.head() if tracked else 0
            connection.execute("COMMIT")
            if tracked:
                self.summaries.commit(head)
            self.rows_captured_total += self.rows_captured_uncommitted
            self.rows_captured_uncommitted = 0
        except BaseException as exc:
            # The frames of the failed operation may hold a cursor whose
            # statement failed mid-step: while the error is kept (a log, a
            # future, the node's link state), that statement stays active and
            # pins its read snapshot, so later captures see nothing new and
            # BEGIN IMMEDIATE fails with "database is locked" (issue 12,
            # defect 8).  Dropping the finished frames' locals resets it.
            traceback.clear_frames(exc.__traceback__)
            self.summaries.rollback()
            self.rows_captured_uncommitted = 0
            try:
                # SQLite may have rolled back already (RAISE(ROLLBACK), a full disk).
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed on %s", self.path)
            if self.sites is not None:
                self.sites.forget_uncommitted()
                # A renewed incarnation rolled back with the rest; a file that
                # cannot be read now is read again at the next ask.
                try:
                    self._read_identity()
                except sqlite3.Error:
                    self.identity = None
            # The clock may stay ahead (it never goes back); that is always safe.
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise

    def initialized(self) -> bool:
        row = self.connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_state'"
        ).fetchone()
        return row is not None

    def load(self) -> None:
        """Read the site map and the tracked tables; the trees are rebuilt on next use."""
        state = self.state()
        self.clock.restore(state["hlc"])
        self.sites = SiteMap(self.connection)
        self._read_identity()
        self.tables = {}
        for name, spec_json in self.connection.execute(
            "SELECT name, spec FROM _syncmesh_tables ORDER BY name"
        ):
            layout = TableLayout.from_json(name, spec_json)
            if name in self.unsynced:
                self.unsynced[name] = layout
            else:
                self.tables[name] = TableSql(layout, digests=self.digests)
        self.tables_version = state["tables_version"]
        # Tables (or their rows, by a backfill) may have changed: rebuild on next use.
        self.summaries.invalidate()

    def head(self) -> int:
        row = self.connection.execute("SELECT seq FROM _syncmesh_state").fetchone()
        return -1 if row is None else int(row[0])

    def state(self) -> dict[str, int]:
        row = self.connection.execute(
            "SELECT seq, hlc, tables_version, restore_floor FROM _syncmesh_state"
        ).fetchone()
        if row is None:
            raise NotInitialized(f"{self.path} is not initialised: run `syncmesh init`")
        return {"seq": row[0], "hlc": row[1], "tables_version": row[2], "restore_floor": row[3]}

    def require_init(self) -> SiteMap:
        if self.sites is None:
            raise NotInitialized(f"{self.path} is not initialised: run `syncmesh init`")
        return self.sites

    def catch_up_clock(self) -> None:
        """Another process (`syncmesh track`) may have stamped since we last looked."""
        self.clock.restore(self.state()["hlc"])

    def site_id(self) -> str:
        """Our site id, from memory (any thread may ask)."""
        return self._identity()[0]

    def incarnation(self) -> str:
        """Our incarnation, from memory (any thread may ask)."""
        return self._identity()[1]

    def note_incarnation(self, incarnation: str) -> None:
        """The caller wrote a new `_syncmesh_state.incarnation` (in its transaction)."""
        self.identity = (self._identity()[0], incarnation)

    def _identity(self) -> tuple[str, str]:
        self.require_init()
        if self.identity is None:
            self._read_identity()
        assert self.identity is not None
        return self.identity

    def _read_identity(self) -> None:
        row = self.connection.execute("SELECT site_id, incarnation FROM _syncmesh_state").fetchone()
        self.identity = None if row is None else (str(row[0]), str(row[1]))

    def vector(self) -> dict[str, int]:
        return dict(self.connection.execute("SELECT site_id, hlc FROM _syncmesh_vector"))

    def specs(self) -> list[TableSpec]:
        return [table.spec for table in self.tables.values()]
