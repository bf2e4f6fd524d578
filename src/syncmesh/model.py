"""Values that flow between the layers: no behaviour beyond validation.

A *stamp* is the pair (hlc, site_id) that orders writes to one cell; the HLC
is the packed 64-bit hybrid logical clock value (see `syncmesh.clock`).
A *row change* carries one row's merge state: its causal length, the stamp
of that causal length, and the cells (column values with their stamps) that
the receiver may not hold yet.  A cell also carries its *past*: what its
writer knew of earlier writes to that cell, which tells a receiver whether
two writes were concurrent (docs/adr/0007-conflict-ledger.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from syncmesh.errors import ProtocolError

SqlValue = None | int | float | str | bytes
# TEXT is str.  SQLite stores TEXT as bytes and does not check that they are
# UTF-8 (a C program, or the shell's CAST(X'E9' AS TEXT), stores any bytes),
# so a TEXT value whose bytes are not valid UTF-8 is a str in which each byte
# that does not decode is a lone surrogate U+DC80..U+DCFF (PEP 383,
# "surrogateescape").  That maps every byte string to exactly one str and
# back, so such a value keeps its exact bytes through the merge, the wire and
# the apply, and stays apart from a BLOB of the same bytes.
TEXT_ERRORS = "surrogateescape"
CELL_FIELDS = 4  # value, hlc, site, past: the fields of one cell in a positional row


def text_of_bytes(raw: bytes) -> str:
    """The str of a TEXT value whose bytes are `raw`, valid UTF-8 or not (see TEXT_ERRORS)."""
    return raw.decode("utf-8", TEXT_ERRORS)


def text_bytes(text: str) -> bytes:
    """The bytes SQLite stores for the TEXT value `text` (the inverse of `text_of_bytes`)."""
    return text.encode("utf-8", TEXT_ERRORS)


def is_utf8_text(text: str) -> bool:
    """Whether `text` is valid UTF-8 TEXT, which every SQL API and msgpack's str can carry."""
    return text.isascii() or not any("\ud800" <= char <= "\udfff" for char in text)


@dataclass(frozen=True, slots=True, order=True)
class Stamp:
    """The version of a write: greater (hlc, site_id) wins."""

    hlc: int
    site_id: str


# The stamp of a cell nobody wrote: the column's default, which ADD COLUMN (or
# a rebuild that added the column) filled in, or the column a sender lacks.
# Every site gives such a cell this stamp, older than any write, so any real
# write replaces it, and replacing it loses nobody's value: it is never a
# conflict (merge.conflicts.knows).  The store's DEFAULT_CELL_HLC and
# DEFAULT_CELL_SITE are its parts (docs/adr/0013-schema-evolution.md).
DEFAULT_CELL_STAMP = Stamp(1, "0" * 32)


@dataclass(frozen=True, slots=True)
class Membership:
    """What a node knows of the cluster's sites (docs/adr/0015-membership-and-tombstone-gc.md).

    Gossiped between nodes so that each can work out which deletes every
    site holds (causal stability) and collect their tombstones.

    `seen`: per member site, its version vector as last heard (merged by max:
    what a site holds only grows), the sender's own high-water mark included.
    `forgotten`: sites taken out by `syncmesh forget`: never members again.
    `cl_floor`: the greatest causal length collected at the sender (even);
    keys new to a node start above it, so a re-insert of a collected key wins
    over its tombstone wherever it is still held.
    """

    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    forgotten: tuple[str, ...] = ()
    cl_floor: int = 0
    # Per origin: the sender collected tombstones of its deletes stamped at or
    # below this (in some table).  A receiver that holds less of that origin
    # knows that it slept past the sender's horizon, and says so.
    horizon: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetHoldings:
    """What a node on a fleet stream knows of what the fleet's sites hold (docs/adr/0017).

    Fleet sites send no vectors; each publishes a *claim* on the stream
    instead (what it holds, per site, and how far its own chain reaches
    when it said so).  A claim counts only once this node applied the
    claimant's chain that far: a claim must not overtake the batches it
    follows.  `own`: what this node holds of each fleet site's writes, its
    own entry being only its writes already on the stream.  `sites`: per
    other fleet site, what its latest usable claim says it holds ({} while
    it has none).  `waiting`: per site, why it has no usable claim.
    `unlisted`: why the stream's sites could not be listed this round
    ("" if they were): a site we do not know could hold a life a delete
    ended, so nothing is collected then.
    """

    own: dict[str, int]
    sites: dict[str, dict[str, int]]
    waiting: dict[str, str] = field(default_factory=dict)
    unlisted: str = ""


# What the writer of a cell value knew of earlier writes to the cell, per
# other site: the greatest HLC of that site's writes it knew, sorted by site
# id.  A writer knows every earlier write of its own site, so its own site
# never appears.  Empty: it knew no other site's write.
Past = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Cell:
    """One column's value, the stamp of the write that set it, and that write's past."""

    value: SqlValue
    stamp: Stamp
    past: Past = ()


@dataclass(frozen=True, slots=True)
class RowState:
    """A row's merge state: existence by causal length, then cells by stamp.

    `cl` odd means alive, even means deleted, 0 means never seen.  `cells`
    maps column name to cell; a column absent from `cells` holds NULL with no
    stamp (never written in this life of the row).
    """

    cl: int
    cl_stamp: Stamp | None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1


@dataclass(frozen=True, slots=True)
class RowChange:
    """A row's state as shipped to a peer (possibly without the cells it holds)."""

    table: str
    pk: tuple[SqlValue, ...]
    state: RowState


@dataclass(frozen=True, slots=True)
class TableRows:
    """The rows of one table in a batch, positional: the form of the wire and the store.

    Each row is `[*pk, cl, cl_hlc, cl_site, then per value column: value, hlc,
    site, past]`.  Sites are indexes into the batch's `sites`.  A cell whose
    hlc is None is absent: the receiver holds it already, or the row is
    deleted.  `past` is None or a compact JSON object text mapping site
    indexes to HLCs (`past_text`).
    Rows stay flat lists from the SQL query to the socket and back, because
    building objects per row and cell cost more than everything else
    together (bench/: decode alone was 56 us a row).
    """

    table: str
    columns: tuple[str, ...]  # the value columns, in table order
    key_count: int
    rows: list[list[SqlValue]]
    # Per column of `columns`, the sender's former names of it, newest first
    # (a column renamed there): the receiver maps an incoming column by its
    # name, then by these, then by its own former names (ADR 0013).  Empty
    # when no column has a former name.
    former: tuple[tuple[str, ...], ...] = ()
    # Per column of `columns`, the stamp of the moment the column was created
    # at the sender (tracked, or added): a receiver that dropped the name
    # tells by it a column added again since its drop from the old one (ADR
    # 0013).  Empty when the sender did not say (a peer from before it).
    created: tuple[int, ...] = ()
    # Per column of `columns`, its generation at the sender: how many times
    # the sender had dropped a column of that name when this one got its
    # slot (0: never).  Sites that drop a name and add it again in the same
    # rolling deploys count alike, so a receiver tells the column added
    # again from the old one without comparing two sites' clocks (ADR
    # 0013).  Empty when every generation is 0, or the sender did not say.
    generations: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.key_count + 3 + CELL_FIELDS * len(self.columns)


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """A contiguous slice (from_seq, to_seq] of a node's change feed.

    `vector` is present only when the slice reaches the sender's head at the
    moment of reading: only then is it true that the receiver, after applying
    the batch, holds everything the sender held (docs/protocol.md, the
    version-vector invariants).
    """

    incarnation: str
    from_seq: int
    to_seq: int
    head_seq: int
    vector: dict[str, int] | None
    sites: tuple[str, ...]
    tables: tuple[TableRows, ...]

    @property
    def row_count(self) -> int:
        return sum(len(table.rows) for table in self.tables)

    @property
    def rows(self) -> list[RowChange]:
        """The rows as objects (for tests, quarantine and people; slow)."""
        return [
            RowChange(
                table.table, tuple(row[: table.key_count]), state_of_row(table, row, self.sites)
            )
            for table in self.tables
            for row in table.rows
        ]

    @classmethod
    def of_rows(
        cls,
        incarnation: str,
        from_seq: int,
        to_seq: int,
        head_seq: int,
        vector: dict[str, int] | None,
        rows: list[RowChange],
        columns: dict[str, tuple[str, ...]] | None = None,
    ) -> ChangeBatch:
        """A batch holding `rows`; a table's columns default to those its rows name."""
        sites: dict[str, int] = {}
        by_table: dict[str, list[RowChange]] = {}
        for change in rows:
            by_table.setdefault(change.table, []).append(change)
        tables = []
        for name, changes in by_table.items():
            known = (columns or {}).get(name)
            if known is None:
                known = tuple(dict.fromkeys(c for change in changes for c in change.state.cells))
            key_count = len(changes[0].pk)
            tables.append(
                TableRows(name, known, key_count, [row_of_state(c, known, sites) for c in changes])
            )
        return cls(incarnation, from_seq, to_seq, head_seq, vector, tuple(sites), tuple(tables))


def state_of_row(table: TableRows, row: list[SqlValue], sites: tuple[str, ...]) -> RowState:
    """The RowState a positional row describes."""
    base = table.key_count
    cl, cl_hlc, cl_site = row[base], row[base + 1], row[base + 2]
    assert isinstance(cl, int)
    cl_stamp = None
    if isinstance(cl_hlc, int) and isinstance(cl_site, int):
        cl_stamp = Stamp(cl_hlc, sites[cl_site])
    cells: dict[str, Cell] = {}
    for index, column in enumerate(table.columns):
        at = base + 3 + CELL_FIELDS * index
        hlc, site, past = row[at + 1], row[at + 2], row[at + 3]
        if isinstance(hlc, int) and isinstance(site, int):
            known = () if past is None else past_of_text(past, sites)  # type: ignore[arg-type]
            cells[column] = Cell(row[at], Stamp(hlc, sites[site]), known)
    return RowState(cl, cl_stamp, cells)


def past_of_text(text: str, sites: Sequence[str]) -> Past:
    """The past in `text` (JSON object: site index -> HLC), with `sites` naming the indexes.

    Also reads a knowledge text of the store (same form).  A site named
    twice (a batch's site table may repeat an id) keeps its greater HLC.
    """
    known: dict[str, int] = {}
    for index, hlc in json.loads(text).items():
        site = sites[int(index)]
        if known.get(site, -1) < hlc:
            known[site] = hlc
    return tuple(sorted(known.items()))


def past_text(past: Past | dict[str, int], index: Callable[[str], int]) -> str | None:
    """`past` as stored and sent: compact JSON, site ids as `index(site)`; None if empty."""
    items = past.items() if isinstance(past, dict) else past
    if not items:
        return None
    return json.dumps({str(index(site)): hlc for site, hlc in items}, separators=(",", ":"))


def row_of_state(
    change: RowChange, columns: tuple[str, ...], sites: dict[str, int]
) -> list[SqlValue]:
    """The positional row of `change`; new site ids are appended to `sites`."""

    def index(site_id: str) -> int:
        return sites.setdefault(site_id, len(sites))

    state = change.state
    stamp = state.cl_stamp
    row: list[SqlValue] = [
        *change.pk,
        state.cl,
        None if stamp is None else stamp.hlc,
        None if stamp is None else index(stamp.site_id),
    ]
    for column in columns:
        cell = state.cells.get(column)
        if cell is None:
            row.extend((None, None, None, None))
        else:
            row.extend(
                (cell.value, cell.stamp.hlc, index(cell.stamp.site_id), past_text(cell.past, index))
            )
    return row


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What syncmesh knows of a tracked table: its columns and primary key."""

    name: str
    columns: tuple[str, ...]
    declared_types: tuple[str, ...]
    pk: tuple[str, ...]
    # Per column of `columns`: the names it had before (RENAME COLUMN), newest
    # first; `()` when no column was ever renamed (docs/adr/0013-schema-evolution.md).
    former: tuple[tuple[str, ...], ...] = ()
    # The table's own former names (RENAME TABLE), newest first.
    former_names: tuple[str, ...] = ()

    def former_of(self, column: str) -> tuple[str, ...]:
        """The former names of `column` (none if it was never renamed)."""
        if not self.former:
            return ()
        return self.former[self.columns.index(column)]

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The non-key columns, in table order: each has its own stamp."""
        return tuple(column for column in self.columns if column not in self.pk)


# Plain (msgpack-ready) form of a row change, kept by the quarantine table:
# [table, [pk...], cl, cl_hlc, cl_site, [[column, value, hlc, site, past]...]],
# past as [[site, hlc], ...].  Entries written before cells had a past have
# four fields per cell; they read as an empty past.
PlainRow = list[object]
_VALUE_TYPES = (type(None), int, float, str, bytes)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def row_to_plain(change: RowChange) -> PlainRow:
    state = change.state
    cl_stamp = state.cl_stamp
    cells = [
        [
            column,
            cell.value,
            cell.stamp.hlc,
            cell.stamp.site_id,
            [[site, hlc] for site, hlc in cell.past],
        ]
        for column, cell in state.cells.items()
    ]
    return [
        change.table,
        list(change.pk),
        state.cl,
        None if cl_stamp is None else cl_stamp.hlc,
        None if cl_stamp is None else cl_stamp.site_id,
        cells,
    ]


def json_safe(value: SqlValue) -> object:
    """`value` as JSON can hold it: a blob as {"$blob": hex}, an infinite REAL as {"$real": ...}.

    Integers, finite reals, text and NULL stay as they are (Python's json
    writes 1.0 as `1.0`, so INTEGER 1 and REAL 1.0 stay apart in the text).
    """
    if isinstance(value, bytes):
        return {"$blob": value.hex()}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"$real": "inf" if value > 0 else "-inf"}
    return value


def from_json_safe(plain: object) -> SqlValue:
    """The SQL value that `json_safe` turned into `plain`."""
    if isinstance(plain, dict):
        if "$blob" in plain:
            return bytes.fromhex(plain["$blob"])
        return float(plain["$real"])
    assert plain is None or isinstance(plain, int | float | str), plain
    return plain


def _check_value(value: object, where: str) -> SqlValue:
    if not isinstance(value, _VALUE_TYPES) or isinstance(value, bool):
        raise ProtocolError(f"{where}: value of type {type(value).__name__} is not an SQL value")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"{where}: integer {value} does not fit SQLite's 64 bits")
    return value


def _check_hlc(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
        raise ProtocolError(f"{where}: stamp {value!r} is not a non-negative 64-bit integer")
    return value


def _check_site(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ProtocolError(f"{where}: site id {value!r} is not a string of 1-64 characters")
    return value


def row_from_plain(plain: object) -> RowChange:
    """The row change in `plain`, validated; ProtocolError names what is wrong."""
    if not isinstance(plain, list) or len(plain) != 6:
        raise ProtocolError("row change: expected a list of 6 fields")
    table, pk, cl, cl_hlc, cl_site, cells = plain
    if not isinstance(table, str) or not table:
        raise ProtocolError("row change: table name is not a non-empty string")
    where = f"row change in {table!r}"
    if not isinstance(pk, list) or not pk:
        raise ProtocolError(f"{where}: primary key is not a non-empty list")
    key = tuple(_check_value(value, where) for value in pk)
    if not isinstance(cl, int) or isinstance(cl, bool) or not 0 < cl <= INT64_MAX:
        raise ProtocolError(f"{where}: causal length {cl!r} is not a positive integer")
    cl_stamp = None
    if cl_hlc is not None or cl_site is not None:
        cl_stamp = Stamp(_check_hlc(cl_hlc, where), _check_site(cl_site, where))
    if not isinstance(cells, list):
        raise ProtocolError(f"{where}: cells are not a list")
    decoded: dict[str, Cell] = {}
    for cell in cells:
        if not isinstance(cell, list) or len(cell) not in (4, 5) or not isinstance(cell[0], str):
            raise ProtocolError(f"{where}: a cell is not [column, value, hlc, site, past]")
        column, value, hlc, site = cell[:4]
        past = _check_past(cell[4] if len(cell) == 5 else [], where)
        decoded[column] = Cell(
            _check_value(value, where),
            Stamp(_check_hlc(hlc, where), _check_site(site, where)),
            past,
        )
    return RowChange(table, key, RowState(cl, cl_stamp, decoded))


def _check_past(plain: object, where: str) -> Past:
    if not isinstance(plain, list):
        raise ProtocolError(f"{where}: a cell's past is not a list")
    known: dict[str, int] = {}
    for entry in plain:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ProtocolError(f"{where}: a past entry is not [site, hlc]")
        site, hlc = _check_site(entry[0], where), _check_hlc(entry[1], where)
        known[site] = max(hlc, known.get(site, hlc))
    return tuple(sorted(known.items()))
