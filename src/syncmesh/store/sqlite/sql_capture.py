"""SQL of the capture for one table: its log, the stamping upsert, the backfill."""

from __future__ import annotations

from syncmesh.store.sqlite.ddl import (
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    MASK_COLUMNS_MAX,
    PASTS_COLUMN,
    quote_identifier,
    shadow_columns,
)
from syncmesh.store.sqlite.functions import (
    CAPTURE_PASTS_FUNCTION,
    FOLD_DIGEST_FUNCTION,
    KEY_HASH_FUNCTION,
    ROW_DIGEST_FUNCTION,
    call_sql,
)
from syncmesh.store.sqlite.names import TableNames

# The causal length below which new keys do not start (even; 0 until a collection).
CL_FLOOR_SQL = "coalesce((SELECT cl_floor FROM _syncmesh_lifecycle), 0)"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class CaptureSql:
    """Statements `capture` and `tracking` run on one table's log and shadow table."""

    def __init__(self, names: TableNames, *, digests: bool = True) -> None:
        """`digests`: keep the rows' digests up to date (off only to measure their cost)."""
        self.names = names
        self.digests = digests
        log_keys = names.shadow_keys  # the log names key columns as the shadow does
        self.pending_sql = f"SELECT 1 FROM {names.log} LIMIT 1"
        self.log_sql = f"SELECT id, op, mask, {log_keys} FROM {names.log} ORDER BY id LIMIT ?"
        self.log_count_sql = f"SELECT count(*) FROM {names.log}"
        self.log_clear_sql = f"DELETE FROM {names.log} WHERE id <= ?"
        self.exists_sql = f"SELECT 1 FROM {names.table} WHERE {names.user_keys_where}"
        # Slots beyond the mask's bits: their changed bits come in words of
        # their own, after the digest parameters, then the whole mask as text.
        beyond = [slot - MASK_COLUMNS_MAX for slot in names.slots if slot >= MASK_COLUMNS_MAX]
        self.wide_words = 0 if not beyond else max(beyond) // MASK_COLUMNS_MAX + 1
        self.capture_sql = self._capture_sql()

    def changed(self, slot: int) -> str:
        """SQL: whether the capture's mask says `slot` changed (see `_capture_sql`)."""
        if slot < MASK_COLUMNS_MAX:
            return f"(?3 >> {slot}) & 1"
        word, bit = divmod(slot - MASK_COLUMNS_MAX, MASK_COLUMNS_MAX)
        return f"(?{8 + self.names.key_count + word} >> {bit}) & 1"

    def _whole_mask(self) -> str:
        """SQL: the capture's whole mask, for `capture_pasts` (text beyond 62 slots)."""
        if not self.wide_words:
            return "?3"
        return f"?{8 + self.names.key_count + self.wide_words}"

    def _capture_sql(self) -> str:
        """Fold one key's logged writes into its shadow row, stamping what changed.

        Parameters: ?1 alive (the key's row exists after the writes), ?2 deleted
        (a delete is among them: a re-insert starts a new life), ?3 the mask of
        changed value columns, ?4 the HLC, ?5 the seq, then the key values, the
        key hash and the digest guess; for a table with slots beyond the mask's
        bits, then one word of their bits per 62 of them and the whole mask as
        text (`capture._wide_parameters`).  A key new to the shadow gets every
        column stamped: nothing is known of it.
        """
        names = self.names
        columns = shadow_columns(names.layout)
        keys = [f"?{6 + index}" for index in range(names.key_count)]
        hashed_key, row_digest = f"?{6 + names.key_count}", f"?{7 + names.key_count}"
        # A key born dead (inserted and deleted before one capture) has no
        # cell stamps at all: neither hlc nor site, or the feed would ship a
        # site without a stamp, which peers rightly refuse.
        new_cells = [
            value
            for _ in names.values
            for value in ("CASE WHEN ?1 THEN ?4 END", "CASE WHEN ?1 THEN 0 END")
        ]
        values = [
            *keys,
            # Above every causal length collected here (ADR 0015, rule 2): the
            # key may be one whose tombstone was collected, and is still held
            # at a peer that has not collected it yet.
            f"CASE WHEN ?1 THEN 1 ELSE 2 END + {CL_FLOOR_SQL}",
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
        for slot in names.slots:
            changed = f"?1 AND {self.changed(slot)}"
            after[f"h{slot}"] = f"CASE WHEN {changed} THEN ?4 ELSE h{slot} END"
            after[f"s{slot}"] = f"CASE WHEN {changed} THEN 0 ELSE s{slot} END"
        sets = [f"{column} = {expression}" for column, expression in after.items()]
        sets.append("seq = ?5")
        sets.append(f"{PASTS_COLUMN} = {self._next_pasts_sql(reborn)}")
        if self.digests:
            # The new digest, from the row's new stamps; the function moves the
            # leaf by old ^ new (and takes back the guess `capture` made for a
            # key it thought new: excluded.dg).
            # (A row without a key hash, from an older file, gets one here.)
            keys_hashed = f"coalesce({KEY_HASH_COLUMN}, {KEY_HASH_FUNCTION}({names.shadow_keys}))"
            fixed = [_sql_text(names.spec.name), DIGEST_COLUMN, f"excluded.{DIGEST_COLUMN}"]
            folded = call_sql(FOLD_DIGEST_FUNCTION, [*fixed, keys_hashed], list(after.values()))
            sets.append(f"{DIGEST_COLUMN} = {folded}")
        return (
            f"INSERT INTO {names.shadow} ({', '.join(columns)}) VALUES ({', '.join(values)})"
            f" ON CONFLICT ({names.shadow_keys}) DO UPDATE SET {', '.join(sets)}"
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
        slots = self.names.slots
        if not slots:
            return "NULL"
        foreign = " OR ".join(f"({self.changed(slot)} AND s{slot} <> 0)" for slot in slots)
        stamps = [stamp for slot in slots for stamp in (f"s{slot}", f"h{slot}")]
        slot_list = _sql_text(",".join(map(str, slots)))
        column = PASTS_COLUMN
        pasts = call_sql(CAPTURE_PASTS_FUNCTION, [column, self._whole_mask(), slot_list], stamps)
        return (
            f"CASE WHEN NOT ?1 THEN {column} WHEN {reborn} THEN NULL"
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
        selected = ", ".join([*keys, "1", ":hlc", "0", seq, hashed_key, row_digest, *cells, "NULL"])
        return (
            f"INSERT OR IGNORE INTO {names.shadow} ({', '.join(columns)})"
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
