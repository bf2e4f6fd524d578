"""SQL text: bookkeeping tables, shadow tables, and the capture triggers.

Capture design (docs/adr/0002-stamp-in-capture-loop.md): a trigger cannot
call the hybrid clock, so it only *marks* the row's shadow entry pending:
`seq = NULL`, and the changed cells' stamps (and the causal length's stamp
on insert or delete) set to -1.  The engine's capture transaction moments
later stamps every pending cell with one HLC and one `seq`.  Because a
committed transaction is visible whole or not at all, every local
transaction lands inside one capture, so peers receive it whole.

Triggers use only SQL that SQLite 3.37 understands and no application-defined
functions, so every writer of the file is captured: the application, the
`sqlite3` shell, another language's driver.  Writes the engine applies from
peers are not captured: `_syncmesh_state.applying` is 1 only inside the
engine's apply transaction, which clears it before commit, so no other
connection ever sees it set.

Shadow columns: `k0..kN` (the primary key values), `cl`, `cl_hlc`, `cl_site`,
`seq`, then per value column i: `h{i}` (stamp) and `s{i}` (site ordinal;
0 is this node).
"""

from __future__ import annotations

from collections.abc import Callable

from syncmesh.model import TableSpec

PENDING = -1  # the stamp of a cell written locally and not yet captured

BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    site_id TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- last assigned change-feed sequence
    hlc INTEGER NOT NULL,            -- greatest stamp issued or observed (clock floor)
    applying INTEGER NOT NULL,       -- 1 only inside the engine's apply transaction
    tables_version INTEGER NOT NULL, -- bumped by track/untrack so a running node reloads
    restore_floor INTEGER NOT NULL   -- own-site stamps below this may be missing (restore)
);
CREATE TABLE IF NOT EXISTS _syncmesh_tables (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL               -- JSON: columns, declared types, primary key
);
CREATE TABLE IF NOT EXISTS _syncmesh_sites (
    ordinal INTEGER PRIMARY KEY,     -- 0 is this node
    site_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS _syncmesh_vector (
    site_id TEXT PRIMARY KEY,        -- origin site
    hlc INTEGER NOT NULL             -- all its writes stamped <= hlc are held here
);
CREATE TABLE IF NOT EXISTS _syncmesh_peers (
    site_id TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,       -- the peer incarnation the cursor belongs to
    cursor INTEGER NOT NULL,         -- we applied the peer's feed up to this seq
    head_seq INTEGER NOT NULL,       -- the peer's head when we last heard
    address TEXT NOT NULL DEFAULT '',
    applied_rows INTEGER NOT NULL DEFAULT 0,
    last_applied_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _syncmesh_quarantine (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    pk TEXT NOT NULL,                -- the key, as SQL literals, for people
    change BLOB NOT NULL,            -- the row change, to retry through the merge
    origin TEXT NOT NULL,            -- the peer it came from
    reason TEXT NOT NULL,
    min_stamps TEXT NOT NULL,        -- JSON {site: lowest hlc}: caps the version vector
    created_ms INTEGER NOT NULL
);
"""


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def shadow_name(table: str) -> str:
    return f"_syncmesh_shadow_{table}"


def _trigger_name(table: str, kind: str) -> str:
    return quote_identifier(f"_syncmesh_{kind}_{table}")


def shadow_columns(spec: TableSpec) -> list[str]:
    """Shadow column names in table order (all plain identifiers, no quoting needed)."""
    keys = [f"k{index}" for index in range(len(spec.pk))]
    cells = [
        name for index in range(len(spec.value_columns)) for name in (f"h{index}", f"s{index}")
    ]
    return [*keys, "cl", "cl_hlc", "cl_site", "seq", *cells]


def shadow_ddl(spec: TableSpec) -> list[str]:
    """CREATE statements for the shadow table of `spec` and its seq index."""
    shadow = quote_identifier(shadow_name(spec.name))
    keys = ", ".join(f"k{index}" for index in range(len(spec.pk)))
    cells = "".join(
        f", h{index} INTEGER, s{index} INTEGER" for index in range(len(spec.value_columns))
    )
    # Key columns have no declared type, so values keep their storage class.
    key_defs = ", ".join(f"k{index}" for index in range(len(spec.pk)))
    return [
        f"CREATE TABLE IF NOT EXISTS {shadow} ({key_defs}, cl INTEGER NOT NULL,"
        f" cl_hlc INTEGER, cl_site INTEGER, seq INTEGER{cells}, PRIMARY KEY ({keys}))"
        " WITHOUT ROWID",
        f"CREATE INDEX IF NOT EXISTS {quote_identifier(shadow_name(spec.name) + '_seq')}"
        f" ON {shadow} (seq)",
    ]


def _upsert_pending(spec: TableSpec, row: str, cell_condition: Callable[[str], str] | None) -> str:
    """INSERT of a pending shadow row for key `row`.pk, or marking an existing one.

    `cell_condition(column)` decides which cells an existing live row marks
    pending; None marks them all (an insert, or INSERT OR REPLACE).  It is a
    function, not a str.format template: quoted identifiers may contain braces.
    """
    shadow = quote_identifier(shadow_name(spec.name))
    count = len(spec.value_columns)
    names = shadow_columns(spec)
    key_values = [f"{row}.{quote_identifier(column)}" for column in spec.pk]
    cell_values = [value for _ in range(count) for value in (str(PENDING), "0")]
    values = [*key_values, "1", str(PENDING), "0", "NULL", *cell_values]
    sets = [
        f"cl_hlc = CASE WHEN cl % 2 = 0 THEN {PENDING} ELSE cl_hlc END",
        "cl = CASE WHEN cl % 2 = 0 THEN cl + 1 ELSE cl END",
        "seq = NULL",
    ]
    for index, column in enumerate(spec.value_columns):
        if cell_condition is None:
            sets.append(f"h{index} = {PENDING}")
        else:
            condition = cell_condition(quote_identifier(column))
            sets.append(
                f"h{index} = CASE WHEN cl % 2 = 0 OR {condition} THEN {PENDING} ELSE h{index} END"
            )
    keys = ", ".join(f"k{index}" for index in range(len(spec.pk)))
    return (
        f"INSERT INTO {shadow} ({', '.join(names)}) VALUES ({', '.join(values)})"
        f" ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)};"
    )


def _changed(column: str) -> str:
    quoted = quote_identifier(column)
    return f"OLD.{quoted} IS NOT NEW.{quoted}"


def capture_triggers(spec: TableSpec) -> list[str]:
    """CREATE TRIGGER statements that mark every local write to `spec` pending."""
    table = quote_identifier(spec.name)
    shadow = quote_identifier(shadow_name(spec.name))
    not_applying = "(SELECT applying FROM _syncmesh_state) = 0"
    key_match = " AND ".join(
        f"k{index} = OLD.{quote_identifier(column)}" for index, column in enumerate(spec.pk)
    )
    key_changed = " OR ".join(_changed(column) for column in spec.pk)
    any_changed = " OR ".join(_changed(column) for column in spec.columns)
    keys_count = len(spec.pk)
    delete_values = ", ".join(
        [f"OLD.{quote_identifier(column)}" for column in spec.pk] + ["2", str(PENDING), "0", "NULL"]
    )
    delete_names = ", ".join(
        [f"k{index}" for index in range(keys_count)] + ["cl", "cl_hlc", "cl_site", "seq"]
    )
    keys = ", ".join(f"k{index}" for index in range(keys_count))
    on_insert = (
        f"CREATE TRIGGER IF NOT EXISTS {_trigger_name(spec.name, 'insert')}"
        f" AFTER INSERT ON {table} WHEN {not_applying}\nBEGIN\n"
        f"  {_upsert_pending(spec, 'NEW', None)}\nEND"
    )

    def cell_changed(column: str) -> str:
        # Not a str.format template: a key column named like "{id}" broke track().
        return f"({key_changed}) OR OLD.{column} IS NOT NEW.{column}"

    on_update = (
        f"CREATE TRIGGER IF NOT EXISTS {_trigger_name(spec.name, 'update')}"
        f" AFTER UPDATE ON {table} WHEN {not_applying} AND ({any_changed})\nBEGIN\n"
        # A changed primary key is a delete of the old key and an insert of the new.
        f"  UPDATE {shadow} SET cl = cl + 1, cl_hlc = {PENDING}, seq = NULL"
        f" WHERE ({key_changed}) AND {key_match} AND cl % 2 = 1;\n"
        f"  {_upsert_pending(spec, 'NEW', cell_changed)}\nEND"
    )
    on_delete = (
        f"CREATE TRIGGER IF NOT EXISTS {_trigger_name(spec.name, 'delete')}"
        f" AFTER DELETE ON {table} WHEN {not_applying}\nBEGIN\n"
        f"  INSERT INTO {shadow} ({delete_names}) VALUES ({delete_values})"
        f" ON CONFLICT ({keys}) DO UPDATE SET"
        f" cl_hlc = CASE WHEN cl % 2 = 1 THEN {PENDING} ELSE cl_hlc END,"
        f" cl = CASE WHEN cl % 2 = 1 THEN cl + 1 ELSE cl END, seq = NULL;\nEND"
    )
    return [on_insert, on_update, on_delete]


def drop_trigger_statements(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {_trigger_name(table, kind)}"
        for kind in ("insert", "update", "delete")
    ]
