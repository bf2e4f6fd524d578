"""The plain records the store hands out: peer cursors, apply results, status, conflicts.

Their wall times (`last_applied_ms`, a quarantine entry's `created_ms`, a
conflict's `resolved_ms`) come from the store's injected clock
(`HybridClock.physical_ms`), like every wall-time read outside `clock/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from syncmesh.model import SqlValue

# What happens to a row whose foreign key names a parent that was deleted
# (docs/keys.md, "Foreign keys"): "declared" follows the key's ON DELETE
# CASCADE or SET NULL and cascades otherwise; the others apply as named.
ORPHAN_POLICIES = ("declared", "cascade", "set-null", "keep")
ORPHAN_POLICY_DEFAULT = "declared"


@dataclass(frozen=True, slots=True)
class OrphanPolicy:
    """The orphan policy per child table (`[tables.orphans]` in syncmesh.toml)."""

    default: str = ORPHAN_POLICY_DEFAULT
    # Child table name -> its policy, where it differs from `default`.
    tables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for policy in (self.default, *self.tables.values()):
            assert policy in ORPHAN_POLICIES, policy

    def for_table(self, table: str) -> str:
        return self.tables.get(table, self.default)


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
    conflicts: int = 0  # conflicts the merge resolved and recorded (new to the ledger)
    applied_by_table: dict[str, int] = field(default_factory=dict)  # applied_rows per table


@dataclass(slots=True)
class CollectPass:
    """Where a collection pass over the tracked tables is (kept between steps)."""

    frontier: dict[str, int]
    tables: list[str]
    # A fleet node's pass (docs/adr/0017): a tombstone is stable only at or
    # below this stamp too, the least of the frontier over the members.
    ceiling: int | None = None
    table_index: int = 0
    after: tuple[SqlValue, ...] | None = None
    collected: int = 0
    collected_by_table: dict[str, int] = field(default_factory=dict)
    # With a ceiling: (the member, the origin) whose entry set it; else, or
    # with nothing settled, the member that does not hold some site's writes
    # as far as a pass's own entry (for status).
    held_back_by: tuple[str, str] = ("", "")
    # A tombstone is stable only at or below this per origin, the frontier
    # of a pass (a fleet's: an earlier one) whose members' own entries the
    # frontier now covers ({}: none yet, nothing goes; None: no such rule).
    settled: dict[str, int] | None = None
    # Tombstones every member holds that wait for `settled` (status).
    unsettled: int = 0


@dataclass(frozen=True, slots=True)
class CollectStep:
    collected: int  # tombstones collected by this step
    done: bool  # the pass reached the end of the last table


@dataclass(frozen=True, slots=True)
class LifecycleStatus:
    """Membership and tombstone collection (docs/adr/0015-membership-and-tombstone-gc.md)."""

    members: tuple[str, ...]  # the sites the frontier waits for (this one included)
    forgotten: tuple[str, ...]  # taken out by `syncmesh forget`
    # Per origin: every member holds its writes stamped at or below this.
    frontier: dict[str, int]
    # The member that holds the frontier back most ("" if none does), and how
    # far behind our own vector it is, in milliseconds of its stamps (None:
    # not known, as it holds nothing yet of an origin it is behind on).
    holding_back: str
    holding_back_ms: int | None
    tombstones_waiting: int  # deleted rows' shadow rows still kept
    tombstones_collected: int  # collected here, ever
    stale_dropped: int  # arriving rows of collected keys dropped (rule 1)
    cl_floor: int  # keys new here start above this causal length


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
    # Per tracked table: conflicts recorded here since the file was made,
    # including those the ledger has since dropped (its limit).
    conflicts: dict[str, int] = field(default_factory=dict)
    # Rows the feed held back this run because it could not read them
    # faithfully (table, key and reason in words; issue 12).
    row_problems: list[str] = field(default_factory=list)
    # Per table, per column (as the senders name it): cells of a column this
    # node does not have yet, kept with their stamps until it is added here
    # (ADR 0013; not an error: a rolling schema change in progress).
    waiting_cells: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per table, per column: cells of a column dropped here that arrived
    # from sites that still have it, and were discarded.
    discarded_cells: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per table, per column: cells of a name dropped here, stamped after the
    # drop, kept in case the name is added again here (ADR 0013).
    parked_cells: dict[str, dict[str, int]] = field(default_factory=dict)
    # Risks of tracked tables that do not stop syncing but need the
    # operator, with the fix: keys SQLite allocates per site, on a table
    # tracked before `track` refused them (docs/keys.md, "Integer keys").
    warnings: list[str] = field(default_factory=list)
    # Per tracked table: rows whose foreign key names a parent row that is
    # not there (what `PRAGMA foreign_key_check` reports, and what makes
    # Django's `migrate` fail); only tables that have such rows.
    orphans: dict[str, int] = field(default_factory=dict)
    # Orphans the policy could not resolve this run (table, key, reason).
    orphan_problems: list[str] = field(default_factory=list)
    # Membership and tombstone collection (None from a backend without it).
    lifecycle: LifecycleStatus | None = None
    # Per tracked table: rows with a NULL key value, which SQLite lets a
    # rowid table hold and no other node could address, so they are not
    # synced (docs/keys.md); only tables that have such rows.
    null_key_rows: dict[str, int] = field(default_factory=dict)


def null_key_problem(table: str, rows: int) -> str:
    """`null_key_rows` in words, with the fix: a health reason and a status line."""
    return (
        f"table {table!r}: {rows} row{'' if rows == 1 else 's'} with a NULL key value, not"
        " synced (no other node could address them): give each a key, or delete them;"
        " declare the key columns NOT NULL to have SQLite refuse them (docs/keys.md)"
    )


def null_key_problems(status: StoreStatus) -> list[str]:
    return [null_key_problem(table, rows) for table, rows in sorted(status.null_key_rows.items())]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A consistent snapshot of a store (docs/adr/0016-snapshot-bootstrap.md): what it holds.

    The file is the source's file at one point of its feed: `head_seq` is
    that point, `vector` what it holds of every origin.  `checksum` is the
    xxh3-128 of its bytes (hex), for the joiner to check the transfer.
    """

    source_site: str
    source_incarnation: str
    head_seq: int
    vector: dict[str, int]
    tables: tuple[str, ...]
    bytes: int
    checksum: str

    def as_json(self) -> dict[str, object]:
        return {
            "source_site": self.source_site,
            "source_incarnation": self.source_incarnation,
            "head_seq": self.head_seq,
            "vector": self.vector,
            "tables": list(self.tables),
            "bytes": self.bytes,
            "checksum": self.checksum,
        }

    @classmethod
    def from_json(cls, document: object) -> SnapshotInfo:
        """Parse `as_json`'s form (peer input); ValueError naming what is wrong."""
        if not isinstance(document, dict):
            raise ValueError("the snapshot's description is not a JSON object")
        try:
            vector = document["vector"]
            tables = document["tables"]
            if not isinstance(vector, dict) or not isinstance(tables, list):
                raise TypeError("vector or tables of the wrong type")
            info = cls(
                source_site=str(document["source_site"]),
                source_incarnation=str(document["source_incarnation"]),
                head_seq=int(document["head_seq"]),
                vector={str(site): int(hlc) for site, hlc in vector.items()},
                tables=tuple(str(table) for table in tables),
                bytes=int(document["bytes"]),
                checksum=str(document["checksum"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the snapshot's description is not readable: {exc!r}") from exc
        if info.bytes < 0 or info.head_seq < 0:
            raise ValueError("the snapshot's description has a negative size or head")
        return info


@dataclass(frozen=True, slots=True)
class JoinReport:
    """What installing a snapshot did (`syncmesh join`)."""

    site_id: str  # the joiner's new identity
    source_site: str
    tables: tuple[str, ...]
    # The file that was at the path before (a refused site), moved aside; "" if none.
    side_file: str
    # Per table: that file's own writes the snapshot lacked (its `_syncmesh_unsynced`).
    unsynced: dict[str, int]


@dataclass(frozen=True, slots=True)
class Version:
    """One side of a conflict: a cell's value and the stamp of its write."""

    value: SqlValue
    hlc: int
    site_id: str


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """A conflict this node resolved: two concurrent writes to one cell."""

    id: int
    table: str
    pk: tuple[SqlValue, ...]
    column: str
    winner: Version  # the value the merge kept
    loser: Version  # the value it discarded
    resolved_ms: int  # when, by this node's wall clock
