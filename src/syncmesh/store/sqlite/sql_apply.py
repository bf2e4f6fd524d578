"""SQL of the apply for one table: loading rows' states, writing merged rows."""

from __future__ import annotations

from syncmesh.store.sqlite.ddl import (
    DIGEST_COLUMN,
    PASTS_COLUMN,
    VALUES_FP_COLUMN,
    quote_identifier,
    shadow_columns,
)
from syncmesh.store.sqlite.functions import values_fp_sql
from syncmesh.store.sqlite.names import TableNames


class ApplySql:
    """Statements `apply` runs on one table and its shadow table."""

    def __init__(self, names: TableNames) -> None:
        shadow, spec = names.shadow, names.spec
        # The rows as the feed has them, then the `pasts` column (knowledge)
        # and the digest; `TableSql.load` adds the key condition.
        self.load_select = (
            f"SELECT {names.selected}, s.{PASTS_COLUMN}, s.{DIGEST_COLUMN} FROM {shadow} s"
            f" LEFT JOIN {names.table} t ON {names.join}"
        )
        # Rows written whole (the merge) list the cells' HLCs, then their
        # sites: the layout the digest's fields have (store.summary.digest),
        # so a row new here is copied out of a batch by slices.
        columns = [
            *shadow_columns(names.layout)[: names.key_count + 6],
            *(f"h{slot}" for slot in names.slots),
            *(f"s{slot}" for slot in names.slots),
            PASTS_COLUMN,
        ]
        # The value fingerprint (ddl.VALUES_FP_COLUMN) is read from the user
        # row, which the apply wrote first; parameters are numbered so that
        # it can name the key's and the stamps' again.
        first_hlc = names.key_count + 7
        where = " AND ".join(
            f"u.{quote_identifier(column)} = ?{1 + index}" for index, column in enumerate(spec.pk)
        )
        cells = [
            (slot, f"?{first_hlc + index}", f"u.{quote_identifier(column)}")
            for index, (column, slot) in enumerate(zip(names.values, names.slots, strict=True))
        ]
        fingerprint = f"(SELECT {values_fp_sql(cells)} FROM {names.table} u WHERE {where})"

        def numbered(count: int) -> str:
            return ", ".join(f"?{index}" for index in range(1, count + 1))

        self.shadow_write_sql = (
            f"INSERT OR REPLACE INTO {shadow} ({', '.join([*columns, VALUES_FP_COLUMN])})"
            f" VALUES ({numbered(len(columns))}, {fingerprint})"
        )
        # The same without `pasts` (left NULL), for rows whose cells have no
        # past and no knowledge: nearly all.  Binding None costs sqlite3 an
        # adapter lookup per parameter.
        plain = [column for column in columns if column != PASTS_COLUMN]
        self.plain_width = len(plain)
        self.shadow_plain_sql = (
            f"INSERT OR REPLACE INTO {shadow} ({', '.join([*plain, VALUES_FP_COLUMN])})"
            f" VALUES ({numbered(len(plain))}, {fingerprint})"
        )
        user_columns = [quote_identifier(column) for column in (*spec.pk, *names.values)]
        key_list = ", ".join(quote_identifier(column) for column in spec.pk)
        update = ", ".join(
            f"{quote_identifier(column)} = excluded.{quote_identifier(column)}"
            for column in names.values
        )
        conflict = f"DO UPDATE SET {update}" if update else "DO NOTHING"
        self.upsert_sql = (
            f"INSERT INTO {names.table} ({', '.join(user_columns)})"
            f" VALUES ({', '.join('?' * len(user_columns))})"
            f" ON CONFLICT ({key_list}) {conflict}"
        )
        self.delete_sql = f"DELETE FROM {names.table} WHERE {names.user_keys_where}"
        self.knowledge_sql = f"UPDATE {shadow} SET {PASTS_COLUMN} = ? WHERE {names.keys_where}"
