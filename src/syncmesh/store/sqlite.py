"""The store: one SQLite connection, owned by one thread, and the node's HLC.

Every public method is one transaction.  Writes use BEGIN IMMEDIATE so that
the capture of pending local writes, the merge of a peer's batch, and the
peer's new cursor and version vector commit together or not at all: a crash
at any point loses nothing and applies nothing twice.

Not thread-safe: the node calls the store from a single worker thread.

This module owns the `Store` itself: opening, `init`, the site identity,
loading the tracked tables, transactions, capture, the peer cursors,
`apply_batch` and `status`.  Whole parts of the work live beside it and
take the `Store` as their first argument: `tracking` (track, schema
problems), `feed` (reading batches, splitting seq groups), `apply` (the
merge of a batch's rows), `vector` (the version vector, restore
detection) and `quarantine`; the records it returns are in `records`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from syncmesh.clock import HybridClock, SystemClock
from syncmesh.errors import NotInitialized, StoreError
from syncmesh.model import (
    ChangeBatch,
    SqlValue,
    TableSpec,
)
from syncmesh.schema import (
    BOOKKEEPING_DDL,
    CONFLICT_LEDGER_DDL,
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    PASTS_COLUMN,
    fingerprint,
)
from syncmesh.store import apply, conflicts, feed, quarantine, tracking, vector, verify
from syncmesh.store.records import ApplyResult, ConflictRecord, PeerCursor, StoreStatus, now_ms
from syncmesh.store.rows import CAPTURE_PASTS_FUNCTION, SiteMap, TableSql, capture_pasts
from syncmesh.store.summary import (
    FOLD_DIGEST_FUNCTION,
    KEY_HASH_FUNCTION,
    ROW_DIGEST_FUNCTION,
    Summaries,
    TableSummary,
    key_hash,
    leaf_of,
    shadow_digest,
)
from syncmesh.store.tracking import TrackProgress

log = logging.getLogger(__name__)

DRIFT_MS_MAX_DEFAULT = 60_000
BUSY_TIMEOUT_MS = 10_000
# Log entries stamped under one seq.  More than this at once (offline writes,
# a giant transaction) is split into several groups: peers may then see such a
# transaction in parts while it streams.
CAPTURE_ENTRIES_PER_SEQ = 20_000
CACHE_KIB = 65_536
CONFLICT_LEDGER_ROWS_MAX_DEFAULT = 10_000


DATABASE_FILE_MODE = 0o600


def _create_private(path: str | Path) -> None:
    """Create an empty file at `path` with mode 0600 if nothing is there yet."""
    name = str(path)
    if name == ":memory:" or name.startswith("file:") or not name:
        return
    try:
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc}") from exc
    os.close(descriptor)


class Store:
    """A syncmesh-managed SQLite file.

    Example:

        store = Store.open("app.db")
        store.init()
        store.track(["items"])
        store.capture()
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: str,
        clock: HybridClock,
        conflict_ledger_rows_max: int = CONFLICT_LEDGER_ROWS_MAX_DEFAULT,
        *,
        digests: bool = True,
    ) -> None:
        assert conflict_ledger_rows_max >= 0
        self._connection = connection
        # Keep the rows' digests and the hash trees (store.summary); off only
        # to measure what they cost (bench).
        self._digests = digests
        self._summaries = Summaries()
        self._path = path
        self._clock = clock
        # The ledger keeps the newest this many conflicts (docs/config.md).
        self.conflict_ledger_rows_max = conflict_ledger_rows_max
        self._tables: dict[str, TableSql] = {}
        self._sites: SiteMap | None = None
        self._tables_version = -1
        self._own_floor = 0
        self._run_start = 0
        self._schema_version = -1
        self._schema_problems: list[str] = []
        # Rows stamped by committed captures since this Store was opened; a
        # capture also runs inside apply_batch and retry_quarantine, and only
        # counts once its transaction commits.
        self._rows_captured_total = 0
        self._rows_captured_uncommitted = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: HybridClock | None = None,
        conflict_ledger_rows_max: int = CONFLICT_LEDGER_ROWS_MAX_DEFAULT,
        digests: bool = True,
    ) -> Store:
        """Open (or create) the file; call `init()` before anything else on a new file.

        A new file is created 0600 (only its owner may read it); SQLite gives
        its -wal and -shm files the same mode.  An existing file keeps its mode.
        """
        _create_private(path)
        try:
            connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            # Shadow rows are keyed like the user rows (often random keys), so a
            # batch touches pages all over the shadow table: keep them cached.
            connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            # The feed reads cells' pasts with SQLite's JSON functions.
            connection.execute("SELECT json_extract('{}', '$.p')")
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(
                f"cannot use {path}: this SQLite ({sqlite3.sqlite_version}) lacks the JSON"
                " functions (built in since 3.38; JSON1 before)"
            ) from exc
        # The capture upsert calls it for rows whose cells another site wrote.
        connection.create_function(CAPTURE_PASTS_FUNCTION, -1, capture_pasts, deterministic=True)
        clock = clock or HybridClock(SystemClock(), drift_ms_max=DRIFT_MS_MAX_DEFAULT)
        store = cls(connection, str(path), clock, conflict_ledger_rows_max, digests=digests)
        store._register_digest_functions()
        if store._initialized():
            store._load()
            store._upgrade()
            store._mark_run_start()
        return store

    def _register_digest_functions(self) -> None:
        """SQL functions of the hash tree (store.summary), on this Store's connection."""
        summaries = self._summaries

        def codes() -> Mapping[SqlValue, int]:
            return self._require_init().codes

        def fold_digest(
            table: str, old: int | None, guess: int | None, hashed_key: int, *fields: SqlValue
        ) -> int:
            # The capture upsert's digest of a row it changed; see TableSql._capture_sql.
            new = shadow_digest(hashed_key, fields[0], fields[1], fields[2], fields[3:], codes())
            summaries.note(table, leaf_of(hashed_key), (old or 0) ^ (guess or 0) ^ new)
            return new

        def row_digest(hashed_key: int, *fields: SqlValue) -> int:
            return shadow_digest(hashed_key, fields[0], fields[1], fields[2], fields[3:], codes())

        def hash_key(*key: SqlValue) -> int:
            return key_hash(key)

        connection = self._connection
        connection.create_function(FOLD_DIGEST_FUNCTION, -1, fold_digest)
        connection.create_function(ROW_DIGEST_FUNCTION, -1, row_digest)
        connection.create_function(KEY_HASH_FUNCTION, -1, hash_key, deterministic=True)

    def _upgrade(self) -> None:
        """Bring a file made by an older syncmesh up to date: the conflict ledger.

        Adds the ledger tables and the shadow tables' `pasts` column (empty:
        cells written before know nothing, which may report a conflict that
        a causal overwrite of such a cell was).
        """
        self._upgrade_digests()
        missing = self._missing_columns()
        ledger = self._connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_conflicts'"
        ).fetchone()
        if not missing and ledger is not None:
            return
        with self._transaction():
            for statement in CONFLICT_LEDGER_DDL.split(";"):
                if statement.strip():
                    self._connection.execute(statement)
            for table in self._missing_columns():
                self._connection.execute(
                    f"ALTER TABLE {table.shadow} ADD COLUMN {PASTS_COLUMN} TEXT"
                )
        log.info("%s: added the conflict ledger to a file made by an older syncmesh", self._path)

    def _upgrade_digests(self) -> None:
        """Add the hash tree's columns to shadow tables made before it, and fill them."""
        stale = [
            table
            for table in self._tables.values()
            if DIGEST_COLUMN
            not in {
                row[1] for row in self._connection.execute(f"PRAGMA table_info({table.shadow})")
            }
        ]
        if not stale:
            return
        with self._transaction():
            for table in stale:
                for column in (KEY_HASH_COLUMN, DIGEST_COLUMN):
                    self._connection.execute(
                        f"ALTER TABLE {table.shadow} ADD COLUMN {column} INTEGER"
                    )
                self._connection.execute(table.fill_digests_sql)
        log.info("%s: added row digests (for syncmesh verify) to %d tables", self._path, len(stale))

    def _missing_columns(self) -> list[TableSql]:
        """The tracked tables whose shadow table lacks the `pasts` column."""
        return [
            table
            for table in self._tables.values()
            if PASTS_COLUMN
            not in {
                row[1] for row in self._connection.execute(f"PRAGMA table_info({table.shadow})")
            }
        ]

    def _mark_run_start(self) -> None:
        vector.mark_run_start(self)

    def close(self) -> None:
        self._connection.close()

    @property
    def clock(self) -> HybridClock:
        return self._clock

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for tests and read-only inspection."""
        return self._connection

    # -- set-up ---------------------------------------------------------------

    def _initialized(self) -> bool:
        row = self._connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_state'"
        ).fetchone()
        return row is not None

    def init(self) -> str:
        """Create the bookkeeping tables and this node's site id; idempotent.

        Returns the site id.
        """
        with self._transaction():
            for statement in (BOOKKEEPING_DDL + CONFLICT_LEDGER_DDL).split(";"):
                if statement.strip():
                    self._connection.execute(statement)
            row = self._connection.execute("SELECT site_id FROM _syncmesh_state").fetchone()
            if row is None:
                site_id = uuid.uuid4().hex
                self._connection.execute(
                    "INSERT INTO _syncmesh_state VALUES (1, ?, ?, 0, 0, 0, 0, 0)",
                    (site_id, uuid.uuid4().hex),
                )
                self._connection.execute(
                    "INSERT INTO _syncmesh_sites (ordinal, site_id) VALUES (0, ?)", (site_id,)
                )
        self._load()
        if self._run_start == 0:
            self._mark_run_start()
        return self.site_id

    def new_site_id(self) -> str:
        """Give this file a new identity (for a copy of another node's file).

        The stamps of writes made under the old identity keep naming the old
        site: they are that site's writes, held here as copies.
        """
        self._require_init()
        new_site = uuid.uuid4().hex
        with self._transaction():
            old_site = self.site_id
            cursor = self._connection.execute(
                "INSERT INTO _syncmesh_sites (site_id) VALUES (?)", (new_site + "-tmp",)
            )
            moved = int(cursor.lastrowid or 0)
            for table in self._tables.values():
                sets = ["cl_site = CASE WHEN cl_site = 0 THEN :moved ELSE cl_site END"]
                sets += [
                    f"s{index} = CASE WHEN s{index} = 0 THEN :moved ELSE s{index} END"
                    for index in range(len(table.values))
                ]
                self._connection.execute(
                    f"UPDATE {table.shadow} SET {', '.join(sets)}", {"moved": moved}
                )
                # Pasts and knowledge name sites by ordinal too.
                table.rename_ordinal(self._connection, 0, moved)
            self._connection.execute(
                "UPDATE _syncmesh_sites SET site_id = ? WHERE ordinal = 0", (new_site,)
            )
            self._connection.execute(
                "UPDATE _syncmesh_sites SET site_id = ? WHERE ordinal = ?", (old_site, moved)
            )
            self._connection.execute(
                "UPDATE _syncmesh_state SET site_id = ?, incarnation = ?",
                (new_site, uuid.uuid4().hex),
            )
        self._load()
        return new_site

    def _load(self) -> None:
        state = self._state()
        self._clock.restore(state["hlc"])
        self._sites = SiteMap(self._connection)
        self._tables = {}
        for name, spec_json in self._connection.execute(
            "SELECT name, spec FROM _syncmesh_tables ORDER BY name"
        ):
            decoded = json.loads(spec_json)
            spec = TableSpec(
                name, tuple(decoded["columns"]), tuple(decoded["types"]), tuple(decoded["pk"])
            )
            self._tables[name] = TableSql(spec, digests=self._digests)
        self._tables_version = state["tables_version"]
        # Tables (or their rows, by a backfill) may have changed: rebuild on next use.
        self._summaries.invalidate()

    def _head(self) -> int:
        row = self._connection.execute("SELECT seq FROM _syncmesh_state").fetchone()
        return -1 if row is None else int(row[0])

    def _state(self) -> dict[str, int]:
        row = self._connection.execute(
            "SELECT seq, hlc, tables_version, restore_floor FROM _syncmesh_state"
        ).fetchone()
        if row is None:
            raise NotInitialized(f"{self._path} is not initialised: run `syncmesh init`")
        return {"seq": row[0], "hlc": row[1], "tables_version": row[2], "restore_floor": row[3]}

    def _require_init(self) -> SiteMap:
        if self._sites is None:
            raise NotInitialized(f"{self._path} is not initialised: run `syncmesh init`")
        return self._sites

    @property
    def site_id(self) -> str:
        self._require_init()
        return str(self._connection.execute("SELECT site_id FROM _syncmesh_state").fetchone()[0])

    @property
    def incarnation(self) -> str:
        self._require_init()
        return str(
            self._connection.execute("SELECT incarnation FROM _syncmesh_state").fetchone()[0]
        )

    def specs(self) -> list[TableSpec]:
        return [table.spec for table in self._tables.values()]

    def fingerprint(self) -> str:
        return fingerprint(self.specs())

    def reload_if_changed(self) -> bool:
        """Re-read the tracked tables if `track` ran in another process; True if so."""
        self._require_init()
        if self._state()["tables_version"] == self._tables_version:
            return False
        self._load()
        return True

    def schema_problems(self) -> list[str]:
        """Tracked tables altered since they were tracked (ALTER TABLE), in words.

        Cheap when nothing changed (one PRAGMA).  Syncing goes on for the
        columns that were tracked; a column added later is not synced.
        """
        return tracking.schema_problems(self)

    def track(self, names: list[str], progress: TrackProgress | None = None) -> list[str]:
        """Start syncing `names`; existing rows join the feed.  Returns warnings.

        Idempotent for a table tracked with the same definition.  Refuses
        (SchemaError) a table without a primary key, or whose definition
        changed since it was tracked.  `progress(table, rows_done,
        rows_total)` is called as existing rows join the feed.
        """
        return tracking.track(self, names, progress)

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT; a failure rolls back; sqlite3 errors leave as StoreError."""
        try:
            self._connection.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction on {self._path}: {exc}") from exc
        # A write of ours keeps the in-memory hash trees in step (store.summary).
        tracked = mode == "IMMEDIATE" and self._sites is not None
        try:
            if tracked:
                self._summaries.begin(self._head())
            yield self._connection
            head = self._head() if tracked else 0
            self._connection.execute("COMMIT")
            if tracked:
                self._summaries.commit(head)
            self._rows_captured_total += self._rows_captured_uncommitted
            self._rows_captured_uncommitted = 0
        except BaseException as exc:
            self._summaries.rollback()
            self._rows_captured_uncommitted = 0
            try:
                # SQLite may have rolled back already (RAISE(ROLLBACK), a full disk).
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed on %s", self._path)
            if self._sites is not None:
                self._sites.forget_uncommitted()
            # The clock may stay ahead (it never goes back); that is always safe.
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self._path}: {exc}") from exc
            raise

    # -- capture ----------------------------------------------------------------

    def capture(self) -> int:
        """Stamp every pending local write (one HLC, one seq); returns rows stamped."""
        self._require_init()
        if not self._has_pending():
            return 0
        with self._transaction():
            return self._capture_pending()

    @property
    def rows_captured_total(self) -> int:
        """Rows stamped by committed captures of this Store, whichever call ran them."""
        return self._rows_captured_total

    def _has_pending(self) -> bool:
        return any(
            self._connection.execute(table.pending_sql).fetchone() is not None
            for table in self._tables.values()
        )

    def _catch_up_clock(self) -> None:
        """Another process (`syncmesh track`) may have stamped since we last looked."""
        self._clock.restore(self._state()["hlc"])

    def _capture_pending(self) -> int:
        pending = [
            table
            for table in self._tables.values()
            if self._connection.execute(table.pending_sql).fetchone() is not None
        ]
        if not pending:
            return 0
        # The stamp doubles as the seq: a seq is never reused, not even by a
        # file restored from an old copy (its clock resumes past the copy's
        # stamps), so a peer's stale cursor can never skip new changes.
        self._catch_up_clock()
        own = self._require_init().site(0)
        stamped = 0
        logged = sum(self._connection.execute(t.log_count_sql).fetchone()[0] for t in pending)
        if logged <= CAPTURE_ENTRIES_PER_SEQ:
            # The normal case: everything logged is one seq group, so every
            # local transaction in it reaches peers whole.
            hlc = self._clock.tick()
            for table in pending:
                stamped += table.capture(self._connection, hlc, hlc, -1, own, self._summaries.note)
        else:
            # A huge backlog (writes made while the node was down, or one giant
            # transaction) is split, or it would make one batch too big to send.
            hlc = self._clock.last
            for table in pending:
                while True:
                    hlc = self._clock.tick()
                    count = table.capture(
                        self._connection,
                        hlc,
                        hlc,
                        CAPTURE_ENTRIES_PER_SEQ,
                        own,
                        self._summaries.note,
                    )
                    if count == 0:
                        break
                    stamped += count
        self._connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (hlc, hlc))
        self._set_own_vector(hlc)
        self._rows_captured_uncommitted += stamped
        return stamped

    def _set_own_vector(self, hlc: int) -> None:
        vector.set_own(self, hlc)

    # -- the change feed --------------------------------------------------------

    def head_seq(self) -> int:
        self._require_init()
        return self._state()["seq"]

    def restoring(self) -> bool:
        """True while own writes lost by a restore from an old copy are being recovered."""
        self._require_init()
        return self._state()["restore_floor"] > 0

    def vector(self) -> dict[str, int]:
        return dict(self._connection.execute("SELECT site_id, hlc FROM _syncmesh_vector"))

    def read_batch(
        self, from_seq: int, receiver_vector: dict[str, int], rows_max: int
    ) -> ChangeBatch:
        """The feed after `from_seq`, at most about `rows_max` rows, whole seq groups.

        Cells the receiver already holds (by its version vector) are left out.
        The batch carries our vector only if it reaches our head.
        """
        return feed.read_batch(self, from_seq, receiver_vector, rows_max)

    def feed_rows_after(self, seqs: list[int], rows_max: int) -> list[int]:
        """Per seq of `seqs`: how many rows of the feed come after it, at most `rows_max`.

        A peer's lag in changes: the rows after the position it acknowledged
        (some may be left out when sent, as the peer holds them already).
        One read snapshot for all peers; the cap keeps a poll of a far
        behind peer as cheap as of a close one (the seq index is walked at
        most `rows_max` rows per table).
        """
        self._require_init()
        assert rows_max > 0
        with self._transaction("DEFERRED"):
            counts = []
            for seq in seqs:
                total = 0
                for table in self._tables.values():
                    if total < rows_max:
                        (count,) = self._connection.execute(
                            table.rows_after_sql, (seq, rows_max - total)
                        ).fetchone()
                        total += int(count)
                counts.append(total)
        return counts

    def split_seq_group(self, seq: int) -> bool:
        """Move the second half of seq group `seq` to a new seq; False if it has one row.

        For a group too big for one frame (wide rows written while the node
        was down, captured together).  Moving rows to a later seq is what a
        new write to them would do, so every cursor stays valid; the price is
        that peers may see that group's writes in two steps.
        """
        return feed.split_seq_group(self, seq)

    # -- applying a peer's batch ------------------------------------------------

    def peer_cursor(self, site_id: str) -> PeerCursor | None:
        row = self._connection.execute(
            "SELECT site_id, incarnation, cursor, head_seq, address, applied_rows,"
            " last_applied_ms FROM _syncmesh_peers WHERE site_id = ?",
            (site_id,),
        ).fetchone()
        return None if row is None else PeerCursor(*row)

    def reset_peer_cursor(
        self, site_id: str, incarnation: str, head_seq: int, address: str
    ) -> None:
        """Start reading the peer's feed from 0 (a new peer, or it was restored)."""
        with self._transaction():
            self._connection.execute(
                "INSERT INTO _syncmesh_peers (site_id, incarnation, cursor, head_seq, address)"
                " VALUES (?, ?, 0, ?, ?) ON CONFLICT (site_id) DO UPDATE SET"
                " incarnation = excluded.incarnation, cursor = 0,"
                " head_seq = excluded.head_seq, address = excluded.address",
                (site_id, incarnation, head_seq, address),
            )

    def apply_batch(self, peer_site_id: str, batch: ChangeBatch) -> ApplyResult:
        """Merge a peer's batch and advance its cursor and our vector, atomically.

        Raises StoreError if the batch does not continue the stored cursor
        (a gap or a replay of an old slice); nothing is applied then.
        """
        sites = self._require_init()
        with self._transaction():
            peer = self.peer_cursor(peer_site_id)
            if (
                peer is None
                or peer.incarnation != batch.incarnation
                or peer.cursor != batch.from_seq
            ):
                raise StoreError(
                    f"batch ({batch.from_seq}, {batch.to_seq}] from {peer_site_id} does not"
                    f" continue our cursor {None if peer is None else peer.cursor}"
                )
            self._capture_pending()
            result = self._merge_rows(peer_site_id, batch, sites)
            self._connection.execute(
                "UPDATE _syncmesh_peers SET cursor = ?, head_seq = ?,"
                " applied_rows = applied_rows + ?, last_applied_ms = ? WHERE site_id = ?",
                (batch.to_seq, batch.head_seq, result.applied_rows, now_ms(), peer_site_id),
            )
            if batch.vector is not None:
                self._merge_vector(batch.vector)
            self._connection.execute(
                "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (self._clock.last,)
            )
        return result

    def _merge_rows(self, origin: str, batch: ChangeBatch, sites: SiteMap) -> ApplyResult:
        """Merge the rows of `batch` into the tables (inside the caller's transaction)."""
        return apply.merge_rows(self, origin, batch, sites)

    # -- version vector ---------------------------------------------------------

    def _merge_vector(self, sender_vector: dict[str, int]) -> None:
        vector.merge(self, sender_vector)

    def note_peer_vector(self, peer_vector: dict[str, int]) -> bool:
        """Detect that this file was restored from an old copy; True if detected now.

        A peer holding own-site writes beyond what our vector claims means we
        lost writes that we made (the file is older than our history).  Then:
        our clock jumps past them (new writes must win over the lost ones),
        our vector stops claiming own writes until peers return them, and a
        new incarnation tells every peer to re-read our feed from the start.
        """
        return vector.note_peer(self, peer_vector)

    # -- quarantine -------------------------------------------------------------

    def retry_quarantine(self) -> int:
        """Try every quarantined row again through the merge; returns rows resolved."""
        return quarantine.retry(self)

    def quarantine(self) -> list[dict[str, object]]:
        return quarantine.listing(self)

    def drop_quarantined(self, ids: list[int]) -> int:
        """Delete quarantined rows for good; returns how many existed."""
        return quarantine.drop(self, ids)

    # -- verify and repair (store.verify, store.summary) ---------------------------

    def summaries(self, tables: list[str]) -> dict[str, TableSummary]:
        """The hash trees of `tables` (copies), as of one moment.

        Kept up to date by this Store's own writes; rebuilt by one scan of
        the shadow tables when another process wrote the file since.
        """
        return verify.summaries(self, tables)

    def deep_summary(self, table: str) -> tuple[TableSummary, int]:
        """The tree of `table` with values, from a scan; and how many stored digests it fixed."""
        return verify.deep_summary(self, table)

    def deep_summary_step(
        self, table: str, after: tuple[SqlValue, ...] | None, rows_max: int
    ) -> tuple[TableSummary, tuple[SqlValue, ...] | None, int]:
        """Part of `deep_summary`: rows after key `after`; (tree, last key or None, fixed)."""
        return verify.deep_summary_step(self, table, after, rows_max)

    def leaf_digests(
        self, table: str, leaves: list[int], *, deep: bool = False
    ) -> dict[tuple[SqlValue, ...], int]:
        """Key -> digest of every row of `table` in `leaves`."""
        return verify.leaf_digests(self, table, leaves, deep)

    def key_digests(
        self, table: str, keys: list[tuple[SqlValue, ...]], *, deep: bool = False
    ) -> list[int | None]:
        """The digest of each key of `table` (None: no row here)."""
        return verify.key_digests(self, table, keys, deep)

    def rows_of(self, table: str, keys: list[tuple[SqlValue, ...]]) -> ChangeBatch:
        """These rows' whole states, as a batch another node can merge (repair)."""
        return verify.rows_of(self, table, keys)

    def merge_repair_rows(self, origin: str, batch: ChangeBatch) -> ApplyResult:
        """Merge rows a peer sent for repair (from `rows_of`): no cursor moves."""
        return verify.merge_rows(self, origin, batch)

    def restamp(self, table: str, keys: list[tuple[SqlValue, ...]]) -> int:
        """Stamp these live rows anew as local writes (their values win); returns how many."""
        return verify.restamp(self, table, keys)

    # -- conflicts --------------------------------------------------------------

    def conflicts(
        self, *, table: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[ConflictRecord]:
        """The newest `limit` recorded conflicts (newest first), of `table`, since `since_ms`."""
        self._require_init()
        assert limit >= 0
        with self._transaction("DEFERRED"):
            return conflicts.listing(self, table=table, since_ms=since_ms, limit=limit)

    # -- status -----------------------------------------------------------------

    def status(self) -> StoreStatus:
        self._require_init()
        with self._transaction("DEFERRED"):
            state = self._state()
            tables = {}
            for name, table in self._tables.items():
                tables[name] = int(
                    self._connection.execute(f"SELECT count(*) FROM {table.table}").fetchone()[0]
                )
            peers = [
                PeerCursor(*row)
                for row in self._connection.execute(
                    "SELECT site_id, incarnation, cursor, head_seq, address, applied_rows,"
                    " last_applied_ms FROM _syncmesh_peers ORDER BY site_id"
                )
            ]
            quarantined = int(
                self._connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[0]
            )
            return StoreStatus(
                self.site_id,
                self.incarnation,
                state["seq"],
                state["hlc"],
                self.fingerprint(),
                tables,
                self.vector(),
                peers,
                quarantined,
                state["restore_floor"],
                self._path,
                self.schema_problems(),
                conflicts.totals(self),
            )
