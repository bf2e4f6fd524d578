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
