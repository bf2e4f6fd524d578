"""What a chaos run observes: the clients' writes and each replica's final state.

A `Write` is one acknowledged (committed) client operation.  Its stamp is
not guessed: the client reads it back from the shadow table once the node
has captured the write (`stamp`), and when another write replaced the cell
before it could look, it keeps the interval the stamp must lie in: above the
node's clock floor when the write committed (`lo`), at most the floor when
the capture was seen (`hi`).

A `Replica` is the canonical dump of one node's file: per tracked table,
per key, the causal length and its stamp, the user row (values with storage
classes) and every live cell's stamp with site ids (not the file-local
ordinals), so two replicas compare equal exactly when they hold the same
state (P1).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgpack

from syncmesh.errors import ProtocolError
from syncmesh.model import TEXT_ERRORS, SqlValue, row_from_plain, text_of_bytes
from syncmesh.schema import quote_identifier

Key = tuple[SqlValue, ...]
Stamp = tuple[int, str]  # (hlc, site id): the merge's order


@dataclass(slots=True)
class Write:
    """One acknowledged client operation on one key."""

    op: str  # "upsert" (all columns), "update" (some columns), "delete", "order"
    node: str  # the harness's name of the node it was written at
    site: str  # that node's site id
    table: str
    key: list[SqlValue]
    index: int  # the client's operation counter: order of writes at this node
    cells: dict[str, SqlValue] = field(default_factory=dict)
    lines: int = 0  # "order": how many order lines the same transaction wrote
    lo: int = 0  # the node's clock floor when the write committed (stamp > lo)
    hi: int | None = None  # the floor once the capture was seen (stamp <= hi)
    stamp: int | None = None  # the exact HLC, when it could be read back
    cl: int | None = None  # the causal length the write left the row at
    # How many steps of the `migrate` fault's plan its node's client had run
    # when it wrote: the table and column names it wrote are those of that shape.
    schema: int = 0
    # A child row's (the adversarial `fk` feature): the causal length of the
    # parent it referenced, as its node held it when it wrote.  Only a delete
    # of the parent ends that life, and only that may cascade the child away;
    # stamps cannot tell, since a skewed clock orders them against causality.
    parent_cl: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Write:
        return cls(**json.loads(line))


def read_history(paths: list[Path]) -> list[Write]:
    writes: list[Write] = []
    for path in paths:
        with path.open() as lines:
            writes.extend(Write.from_json(line) for line in lines if line.strip())
    return writes


@dataclass(frozen=True, slots=True)
class RowDump:
    cl: int
    cl_stamp: Stamp | None
    values: tuple[tuple[SqlValue, str], ...] | None  # None: no row in the user table
    stamps: dict[str, Stamp]  # column -> stamp


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """A peer's row that a node holds in its quarantine: it could not be applied there."""

    reason: str
    cl: int
    stamps: dict[str, Stamp]  # column -> stamp, of the cells the row carries
    values: dict[str, SqlValue]


@dataclass(slots=True)
class Replica:
    node: str
    site: str
    hlc: int  # the node's clock floor (_syncmesh_state.hlc)
    tables: dict[str, dict[Key, RowDump]]
    columns: dict[str, tuple[str, ...]]  # value columns per table
    # Its quarantine, per (table, key): not state (it takes no part in the
    # digest), but what the checkers read to tell a write a constraint
    # turned away here from a lost one.
    quarantined: dict[tuple[str, Key], list[QuarantinedRow]] = field(default_factory=dict)
    # Tombstones the node collected, ever (ADR 0015): a key with no shadow row
    # may then be a deleted one whose tombstone went, not a lost one.
    collected: int = 0
    # Keys in a user table with no shadow row: written but never captured
    # (or the shadow row went while the user row stayed): the engine lost
    # track of them, and no peer can ever learn them.
    uncaptured: dict[str, list[Key]] = field(default_factory=dict)

    def digest(self, without: Collection[tuple[str, Key]] = (), *, tombstones: bool = True) -> str:
        """A hash of the whole state, but the rows `without`: equal digests, equal replicas.

        `tombstones=False` leaves deleted rows out: with tombstone collection
        on, one node may have collected a tombstone that another still holds,
        and both say the row is absent.
        """
        canonical = []
        for table in sorted(self.tables):
            rows = self.tables[table]
            for key in sorted(rows, key=_sort_key):
                if without and (table, key) in without:
                    continue
                row = rows[key]
                if not tombstones and row.values is None and row.cl % 2 == 0:
                    continue
                canonical.append(
                    [
                        table,
                        _typed(key),
                        row.cl,
                        row.cl_stamp,
                        row.values,
                        sorted(row.stamps.items()),
                    ]
                )
        return hashlib.sha256(repr(canonical).encode()).hexdigest()

    def row(self, table: str, key: Key) -> RowDump | None:
        return self.tables.get(table, {}).get(key)


def _typed(key: Key) -> list[tuple[str, SqlValue]]:
    return [(type(value).__name__, value) for value in key]


def _sort_key(key: Key) -> str:
    return repr(_typed(key))


def read_replica(node: str, path: Path) -> Replica:
    """The canonical dump of `path`, read in one read transaction."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    # Any TEXT, valid UTF-8 or not, read with its exact bytes (model.TEXT_ERRORS).
    connection.text_factory = text_of_bytes
    try:
        connection.execute("BEGIN")
        site, hlc = connection.execute("SELECT site_id, hlc FROM _syncmesh_state").fetchone()
        sites = dict(connection.execute("SELECT ordinal, site_id FROM _syncmesh_sites"))
        tables: dict[str, dict[Key, RowDump]] = {}
        columns: dict[str, tuple[str, ...]] = {}
        uncaptured: dict[str, list[Key]] = {}
        specs = connection.execute("SELECT name, spec FROM _syncmesh_tables ORDER BY name")
        for name, spec_json in specs.fetchall():
            spec = json.loads(spec_json)
            values = tuple(column for column in spec["columns"] if column not in spec["pk"])
            columns[name] = values
            # A column's stamps live in its slot (stable across renames, rebuilds
            # and drops: docs/adr/0013-schema-evolution.md); files from before
            # slots have slot i for the ith value column.
            slots = tuple(int(slot) for slot in spec.get("slots", range(len(values))))
            tables[name] = _read_table(connection, name, tuple(spec["pk"]), values, slots, sites)
            missing = _uncaptured(connection, name, tuple(spec["pk"]))
            if missing:
                uncaptured[name] = missing
        quarantined = _read_quarantine(connection)
        collected = 0
        if connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_lifecycle'"
        ).fetchone():
            (collected,) = connection.execute(
                "SELECT collected FROM _syncmesh_lifecycle"
            ).fetchone()
        connection.execute("COMMIT")
    finally:
        connection.close()
    return Replica(node, site, hlc, tables, columns, quarantined, int(collected), uncaptured)


def _uncaptured(connection: sqlite3.Connection, table: str, pk: tuple[str, ...]) -> list[Key]:
    """The keys of `table` that have no shadow row (none, once the node captured all)."""
    shadow = quote_identifier(f"_syncmesh_shadow_{table}")
    user = quote_identifier(table)
    keys = ", ".join(f"u.{quote_identifier(column)}" for column in pk)
    join = " AND ".join(f"s.k{i} = u.{quote_identifier(column)}" for i, column in enumerate(pk))
    sql = (
        f"SELECT {keys} FROM {user} AS u"
        f" WHERE NOT EXISTS (SELECT 1 FROM {shadow} AS s WHERE {join})"
        # A row with a NULL key is never synced, by design (docs/keys.md).
        + "".join(f" AND u.{quote_identifier(column)} IS NOT NULL" for column in pk)
    )
    try:
        return [tuple(row) for row in connection.execute(sql)]
    except sqlite3.OperationalError:
        return []  # the table is not there under its tracked name: other checkers say so


def _read_quarantine(
    connection: sqlite3.Connection,
) -> dict[tuple[str, Key], list[QuarantinedRow]]:
    """The node's quarantine entries, each with the row it holds back."""
    held: dict[tuple[str, Key], list[QuarantinedRow]] = {}
    for blob, reason in connection.execute("SELECT change, reason FROM _syncmesh_quarantine"):
        try:
            change = row_from_plain(msgpack.unpackb(blob, raw=False, unicode_errors=TEXT_ERRORS))
        except (ProtocolError, ValueError, msgpack.UnpackException):
            # Left out: a write only such an entry could account for is judged lost.
            continue
        state = change.state
        held.setdefault((change.table, tuple(change.pk)), []).append(
            QuarantinedRow(
                str(reason),
                state.cl,
                {name: (cell.stamp.hlc, cell.stamp.site_id) for name, cell in state.cells.items()},
                {name: cell.value for name, cell in state.cells.items()},
            )
        )
    return held


def _read_table(
    connection: sqlite3.Connection,
    table: str,
    pk: tuple[str, ...],
    values: tuple[str, ...],
    slots: tuple[int, ...],
    sites: dict[int, str],
) -> dict[Key, RowDump]:
    shadow = quote_identifier(f"_syncmesh_shadow_{table}")
    user = quote_identifier(table)
    keys = ", ".join(f"s.k{index}" for index in range(len(pk)))
    cells = "".join(f", s.h{slot}, s.s{slot}" for slot in slots)
    typed = "".join(
        f", u.{quote_identifier(column)}, typeof(u.{quote_identifier(column)})" for column in values
    )
    join = " AND ".join(f"u.{quote_identifier(column)} = s.k{i}" for i, column in enumerate(pk))
    present = f"u.{quote_identifier(pk[0])} IS NOT NULL"
    sql = (
        f"SELECT {keys}, s.cl, s.cl_hlc, s.cl_site{cells}, {present}{typed}"
        f" FROM {shadow} AS s LEFT JOIN {user} AS u ON {join}"
    )
    rows: dict[Key, RowDump] = {}
    width = len(pk)
    for record in connection.execute(sql):
        key = tuple(record[:width])
        cl, cl_hlc, cl_site = record[width : width + 3]
        at = width + 3
        stamps: dict[str, Stamp] = {}
        for index, column in enumerate(values):
            hlc, ordinal = record[at + 2 * index], record[at + 2 * index + 1]
            if hlc is not None:
                stamps[column] = (hlc, sites[ordinal])
        at += 2 * len(values)
        row_values = None
        if record[at]:
            row_values = tuple(
                (record[at + 1 + 2 * index], record[at + 2 + 2 * index])
                for index in range(len(values))
            )
        cl_stamp = None if cl_hlc is None else (cl_hlc, sites[cl_site])
        if cl % 2 == 0:
            # A tombstone's cell stamps take no part in any merge: a write of
            # its life lost to the delete, and a re-insert stamps every
            # column anew.  Replicas may differ in them (one learnt the cells
            # before the delete, another only the delete): not state.
            stamps = {}
        rows[key] = RowDump(cl, cl_stamp, row_values, stamps)
    return rows
