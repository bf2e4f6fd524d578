"""Per-table SQL for the store: loading row states, reading the feed, writing merges.

One `TableSql` per tracked table holds the statement texts (identifiers
quoted once, here) and turns shadow rows into `RowState` values and back.
Site ids are stored as small integers (`_syncmesh_sites.ordinal`, 0 being
this node) to keep shadow rows compact; `SiteMap` translates.  A cell's
past and the node's knowledge of a cell (in the row's `pasts` column) are
JSON objects keyed by the same ordinals, which are also the site indexes
of an outgoing batch.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence

from syncmesh.errors import StoreError
from syncmesh.merge import Knowledge
from syncmesh.model import CELL_FIELDS, RowState, SqlValue, TableRows, TableSpec
from syncmesh.schema import (
    ALL_COLUMNS,
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    OP_CHECK,
    OP_DELETE,
    OP_INSERT,
    PASTS_COLUMN,
    log_name,
    quote_identifier,
    shadow_columns,
    shadow_name,
)
from syncmesh.store.summary import (
    FOLD_DIGEST_FUNCTION,
    KEY_HASH_FUNCTION,
    LEAF_MASK,
    NO_STAMP,
    ROW_DIGEST_FUNCTION,
    SiteCodes,
    fields_digest,
    key_hash,
    site_code,
)
from syncmesh.store.summary import digest as row_digest

UNKNOWN = -1  # a folded key's existence, until the table is asked
KEYS_PER_QUERY = 400  # stays below SQLite's default limit of 999 host parameters

log = logging.getLogger(__name__)


class SiteMap:
    """Site id <-> ordinal, cached; new sites are inserted on first sight."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        # Ordinal -> site code, for row digests (store.summary).
        self.codes = SiteCodes(self.site)
        self._by_ordinal: dict[int, str] = {}
        self._by_site: dict[str, int] = {}
        self._ordered: tuple[str, ...] = ()
        for ordinal, site_id in connection.execute("SELECT ordinal, site_id FROM _syncmesh_sites"):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal

    def site(self, ordinal: int) -> str:
        if ordinal not in self._by_ordinal:
            row = self._connection.execute(
                "SELECT site_id FROM _syncmesh_sites WHERE ordinal = ?", (ordinal,)
            ).fetchone()
            assert row is not None, f"site ordinal {ordinal} is not in _syncmesh_sites"
            self._by_ordinal[ordinal] = row[0]
            self._by_site[row[0]] = ordinal
        return self._by_ordinal[ordinal]

    def ordinal(self, site_id: str) -> int:
        """The ordinal of `site_id`; inserts it (inside the caller's transaction)."""
        found = self._by_site.get(site_id)
        if found is not None:
            return found
        row = self._connection.execute(
            "SELECT ordinal FROM _syncmesh_sites WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is None:
            cursor = self._connection.execute(
                "INSERT INTO _syncmesh_sites (site_id) VALUES (?)", (site_id,)
            )
            assert cursor.lastrowid is not None
            ordinal = int(cursor.lastrowid)
        else:
            ordinal = int(row[0])
        self._by_site[site_id] = ordinal
        self._by_ordinal[ordinal] = site_id
        return ordinal

    def all_sites(self) -> tuple[str, ...]:
        """Every known site id, indexed by ordinal (ordinals are dense from 0).

        Another process (`syncmesh quarantine retry`) may have added sites
        since we looked, and a row may name them, so newer ordinals are read.
        """
        for ordinal, site_id in self._connection.execute(
            "SELECT ordinal, site_id FROM _syncmesh_sites WHERE ordinal >= ?", (len(self._ordered),)
        ):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal
        if len(self._by_ordinal) != len(self._ordered):
            count = max(self._by_ordinal) + 1
            assert count == len(self._by_ordinal), "site ordinals are not dense"
            self._ordered = tuple(self._by_ordinal[ordinal] for ordinal in range(count))
        return self._ordered

    def forget_uncommitted(self) -> None:
        """Drop the cache after a rollback: inserted ordinals may not exist any more."""
        self._by_ordinal.clear()
        self.codes.clear()
        self._by_site.clear()
        self._ordered = ()
        for ordinal, site_id in self._connection.execute(
            "SELECT ordinal, site_id FROM _syncmesh_sites"
        ):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal


class TableSql:
    """Statement texts and row conversion for one tracked table."""

    def __init__(self, spec: TableSpec, *, digests: bool = True) -> None:
        """`digests`: keep the rows' digests up to date (off only to measure their cost)."""
        self.spec = spec
        self.digests = digests
        self.table = quote_identifier(spec.name)
        self.shadow = quote_identifier(shadow_name(spec.name))
        self.key_count = len(spec.pk)
        self.values = spec.value_columns
        # Rows are selected in the positional layout of `TableRows` (sites as
        # local ordinals), so the feed needs no conversion per row.
        self.shape = TableRows(spec.name, self.values, self.key_count, [])
        keys = [f"s.k{index}" for index in range(self.key_count)]
        # A cell's past comes out of the row's `pasts` (NULL for nearly every
        # row, and then no JSON is looked at).
        cells = [
            f"t.{quote_identifier(column)}, s.h{index}, s.s{index},"
            f" CASE WHEN s.{PASTS_COLUMN} IS NOT NULL"
            f" THEN json_extract(s.{PASTS_COLUMN}, '$.\"{index}\".p') END"
            for index, column in enumerate(self.values)
        ]
        join = " AND ".join(
            f"t.{quote_identifier(column)} = s.k{index}" for index, column in enumerate(spec.pk)
        )
        selected = ", ".join([*keys, "s.cl", "s.cl_hlc", "s.cl_site", *cells])
        self._select = f"SELECT {selected} FROM {self.shadow} s LEFT JOIN {self.table} t ON {join}"
        # The rows as `_select` has them, then the `pasts` column (knowledge).
        self._load_select = (
            f"SELECT {selected}, s.{PASTS_COLUMN}, s.{DIGEST_COLUMN} FROM {self.shadow} s"
            f" LEFT JOIN {self.table} t ON {join}"
        )
        # Rows for the hash tree: key, cl, its stamp, leaf, digest, cell
        # stamps, then the values (for deep digests).
        stamps = ", ".join(f"s.h{index}, s.s{index}" for index in range(len(self.values)))
        values = ", ".join(f"t.{quote_identifier(column)}" for column in self.values)
        tree_columns = ", ".join(
            part
            for part in (
                ", ".join(keys),
                f"s.cl, s.cl_hlc, s.cl_site, s.{KEY_HASH_COLUMN}, s.{DIGEST_COLUMN}",
                stamps,
            )
            if part
        )
        self.tree_pairs_sql = f"SELECT {KEY_HASH_COLUMN}, {DIGEST_COLUMN} FROM {self.shadow}"
        self.leaf_match = (
            f" WHERE (s.{KEY_HASH_COLUMN} & {LEAF_MASK}) IN (SELECT value FROM json_each(?))"
        )
        self._tree_rows = f"SELECT {tree_columns} FROM {self.shadow} s"
        self._tree_deep_rows = (
            f"SELECT {tree_columns}{', ' + values if values else ''} FROM {self.shadow} s"
            f" LEFT JOIN {self.table} t ON {join}"
        )
        shadow_key_list = ", ".join(f"k{index}" for index in range(self.key_count))
        digest_args = ", ".join(
            [
                f"{KEY_HASH_FUNCTION}({shadow_key_list})",
                "cl, cl_hlc, cl_site",
                *(f"h{index}, s{index}" for index in range(len(self.values))),
            ]
        )
        self.fill_digests_sql = (
            f"UPDATE {self.shadow} SET {KEY_HASH_COLUMN} = {KEY_HASH_FUNCTION}({shadow_key_list}),"
            f" {DIGEST_COLUMN} = {ROW_DIGEST_FUNCTION}({digest_args})"
            f" WHERE {KEY_HASH_COLUMN} IS NULL OR {DIGEST_COLUMN} IS NULL"
        )
        self.set_digest_sql = (
            f"UPDATE {self.shadow} SET {KEY_HASH_COLUMN} = ?, {DIGEST_COLUMN} = ? WHERE "
            + " AND ".join(f"k{index} = ?" for index in range(self.key_count))
        )
        self.feed_sql = f"{self._select} WHERE s.seq > ? AND s.seq <= ? ORDER BY s.seq"
        self._feed_prefix = f"{self._select} WHERE s.seq > ? AND s.seq <= ?"
        self.seqs_sql = f"SELECT seq FROM {self.shadow} WHERE seq > ? ORDER BY seq LIMIT ?"
        self.rows_after_sql = (
            f"SELECT count(*) FROM (SELECT 1 FROM {self.shadow} WHERE seq > ? LIMIT ?)"
        )
        self.log = quote_identifier(log_name(spec.name))
        log_keys = ", ".join(f"k{index}" for index in range(self.key_count))
        self.pending_sql = f"SELECT 1 FROM {self.log} LIMIT 1"
        self.log_sql = f"SELECT id, op, mask, {log_keys} FROM {self.log} ORDER BY id LIMIT ?"
        self.log_count_sql = f"SELECT count(*) FROM {self.log}"
        self.log_clear_sql = f"DELETE FROM {self.log} WHERE id <= ?"
        shadow_keys = ", ".join(f"k{index}" for index in range(self.key_count))
        self.first_pending_seq_sql = (
            f"SELECT min(seq) FROM {self.shadow} WHERE seq > ? AND seq <= ?"
            f" AND ({shadow_keys}) IN (SELECT {log_keys} FROM {self.log})"
        )
        self.group_keys_sql = (
            f"SELECT {shadow_keys} FROM {self.shadow} WHERE seq = ? ORDER BY {shadow_keys}"
        )
        self.move_sql = f"UPDATE {self.shadow} SET seq = ? WHERE " + " AND ".join(
            f"k{index} = ?" for index in range(self.key_count)
        )
        self.exists_sql = f"SELECT 1 FROM {self.table} WHERE " + " AND ".join(
            f"{quote_identifier(column)} = ?" for column in spec.pk
        )
        # Rows written whole (the merge) list the cells' HLCs, then their
        # sites: the layout the digest's fields have (store.summary.digest),
        # so a row new here is copied out of a batch by slices.
        count = len(self.values)
        names = [
            *shadow_columns(spec)[: self.key_count + 6],
            *(f"h{index}" for index in range(count)),
            *(f"s{index}" for index in range(count)),
            PASTS_COLUMN,
        ]
        self.shadow_write_sql = (
            f"INSERT OR REPLACE INTO {self.shadow} ({', '.join(names)})"
            f" VALUES ({', '.join('?' * len(names))})"
        )
        # The same without `pasts` (left NULL), for rows whose cells have no
        # past and no knowledge: nearly all.  Binding None costs sqlite3 an
        # adapter lookup per parameter.
        plain = [name for name in names if name != PASTS_COLUMN]
        self._plain_width = len(plain)
        self.shadow_plain_sql = (
            f"INSERT OR REPLACE INTO {self.shadow} ({', '.join(plain)})"
            f" VALUES ({', '.join('?' * len(plain))})"
        )
        columns = [quote_identifier(column) for column in (*spec.pk, *self.values)]
        key_list = ", ".join(quote_identifier(column) for column in spec.pk)
        update = ", ".join(
            f"{quote_identifier(column)} = excluded.{quote_identifier(column)}"
            for column in self.values
        )
        conflict = f"DO UPDATE SET {update}" if update else "DO NOTHING"
        self.upsert_sql = (
            f"INSERT INTO {self.table} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({key_list}) {conflict}"
        )
        self.delete_sql = f"DELETE FROM {self.table} WHERE " + " AND ".join(
            f"{quote_identifier(column)} = ?" for column in spec.pk
        )
        self.knowledge_sql = f"UPDATE {self.shadow} SET {PASTS_COLUMN} = ? WHERE " + " AND ".join(
            f"k{index} = ?" for index in range(self.key_count)
        )
        self.capture_sql = self._capture_sql()

    def _capture_sql(self) -> str:
        """Fold one key's logged writes into its shadow row, stamping what changed.

        Parameters: ?1 alive (the key's row exists after the writes), ?2 deleted
        (a delete is among them: a re-insert starts a new life), ?3 the mask of
        changed value columns, ?4 the HLC, ?5 the seq, then the key values.  A
        key new to the shadow gets every column stamped: nothing is known of it.
        """
        names = shadow_columns(self.spec)
        keys = [f"?{6 + index}" for index in range(self.key_count)]
        hashed_key, row_digest = f"?{6 + self.key_count}", f"?{7 + self.key_count}"
        # A key born dead (inserted and deleted before one capture) has no
        # cell stamps at all: neither hlc nor site, or the feed would ship a
        # site without a stamp, which peers rightly refuse.
        new_cells = [
            value
            for _ in self.values
            for value in ("CASE WHEN ?1 THEN ?4 END", "CASE WHEN ?1 THEN 0 END")
        ]
        values = [
            *keys,
            "CASE WHEN ?1 THEN 1 ELSE 2 END",
            "?4",
            "0",
            "?5",
            hashed_key,
            row_digest,
            *new_cells,
            "NULL",
        ]
        new_life = "(?1 AND (cl % 2 = 0 OR ?2)) OR (NOT ?1 AND cl % 2 = 1)"
        reborn = "?1 AND (cl % 2 = 0 OR ?2)"  # alive again: a life whose writes know nothing
        # Each column's new value; SET expressions all see the row as it was.
        after = {
            "cl": "CASE WHEN ?1 THEN (CASE WHEN cl % 2 = 0 THEN cl + 1 WHEN ?2 THEN cl + 2"
            " ELSE cl END) WHEN cl % 2 = 1 THEN cl + 1 ELSE cl END",
            "cl_hlc": f"CASE WHEN {new_life} THEN ?4 ELSE cl_hlc END",
            "cl_site": f"CASE WHEN {new_life} THEN 0 ELSE cl_site END",
        }
        for index in range(len(self.values)):
            changed = f"?1 AND (?3 >> {index}) & 1"
            after[f"h{index}"] = f"CASE WHEN {changed} THEN ?4 ELSE h{index} END"
            after[f"s{index}"] = f"CASE WHEN {changed} THEN 0 ELSE s{index} END"
        sets = [f"{column} = {expression}" for column, expression in after.items()]
        sets.append("seq = ?5")
        sets.append(f"{PASTS_COLUMN} = {self._next_pasts_sql(reborn)}")
        if self.digests:
            # The new digest, from the row's new stamps; the function moves the
            # leaf by old ^ new (and takes back the guess `capture` made for a
            # key it thought new: excluded.dg).
            # (A row without a key hash, from an older file, gets one here.)
            keys_hashed = (
                f"coalesce({KEY_HASH_COLUMN}, {KEY_HASH_FUNCTION}("
                + ", ".join(f"k{index}" for index in range(self.key_count))
                + "))"
            )
            arguments = [
                _sql_text(self.spec.name),
                DIGEST_COLUMN,
                f"excluded.{DIGEST_COLUMN}",
                keys_hashed,
                *after.values(),
            ]
            sets.append(f"{DIGEST_COLUMN} = {FOLD_DIGEST_FUNCTION}({', '.join(arguments)})")
        key_list = ", ".join(f"k{index}" for index in range(self.key_count))
        return (
            f"INSERT INTO {self.shadow} ({', '.join(names)}) VALUES ({', '.join(values)})"
            f" ON CONFLICT ({key_list}) DO UPDATE SET {', '.join(sets)}"
        )

    def _next_pasts_sql(self, reborn: str) -> str:
        """SQL: the row's `pasts` after a capture (inside `_capture_sql`).

        A changed cell's new past is what this node knew of the cell: the
        old value (unless it was ours: our writes know our own), its past,
        and our knowledge.  When `pasts` is NULL and no changed cell held
        another site's value, which is every row only this site writes, the
        answer is NULL and nothing else is computed; otherwise
        `capture_pasts` does it in Python.  A new life starts with none.
        """
        count = len(self.values)
        if count == 0:
            return "NULL"
        foreign = " OR ".join(f"((?3 >> {index}) & 1 AND s{index} <> 0)" for index in range(count))
        stamps = ", ".join(f"s{index}, h{index}" for index in range(count))
        column = PASTS_COLUMN
        return (
            f"CASE WHEN NOT ?1 THEN {column} WHEN {reborn} THEN NULL"
            f" WHEN {column} IS NULL AND NOT ({foreign}) THEN NULL"
            f" ELSE {CAPTURE_PASTS_FUNCTION}({column}, ?3, {stamps}) END"
        )

    def capture(
        self,
        connection: sqlite3.Connection,
        hlc: int,
        seq: int,
        entries_max: int = -1,
        own_site: str = "",
        note: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """Fold the log (its first `entries_max` entries; -1: all) into the shadow table.

        Returns the keys stamped.  Per key, the logged writes reduce to: does
        the row exist now (the last write says), was it deleted on the way
        (then an insert began a new life), and which columns changed (the
        union of the masks).
        """
        folded: dict[tuple[SqlValue, ...], list[int]] = {}
        last_id = 0
        for entry in connection.execute(self.log_sql, (entries_max,)):
            last_id = entry[0]
            op, mask = entry[1], entry[2]
            key = tuple(entry[3:])
            state = folded.get(key)
            if state is None:
                state = folded[key] = [1, 0, 0, 0]
            if op == OP_DELETE:
                state[0], state[1] = 0, 1
            elif op == OP_INSERT:
                state[0], state[2], state[3] = 1, ALL_COLUMNS, 1
            elif op == OP_CHECK:
                state[0] = UNKNOWN
            else:
                state[0], state[2] = 1, state[2] | mask
        for key, state in list(folded.items()):
            if None in key:
                # SQLite lets a rowid table hold NULL in its key; such a row
                # cannot be addressed on another node.  Skipped, so it cannot
                # wedge the capture of every other write (docs/keys.md).
                del folded[key]
                log.warning("table %s: a row with a NULL key value is not synced", self.spec.name)
                continue
            if state[0] == UNKNOWN:  # a REPLACE may have deleted it: the table knows
                if connection.execute(self.exists_sql, key).fetchone() is None:
                    state[0], state[1] = 0, 1
                elif state[2] == 0 and not state[1]:
                    del folded[key]  # still there, untouched: nothing to capture
                else:
                    state[0] = 1
        if not folded:
            connection.execute(self.log_clear_sql, (last_id,))
            return 0
        if self.digests and note is not None:
            parameters = self._capture_parameters(folded, hlc, seq, own_site, note)
        else:
            parameters = [
                (alive, deleted, mask, hlc, seq, *key, None, None)
                for key, (alive, deleted, mask, _inserted) in folded.items()
            ]
        connection.executemany(self.capture_sql, parameters)
        connection.execute(self.log_clear_sql, (last_id,))
        return len(folded)

    def _capture_parameters(
        self,
        folded: dict[tuple[SqlValue, ...], list[int]],
        hlc: int,
        seq: int,
        own_site: str,
        note: Callable[[str, int, int], None],
    ) -> list[tuple[SqlValue, ...]]:
        """Parameters of `capture_sql`, with leaf and digest for keys likely new here.

        A key whose writes include an INSERT is nearly always new to the
        shadow table: its row's leaf and digest are computed here (all its
        cells stamped `hlc` by us) and its leaf is moved at once.  Had the
        key a row after all (a delete and a re-insert), the upsert's digest
        function takes the guess back.  Other keys pass NULL: their rows
        exist and the upsert computes their digests.
        """
        name = self.spec.name
        # The fields `summary.digest` hashes, but for the key hash: the same
        # for every new row of this capture (all cells stamped hlc, by us).
        own = site_code(own_site)
        live = [1, hlc, own, *[hlc] * len(self.values), *[own] * len(self.values)]
        born_dead = [2, hlc, own]
        parameters: list[tuple[SqlValue, ...]] = []
        for key, (alive, deleted, mask, inserted) in folded.items():
            hashed = guess = None
            if inserted:
                hashed = key_hash(key)
                guess = fields_digest([hashed, *(live if alive else born_dead)])
                note(name, hashed & LEAF_MASK, guess)
            parameters.append((alive, deleted, mask, hlc, seq, *key, hashed, guess))
        return parameters

    def _backfill_sql(self, where: str) -> str:
        """Shadow rows for rows that exist before tracking: one seq per chunk of rows.

        Rows are numbered in key order from :base, :chunk rows to a seq.
        """
        names = shadow_columns(self.spec)
        keys = [quote_identifier(column) for column in self.spec.pk]
        cells = [value for _ in self.values for value in (":hlc", "0")]
        seq = f"(:base + (row_number() OVER (ORDER BY {', '.join(keys)}) - 1) / :chunk)"
        hashed_key = f"{KEY_HASH_FUNCTION}({', '.join(keys)})"
        arguments = ", ".join([hashed_key, "1", ":hlc", "0", *cells])
        row_digest = f"{ROW_DIGEST_FUNCTION}({arguments})"
        selected = ", ".join([*keys, "1", ":hlc", "0", seq, hashed_key, row_digest, *cells, "NULL"])
        return (
            f"INSERT OR IGNORE INTO {self.shadow} ({', '.join(names)})"
            f" SELECT {selected} FROM {self.table}{where}"
        )

    def backfill_step_sql(self, *, lower: bool, upper: bool) -> str:
        """The backfill of the keys after :l* up to :u* (row values), in key order.

        The backfill of a large table goes in steps so that `syncmesh track`
        can show progress; keyset bounds keep each step one index range.
        """
        keys = ", ".join(quote_identifier(column) for column in self.spec.pk)
        bounds = []
        if lower:
            bounds.append(f"({keys}) > ({', '.join(f':l{i}' for i in range(self.key_count))})")
        if upper:
            bounds.append(f"({keys}) <= ({', '.join(f':u{i}' for i in range(self.key_count))})")
        return self._backfill_sql(f" WHERE {' AND '.join(bounds)}" if bounds else "")

    def backfill_boundary_sql(self, *, lower: bool) -> str:
        """The key `:step` rows after :lower (or from the start), in key order."""
        keys = ", ".join(quote_identifier(column) for column in self.spec.pk)
        where = ""
        if lower:
            where = f" WHERE ({keys}) > ({', '.join(f':l{i}' for i in range(self.key_count))})"
        return f"SELECT {keys} FROM {self.table}{where} ORDER BY {keys} LIMIT 1 OFFSET :step - 1"

    def feed_uncovered_sql(self, bounds: dict[int, int]) -> tuple[str, list[int]]:
        """`feed_sql` that skips, in SQLite, rows a receiver holds entirely.

        `bounds` maps a site ordinal to the receiver's vector entry for it.
        Which cells of a kept row the receiver lacks is decided afterwards
        (merge.missing_rows); this only spares building rows that would all
        be dropped, such as a relay's rows for the peer they came from.
        """
        if not bounds:
            return self.feed_sql, []
        params: list[int] = []
        for ordinal, bound in bounds.items():
            params.extend((ordinal, bound))
        whens = " ".join("WHEN ? THEN ?" for _ in bounds)

        def uncovered(hlc: str, site: str) -> str:
            return f"{hlc} > CASE {site} {whens} ELSE -1 END"

        cells = [uncovered(f"s.h{index}", f"s.s{index}") for index in range(len(self.values))]
        all_params = list(params)
        for _ in cells:
            all_params.extend(params)
        alive_and_new_cell = f" OR (s.cl % 2 = 1 AND ({' OR '.join(cells)}))" if cells else ""
        sql = (
            f"{self._feed_prefix} AND ({uncovered('s.cl_hlc', 's.cl_site')}{alive_and_new_cell})"
            " ORDER BY s.seq"
        )
        return sql, all_params

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
            sql = f"{self._load_select} WHERE ({keys}) IN (VALUES {marks})"
            params = [value for pk in chunk for value in pk]
            for row in connection.execute(sql, params):
                found[tuple(row[: self.key_count])] = (
                    list(row[:width]),
                    row[width],
                    row[width + 1],
                )
        return found

    def shadow_row(
        self,
        pk: tuple[SqlValue, ...],
        state: RowState,
        seq: int,
        sites: SiteMap,
        known: Mapping[str, Knowledge],
    ) -> list[SqlValue]:
        """The shadow row of `state`, with `known` (per column) as the node's knowledge.

        Without pasts and knowledge it has the layout of `shadow_plain_sql`
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
        for index, column in enumerate(self.values):
            cell = state.cells.get(column)
            entry = {}
            if cell is not None and cell.past:
                entry["p"] = {str(sites.ordinal(site)): hlc for site, hlc in cell.past}
            if known.get(column):
                entry["k"] = {str(sites.ordinal(site)): hlc for site, hlc in known[column].items()}
            if entry:
                pasts[str(index)] = entry
        return json.dumps(pasts, separators=(",", ":")) if pasts else None

    def knowledge_of(self, text: str | None, sites: Sequence[str]) -> dict[str, Knowledge]:
        """What a row's `pasts` says this node knows beyond each cell's past, by column."""
        if text is None:
            return {}
        known: dict[str, Knowledge] = {}
        for index, entry in json.loads(text).items():
            if "k" in entry:
                column = self.values[int(index)]
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
        connection.executemany(self.knowledge_sql, renamed)

    def write_shadow(self, connection: sqlite3.Connection, rows: list[list[SqlValue]]) -> None:
        """Write shadow rows made by `shadow_row` or `fast_rows`, with or without `pasts`."""
        plain = [row for row in rows if len(row) == self._plain_width]
        if plain:
            connection.executemany(self.shadow_plain_sql, plain)
        if len(plain) < len(rows):
            full = [row for row in rows if len(row) != self._plain_width]
            connection.executemany(self.shadow_write_sql, full)

    def knowledge_row(
        self,
        pk: tuple[SqlValue, ...],
        state: RowState,
        known: Mapping[str, Knowledge],
        sites: SiteMap,
    ) -> list[SqlValue]:
        """Parameters of `knowledge_sql`: the row's new `pasts`, then the key."""
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
            head += [*stamps, *map(batch_codes.__getitem__, sites)]
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
                        str(index): {"p": _remapped(row[at + 3], ordinals)}  # type: ignore[arg-type]
                        for index, at in enumerate(range(keys + 3, len(row), CELL_FIELDS))
                        if row[at + 3] is not None
                    },
                    separators=(",", ":"),
                )
            )
        return shadow, user if alive else None


CAPTURE_PASTS_FUNCTION = "syncmesh_capture_pasts"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def capture_pasts(text: str | None, mask: int, *stamps: int | None) -> str | None:
    """`syncmesh_capture_pasts(pasts, mask, s0, h0, ...)`: a row's `pasts` after a capture.

    Registered on the store's connection (`Store.open`) and called by the
    capture upsert only for rows that need it (`TableSql._next_pasts_sql`).
    Each value column in `mask` gets a new past: everything the node knew of
    the cell (its past and knowledge, and the old value `(s, h)` unless it
    was ours), without our own ordinal 0; its knowledge is emptied.
    """
    pasts: dict[str, dict[str, dict[str, int]]] = {} if text is None else json.loads(text)
    for index in range(len(stamps) // 2):
        if not (mask >> index) & 1:
            continue
        entry = pasts.pop(str(index), {})
        past = dict(entry.get("p", {}))
        learned = [*entry.get("k", {}).items()]
        site, hlc = stamps[2 * index], stamps[2 * index + 1]
        if site is not None and hlc is not None:
            learned.append((str(site), hlc))
        for ordinal, known in learned:
            if past.get(ordinal, -1) < known:
                past[ordinal] = known
        past.pop("0", None)
        if past:
            pasts[str(index)] = {"p": past}
    return json.dumps(pasts, separators=(",", ":")) if pasts else None


def _remapped(text: str, ordinals: Sequence[int]) -> dict[str, int]:
    """A past whose keys are a batch's site indexes, keyed by our ordinals instead."""
    known: dict[str, int] = {}
    for index, hlc in json.loads(text).items():
        ordinal = str(ordinals[int(index)])
        known[ordinal] = max(hlc, known.get(ordinal, hlc))
    return known


def execute_each(
    connection: sqlite3.Connection, sql: str, rows: Iterable[Sequence[SqlValue]]
) -> list[tuple[int, sqlite3.IntegrityError]]:
    """Run `sql` for each row; return (index, error) of the rows a constraint refused.

    executemany is tried first (fast); only when it fails are the rows retried
    one by one to find the offenders.  A failed statement is rolled back by
    SQLite alone, so the transaction carries on.
    """
    materialized = list(rows)
    try:
        connection.executemany(sql, materialized)
        return []
    except sqlite3.IntegrityError as exc:
        _require_transaction(connection, exc)
    # executemany stops at the first failure, leaving the rows before it
    # applied; they are idempotent upserts/deletes, so running them again is safe.
    failures: list[tuple[int, sqlite3.IntegrityError]] = []
    for index, row in enumerate(materialized):
        try:
            connection.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            _require_transaction(connection, exc)
            failures.append((index, exc))
    return failures


def _require_transaction(connection: sqlite3.Connection, exc: sqlite3.IntegrityError) -> None:
    """Raise StoreError if the constraint failure ended the caller's transaction.

    Most constraint failures undo only the failing statement, but a user
    trigger's RAISE(ROLLBACK) or a constraint declared ON CONFLICT ROLLBACK
    rolls back the whole transaction.  Carrying on would run the rest of the
    apply in autocommit mode: half a batch committed, with its cursor.
    """
    if not connection.in_transaction:
        raise StoreError(
            f"a constraint rolled back the whole apply transaction (RAISE(ROLLBACK) or"
            f" ON CONFLICT ROLLBACK); nothing was applied: {exc}"
        ) from exc
