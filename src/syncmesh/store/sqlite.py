"""The store: one SQLite connection, owned by one thread, and the node's HLC.

Every public method is one transaction.  Writes use BEGIN IMMEDIATE so that
the capture of pending local writes, the merge of a peer's batch, and the
peer's new cursor and version vector commit together or not at all: a crash
at any point loses nothing and applies nothing twice.

Not thread-safe: the node calls the store from a single worker thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from syncmesh.clock import COUNTER_MAX, HybridClock, SystemClock, pack, wall_ms_of
from syncmesh.errors import ClockDriftError, NotInitialized, SchemaError, StoreError
from syncmesh.merge import join_rows, missing_rows
from syncmesh.model import (
    ChangeBatch,
    RowChange,
    RowState,
    SqlValue,
    Stamp,
    TableRows,
    TableSpec,
    row_from_plain,
    row_to_plain,
    state_of_row,
)
from syncmesh.schema import (
    BOOKKEEPING_DDL,
    capture_triggers,
    fingerprint,
    log_ddl,
    read_table_spec,
    shadow_ddl,
    table_warnings,
    unique_column_sets,
)
from syncmesh.store.rows import SiteMap, TableSql, execute_each

log = logging.getLogger(__name__)

DRIFT_MS_MAX_DEFAULT = 60_000
BACKFILL_ROWS_PER_SEQ = 1_000  # existing rows join the feed in groups of this size
BUSY_TIMEOUT_MS = 10_000
# Log entries stamped under one seq.  More than this at once (offline writes,
# a giant transaction) is split into several groups: peers may then see such a
# transaction in parts while it streams.
CAPTURE_ENTRIES_PER_SEQ = 20_000
CACHE_KIB = 65_536


@dataclass(frozen=True, slots=True)
class PeerCursor:
    site_id: str
    incarnation: str
    cursor: int
    head_seq: int
    address: str
    applied_rows: int
    last_applied_ms: int


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied_rows: int  # rows whose merged state differed from ours
    quarantined_rows: int
    drift_refused_rows: int
    seq: int  # our head after the batch


@dataclass(frozen=True, slots=True)
class StoreStatus:
    site_id: str
    incarnation: str
    seq: int
    hlc: int
    fingerprint: str
    tables: dict[str, int]
    vector: dict[str, int]
    peers: list[PeerCursor]
    quarantined_rows: int
    restore_floor: int
    path: str = field(default="")
    schema_problems: list[str] = field(default_factory=list)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """A syncmesh-managed SQLite file.

    Example:

        store = Store.open("app.db")
        store.init()
        store.track(["items"])
        store.capture()
    """

    def __init__(self, connection: sqlite3.Connection, path: str, clock: HybridClock) -> None:
        self._connection = connection
        self._path = path
        self._clock = clock
        self._tables: dict[str, TableSql] = {}
        self._sites: SiteMap | None = None
        self._tables_version = -1
        self._own_floor = 0
        self._run_start = 0
        self._schema_version = -1
        self._schema_problems: list[str] = []

    @classmethod
    def open(cls, path: str | Path, *, clock: HybridClock | None = None) -> Store:
        """Open (or create) the file; call `init()` before anything else on a new file."""
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
        clock = clock or HybridClock(SystemClock(), drift_ms_max=DRIFT_MS_MAX_DEFAULT)
        store = cls(connection, str(path), clock)
        if store._initialized():
            store._load()
            store._mark_run_start()
        return store

    def _mark_run_start(self) -> None:
        """Remember where this run's own stamps begin (restore detection).

        Own writes of earlier runs are stamped at most `_own_floor` (our vector
        entry as the file holds it); this run's at least `_run_start`, because
        the clock is moved there now.  A peer claiming own writes between the
        two means the file lost writes it once made: it is an old copy.
        """
        self._own_floor = self.vector().get(self.site_id, 0)
        now_ms = max(self._clock.physical_ms(), wall_ms_of(self._clock.last))
        self._run_start = pack(now_ms, 0)
        self._clock.restore(self._run_start)

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
            for statement in BOOKKEEPING_DDL.split(";"):
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
            self._tables[name] = TableSql(spec)
        self._tables_version = state["tables_version"]

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
        self._require_init()
        version = int(self._connection.execute("PRAGMA schema_version").fetchone()[0])
        if version == self._schema_version:
            return list(self._schema_problems)
        problems = []
        for name, table in self._tables.items():
            try:
                now = read_table_spec(self._connection, name)
            except SchemaError as exc:
                problems.append(f"table {name!r} can no longer be synced: {exc}")
                continue
            if now.columns != table.spec.columns or now.pk != table.spec.pk:
                added = [c for c in now.columns if c not in table.spec.columns]
                gone = [c for c in table.spec.columns if c not in now.columns]
                problems.append(
                    f"table {name!r} was altered after it was tracked (columns added: {added},"
                    f" removed or renamed: {gone}); only the tracked columns are synced, and"
                    " changing a tracked table's columns is not supported yet"
                )
        self._schema_version, self._schema_problems = version, problems
        return list(problems)

    def track(self, names: list[str]) -> list[str]:
        """Start syncing `names`; existing rows join the feed.  Returns warnings.

        Idempotent for a table tracked with the same definition.  Refuses
        (SchemaError) a table without a primary key, or whose definition
        changed since it was tracked.
        """
        self._require_init()
        warnings: list[str] = []
        with self._transaction():
            for name in names:
                spec = read_table_spec(self._connection, name)
                existing = self._tables.get(name)
                if existing is not None:
                    if existing.spec != spec:
                        raise SchemaError(
                            f"table {name!r} changed since it was tracked; changing a tracked"
                            " table's columns is not supported yet"
                        )
                    continue
                warnings.extend(table_warnings(self._connection, spec))
                self._create_tracking(spec)
            self._connection.execute(
                "UPDATE _syncmesh_state SET tables_version = tables_version + 1"
            )
        self._load()
        return warnings

    def _create_tracking(self, spec: TableSpec) -> None:
        unique = unique_column_sets(self._connection, spec.name)
        for statement in [*shadow_ddl(spec), log_ddl(spec), *capture_triggers(spec, unique)]:
            self._connection.execute(statement)
        table = TableSql(spec)
        # Seqs are HLC values (see _capture_pending); the backfill takes one per chunk.
        self._catch_up_clock()
        hlc = self._clock.tick()
        cursor = self._connection.execute(
            table.backfill_sql, {"hlc": hlc, "base": hlc, "chunk": BACKFILL_ROWS_PER_SEQ}
        )
        rows = max(cursor.rowcount, 0)
        groups = (rows + BACKFILL_ROWS_PER_SEQ - 1) // BACKFILL_ROWS_PER_SEQ
        head = hlc + max(groups - 1, 0)
        self._clock.restore(head)
        self._connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (head, head))
        self._set_own_vector(hlc)
        self._connection.execute(
            "INSERT INTO _syncmesh_tables (name, spec) VALUES (?, ?)",
            (
                spec.name,
                json.dumps({"columns": spec.columns, "types": spec.declared_types, "pk": spec.pk}),
            ),
        )
        log.info("tracking table %s (%d existing rows)", spec.name, rows)

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT; a failure rolls back; sqlite3 errors leave as StoreError."""
        try:
            self._connection.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction on {self._path}: {exc}") from exc
        try:
            yield self._connection
            self._connection.execute("COMMIT")
        except BaseException as exc:
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
        stamped = 0
        logged = sum(self._connection.execute(t.log_count_sql).fetchone()[0] for t in pending)
        if logged <= CAPTURE_ENTRIES_PER_SEQ:
            # The normal case: everything logged is one seq group, so every
            # local transaction in it reaches peers whole.
            hlc = self._clock.tick()
            for table in pending:
                stamped += table.capture(self._connection, hlc, hlc)
        else:
            # A huge backlog (writes made while the node was down, or one giant
            # transaction) is split, or it would make one batch too big to send.
            hlc = self._clock.last
            for table in pending:
                while True:
                    hlc = self._clock.tick()
                    count = table.capture(self._connection, hlc, hlc, CAPTURE_ENTRIES_PER_SEQ)
                    if count == 0:
                        break
                    stamped += count
        self._connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (hlc, hlc))
        self._set_own_vector(hlc)
        return stamped

    def _set_own_vector(self, hlc: int) -> None:
        """V[self] follows our clock, unless a restore left own writes missing."""
        if self._state()["restore_floor"] > 0:
            return
        self._connection.execute(
            "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES"
            " ((SELECT site_id FROM _syncmesh_state), ?)"
            " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
            (hlc,),
        )

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
        sites = self._require_init()
        assert rows_max > 0
        # A shared lock only: the application's writers never wait for a read.
        # A row with logged, uncaptured writes has a new value under old stamps:
        # it is held back (it ships after its capture, under a new seq), and
        # then the batch carries no vector, which would claim what it held back.
        with self._transaction("DEFERRED"):
            head = self._state()["seq"]
            incarnation = self.incarnation
            if from_seq >= head:
                vector = self.vector() if from_seq == head else None
                return ChangeBatch(incarnation, from_seq, from_seq, head, vector, (), ())
            upper = self._batch_upper(from_seq, head, rows_max)
            all_sites = sites.all_sites()
            bounds = {
                ordinal: receiver_vector[site]
                for ordinal, site in enumerate(all_sites)
                if site in receiver_vector
            }
            tables: list[TableRows] = []
            held_back = False
            for table in self._tables.values():
                shape = table.shape
                sql, params = table.feed_uncovered_sql(bounds)
                read = [
                    list(row) for row in self._connection.execute(sql, (from_seq, upper, *params))
                ]
                pending = table.pending_keys(self._connection)
                if pending:
                    unchanged = [
                        row for row in read if tuple(row[: shape.key_count]) not in pending
                    ]
                    held_back = held_back or len(unchanged) < len(read)
                    read = unchanged
                kept = missing_rows(
                    TableRows(shape.table, shape.columns, shape.key_count, read),
                    all_sites,
                    receiver_vector,
                )
                if kept:
                    tables.append(TableRows(shape.table, shape.columns, shape.key_count, kept))
            vector = self.vector() if upper == head and not held_back else None
        # Site "indexes" in the rows are our ordinals, and all_sites is by ordinal.
        return ChangeBatch(incarnation, from_seq, upper, head, vector, all_sites, tuple(tables))

    def split_seq_group(self, seq: int) -> bool:
        """Move the second half of seq group `seq` to a new seq; False if it has one row.

        For a group too big for one frame (wide rows written while the node
        was down, captured together).  Moving rows to a later seq is what a
        new write to them would do, so every cursor stays valid; the price is
        that peers may see that group's writes in two steps.
        """
        self._require_init()
        with self._transaction():
            keyed: list[tuple[TableSql, tuple[SqlValue, ...]]] = []
            for table in self._tables.values():
                keyed.extend(
                    (table, tuple(row))
                    for row in self._connection.execute(table.group_keys_sql, (seq,))
                )
            if len(keyed) <= 1:
                return False
            new_seq = self._clock.tick()
            for table, key in keyed[len(keyed) // 2 :]:
                self._connection.execute(table.move_sql, (new_seq, *key))
            self._connection.execute(
                "UPDATE _syncmesh_state SET seq = ?, hlc = ?", (new_seq, new_seq)
            )
        log.info("split seq group %d (%d rows) for the frame limit", seq, len(keyed))
        return True

    def _batch_upper(self, from_seq: int, head: int, rows_max: int) -> int:
        seqs: list[int] = []
        for table in self._tables.values():
            seqs.extend(
                seq for (seq,) in self._connection.execute(table.seqs_sql, (from_seq, rows_max))
            )
        if len(seqs) < rows_max:
            return head
        seqs.sort()
        # Whole seq groups only: a group is one local transaction (or one applied batch).
        return seqs[rows_max - 1]

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
                (batch.to_seq, batch.head_seq, result.applied_rows, _now_ms(), peer_site_id),
            )
            if batch.vector is not None:
                self._merge_vector(batch.vector)
            self._connection.execute(
                "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (self._clock.last,)
            )
        return result

    def _merge_rows(self, origin: str, batch: ChangeBatch, sites: SiteMap) -> ApplyResult:
        """Merge the rows of `batch` into the tables (inside the caller's transaction)."""
        self._connection.execute("UPDATE _syncmesh_state SET applying = 1")
        self._catch_up_clock()
        seq = self._clock.tick()  # a fresh seq for the merged rows (see _capture_pending)
        ordinals = [sites.ordinal(site) for site in batch.sites]
        applied = quarantined = refused = 0
        for incoming in batch.tables:
            table = self._tables.get(incoming.table)
            problem = None
            if table is None:
                problem = f"table {incoming.table!r} is not tracked here"
            elif incoming.columns != table.values or incoming.key_count != table.key_count:
                problem = (
                    f"table {incoming.table!r}: the peer's columns {list(incoming.columns)}"
                    f" differ from ours {list(table.values)}"
                )
            if problem is not None:
                for row in incoming.rows:
                    self._quarantine(_change_of(incoming, row, batch.sites), origin, problem)
                quarantined += len(incoming.rows)
                continue
            assert table is not None
            counts = self._merge_table(table, incoming, batch.sites, ordinals, origin, seq, sites)
            applied += counts[0]
            quarantined += counts[1]
            refused += counts[2]
        self._connection.execute("UPDATE _syncmesh_state SET applying = 0")
        if applied:
            # V[self] does not move here: it speaks of our own writes only.
            self._connection.execute("UPDATE _syncmesh_state SET seq = ?", (seq,))
        return ApplyResult(applied, quarantined, refused, self._state()["seq"])

    def _merge_table(
        self,
        table: TableSql,
        incoming: TableRows,
        batch_sites: tuple[str, ...],
        ordinals: list[int],
        origin: str,
        seq: int,
        sites: SiteMap,
    ) -> tuple[int, int, int]:
        """Merge one table's rows; returns (applied, quarantined, refused for drift)."""
        keys = table.key_count
        pks = [tuple(row[:keys]) for row in incoming.rows]
        on_disk = table.load(self._connection, pks)
        local_sites = sites.all_sites()
        bound = self._drift_bound()
        # Per key: the merged result (a state, or the rows of a new key) and
        # the incoming rows that made it.
        merged_by_key: dict[tuple[SqlValue, ...], _Merged] = {}
        refused = 0
        observed = 0
        for pk, row in zip(pks, incoming.rows, strict=True):
            top = max((int(hlc) for hlc in row[keys + 1 :: 3] if hlc is not None), default=0)
            if top > bound:
                change = _change_of(incoming, row, batch_sites)
                self._quarantine(change, origin, _drift_reason(change, self._clock))
                refused += 1
                continue
            earlier = merged_by_key.get(pk)
            if earlier is None and pk not in on_disk:
                # Fast path, the common case of a backlog: joined with nothing,
                # the incoming row is the result; copy it out positionally.
                shadow, user = table.fast_rows(row, ordinals, seq)
                merged_by_key[pk] = _Merged(None, shadow, user, [row])
                observed = max(observed, top)
                continue
            if earlier is not None:
                before = earlier.state_or(incoming, batch_sites)
            else:
                before = state_of_row(table.shape, on_disk[pk], local_sites)
            merged = join_rows(before, state_of_row(incoming, row, batch_sites))
            if merged == before:
                continue  # already held, or superseded: idempotent redelivery
            observed = max(observed, top)
            contributors = [*earlier.rows, row] if earlier is not None else [row]
            merged_by_key[pk] = _Merged(merged, None, None, contributors)
        if observed:
            self._clock.observe(int(observed), origin)
        # One user-table write per key, from its final state: a key that came
        # twice (deleted, then re-inserted) must not be upserted and then deleted.
        upserts: list[tuple[tuple[SqlValue, ...], list[SqlValue]]] = []
        deletes: list[tuple[tuple[SqlValue, ...], list[SqlValue]]] = []
        for pk, result in merged_by_key.items():
            user = result.user_row(table, pk)
            if user is not None:
                upserts.append((pk, user))
            elif pk in on_disk and on_disk[pk][keys] % 2 == 1:  # type: ignore[operator]
                deletes.append((pk, list(pk)))
        failed: set[tuple[SqlValue, ...]] = set()
        quarantined = 0
        # Deletes first: a key change (or a delete and an insert in one
        # transaction) may hand a UNIQUE value from the old row to the new one.
        for group, sql in ((deletes, table.delete_sql), (upserts, table.upsert_sql)):
            for index, error in execute_each(self._connection, sql, [row for _pk, row in group]):
                pk = group[index][0]
                failed.add(pk)
                for row in merged_by_key[pk].rows:
                    change = _change_of(incoming, row, batch_sites)
                    self._quarantine(change, origin, f"constraint failed: {error}")
                    quarantined += 1
        shadow_rows = [
            result.shadow_row(table, pk, seq, sites)
            for pk, result in merged_by_key.items()
            if pk not in failed
        ]
        self._connection.executemany(table.shadow_write_sql, shadow_rows)
        return len(shadow_rows), quarantined, refused

    # -- version vector ---------------------------------------------------------

    def _merge_vector(self, sender_vector: dict[str, int]) -> None:
        """V = max(V, sender's V), capped below changes we hold only in quarantine."""
        caps: dict[str, int] = {}
        for (stamps_json,) in self._connection.execute(
            "SELECT min_stamps FROM _syncmesh_quarantine"
        ):
            for site, hlc in json.loads(stamps_json).items():
                caps[site] = min(caps.get(site, hlc - 1), hlc - 1)
        own = self.site_id
        for site, hlc in sender_vector.items():
            # A claim beyond the drift limit is clamped to it: every write stamped
            # later was quarantined, not applied, and the cap keeps us below it.
            capped = min(hlc, caps.get(site, hlc), self._drift_bound())
            self._connection.execute(
                "INSERT INTO _syncmesh_vector (site_id, hlc) VALUES (?, ?)"
                " ON CONFLICT (site_id) DO UPDATE SET hlc = max(hlc, excluded.hlc)",
                (site, capped),
            )
        floor = self._state()["restore_floor"]
        if floor > 0 and self.vector().get(own, 0) >= floor:
            log.warning("own writes up to the restore floor are back; leaving restore mode")
            self._connection.execute("UPDATE _syncmesh_state SET restore_floor = 0")

    def _drift_bound(self) -> int:
        """The greatest stamp not refused as being from the future."""
        return pack(self._clock.physical_ms() + self._clock.drift_ms_max, COUNTER_MAX)

    def note_peer_vector(self, peer_vector: dict[str, int]) -> bool:
        """Detect that this file was restored from an old copy; True if detected now.

        A peer holding own-site writes beyond what our vector claims means we
        lost writes that we made (the file is older than our history).  Then:
        our clock jumps past them (new writes must win over the lost ones),
        our vector stops claiming own writes until peers return them, and a
        new incarnation tells every peer to re-read our feed from the start.
        """
        own = self.site_id
        claimed = peer_vector.get(own, 0)
        self._clock.check(claimed, own)  # a claim from the future is a broken or hostile peer
        with self._transaction():
            ours = self.vector().get(own, 0)
            lost_this_run = self._own_floor < claimed < self._run_start
            if claimed <= ours and not lost_this_run:
                return False
            self._clock.restore(claimed)
            state = self._state()
            first = state["restore_floor"] == 0
            self._connection.execute(
                "UPDATE _syncmesh_state SET restore_floor = max(restore_floor, ?),"
                " hlc = max(hlc, ?)",
                (claimed, claimed),
            )
            if first:
                self._connection.execute(
                    "UPDATE _syncmesh_state SET incarnation = ?", (uuid.uuid4().hex,)
                )
                # Claim no more own writes than the file held when this run began:
                # a capture since then may have moved V[self] past the lost ones.
                self._connection.execute(
                    "UPDATE _syncmesh_vector SET hlc = min(hlc, ?) WHERE site_id = ?",
                    (self._own_floor, own),
                )
        if first:
            log.warning(
                "this file is older than its peers' view of it (restored from a"
                " backup?): new incarnation, re-syncing own writes from peers"
            )
        return first

    # -- quarantine -------------------------------------------------------------

    def _quarantine(self, change: RowChange, origin: str, reason: str) -> None:
        min_stamps: dict[str, int] = {}
        for stamp in _stamps(change.state):
            min_stamps[stamp.site_id] = min(min_stamps.get(stamp.site_id, stamp.hlc), stamp.hlc)
        pk_text = ", ".join(repr(value) for value in change.pk)
        self._connection.execute(
            "INSERT INTO _syncmesh_quarantine (table_name, pk, change, origin, reason,"
            " min_stamps, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                change.table,
                pk_text,
                msgpack.packb(row_to_plain(change)),
                origin,
                reason,
                json.dumps(min_stamps),
                _now_ms(),
            ),
        )
        log.warning(
            "quarantined a row of %s (%s) from %s: %s", change.table, pk_text, origin, reason
        )

    def retry_quarantine(self) -> int:
        """Try every quarantined row again through the merge; returns rows resolved."""
        sites = self._require_init()
        entries = self._connection.execute(
            "SELECT id, change, origin FROM _syncmesh_quarantine ORDER BY id"
        ).fetchall()
        if not entries:
            return 0
        with self._transaction():
            self._capture_pending()
            by_origin: dict[str, list[RowChange]] = {}
            for entry_id, blob, origin in entries:
                change = row_from_plain(msgpack.unpackb(blob))
                table = self._tables.get(change.table)
                if table is None or not set(change.state.cells) <= set(table.values):
                    continue  # still unknown here: kept as it is, never applied in part
                self._connection.execute(
                    "DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,)
                )
                by_origin.setdefault(origin, []).append(change)
            columns = {name: table.values for name, table in self._tables.items()}
            for origin, changes in by_origin.items():
                batch = ChangeBatch.of_rows("", 0, 0, 0, None, changes, columns)
                self._merge_rows(origin, batch, sites)
            remaining = self._connection.execute(
                "SELECT count(*) FROM _syncmesh_quarantine"
            ).fetchone()[0]
            self._connection.execute(
                "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (self._clock.last,)
            )
        return max(0, len(entries) - int(remaining))

    def quarantine(self) -> list[dict[str, object]]:
        return [
            {
                "id": row[0],
                "table": row[1],
                "pk": row[2],
                "origin": row[3],
                "reason": row[4],
                "created_ms": row[5],
            }
            for row in self._connection.execute(
                "SELECT id, table_name, pk, origin, reason, created_ms"
                " FROM _syncmesh_quarantine ORDER BY id"
            )
        ]

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
            )


def _stamps(state: RowState) -> Iterator[Stamp]:
    if state.cl_stamp is not None:
        yield state.cl_stamp
    for cell in state.cells.values():
        yield cell.stamp


@dataclass(slots=True)
class _Merged:
    """The merge result for one key of a batch: a state, or the rows of a new key."""

    state: RowState | None  # None: a key new here, merged on the fast path
    shadow: list[SqlValue] | None
    user: list[SqlValue] | None
    rows: list[list[SqlValue]]  # the incoming rows that made it

    def state_or(self, incoming: TableRows, sites: tuple[str, ...]) -> RowState:
        if self.state is not None:
            return self.state
        return state_of_row(incoming, self.rows[-1], sites)

    def user_row(self, table: TableSql, pk: tuple[SqlValue, ...]) -> list[SqlValue] | None:
        if self.state is None:
            return self.user
        return table.user_row(pk, self.state) if self.state.alive else None

    def shadow_row(
        self, table: TableSql, pk: tuple[SqlValue, ...], seq: int, sites: SiteMap
    ) -> list[SqlValue]:
        if self.state is None:
            assert self.shadow is not None
            return self.shadow
        return table.shadow_row(pk, self.state, seq, sites)


def _change_of(table: TableRows, row: list[SqlValue], sites: tuple[str, ...]) -> RowChange:
    return RowChange(table.table, tuple(row[: table.key_count]), state_of_row(table, row, sites))


def _drift_reason(change: RowChange, clock: HybridClock) -> str:
    for stamp in _stamps(change.state):
        try:
            clock.check(stamp.hlc, stamp.site_id)
        except ClockDriftError as exc:
            return str(exc)
    return "a stamp lies beyond the allowed clock drift"
