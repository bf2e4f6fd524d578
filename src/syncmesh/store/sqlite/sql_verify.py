"""SQL of the hash trees for one table (verify and repair, ADR 0010)."""

from __future__ import annotations

from syncmesh.store.sqlite.ddl import DIGEST_COLUMN, KEY_HASH_COLUMN, quote_identifier
from syncmesh.store.sqlite.functions import KEY_HASH_FUNCTION, ROW_DIGEST_FUNCTION, call_sql
from syncmesh.store.sqlite.names import TableNames
from syncmesh.store.summary import LEAF_MASK


class VerifySql:
    """Statements `verify` runs: tree pairs, tree rows by leaf or key, digest upkeep."""

    def __init__(self, names: TableNames) -> None:
        shadow, slots = names.shadow, names.slots
        self.select = names.select  # whole rows for repair, as the feed has them
        # Rows for the hash tree: key, cl, its stamp, key hash, digest, cell
        # stamps, then the values (for deep digests).
        keys = ", ".join(f"s.k{index}" for index in range(names.key_count))
        stamps = ", ".join(f"s.h{slot}, s.s{slot}" for slot in slots)
        values = ", ".join(f"t.{quote_identifier(column)}" for column in names.values)
        tree_columns = ", ".join(
            part
            for part in (
                keys,
                f"s.cl, s.cl_hlc, s.cl_site, s.{KEY_HASH_COLUMN}, s.{DIGEST_COLUMN}",
                stamps,
            )
            if part
        )
        self.tree_pairs_sql = f"SELECT {KEY_HASH_COLUMN}, {DIGEST_COLUMN} FROM {shadow}"
        self.leaf_match = (
            f" WHERE (s.{KEY_HASH_COLUMN} & {LEAF_MASK}) IN (SELECT value FROM json_each(?))"
        )
        self.tree_rows = f"SELECT {tree_columns} FROM {shadow} s"
        self.tree_deep_rows = (
            f"SELECT {tree_columns}{', ' + values if values else ''} FROM {shadow} s"
            f" LEFT JOIN {names.table} t ON {names.join}"
        )
        fields = ["cl", "cl_hlc", "cl_site"]
        fields += [column for slot in slots for column in (f"h{slot}", f"s{slot}")]
        digest = call_sql(
            ROW_DIGEST_FUNCTION, [f"{KEY_HASH_FUNCTION}({names.shadow_keys})"], fields
        )
        self.fill_digests_sql = (
            f"UPDATE {shadow} SET {KEY_HASH_COLUMN} = {KEY_HASH_FUNCTION}({names.shadow_keys}),"
            f" {DIGEST_COLUMN} = {digest}"
            f" WHERE {KEY_HASH_COLUMN} IS NULL OR {DIGEST_COLUMN} IS NULL"
        )
        # Every row's digest again, after the table's value columns changed
        # (an added or dropped column changes the fields a digest hashes).
        # A deleted row's digest has no cells: only live rows change.
        self.refresh_digests_sql = (
            f"UPDATE {shadow} SET {DIGEST_COLUMN} ="
            f" {call_sql(ROW_DIGEST_FUNCTION, [KEY_HASH_COLUMN], fields)}"
            " WHERE cl % 2 = 1"
        )
        self.set_digest_sql = (
            f"UPDATE {shadow} SET {KEY_HASH_COLUMN} = ?, {DIGEST_COLUMN} = ?"
            f" WHERE {names.keys_where}"
        )
        log_columns = ", ".join(["op", "mask", names.shadow_keys])
        marks = ", ".join("?" * (2 + names.key_count))
        # A write logged as the triggers would log it (restamp).
        self.log_insert_sql = f"INSERT INTO {names.log} ({log_columns}) VALUES ({marks})"
