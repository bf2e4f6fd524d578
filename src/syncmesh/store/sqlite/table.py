"""One tracked table: its SQL, by concern, and the conversions of its rows.

A `TableSql` holds the statement texts of one table, built once when the
table is loaded: `sql_capture` (the log, the stamping upsert, the
backfill), `sql_feed` (reading the feed), `sql_apply` (loading and writing
merged rows) and `sql_verify` (the hash trees).  Its methods turn shadow
rows into `RowState` values and back: the merge runs on those.  Site ids
are stored as ordinals (`SiteMap`); a cell's past and the node's knowledge
of a cell (in the row's `pasts` column) are JSON objects keyed by the same
ordinals, which are also the site indexes of an outgoing batch.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence

from syncmesh.merge import Knowledge
from syncmesh.model import CELL_FIELDS, INT64_MAX, RowState, SqlValue, TableRows, TableSpec
from syncmesh.store.sqlite.ddl import PASTS_COLUMN, quote_identifier
from syncmesh.store.sqlite.execute import execute_many, execute_one
from syncmesh.store.sqlite.introspect import replacing_unique_sets
from syncmesh.store.sqlite.layout import TableLayout
from syncmesh.store.sqlite.names import TableNames
from syncmesh.store.sqlite.sites import SiteMap
from syncmesh.store.sqlite.sql_apply import ApplySql
from syncmesh.store.sqlite.sql_capture import CaptureSql
from syncmesh.store.sqlite.sql_feed import FeedSql
from syncmesh.store.sqlite.sql_verify import VerifySql
from syncmesh.store.summary import (
    DEFAULT_CELL_HLC,
    NO_STAMP,
    fields_digest,
    key_hash,
    trim_default_cells,
)
from syncmesh.store.summary import digest as row_digest

KEYS_PER_QUERY = 400  # stays below SQLite's default limit of 999 host parameters


class TableSql:
    """Statement texts and row conversion for one tracked table."""

    def __init__(
        self, layout: TableLayout | TableSpec, *, digests: bool = True, values_fp: bool = True
    ) -> None:
        """`layout`: the table's slots (a bare spec: a table tracked now, slot i = index i).

        `digests`: keep the rows' digests up to date (off only to measure their cost).
        `values_fp`: the capture keeps the rows' value fingerprints (off: a
        definition from before DDL, reconcile.py).
        """
        if isinstance(layout, TableSpec):
            layout = TableLayout.fresh(layout)
        spec = layout.spec
        names = TableNames.of(layout)
        self.layout = layout
        self.spec = spec
        self.names = names
        self.table = names.table
        self.shadow = names.shadow
        self.log = names.log
        self.key_count = names.key_count
        self.values = names.values
        self.slots = names.slots
        # Rows are selected in the positional layout of `TableRows` (sites as
        # local ordinals), so the feed needs no conversion per row.
        self.shape = TableRows(spec.name, self.values, self.key_count, [])
        self.sql_capture = CaptureSql(names, digests=digests, values_fp=values_fp)
        self.sql_feed = FeedSql(names)
        self.sql_apply = ApplySql(names)
        self.sql_verify = VerifySql(names)
        # Read on first use by the apply (`replace_guards`); a new `load` resets it.
        self._replace_guards: list[tuple[str, tuple[int, ...]]] | None = None

    def load(
        self, connection: sqlite3.Connection, pks: list[tuple[SqlValue, ...]]
    ) -> dict[tuple[SqlValue, ...], tuple[list[SqlValue], str | None, int | None]]:
        """Per key of `pks` that exists: its positional row (sites as ordinals), `pasts`, digest.

        `pasts` (see `knowledge_of`) holds what this node knows of each cell
        beyond the value's past.
        """
        found: dict[tuple[SqlValue, ...], tuple[list[SqlValue], str | None, int | None]] = {}
        keys = ", ".join(f"s.k{index}" for index in range(self.key_count))
        step = KEYS_PER_QUERY // max(1, self.key_count)
        tuple_marks = "(" + ", ".join("?" * self.key_count) + ")"
        width = self.shape.width
        for start in range(0, len(pks), step):
            chunk = pks[start : start + step]
            marks = ", ".join([tuple_marks] * len(chunk))
            sql = f"{self.sql_apply.load_select} WHERE ({keys}) IN (VALUES {marks})"
            params = [value for pk in chunk for value in pk]
            for row in execute_one(connection, sql, params):
                found[tuple(row[: self.key_count])] = (
                    list(row[:width]),
                    row[width],
                    row[width + 1],
                )
        return found

    def replace_guards(self, connection: sqlite3.Connection) -> list[tuple[str, tuple[int, ...]]]:
        """Per UNIQUE ... ON CONFLICT REPLACE column set: a query for another key holding a value.

        Each is (SQL, positions in a user row of the values it binds, then
        the key).  Empty for a table without such a constraint: nearly all.
        """
        if self._replace_guards is None:
            width = self.key_count
            columns = (*self.spec.pk, *self.values)
            not_this_key = " AND ".join(
                f"{quote_identifier(column)} = ?" for column in self.spec.pk
            )
            guards = []
            for unique in replacing_unique_sets(connection, self.spec.name):
                same = " AND ".join(f"{quote_identifier(column)} = ?" for column in unique)
                positions = (*(columns.index(column) for column in unique), *range(width))
                guards.append(
                    (
                        f"SELECT {', '.join(map(quote_identifier, self.spec.pk))}"
                        f" FROM {self.table} WHERE {same} AND NOT ({not_this_key}) LIMIT 1",
                        positions,
                    )
                )
            self._replace_guards = guards
        return self._replace_guards

    def shadow_row(
        self,
        pk: tuple[SqlValue, ...],
        state: RowState,
        seq: int,
        sites: SiteMap,
        known: Mapping[str, Knowledge],
    ) -> list[SqlValue]:
        """The shadow row of `state`, with `known` (per column) as the node's knowledge.

        Without pasts and knowledge it has the layout of `ApplySql.shadow_plain_sql`
        (see `write_shadow`): keys, cl and its stamp, seq, key hash,
        digest, the cells' HLCs, then their sites (ordinals).
        """
        cl_stamp = state.cl_stamp
        cells = [state.cells.get(column) for column in self.values]
        hlcs = [None if cell is None else cell.stamp.hlc for cell in cells]
        site_ids = [None if cell is None else cell.stamp.site_id for cell in cells]
        hashed = key_hash(pk)
        row_digest_value = row_digest(
            hashed,
            state.cl,
            None if cl_stamp is None else cl_stamp.hlc,
            None if cl_stamp is None else cl_stamp.site_id,
            [value for pair in zip(hlcs, site_ids, strict=True) for value in pair],
        )
        row: list[SqlValue] = [
            *pk,
            state.cl,
            None if cl_stamp is None else cl_stamp.hlc,
            None if cl_stamp is None else sites.ordinal(cl_stamp.site_id),
            seq,
            hashed,
            row_digest_value,
            *hlcs,
            *(None if site is None else sites.ordinal(site) for site in site_ids),
        ]
        pasts = bool(known) or any(cell is not None and cell.past for cell in cells)
        if pasts:
            row.append(self.pasts_text(state, known, sites))
        return row

    def pasts_text(
        self, state: RowState, known: Mapping[str, Knowledge], sites: SiteMap
    ) -> str | None:
        """The `pasts` column of a row in `state` with `known`; None when all are empty."""
        pasts: dict[str, dict[str, dict[str, int]]] = {}
        for slot, column in zip(self.slots, self.values, strict=True):
            cell = state.cells.get(column)
            entry = {}
            if cell is not None and cell.past:
                entry["p"] = {str(sites.ordinal(site)): hlc for site, hlc in cell.past}
            if known.get(column):
                entry["k"] = {str(sites.ordinal(site)): hlc for site, hlc in known[column].items()}
            if entry:
                pasts[str(slot)] = entry
        return json.dumps(pasts, separators=(",", ":")) if pasts else None

    def knowledge_of(self, text: str | None, sites: Sequence[str]) -> dict[str, Knowledge]:
        """What a row's `pasts` says this node knows beyond each cell's past, by column."""
        if text is None:
            return {}
        known: dict[str, Knowledge] = {}
        for slot, entry in json.loads(text).items():
            column = self.layout.column_of_slot(int(slot))
            if "k" in entry and column is not None:  # a dropped column's entry is left alone
                known[column] = {sites[int(ordinal)]: hlc for ordinal, hlc in entry["k"].items()}
        return known

    def rename_ordinal(self, connection: sqlite3.Connection, old: int, new: int) -> None:
        """Make every past and knowledge entry of site ordinal `old` name `new`."""
        keys = ", ".join(f"k{index}" for index in range(self.key_count))
        rows = connection.execute(
            f"SELECT {keys}, {PASTS_COLUMN} FROM {self.shadow} WHERE {PASTS_COLUMN} IS NOT NULL"
        ).fetchall()
        renamed = []
        for row in rows:
            pasts = json.loads(row[-1])
            for entry in pasts.values():
                for known in entry.values():
                    if str(old) in known:
                        known[str(new)] = known.pop(str(old))
            renamed.append((json.dumps(pasts, separators=(",", ":")), *row[:-1]))
        execute_many(connection, self.sql_apply.knowledge_sql, renamed)

    def write_shadow(self, connection: sqlite3.Connection, rows: list[list[SqlValue]]) -> None:
        """Write shadow rows made by `shadow_row` or `fast_rows`, with or without `pasts`."""
        plain = [row for row in rows if len(row) == self.sql_apply.plain_width]
        if plain:
            execute_many(connection, self.sql_apply.shadow_plain_sql, plain)
        if len(plain) < len(rows):
            full = [row for row in rows if len(row) != self.sql_apply.plain_width]
            execute_many(connection, self.sql_apply.shadow_write_sql, full)

    def knowledge_row(
        self,
        pk: tuple[SqlValue, ...],
        state: RowState,
        known: Mapping[str, Knowledge],
        sites: SiteMap,
    ) -> list[SqlValue]:
        """Parameters of `ApplySql.knowledge_sql`: the row's new `pasts`, then the key."""
        return [self.pasts_text(state, known, sites), *pk]

    def user_row(self, pk: tuple[SqlValue, ...], state: RowState) -> list[SqlValue]:
        row: list[SqlValue] = list(pk)
        for column in self.values:
            cell = state.cells.get(column)
            row.append(None if cell is None else cell.value)
        return row

    def fast_rows(
        self,
        row: list[SqlValue],
        ordinals: list[int],
        seq: int,
        batch_codes: Mapping[SqlValue, int],
    ) -> tuple[list[SqlValue], list[SqlValue] | None]:
        """(shadow row, user row or None) of an incoming row new to this node.

        Joining with nothing yields the incoming state itself, so the rows
        are copied out positionally, with batch site indexes made ordinals.
        """
        keys = self.key_count
        cl, cl_hlc, cl_site = row[keys], row[keys + 1], row[keys + 2]
        alive = cl % 2 == 1  # type: ignore[operator]
        # Cells are (value, hlc, site, past) from keys + 3.  The fast path of
        # a bootstrap runs here for every row: slices, no loop per cell.
        hlcs, sites = row[keys + 4 :: CELL_FIELDS], row[keys + 5 :: CELL_FIELDS]
        hashed = key_hash(row[:keys])
        head = [hashed, cl, NO_STAMP if cl_hlc is None else cl_hlc, batch_codes[cl_site]]
        if alive:
            stamps = hlcs if None not in hlcs else [NO_STAMP if h is None else h for h in hlcs]
            codes = list(map(batch_codes.__getitem__, sites))
            if stamps and stamps[-1] == DEFAULT_CELL_HLC:
                stamps, codes = trim_default_cells(stamps, codes)  # type: ignore[assignment]
            head += [*stamps, *codes]
        if None in sites:
            site_ordinals = [None if site is None else ordinals[site] for site in sites]  # type: ignore[index]
        else:
            site_ordinals = list(map(ordinals.__getitem__, sites))  # type: ignore[arg-type]
        shadow: list[SqlValue] = [
            *row[: keys + 2],
            None if cl_site is None else ordinals[cl_site],  # type: ignore[index]
            seq,
            hashed,
            fields_digest(head),  # type: ignore[arg-type]
            *hlcs,
            *site_ordinals,
        ]
        user = row[:keys] + row[keys + 3 :: CELL_FIELDS]
        row_pasts = row[keys + 6 :: CELL_FIELDS]
        pasts = row_pasts.count(None) != len(row_pasts)
        if pasts:  # with `pasts`: the cells' pasts, and no knowledge (the key is new here)
            shadow.append(
                json.dumps(
                    {
                        str(slot): {"p": _remapped(row[at + 3], ordinals)}  # type: ignore[arg-type]
                        for slot, at in zip(
                            self.slots, range(keys + 3, len(row), CELL_FIELDS), strict=True
                        )
                        if row[at + 3] is not None
                    },
                    separators=(",", ":"),
                )
            )
        return shadow, user if alive else None


def clear_unstamped_values(rows: list[list[SqlValue]], key_count: int) -> None:
    """Blank, in place, the value of each cell without a stamp (as the wire wants it).

    The feed joins the user table's values to the shadow's stamps.  A cell
    without a stamp was never written in the row's life (a column added
    after, holding its DEFAULT), and its value is not sent: the codec
    refuses a value without a stamp.  Rows whose cells are all stamped, nearly all,
    cost one slice each.
    """
    first = key_count + 3
    for row in rows:
        if None in row[first + 1 :: CELL_FIELDS]:
            for at in range(first, len(row), CELL_FIELDS):
                if row[at + 1] is None:
                    row[at] = row[at + 3] = None


def _remapped(text: str, ordinals: Sequence[int]) -> dict[str, int]:
    """A past whose keys are a batch's site indexes, keyed by our ordinals instead."""
    known: dict[str, int] = {}
    for index, hlc in json.loads(text).items():
        ordinal = str(ordinals[int(index)])
        known[ordinal] = max(hlc, known.get(ordinal, hlc))
    return known


# A cell's past as the store writes it: compact JSON of site ordinal -> HLC
# (the codec's rule for the wire: no spaces, no leading zeros).
_HLC_JSON = r"(?:0|[1-9]\d{0,18})"
_PAST = re.compile(rf'\{{(?:"\d{{1,9}}":{_HLC_JSON}(?:,"\d{{1,9}}":{_HLC_JSON})*)?\}}')
_PAST_SITE = re.compile(r'"(\d+)":')


def row_problem(row: list[SqlValue], keys: int, sites_count: int) -> str | None:
    """What is wrong with a shadow row's causal length, stamps and pasts; None if nothing.

    `row` is positional (`TableSql.load`, the feed), sites as our ordinals.
    Another program can write anything into a shadow table (issue 12): the
    feed holds such a row back and the apply quarantines a peer's row for
    its key, instead of failing on it (and on everything after it).  The
    common case costs a few type checks per cell: it runs for every row
    that leaves a node, so a sound row is passed by `_is_plainly_sound`
    (no call per cell; `python -m bench profile` reports the cost), and only
    the others get the checks that name the problem.
    """
    if _is_plainly_sound(row, keys, sites_count):
        return None
    cl, cl_hlc, cl_site = row[keys], row[keys + 1], row[keys + 2]
    if type(cl) is not int or not 0 < cl <= INT64_MAX:
        return f"has causal length {cl!r:.40}, not a positive integer"
    problem = _stamp_problem(cl_hlc, cl_site, sites_count, "its causal length")
    if problem is not None:
        return problem
    for at in range(keys + 3, len(row), CELL_FIELDS):
        hlc, site, past = row[at + 1], row[at + 2], row[at + 3]
        if hlc is None and site is None:
            continue  # never written in this life: sent without value or past
        where = f"cell {(at - keys - 3) // CELL_FIELDS}"
        problem = _stamp_problem(hlc, site, sites_count, where)
        if problem is None and past is not None:
            problem = _past_problem(past, sites_count, where)
        if problem is not None:
            return problem
    return None


def _is_plainly_sound(row: list[SqlValue], keys: int, sites_count: int) -> bool:
    """True for a sound row whose cells are all stamped and have no past.

    The feed's common case, in one loop of inline tests (half the time of
    the checks that name a problem).  False does not mean unsound: the
    caller then checks field by field.
    """
    cl, cl_hlc, cl_site = row[keys], row[keys + 1], row[keys + 2]
    if not (
        type(cl) is int
        and type(cl_hlc) is int
        and type(cl_site) is int
        and 0 < cl <= INT64_MAX
        and 0 <= cl_hlc <= INT64_MAX
        and 0 <= cl_site < sites_count
    ):
        return False
    for at in range(keys + 3, len(row), CELL_FIELDS):
        hlc, site = row[at + 1], row[at + 2]
        if (
            type(hlc) is int
            and type(site) is int
            and 0 <= hlc <= INT64_MAX
            and 0 <= site < sites_count
            and row[at + 3] is None
        ):
            continue
        return False
    return True


def _stamp_problem(hlc: SqlValue, site: SqlValue, sites_count: int, where: str) -> str | None:
    if type(hlc) is not int or not 0 <= hlc <= INT64_MAX:
        return f"has stamp {hlc!r:.40} for {where}, not a non-negative 64-bit integer"
    if type(site) is not int or not 0 <= site < sites_count:
        return f"has site ordinal {site!r:.40} for {where}, not one of this file's sites"
    return None


def _past_problem(past: SqlValue, sites_count: int, where: str) -> str | None:
    if type(past) is not str or _PAST.fullmatch(past) is None:
        return f"has past {past!r:.40} for {where}, not a JSON object of stamps"
    if any(int(site) >= sites_count for site in _PAST_SITE.findall(past)):
        return f"has past {past!r:.40} for {where}, naming a site this file does not know"
    return None


def pasts_problem(text: SqlValue, sites_count: int) -> str | None:
    """What is wrong with a shadow row's `pasts` as `TableSql.knowledge_of` reads it, or None."""
    if text is None:
        return None
    try:
        loaded = json.loads(text) if type(text) is str else None
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        return f"has pasts {text!r:.40}, not a JSON object"
    for slot, entry in loaded.items():
        if not slot.isdigit() or not isinstance(entry, dict):
            return f"has pasts entry {slot!r:.20} that is not a cell's"
        for part in ("p", "k"):
            stamps = entry.get(part, {})
            if not isinstance(stamps, dict) or not all(
                ordinal.isdigit() and int(ordinal) < sites_count and type(hlc) is int
                for ordinal, hlc in stamps.items()
            ):
                return f"has pasts entry {slot!r:.20} naming stamps wrongly"
    return None
