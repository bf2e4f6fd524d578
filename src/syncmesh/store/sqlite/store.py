"""`SqliteStore`: the SQLite backend's facade, one transaction per method.

The store wraps one `sqlite3.Connection` to the application's database
file, together with the node's `HybridClock`.  Its state is one
`StoreContext` (`context`), and every method delegates to a service module
that takes the context: `opening` (the connection, upgrades, identity),
`tracking`, `capture`, `feed`, `peers` (cursors and `apply_batch`), `apply`
(the merge), `vector`, `quarantine` and `retry`, `conflicts`, `verify`,
`status`.  The facade adds nothing but the transaction boundaries the
modules do not draw themselves.

Writes use BEGIN IMMEDIATE so that the capture of pending local writes,
the merge of a peer's batch, and the peer's new cursor and version vector
commit together or not at all: a crash at any point loses nothing and
applies nothing twice.

Not thread-safe: the node calls the store from a single worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path

from syncmesh.clock import HybridClock, SystemClock
from syncmesh.model import ChangeBatch, Membership, SqlValue, TableSpec
from syncmesh.store.base import CONFLICT_LEDGER_ROWS_MAX_DEFAULT, Key, TrackProgress
from syncmesh.store.records import (
    ApplyResult,
    CollectPass,
    CollectStep,
    ConflictRecord,
    OrphanPolicy,
    PeerCursor,
    StoreStatus,
)
from syncmesh.store.sqlite import (
    conflicts,
    feed,
    lifecycle,
    opening,
    orphans,
    peers,
    quarantine,
    reconcile,
    retry,
    status,
    tracking,
    vector,
    verify,
)
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import DEFAULT_CELL_HLC, DEFAULT_CELL_SITE
from syncmesh.store.sqlite.introspect import application_tables, fingerprint, table_problems
from syncmesh.store.sqlite.notifier import SqliteChangeNotifier
from syncmesh.store.summary import TableSummary

DRIFT_MS_MAX_DEFAULT = 60_000


class SqliteStore:
    """A syncmesh-managed SQLite file; implements `syncmesh.store.base.Store`.

    Example:

        store = SqliteStore.open("app.db")
        store.init()
        store.track(["items"])
        store.capture()
    """

    def __init__(self, context: StoreContext) -> None:
        self.context = context

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: HybridClock | None = None,
        conflict_ledger_rows_max: int = CONFLICT_LEDGER_ROWS_MAX_DEFAULT,
        digests: bool = True,
        orphan_policy: OrphanPolicy | None = None,
    ) -> SqliteStore:
        """Open (or create, mode 0600) the file; call `init()` before anything else on a new file.

        `digests=False` keeps no row digests or hash trees: only to measure
        what they cost (bench).  `orphan_policy`: what to do with rows whose
        foreign key names a deleted parent (default: the key's declared ON
        DELETE action, cascade otherwise; docs/keys.md).
        """
        assert conflict_ledger_rows_max >= 0
        connection = opening.connect(path)
        clock = clock or HybridClock(SystemClock(), drift_ms_max=DRIFT_MS_MAX_DEFAULT)
        ctx = StoreContext(connection, str(path), clock, conflict_ledger_rows_max, digests)
        if orphan_policy is not None:
            ctx.orphan_policy = orphan_policy
        opening.register_digest_functions(ctx)
        if ctx.initialized():
            ctx.load()
            opening.upgrade(ctx)
            vector.mark_run_start(ctx)
        return cls(ctx)

    @staticmethod
    def table_problems(
        path: str | Path, tables: list[str], allow_integer_keys: Collection[str] = ()
    ) -> list[str]:
        """Read-only: why `tables` of the file could not be tracked (`config check`)."""
        return table_problems(path, tables, allow_integer_keys)

    def close(self) -> None:
        self.context.close()

    def bind_thread(self) -> None:
        """From now on only the calling thread may call SQLite (the node's store thread)."""
        self.context.bind_thread()

    @property
    def clock(self) -> HybridClock:
        return self.context.clock

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for tests and read-only inspection."""
        return self.context.connection

    @property
    def conflict_ledger_rows_max(self) -> int:
        return self.context.conflict_ledger_rows_max

    def change_notifier(self) -> SqliteChangeNotifier:
        """Commits to the file by any connection: `PRAGMA data_version`, inotify hints."""
        return SqliteChangeNotifier(self.context.path)

    # -- set-up ---------------------------------------------------------------

    def init(self) -> str:
        """Create the bookkeeping tables and this node's site id; idempotent.

        Returns the site id.
        """
        opening.init(self.context)
        self.context.load()
        if self.context.run_start == 0:
            vector.mark_run_start(self.context)
        return self.site_id

    def new_site_id(self) -> str:
        """Give this file a new identity (for a copy of another node's file).

        The stamps of writes made under the old identity keep naming the old
        site: they are that site's writes, held here as copies.
        """
        return opening.new_site_id(self.context)

    @property
    def site_id(self) -> str:
        return self.context.site_id()

    @property
    def incarnation(self) -> str:
        return self.context.incarnation()

    def specs(self) -> list[TableSpec]:
        return self.context.specs()

    def fingerprint(self) -> str:
        return fingerprint(self.specs())

    def reload_if_changed(self) -> bool:
        """Re-read the tracked tables if `track` ran in another process; True if so."""
        self.context.require_init()
        if self.context.state()["tables_version"] == self.context.tables_version:
            return False
        self.context.load()
        return True

    def schema_problems(self) -> list[str]:
        """Tracked tables that cannot be synced, or whose DDL is not reconciled yet, in words.

        Cheap when nothing changed (one PRAGMA).  Each problem says the fix.
        """
        return tracking.schema_problems(self.context)

    def tracked_table_warnings(self) -> list[str]:
        """What `track` would warn about the tracked tables today (`serve` logs it at start)."""
        return tracking.tracked_table_warnings(self.context)

    def reconcile_schema(self) -> list[str]:
        """Handle DDL run on tracked tables by any tool; one line per change handled.

        Cheap when `PRAGMA schema_version` did not change.  Otherwise, in one
        transaction: captures pending writes with the old definition, then
        follows RENAME TABLE, ADD/RENAME/DROP COLUMN, table rebuilds (triggers
        put back, inserts and deletes made meanwhile caught up) and index
        changes (docs/adr/0013-schema-evolution.md).  A table it cannot
        handle stops syncing and is named in `schema_problems` with the fix.
        """
        lines = self.context.schema_lines_unreported + reconcile.reconcile_schema(self.context)
        self.context.schema_lines_unreported = []
        return lines

    def _follow_ddl(self) -> None:
        """Reconcile DDL first (cheap if none): rows are read and written by column name.

        Without it, an operation between an application's DDL and the node's
        next `reconcile_schema` would use the old columns ("no such column"
        after a rename or drop).  What it handled is returned by the next
        `reconcile_schema()` call.
        """
        self.context.schema_lines_unreported += reconcile.reconcile_schema(self.context)

    def application_tables(self) -> list[str]:
        """The database's own tables: not syncmesh's (`_syncmesh*`), not SQLite's (`sqlite_*`)."""
        return application_tables(self.connection)

    def track(
        self,
        names: list[str],
        progress: TrackProgress | None = None,
        *,
        allow_integer_keys: Collection[str] = (),
    ) -> list[str]:
        """Start syncing `names`; existing rows join the feed.  Returns warnings.

        A table tracked already is reconciled with its DDL (`reconcile_schema`);
        SchemaError if it cannot be synced any more.  Refuses (SchemaError) a
        table without a primary key, or whose keys SQLite allocates (an
        INTEGER PRIMARY KEY) unless it is in `allow_integer_keys`; the opt-in
        is kept with the table (docs/keys.md).  Gaining a table makes this
        node forget its peers' cursors and its vector entries for other
        sites, so that everything is synced once more (ADR 0013).
        `progress(table, rows_done, rows_total)` is called as existing rows
        join the feed.
        """
        return tracking.track(self.context, names, progress, allow_integer_keys=allow_integer_keys)

    def untrack(self, names: list[str]) -> None:
        """Stop syncing `names`: their triggers, shadow and log tables go; the data stays.

        SchemaError naming any that is not tracked (then nothing changes).
        """
        tracking.untrack(self.context, names)

    # -- capture and the change feed --------------------------------------------

    def capture(self) -> int:
        """Stamp every pending local write (one HLC, one seq); returns rows stamped.

        Then resolves the foreign-key orphans among the rows stamped, by the
        orphan policy (orphans.py); the first call also looks at whole tables.
        """
        peers.renew_hidden_stamps(self.context)  # a restore's future claim, once near
        return orphans.capture_and_resolve(self.context)

    @property
    def rows_captured_total(self) -> int:
        """Rows stamped by committed captures of this store, whichever call ran them."""
        return self.context.rows_captured_total

    def head_seq(self) -> int:
        self.context.require_init()
        return self.context.state()["seq"]

    def restoring(self) -> bool:
        """True while own writes lost by a restore from an old copy are being recovered."""
        self.context.require_init()
        return self.context.state()["restore_floor"] > 0

    def vector(self) -> dict[str, int]:
        return self.context.vector()

    def read_batch(
        self,
        from_seq: int,
        receiver_vector: dict[str, int],
        rows_max: int,
        tables: Collection[str] | None = None,
    ) -> ChangeBatch:
        """The feed after `from_seq`, at most about `rows_max` rows, whole seq groups.

        Cells the receiver already holds (by its version vector) are left out.
        The batch carries our vector only if it reaches our head.  `tables`
        are the names the receiver tracks (None: all of ours): other tables
        are left out; a table renamed here matches by its former name and
        is sent under the receiver's name (ADR 0013).
        """
        self._follow_ddl()
        # Every node holds the default cells of the columns it has (the same
        # stamp everywhere): a row the receiver holds but for those is not sent.
        held = {**receiver_vector, DEFAULT_CELL_SITE: DEFAULT_CELL_HLC}
        return feed.read_batch(self.context, from_seq, held, rows_max, tables)

    def feed_rows_after(self, seqs: list[int], rows_max: int) -> list[int]:
        """Per seq of `seqs`: how many rows of the feed come after it, at most `rows_max`.

        A peer's lag in changes: the rows after the position it acknowledged
        (some may be left out when sent, as the peer holds them already).
        One read snapshot for all peers; the cap keeps a poll of a far
        behind peer as cheap as of a close one (the seq index is walked at
        most `rows_max` rows per table).
        """
        return feed.feed_rows_after(self.context, seqs, rows_max)

    def split_seq_group(self, seq: int) -> bool:
        """Move the second half of seq group `seq` to a new seq; False if it has one row.

        For a group too big for one frame (wide rows written while the node
        was down, captured together).  Moving rows to a later seq is what a
        new write to them would do, so every cursor stays valid; the price is
        that peers may see that group's writes in two steps.
        """
        return feed.split_seq_group(self.context, seq)

    # -- applying a peer's batch ------------------------------------------------

    def peer_cursor(self, site_id: str) -> PeerCursor | None:
        return peers.peer_cursor(self.context, site_id)

    def reset_peer_cursor(
        self, site_id: str, incarnation: str, head_seq: int, address: str
    ) -> None:
        """Start reading the peer's feed from 0 (a new peer, or it was restored)."""
        peers.reset_peer_cursor(self.context, site_id, incarnation, head_seq, address)

    def apply_batch(
        self,
        peer_site_id: str,
        batch: ChangeBatch,
        *,
        adopt_vector: bool = True,
        own_claims: bool = True,
    ) -> ApplyResult:
        """Merge a peer's batch and advance its cursor and our vector, atomically.

        Columns map by name and former names; cells of a column not here
        wait for it (ADR 0013).  `adopt_vector=False`: the rows apply and
        the cursor moves, but the batch's vector claims are not merged
        (the node decides, from the peer's HELLO).  `own_claims=False`: the
        sender read the batch not knowing we restore (base.Store).  Raises StoreError if
        the batch does not continue the stored cursor (a gap or a replay
        of an old slice); nothing is applied then.
        """
        self._follow_ddl()
        return peers.apply_batch(
            self.context, peer_site_id, batch, adopt_vector=adopt_vector, own_claims=own_claims
        )

    def note_peer_vector(
        self, peer_vector: dict[str, int], peer_held: dict[str, int] | None = None
    ) -> bool:
        """Detect that this file was restored from an old copy; True if detected now.

        A peer holding own-site writes beyond what our vector claims means we
        lost writes that we made (the file is older than our history).  Then:
        our clock jumps past them (new writes must win over the lost ones),
        our vector stops claiming own writes until peers return them, and a
        new incarnation tells every peer to re-read our feed from the start.
        `peer_held`: the peer's HELLO `held` (`held_claims`), if it sent one.
        """
        return peers.note_peer_vector(self.context, peer_vector, peer_held)

    def stream_scan_floor(self) -> int:
        """Own writes up to this are held; an own fleet message ending past it may hold lost."""
        self.context.require_init()
        return vector.stream_scan_floor(self.context)

    def note_stream_claims(self, claims: list[int], chain_incarnation: str, chain_end: int) -> bool:
        """The restore check of own stamps found on our fleet subject; True if detected now.

        ADR 0014, "A site restored from a backup": the claims go through the
        HELLO's check; a chain of our incarnation past our head is not continued.
        """
        return peers.note_stream_claims(self.context, claims, chain_incarnation, chain_end)

    def own_writes_back(self, upto: int) -> bool:
        """Own writes up to `upto` were merged back from the stream: leave restore mode if done."""
        return peers.own_writes_back(self.context, upto)

    def held_claims(self) -> dict[str, int]:
        """Per site, the greatest of its writes this node knows held: HELLO's `held`.

        The vector, raised where a row held only in quarantine caps it
        (ADR 0006, residual risk 4).
        """
        return vector.held_claims(self.context)

    # -- membership and tombstone collection (lifecycle.py, ADR 0015) -------------

    def membership(self) -> Membership:
        """What this node knows of the cluster's sites, to gossip (HELLO, MEMBERS)."""
        return lifecycle.membership(self.context)

    def note_hello(
        self,
        peer_site_id: str,
        vector: dict[str, int],
        head_seq: int,
        gossip: Membership | None,
    ) -> str | None:
        """Admit a peer's HELLO: the refusal in words (forgotten, or slept past the
        GC horizon), or None; an admitted peer's vector and gossip are learned."""
        return lifecycle.note_hello(self.context, peer_site_id, vector, head_seq, gossip)

    def note_gossip(self, peer_site_id: str, gossip: Membership) -> None:
        """Learn a peer's MEMBERS message: members' vectors, forgotten sites, the cl floor."""
        lifecycle.note_gossip(self.context, peer_site_id, gossip)

    def learn_vectors(self, vectors: dict[str, dict[str, int]]) -> None:
        """Peers' vectors as they sent them (PULL, ACK, HAVE): what each of them holds."""
        lifecycle.learn_vectors(self.context, vectors)

    def register_joiner(self, site_id: str) -> None:
        """`site_id`, about to join from our snapshot: a member holding our vector (ADR 0016)."""
        lifecycle.register_joiner(self.context, site_id)

    def forget_site(self, site_id: str) -> bool:
        """Take a decommissioned site out of the membership; False if it was already."""
        return lifecycle.forget(self.context, site_id)

    def begin_collection(
        self,
        direct: dict[str, dict[str, int]] | None = None,
        *,
        own_held: dict[str, int] | None = None,
    ) -> CollectPass:
        """Start a pass of tombstone collection: membership refreshed, frontier fixed.

        `direct`: per peer in session with us, the vector it sent in that
        session; it stands for the peer instead of what gossip says of it.
        `own_held`: on a fleet stream, what we hold of its sites' writes
        (our own entry: our writes on the stream); see docs/adr/0017.
        """
        return lifecycle.begin_pass(self.context, direct or {}, own_held)

    def stamp_mark(self) -> int:
        """A stamp above every write captured so far and below every one captured later.

        A fleet site says, with it, that its writes up to here are on the
        stream (docs/adr/0017): a write not captured yet is stamped later.
        """
        self.context.require_init()
        return self.context.clock.tick()

    def collect_step(self, state: CollectPass, rows_max: int) -> CollectStep:
        """Look at the next `rows_max` shadow rows; collect the stable tombstones among them."""
        return lifecycle.collect_step(self.context, state, rows_max)

    def collect_all(
        self, rows_max: int = 1_000, direct: dict[str, dict[str, int]] | None = None
    ) -> int:
        """A whole pass, step by step (tests); returns tombstones collected."""
        state = self.begin_collection(direct)
        while not self.collect_step(state, rows_max).done:
            pass
        return state.collected

    # -- quarantine -------------------------------------------------------------

    def retry_quarantine(self) -> int:
        """Try every quarantined row again through the merge; returns rows resolved.

        Also merges the waiting cells whose column is here now (counted too).
        """
        self._follow_ddl()
        return retry.retry(self.context)

    def quarantine(self) -> list[dict[str, object]]:
        return quarantine.listing(self.context)

    def drop_quarantined(self, ids: list[int]) -> int:
        """Delete quarantined rows for good; returns how many existed."""
        return quarantine.drop(self.context, ids)

    # -- verify and repair (sqlite.verify, store.summary) ------------------------

    def summaries(self, tables: list[str]) -> dict[str, TableSummary]:
        """The hash trees of `tables` (copies), as of one moment.

        Kept up to date by this store's own writes; rebuilt by one scan of
        the shadow tables when another process wrote the file since.
        """
        return verify.summaries(self.context, tables)

    def deep_summary(self, table: str) -> tuple[TableSummary, int]:
        """The tree of `table` with values, from a scan; and how many stored digests it fixed."""
        self._follow_ddl()
        return verify.deep_summary(self.context, table)

    def deep_summary_step(
        self, table: str, after: Key | None, rows_max: int
    ) -> tuple[TableSummary, Key | None, int]:
        """Part of `deep_summary`: rows after key `after`; (tree, last key or None, fixed)."""
        self._follow_ddl()
        return verify.deep_summary_step(self.context, table, after, rows_max)

    def leaf_digests(
        self, table: str, leaves: list[int], *, deep: bool = False
    ) -> dict[tuple[SqlValue, ...], int]:
        """Key -> digest of every row of `table` in `leaves`."""
        self._follow_ddl()
        return verify.leaf_digests(self.context, table, leaves, deep)

    def key_digests(self, table: str, keys: list[Key], *, deep: bool = False) -> list[int | None]:
        """The digest of each key of `table` (None: no row here)."""
        self._follow_ddl()
        return verify.key_digests(self.context, table, keys, deep)

    def rows_of(self, table: str, keys: list[Key]) -> ChangeBatch:
        """These rows' whole states, as a batch another node can merge (repair)."""
        self._follow_ddl()
        return verify.rows_of(self.context, table, keys)

    def merge_repair_rows(self, origin: str, batch: ChangeBatch) -> ApplyResult:
        """Merge rows a peer sent for repair (from `rows_of`): no cursor moves."""
        self._follow_ddl()
        return verify.merge_rows(self.context, origin, batch)

    def restamp(self, table: str, keys: list[Key]) -> int:
        """Stamp these live rows anew as local writes (their values win); returns how many."""
        self._follow_ddl()
        return verify.restamp(self.context, table, keys)

    # -- conflicts and status ---------------------------------------------------

    def conflicts(
        self, *, table: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[ConflictRecord]:
        """The newest `limit` recorded conflicts (newest first), of `table`, since `since_ms`."""
        self.context.require_init()
        assert limit >= 0
        with self.context.transaction("DEFERRED"):
            return conflicts.listing(self.context, table=table, since_ms=since_ms, limit=limit)

    def status(self) -> StoreStatus:
        return status.status(self.context)
