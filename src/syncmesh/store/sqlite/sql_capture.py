"""SQL of the capture for one table: its log, the stamping upsert, the backfill."""

from __future__ import annotations

from dataclasses import dataclass

from syncmesh.store.sqlite.ddl import (
    ALL_COLUMNS,
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    MASK_COLUMNS_MAX,
    OP_CHECK,
    OP_DELETE,
    OP_INSERT,
    PASTS_COLUMN,
    VALUES_FP_COLUMN,
    quote_identifier,
    shadow_columns,
)
from syncmesh.store.sqlite.functions import (
    CAPTURE_PASTS_FUNCTION,
    FOLD_DIGEST_FUNCTION,
    KEY_HASH_FUNCTION,
    NEW_ROW_DIGEST_FUNCTION,
    ROW_DIGEST_FUNCTION,
    TEXT_KEY_HASH_FUNCTION,
    call_sql,
    values_fp_sql,
)
from syncmesh.store.sqlite.names import TableNames

# The causal length below which new keys do not start (even; 0 until a collection).
CL_FLOOR_SQL = "coalesce((SELECT cl_floor FROM _syncmesh_lifecycle), 0)"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class _Terms:
    """What a capture statement writes per key, as SQL: parameters, or a staged row's columns.

    The upsert of one key (the Python fold of wide tables) binds them as
    parameters; the set-based capture reads them from the fold table.
    """

    alive: str  # the key's row exists after the writes
    deleted: str  # a delete is among them: a re-insert starts a new life
    hlc: str
    seq: str
    keys: tuple[str, ...]
    changed: tuple[str, ...]  # per slot (names.slots order): whether the writes changed it
    whole_mask: str  # the mask as `capture_pasts` takes it


class CaptureSql:
    """Statements `capture` and `tracking` run on one table's log and shadow table."""

    def __init__(self, names: TableNames, *, digests: bool = True, values_fp: bool = True) -> None:
        """`digests`: keep the rows' digests up to date (off only to measure their cost).

        `values_fp`: keep the rows' value fingerprints; off for a capture
        with a table's definition from before DDL (reconcile.py), which may
        name columns the table no longer has: such rows' fingerprints are
        left unknown (NULL) and filled in by the reconcile.
        """
        self.names = names
        self.digests = digests
        self.values_fp = values_fp
        log_keys = names.shadow_keys  # the log names key columns as the shadow does
        self.pending_sql = f"SELECT 1 FROM {names.log} LIMIT 1"
        self.log_sql = f"SELECT id, op, mask, {log_keys} FROM {names.log} ORDER BY id LIMIT ?"
        # The entries, and how many of them are inserts (capture.capture_pending).
        self.log_count_sql = f"SELECT count(*), coalesce(sum(op = {OP_INSERT}), 0) FROM {names.log}"
        self.log_clear_sql = f"DELETE FROM {names.log} WHERE id <= ?"
        self.exists_sql = f"SELECT 1 FROM {names.table} WHERE {names.user_keys_where}"
        # Slots beyond the mask's bits: their changed bits come in words of
        # their own, after the digest parameters, then the whole mask as text.
        beyond = [slot - MASK_COLUMNS_MAX for slot in names.slots if slot >= MASK_COLUMNS_MAX]
        self.wide_words = 0 if not beyond else max(beyond) // MASK_COLUMNS_MAX + 1
        self.capture_sql = self._capture_sql()
        # The same, leaving the rows' value fingerprints unknown: for a capture
        # after DDL that the reconcile has not followed yet (capture.py).
        self.capture_unknown_fp_sql = self._capture_sql(values_fp=False)
        self._fold_statements()

    def _fold_statements(self) -> None:
        """The set-based capture's statements (`capture.capture_table`).

        The log's entries up to :last fold per key into a temporary table,
        one row per key (`fold_sql`); the shadow rows of keys it holds are
        updated in one statement (`update_sql`) and the keys new to the
        shadow table inserted in another (`insert_sql`).  The per-key work
        left in Python is what SQL functions do: digests and fingerprints.
        Only for tables whose slots all fit the mask's bits (`set_based`).
        """
        names = self.names
        self.set_based = self.wide_words == 0
        fold = "temp." + quote_identifier(f"_syncmesh_fold_{names.spec.name}")
        fold_keys = [f"fk{index}" for index in range(names.key_count)]
        self.fold_create_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {fold} ({', '.join(fold_keys)},"
            " alive INTEGER, deleted INTEGER, mask INTEGER, inserted INTEGER,"
            " touched INTEGER, fkh INTEGER, found INTEGER)"
        )
        self.log_last_sql = f"SELECT max(id) FROM (SELECT id FROM {names.log} ORDER BY id LIMIT ?)"
        log_keys = [f"k{index}" for index in range(names.key_count)]
        # Per entry, its part of the key's mask of changed columns, as the
        # Python fold takes it: all for an insert, none for a delete or a
        # check, and an update's own (a slot beyond the bits logs -2 - slot).
        part = (
            f"CASE op WHEN {OP_INSERT} THEN {ALL_COLUMNS} WHEN {OP_DELETE} THEN 0"
            f" WHEN {OP_CHECK} THEN 0 ELSE (CASE WHEN mask >= {ALL_COLUMNS} THEN mask ELSE 0 END)"
            " END"
        )
        # The union of the parts: SQLite has no bitwise-or aggregate, so one
        # max() per slot the table has (bits of other slots change nothing).
        bits = " | ".join(f"(max((part >> {slot}) & 1) << {slot})" for slot in names.slots)
        mask = f"CASE WHEN min(part) < 0 THEN {ALL_COLUMNS} ELSE {bits or '0'} END"
        # Whether the writes changed any column (a row a check found still
        # there, untouched, has nothing to capture).
        touched = (
            f"max(part <> 0 OR (op NOT IN ({OP_INSERT}, {OP_DELETE}, {OP_CHECK})"
            f" AND mask < {ALL_COLUMNS}))"
        )
        hashed = (
            TEXT_KEY_HASH_FUNCTION
            + "("
            + ", ".join(
                f"typeof(l.{key}) = 'text',"
                f" CASE WHEN typeof(l.{key}) = 'text' THEN CAST(l.{key} AS BLOB) ELSE l.{key} END"
                for key in log_keys
            )
            + ")"
        )
        # The key as its first entry logged it (1 and 1.0 fold together, as
        # in a Python dict); whether it lives by its last entry: a check's
        # answer is unknown (-1) until the table is asked (`check_sql`);
        # whether the shadow table holds it (`found`: updated, or inserted).
        held = " AND ".join(f"s.k{index} = l.{key}" for index, key in enumerate(log_keys))
        self.fold_sql = (
            f"INSERT INTO {fold} ({', '.join(fold_keys)}, alive, deleted, mask, inserted,"
            " touched, fkh, found)"
            f" SELECT {', '.join(f'l.{key}' for key in log_keys)},"
            f" CASE z.op WHEN {OP_DELETE} THEN 0 WHEN {OP_CHECK} THEN -1 ELSE 1 END,"
            f" g.deleted, g.mask, g.inserted, g.touched,"
            f" CASE WHEN g.inserted AND :hash THEN {hashed} END,"
            f" EXISTS (SELECT 1 FROM {names.shadow} s WHERE {held})"
            f" FROM (SELECT min(id) AS first, max(id) AS last, max(op = {OP_DELETE}) AS deleted,"
            f" max(op = {OP_INSERT}) AS inserted, {mask} AS mask, {touched} AS touched"
            f" FROM (SELECT id, op, mask, {', '.join(log_keys)}, {part} AS part"
            f" FROM {names.log} WHERE id <= :last)"
            f" GROUP BY {', '.join(log_keys)}) g"
            f" JOIN {names.log} l ON l.id = g.first JOIN {names.log} z ON z.id = g.last"
        )
        self.fold_nulls_sql = (
            f"DELETE FROM {fold} WHERE {' OR '.join(f'{key} IS NULL' for key in fold_keys)}"
        )
        # A REPLACE may have deleted a checked key's row: the table knows.
        # -3: the row is there; -2: it is gone.
        found = " AND ".join(
            f"u.{quote_identifier(column)} = {fold}.{key}"
            for column, key in zip(names.spec.pk, fold_keys, strict=True)
        )
        self.check_sql = (
            f"UPDATE {fold} SET alive = CASE WHEN EXISTS (SELECT 1 FROM {names.table} u"
            f" WHERE {found}) THEN -3 ELSE -2 END WHERE alive = -1"
        )
        self.checked_sql = [
            # Still there, untouched: nothing to capture.
            f"DELETE FROM {fold} WHERE alive = -3 AND NOT touched AND NOT deleted",
            f"UPDATE {fold} SET deleted = CASE WHEN alive = -2 THEN 1 ELSE deleted END,"
            " alive = (alive = -3) WHERE alive < -1",
        ]
        self.fold_keys_sql = f"SELECT {', '.join(fold_keys)}, alive FROM {fold}"
        self.fold_count_sql = f"SELECT count(*), coalesce(sum(found), 0) FROM {fold}"
        self.fold_clear_sql = f"DELETE FROM {fold}"
        terms = self._set_terms()
        joined = " AND ".join(
            f"{names.shadow}.k{index} = f.{key}" for index, key in enumerate(fold_keys)
        )
        self.update_sql, self.update_unknown_fp_sql = (
            f"UPDATE {names.shadow} SET {', '.join(self._update_sets(terms, 'NULL', values_fp))}"
            f" FROM {fold} AS f WHERE f.found AND {joined}"
            for values_fp in (True, False)
        )
        if self.digests:
            # A new row's digest, its cells all stamped :hlc by us (site 0,
            # whose code is :own); the function moves its leaf.  Only for keys
            # whose writes include an insert (they have a key hash): others get
            # neither, as before.
            digest = (
                f"{NEW_ROW_DIGEST_FUNCTION}({_sql_text(names.spec.name)}, f.fkh,"
                f" {self._new_cl(terms)}, {terms.hlc}, :own, {len(names.values)})"
            )
            row_digest = f"CASE WHEN f.fkh IS NOT NULL THEN {digest} END"
        else:
            row_digest = "NULL"
        columns = ", ".join([*shadow_columns(names.layout), VALUES_FP_COLUMN])
        self.insert_sql, self.insert_unknown_fp_sql = (
            f"INSERT INTO {names.shadow} ({columns})"
            f" SELECT {', '.join(self._new_values(terms, 'f.fkh', row_digest, values_fp))}"
            f" FROM {fold} AS f"
            " WHERE NOT f.found"
            for values_fp in (True, False)
        )

    def changed(self, slot: int) -> str:
        """SQL: whether the capture upsert's mask says `slot` changed (see `_capture_sql`)."""
        if slot < MASK_COLUMNS_MAX:
            return f"(?3 >> {slot}) & 1"
        word, bit = divmod(slot - MASK_COLUMNS_MAX, MASK_COLUMNS_MAX)
        return f"(?{8 + self.names.key_count + word} >> {bit}) & 1"

    def _whole_mask(self) -> str:
        """SQL: the capture's whole mask, for `capture_pasts` (text beyond 62 slots)."""
        if not self.wide_words:
            return "?3"
        return f"?{8 + self.names.key_count + self.wide_words}"

    def _upsert_terms(self) -> _Terms:
        """The capture upsert's parameters (`_capture_sql`) as `_Terms`."""
        return _Terms(
            alive="?1",
            deleted="?2",
            hlc="?4",
            seq="?5",
            keys=tuple(f"?{6 + index}" for index in range(self.names.key_count)),
            changed=tuple(self.changed(slot) for slot in self.names.slots),
            whole_mask=self._whole_mask(),
        )

    def _set_terms(self) -> _Terms:
        """The set-based capture's terms: the folded key's row `f` of the fold table.

        Only for tables whose slots all fit the mask (`fold_sql`).
        """
        return _Terms(
            alive="f.alive",
            deleted="f.deleted",
            hlc=":hlc",
            seq=":seq",
            keys=tuple(f"f.fk{index}" for index in range(self.names.key_count)),
            changed=tuple(f"(f.mask >> {slot}) & 1" for slot in self.names.slots),
            whole_mask="f.mask",
        )

    def _new_values(
        self, terms: _Terms, hashed_key: str, row_digest: str, values_fp: bool
    ) -> list[str]:
        """The values of a shadow row new to the table, in `shadow_columns` order, then `vf`.

        A key new to the shadow gets every column stamped: nothing is known of it.
        """
        names = self.names
        # A key born dead (inserted and deleted before one capture) has no
        # cell stamps at all: neither hlc nor site, or the feed would ship a
        # site without a stamp, which peers rightly refuse.
        new_cells = [
            value
            for _ in names.values
            for value in (
                f"CASE WHEN {terms.alive} THEN {terms.hlc} END",
                f"CASE WHEN {terms.alive} THEN 0 END",
            )
        ]
        return [
            *terms.keys,
            # Above every causal length collected here (ADR 0015, rule 2): the
            # key may be one whose tombstone was collected, and is still held
            # at a peer that has not collected it yet.
            self._new_cl(terms),
            terms.hlc,
            "0",
            terms.seq,
            hashed_key,
            row_digest,
            *new_cells,
            "NULL",
            self._values_fp_sql(terms, dict.fromkeys(names.slots, terms.hlc), values_fp),
        ]

    @staticmethod
    def _new_cl(terms: _Terms) -> str:
        """SQL: the causal length of a key new to the shadow table."""
        return f"CASE WHEN {terms.alive} THEN 1 ELSE 2 END + {CL_FLOOR_SQL}"

    def _updated(self, terms: _Terms) -> dict[str, str]:
        """Each shadow column's new value for an existing row; the expressions see the old row."""
        names = self.names
        new_life = (
            f"({terms.alive} AND (cl % 2 = 0 OR {terms.deleted}))"
            f" OR (NOT {terms.alive} AND cl % 2 = 1)"
        )
        after = {
            "cl": f"CASE WHEN {terms.alive} THEN (CASE WHEN cl % 2 = 0 THEN cl + 1"
            f" WHEN {terms.deleted} THEN cl + 2 ELSE cl END)"
            " WHEN cl % 2 = 1 THEN cl + 1 ELSE cl END",
            "cl_hlc": f"CASE WHEN {new_life} THEN {terms.hlc} ELSE cl_hlc END",
            "cl_site": f"CASE WHEN {new_life} THEN 0 ELSE cl_site END",
        }
        for slot, changed in zip(names.slots, terms.changed, strict=True):
            after[f"h{slot}"] = (
                f"CASE WHEN {terms.alive} AND {changed} THEN {terms.hlc} ELSE h{slot} END"
            )
            after[f"s{slot}"] = f"CASE WHEN {terms.alive} AND {changed} THEN 0 ELSE s{slot} END"
        return after

    def _update_sets(self, terms: _Terms, guess: str, values_fp: bool) -> list[str]:
        """The SET clauses of a capture of an existing shadow row (`guess`: see `_capture_sql`)."""
        names = self.names
        after = self._updated(terms)
        sets = [f"{column} = {expression}" for column, expression in after.items()]
        shadow = names.shadow
        sets.append(
            f"{VALUES_FP_COLUMN} = "
            + self._values_fp_sql(
                terms,
                {
                    slot: f"CASE WHEN {terms.alive} AND {changed} THEN {terms.hlc}"
                    f" ELSE {shadow}.h{slot} END"
                    for slot, changed in zip(names.slots, terms.changed, strict=True)
                },
                values_fp,
            )
        )
        sets.append(f"seq = {terms.seq}")
        reborn = (
            f"{terms.alive} AND (cl % 2 = 0 OR {terms.deleted})"  # a life whose writes know nothing
        )
        sets.append(f"{PASTS_COLUMN} = {self._next_pasts_sql(terms, reborn)}")
        if self.digests:
            # The new digest, from the row's new stamps; the function moves the
            # leaf by old ^ new (and takes back a guess made for a key thought new).
            # (A row without a key hash, from an older file, gets one here.)
            keys = ", ".join(f"{shadow}.k{index}" for index in range(names.key_count))
            keys_hashed = f"coalesce({shadow}.{KEY_HASH_COLUMN}, {KEY_HASH_FUNCTION}({keys}))"
            guessed_key = f"excluded.{KEY_HASH_COLUMN}" if guess != "NULL" else "NULL"
            fixed = [_sql_text(names.spec.name), f"{shadow}.{DIGEST_COLUMN}", guess, guessed_key]
            folded = call_sql(FOLD_DIGEST_FUNCTION, [*fixed, keys_hashed], list(after.values()))
            sets.append(f"{DIGEST_COLUMN} = {folded}")
        return sets

    def _capture_sql(self, *, values_fp: bool = True) -> str:
        """Fold one key's logged writes into its shadow row, stamping what changed.

        Parameters: ?1 alive (the key's row exists after the writes), ?2 deleted
        (a delete is among them: a re-insert starts a new life), ?3 the mask of
        changed value columns, ?4 the HLC, ?5 the seq, then the key values, the
        key hash and the digest guess; for a table with slots beyond the mask's
        bits, then one word of their bits per 62 of them and the whole mask as
        text (`capture._wide_parameters`).  The capture of tables without such
        slots runs set-based instead (`fold_sql`, `update_sql`, `insert_sql`).
        """
        names = self.names
        terms = self._upsert_terms()
        hashed_key, row_digest = f"?{6 + names.key_count}", f"?{7 + names.key_count}"
        values = self._new_values(terms, hashed_key, row_digest, values_fp)
        sets = self._update_sets(terms, f"excluded.{DIGEST_COLUMN}", values_fp)
        columns = shadow_columns(names.layout)
        return (
            f"INSERT INTO {names.shadow} ({', '.join([*columns, VALUES_FP_COLUMN])})"
            f" VALUES ({', '.join(values)})"
            f" ON CONFLICT ({names.shadow_keys}) DO UPDATE SET {', '.join(sets)}"
        )

    def _values_fp_sql(self, terms: _Terms, stamps: dict[int, str], values_fp: bool) -> str:
        """SQL: the row's value fingerprint after a capture, its cells' stamps given as SQL.

        Read from the user row as it is now (the capture holds the write
        lock, so it is the row every logged write led to); NULL for a row
        that is gone.  The stamps' SQL must name the shadow's columns
        qualified: the subquery's own table may have columns named alike.
        """
        names = self.names
        if not (self.values_fp and values_fp):
            return "NULL"
        cells = [
            (slot, stamps[slot], f"u.{quote_identifier(column)}")
            for column, slot in zip(names.values, names.slots, strict=True)
        ]
        where = " AND ".join(
            f"u.{quote_identifier(column)} = {key}"
            for column, key in zip(names.spec.pk, terms.keys, strict=True)
        )
        return (
            f"CASE WHEN {terms.alive} THEN (SELECT {values_fp_sql(cells)} FROM {names.table} u"
            f" WHERE {where}) END"
        )

    def _next_pasts_sql(self, terms: _Terms, reborn: str) -> str:
        """SQL: the row's `pasts` after a capture (inside `_update_sets`).

        A changed cell's new past is what this node knew of the cell: the
        old value (unless it was ours: our writes know our own), its past,
        and our knowledge.  When `pasts` is NULL and no changed cell held
        another site's value, which is every row only this site writes, the
        answer is NULL and nothing else is computed; otherwise
        `capture_pasts` does it in Python.  A new life starts with none.
        """
        slots = self.names.slots
        if not slots:
            return "NULL"
        foreign = " OR ".join(
            f"({changed} AND s{slot} <> 0)"
            for slot, changed in zip(slots, terms.changed, strict=True)
        )
        stamps = [stamp for slot in slots for stamp in (f"s{slot}", f"h{slot}")]
        slot_list = _sql_text(",".join(map(str, slots)))
        column = PASTS_COLUMN
        pasts = call_sql(CAPTURE_PASTS_FUNCTION, [column, terms.whole_mask, slot_list], stamps)
        return (
            f"CASE WHEN NOT {terms.alive} THEN {column} WHEN {reborn} THEN NULL"
            f" WHEN {column} IS NULL AND NOT ({foreign}) THEN NULL"
            f" ELSE {pasts} END"
        )

    def _backfill_sql(self, where: str) -> str:
        """Shadow rows for rows that exist before tracking: one seq per chunk of rows.

        Rows are numbered in key order from :base, :chunk rows to a seq.
        """
        names = self.names
        columns = shadow_columns(names.layout)
        keys = [quote_identifier(column) for column in names.spec.pk]
        cells = [value for _ in names.values for value in (":hlc", "0")]
        seq = f"(:base + (row_number() OVER (ORDER BY {', '.join(keys)}) - 1) / :chunk)"
        hashed_key = f"{KEY_HASH_FUNCTION}({', '.join(keys)})"
        row_digest = call_sql(ROW_DIGEST_FUNCTION, [hashed_key], ["1", ":hlc", "0", *cells])
        fingerprint = values_fp_sql(
            [
                (slot, ":hlc", quote_identifier(column))
                for column, slot in zip(names.values, names.slots, strict=True)
            ]
        )
        selected = ", ".join(
            [*keys, "1", ":hlc", "0", seq, hashed_key, row_digest, *cells, "NULL", fingerprint]
        )
        return (
            f"INSERT OR IGNORE INTO {names.shadow} ({', '.join([*columns, VALUES_FP_COLUMN])})"
            f" SELECT {selected} FROM {names.table}{where}"
        )

    def backfill_step_sql(self, *, lower: bool, upper: bool) -> str:
        """The backfill of the keys after :l* up to :u* (row values), in key order.

        The backfill of a large table goes in steps so that `syncmesh track`
        can show progress; keyset bounds keep each step one index range.
        """
        keys = ", ".join(quote_identifier(column) for column in self.names.spec.pk)
        bounds = []
        if lower:
            bounds.append(
                f"({keys}) > ({', '.join(f':l{i}' for i in range(self.names.key_count))})"
            )
        if upper:
            bounds.append(
                f"({keys}) <= ({', '.join(f':u{i}' for i in range(self.names.key_count))})"
            )
        return self._backfill_sql(f" WHERE {' AND '.join(bounds)}" if bounds else "")

    def backfill_boundary_sql(self, *, lower: bool) -> str:
        """The key `:step` rows after :lower (or from the start), in key order."""
        keys = ", ".join(quote_identifier(column) for column in self.names.spec.pk)
        where = ""
        if lower:
            where = (
                f" WHERE ({keys}) > ({', '.join(f':l{i}' for i in range(self.names.key_count))})"
            )
        return (
            f"SELECT {keys} FROM {self.names.table}{where} ORDER BY {keys} LIMIT 1 OFFSET :step - 1"
        )
