"""SQL of the apply for one table: loading rows' states, writing merged rows."""

from __future__ import annotations

import functools

from syncmesh.model import CELL_FIELDS
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
        self.stage = StageSql(names)


# The widest incoming row the apply stages (`StageSql`): a temporary table of
# more columns than this would near SQLite's limit of 2,000; such tables take
# the row-by-row path.
STAGE_COLUMNS_MAX = 1_000


class StageSql:
    """The set-based apply of rows for keys new here (apply.py `_write_staged`).

    A batch's rows for keys this node has never held are staged, as they
    came (their key hash and digest first, then the positional row: keys,
    causal length and its stamp, then value, stamp, site and past per
    cell), in a temporary table, with one `executemany`; one `INSERT ... SELECT` then
    writes them all to the user table and one to the shadow table, in
    SQLite's C, instead of a Python list per row.  The temporary table is
    named by its width, so tables of one shape share it, and a table whose
    columns changed never meets a stale one.
    """

    def __init__(self, names: TableNames) -> None:
        keys, values = names.key_count, names.values
        width = 2 + keys + 3 + CELL_FIELDS * len(values)
        self.fits = len(values) > 0 and width <= STAGE_COLUMNS_MAX
        self.names = names
        stage = f"temp.{quote_identifier(f'_syncmesh_stage_{width}')}"
        self.stage = stage
        columns = [f"c{index}" for index in range(width)]
        self.create_sql = f"CREATE TEMP TABLE IF NOT EXISTS {stage[5:]} ({', '.join(columns)})"
        self.clear_sql = f"DELETE FROM {stage}"
        self.insert_sql = f"INSERT INTO {stage} VALUES ({', '.join(['?'] * width)})"
        # Positions in the staged row (c0 is the key hash, c1 the digest).
        self.key_at = [2 + index for index in range(keys)]
        self.cl_at = 2 + keys
        self.cell_at = [2 + keys + 3 + CELL_FIELDS * index for index in range(len(values))]
        user_columns = [quote_identifier(column) for column in (*names.spec.pk, *values)]
        selected = [f"c{at}" for at in self.key_at] + [f"c{at}" for at in self.cell_at]
        update = ", ".join(
            f"{quote_identifier(column)} = excluded.{quote_identifier(column)}" for column in values
        )
        key_list = ", ".join(quote_identifier(column) for column in names.spec.pk)
        # An alive row (odd causal length) is written whole: `apply` stages
        # only rows whose every cell is stamped.  (WHERE also settles SQLite's
        # parse of INSERT ... SELECT ... ON CONFLICT.)
        self.user_sql = (
            f"INSERT INTO {names.table} ({', '.join(user_columns)})"
            f" SELECT {', '.join(selected)} FROM {stage} WHERE c{self.cl_at} % 2 = 1"
            f" ORDER BY rowid ON CONFLICT ({key_list}) DO UPDATE SET {update}"
        )
        self.alive_sql = f"SELECT count(*) FROM {stage} WHERE c{self.cl_at} % 2 = 1"

    def shadow_sql(self, ordinals: tuple[int, ...]) -> str:
        """Write the staged rows' shadow rows, batch site indexes as our `ordinals`.

        The key hash and digest come staged (apply.py `_staged_rows`, which
        also keeps the moves of the hash tree's leaves); the value
        fingerprint is read from the user row just written, as
        `shadow_plain_sql` does (NULL where there is none: a dead row).
        """
        return _stage_shadow_sql(self, ordinals)


@functools.lru_cache(maxsize=256)
def _stage_shadow_sql(stage: StageSql, ordinals: tuple[int, ...]) -> str:
    names = stage.names
    cases = " ".join(f"WHEN {index} THEN {ordinal}" for index, ordinal in enumerate(ordinals))

    def ordinal(column: str) -> str:
        return f"CASE {column} {cases} END"

    cl = f"st.c{stage.cl_at}"
    cl_hlc, cl_site = f"st.c{stage.cl_at + 1}", ordinal(f"st.c{stage.cl_at + 2}")
    hlcs = [f"st.c{at + 1}" for at in stage.cell_at]
    sites = [ordinal(f"st.c{at + 2}") for at in stage.cell_at]
    first_key = quote_identifier(names.spec.pk[0])
    fingerprint = values_fp_sql(
        [
            (slot, hlc, f"u.{quote_identifier(column)}")
            for column, slot, hlc in zip(names.values, names.slots, hlcs, strict=True)
        ]
    )
    join = " AND ".join(
        f"u.{quote_identifier(column)} = st.c{at}"
        for column, at in zip(names.spec.pk, stage.key_at, strict=True)
    )
    columns = [
        *shadow_columns(names.layout)[: names.key_count + 6],
        *(f"h{slot}" for slot in names.slots),
        *(f"s{slot}" for slot in names.slots),
        VALUES_FP_COLUMN,
    ]
    selected = [
        *(f"st.c{at}" for at in stage.key_at),
        cl,
        cl_hlc,
        cl_site,
        ":seq",
        "st.c0",
        "st.c1",
        *hlcs,
        *sites,
        f"CASE WHEN u.{first_key} IS NULL THEN NULL ELSE {fingerprint} END",
    ]
    return (
        f"INSERT OR REPLACE INTO {names.shadow} ({', '.join(columns)})"
        f" SELECT {', '.join(selected)} FROM {stage.stage} st"
        f" LEFT JOIN {names.table} u ON {join} ORDER BY st.rowid"
    )
