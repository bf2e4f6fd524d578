"""SQL of the apply for one table: loading rows' states, writing merged rows."""

from __future__ import annotations

from syncmesh.store.sqlite.ddl import DIGEST_COLUMN, PASTS_COLUMN, quote_identifier, shadow_columns
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
        self.shadow_write_sql = (
            f"INSERT OR REPLACE INTO {shadow} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})"
        )
        # The same without `pasts` (left NULL), for rows whose cells have no
        # past and no knowledge: nearly all.  Binding None costs sqlite3 an
        # adapter lookup per parameter.
        plain = [column for column in columns if column != PASTS_COLUMN]
        self.plain_width = len(plain)
        self.shadow_plain_sql = (
            f"INSERT OR REPLACE INTO {shadow} ({', '.join(plain)})"
            f" VALUES ({', '.join('?' * len(plain))})"
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
