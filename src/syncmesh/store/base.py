"""The store interface: what the node, the API and the CLI need of a store backend.

`typing.Protocol`s, found from what `node`, `api`, `cli` and `chaos`
actually call (docs/adr/0011-store-seam.md).  The SQLite backend
(`syncmesh.store.sqlite`) implements them; a later backend (PostgreSQL)
implements the same and registers in `syncmesh.store.open`.  Nothing here
names SQLite.

The contract every backend keeps (docs/protocol.md has the invariants):

- every method is one transaction: a crash loses nothing and applies
  nothing twice;
- seqs are HLC values from the store's clock, so a seq is never reused;
- the feed is read in whole seq groups, and the vector it carries is only
  ever made true;
- one bad row never stops the rest: it goes to quarantine;
- a store is used from one thread at a time (the node's store worker),
  except `change_notifier()`, called and used on the event loop's thread.

The types that cross the seam live in neutral modules: batches in
`syncmesh.model`, records and status in `syncmesh.store.records`, the hash
trees in `syncmesh.store.summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from syncmesh.model import ChangeBatch, Membership, SqlValue, TableSpec
from syncmesh.store.records import (
    ApplyResult,
    CollectPass,
    CollectStep,
    ConflictRecord,
    PeerCursor,
    StoreStatus,
)
from syncmesh.store.summary import TableSummary

Key = tuple[SqlValue, ...]

# Progress of `track`: (table, rows put in the feed so far, rows in the table);
# the last call for a table has rows done == rows in all.
TrackProgress = Callable[[str, int, int], None]

# The conflict ledger keeps the newest this many conflicts (docs/config.md).
CONFLICT_LEDGER_ROWS_MAX_DEFAULT = 10_000
DEEP_ROWS_PER_STEP = 20_000  # rows per step of a deep tree (about half a second on SQLite)


class ChangeNotifier(Protocol):
    """Wakes the capture loop when some connection may have committed to the store.

    `changed()` is the truth (cheap: the loop polls it); the hints are a
    way to poll less while idle.  A backend without hints returns False
    from `start` and the loop polls only.
    """

    def start(self) -> bool:
        """Begin; True if wake-up hints will come, False: the caller polls only."""
        ...

    def changed(self) -> bool:
        """True if a commit landed since the last call (always True on the first)."""
        ...

    def clear_hint(self) -> None: ...

    async def wait_hint(self) -> None:
        """Return at the next hint that the store was written."""
        ...

    def pause_hints(self) -> None:
        """Stop reacting to writes for now (the caller polls meanwhile)."""
        ...

    def resume_hints(self) -> None: ...

    def close(self) -> None: ...


class VerifyStore(Protocol):
    """The store's side of verify and repair (ADR 0010): hash trees, digests, repair rows."""

    @property
    def site_id(self) -> str: ...

    def specs(self) -> list[TableSpec]: ...

    def head_seq(self) -> int:
        """The feed's head: read after the trees, every row they hold is at or below it."""
        ...

    def held_claims(self) -> dict[str, int]:
        """Per origin site, the greatest stamp held: read after the trees, it covers their rows."""
        ...

    def summaries(self, tables: list[str]) -> dict[str, TableSummary]:
        """The hash trees of `tables`, as of one moment (copies)."""
        ...

    def deep_summary_step(
        self, table: str, after: Key | None, rows_max: int
    ) -> tuple[TableSummary, Key | None, int]:
        """Part of a table's deep tree (with values): rows after key `after`.

        Returns (tree of those rows, last key or None once done, digests fixed).
        """
        ...

    def leaf_digests(self, table: str, leaves: list[int], *, deep: bool = False) -> dict[Key, int]:
        """Key -> digest of every row of `table` in `leaves`."""
        ...

    def key_digests(self, table: str, keys: list[Key], *, deep: bool = False) -> list[int | None]:
        """The digest of each key of `table` (None: no row here)."""
        ...

    def rows_of(self, table: str, keys: list[Key]) -> ChangeBatch:
        """These rows' whole states, as a batch another node can merge (repair)."""
        ...

    def merge_repair_rows(self, origin: str, batch: ChangeBatch) -> ApplyResult:
        """Merge rows a peer sent for repair (from `rows_of`): no cursor moves."""
        ...

    def restamp(self, table: str, keys: list[Key]) -> int:
        """Stamp these live rows anew as local writes (their values win); returns how many."""
        ...


class Store(VerifyStore, Protocol):
    """A syncmesh store: capture, the change feed, apply, cursors and vectors, and the rest."""

    # -- set-up and identity --------------------------------------------------

    def init(self) -> str:
        """Create what the store needs and this node's site id; idempotent.  Returns it."""
        ...

    def new_site_id(self) -> str:
        """Give the store a new identity (a copy of another node's file)."""
        ...

    def track(
        self,
        names: list[str],
        progress: TrackProgress | None = None,
        *,
        allow_integer_keys: Collection[str] = (),
    ) -> list[str]:
        """Start syncing `names`; existing rows join the feed.  Returns warnings.

        A table whose keys the database allocates per site (an INTEGER
        PRIMARY KEY) is refused unless named in `allow_integer_keys`.
        """
        ...

    def close(self) -> None:
        """Close the file, from any thread once its store thread has ended."""
        ...

    def bind_thread(self) -> None:
        """From now on only the calling thread may touch the file (the node's store
        thread, docs/adr/0005): another thread's call fails at once, naming it,
        where it could otherwise deadlock the process."""
        ...

    @property
    def incarnation(self) -> str: ...

    def fingerprint(self) -> str:
        """A digest of the tracked tables' definitions: peers must agree on it."""
        ...

    def reload_if_changed(self) -> bool:
        """Re-read the tracked tables if another process changed them; True if so."""
        ...

    def schema_problems(self) -> list[str]:
        """Tracked tables that cannot be synced, or whose DDL is not handled yet, in words."""
        ...

    def reconcile_schema(self) -> list[str]:
        """Handle DDL on tracked tables (ADR 0013); one line per change. Cheap if none."""
        ...

    def tracked_table_warnings(self) -> list[str]:
        """What `track` would warn about the tracked tables today, one line per risk.

        For `serve` to say once at start (a trigger created after `track`, a
        table tracked before a refusal existed); opening the store says
        nothing, so read-only commands do not repeat it (new-user report).
        """
        ...

    def untrack(self, names: list[str]) -> None:
        """Stop syncing `names` (SchemaError if one is not tracked)."""
        ...

    def application_tables(self) -> list[str]:
        """The database's own tables (not syncmesh's, not the backend's), sorted by name.

        What `[tables] track` patterns are matched against.
        """
        ...

    def change_notifier(self) -> ChangeNotifier:
        """A new notifier of commits to this store (on the event loop's thread)."""
        ...

    # -- capture and the feed -------------------------------------------------

    def capture(self) -> int:
        """Stamp every pending local write (one seq group); returns rows stamped."""
        ...

    @property
    def rows_captured_total(self) -> int:
        """Rows stamped by committed captures of this store, whichever call ran them."""
        ...

    def head_seq(self) -> int: ...

    def vector(self) -> dict[str, int]: ...

    def restoring(self) -> bool:
        """True while own writes lost by a restore from an old copy are being recovered."""
        ...

    def read_batch(
        self,
        from_seq: int,
        receiver_vector: dict[str, int],
        rows_max: int,
        tables: Collection[str] | None = None,
    ) -> ChangeBatch:
        """The feed after `from_seq`, about `rows_max` rows, whole seq groups.

        `tables`: the names the receiver tracks (None: all of ours); other
        tables are left out, and a table matches by a former name too.
        """
        ...

    def split_seq_group(self, seq: int) -> bool:
        """Move the second half of seq group `seq` to a new seq; False if it has one row."""
        ...

    def feed_rows_after(self, seqs: list[int], rows_max: int) -> list[int]:
        """Per seq of `seqs`: how many rows of the feed come after it, at most `rows_max`."""
        ...

    # -- apply, cursors and vectors -------------------------------------------

    def peer_cursor(self, site_id: str) -> PeerCursor | None: ...

    def reset_peer_cursor(
        self, site_id: str, incarnation: str, head_seq: int, address: str
    ) -> None:
        """Start reading the peer's feed from 0 (a new peer, or it was restored)."""
        ...

    def apply_batch(
        self,
        peer_site_id: str,
        batch: ChangeBatch,
        *,
        adopt_vector: bool = True,
        own_claims: bool = True,
    ) -> ApplyResult:
        """Merge a peer's batch and advance its cursor and our vector, atomically.

        `adopt_vector=False`: apply the rows and move the cursor, but do not
        merge the batch's vector claims (the peer lacks a table or column
        we track, ADR 0013).  `own_claims=False`: the sender did not know
        we were restoring when it read the batch (our PULL of the session
        said not), so it left our own writes out: while we are restoring,
        its claim about them is not adopted (ADR 0006).
        """
        ...

    def note_peer_vector(
        self, peer_vector: dict[str, int], peer_held: dict[str, int] | None = None
    ) -> bool:
        """Detect that this store was restored from an old copy; True if detected now.

        `peer_held`: the peer's HELLO `held`, which may claim more of our
        writes than its vector (a row of ours it holds in quarantine caps that).
        """
        ...

    def stream_scan_floor(self) -> int:
        """Own writes up to this are held; an own fleet message ending past it may hold lost."""
        ...

    def note_stream_claims(self, claims: list[int], chain_incarnation: str, chain_end: int) -> bool:
        """The restore check of own stamps found on our own fleet subject; True if detected now."""
        ...

    def own_writes_back(self, upto: int) -> bool:
        """Own writes up to `upto` were merged back from the stream: leave restore mode if done."""
        ...

    def held_claims(self) -> dict[str, int]:
        """Per site, the greatest of its writes this node knows held (HELLO's `held`)."""
        ...

    # -- membership and tombstone collection (ADR 0015) -------------------------

    def membership(self) -> Membership:
        """What this node knows of the cluster's sites, to gossip (HELLO, MEMBERS)."""
        ...

    def note_hello(
        self,
        peer_site_id: str,
        vector: dict[str, int],
        head_seq: int,
        gossip: Membership | None,
    ) -> str | None:
        """Admit a peer's HELLO: the refusal in words, or None (then learn from it)."""
        ...

    def note_gossip(self, peer_site_id: str, gossip: Membership) -> None:
        """Learn a peer's MEMBERS message."""
        ...

    def learn_vectors(self, vectors: dict[str, dict[str, int]]) -> None:
        """Peers' vectors as they sent them: what each of them holds."""
        ...

    def register_joiner(self, site_id: str) -> None:
        """`site_id`, about to join from our snapshot: a member holding our vector (ADR 0016)."""
        ...

    def forget_site(self, site_id: str) -> bool:
        """Take a decommissioned site out of the membership; False if it was already."""
        ...

    def begin_collection(
        self,
        direct: dict[str, dict[str, int]] | None = None,
        *,
        own_held: dict[str, int] | None = None,
    ) -> CollectPass:
        """Start a pass of tombstone collection: membership refreshed, frontier fixed.

        `direct`: per peer in session, the vector it sent in that session.
        `own_held`: on a fleet stream, what we hold of its sites' writes
        (docs/adr/0017); the pass then collects only below the least
        frontier entry of the members.
        """
        ...

    def stamp_mark(self) -> int:
        """A stamp above every write captured so far and below every one captured later."""
        ...

    def collect_step(self, state: CollectPass, rows_max: int) -> CollectStep:
        """Look at the next `rows_max` shadow rows; collect the stable tombstones among them."""
        ...

    # -- quarantine, conflicts, status ----------------------------------------

    def retry_quarantine(self) -> int:
        """Try every quarantined row again through the merge; returns rows resolved."""
        ...

    def quarantine(self) -> list[dict[str, object]]: ...

    def drop_quarantined(self, ids: list[int]) -> int:
        """Delete quarantined rows for good; returns how many existed."""
        ...

    def conflicts(
        self, *, table: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[ConflictRecord]:
        """The newest `limit` recorded conflicts (newest first), of `table`, since `since_ms`."""
        ...

    def status(self) -> StoreStatus: ...
