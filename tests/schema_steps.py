"""Schema changes at one store, for the mixed-version tests (issue 14).

The DDL itself runs through the sqlite3 shell, as a user's migration
would.  What the node then does about it is `Store.reconcile_schema()`,
schema-local's part of issue 14.  Until that lands, `reconcile` below is a
stand-in for the two changes these tests make, ADD COLUMN and RENAME
COLUMN, built from the store's own DDL helpers; it ends, as the real
reconcile does, with `waiting.merge_ready`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from syncmesh.store.sqlite import SqliteStore, capture, waiting
from syncmesh.store.sqlite.ddl import capture_triggers, drop_trigger_statements, quote_identifier
from syncmesh.store.sqlite.introspect import read_table_spec, unique_column_sets
from syncmesh.store.sqlite.table import TableSql
from tests.helpers import sqlite3_shell


def add_column(store: SqliteStore, table: str, definition: str, *, shell: bool = True) -> None:
    """`ALTER TABLE table ADD COLUMN definition`, then the reconcile.

    By the sqlite3 shell, as a user's migration; `shell=False` runs it on
    the store's connection instead (the state machine: thousands of them).
    """
    _run(store, f"ALTER TABLE {table} ADD COLUMN {definition}", shell=shell)
    reconcile(store, table)


def rename_column(
    store: SqliteStore, table: str, old: str, new: str, *, shell: bool = True
) -> None:
    """`ALTER TABLE table RENAME COLUMN old TO new`, then the reconcile."""
    _run(store, f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}", shell=shell)
    reconcile(store, table, renamed={new: old})


def _run(store: SqliteStore, sql: str, *, shell: bool) -> None:
    store.capture()  # what the capture loop has done before the migration runs
    if shell:
        sqlite3_shell(Path(store.context.path), sql)
    else:
        store.connection.execute(sql)


def reconcile(store: SqliteStore, table: str, renamed: dict[str, str] | None = None) -> None:
    """Stand-in for `store.reconcile_schema()` after an ADD or RENAME COLUMN of `table`.

    Added columns are appended (shadow columns `h{i}`/`s{i}` for the new
    index, existing rows unstamped); a renamed column keeps its index and
    its stamps and gets its old name as a former name.
    """
    ctx = store.context
    connection = ctx.connection
    held = ctx.tables[table]
    formers = {column: held.spec.former_of(column) for column in held.spec.columns}
    for new, old in (renamed or {}).items():
        formers[new] = (old, *formers.pop(old, ()))
    spec = read_table_spec(connection, table)
    former = tuple(formers.get(column, ()) for column in spec.columns)
    spec = dataclasses.replace(spec, former=former if any(former) else ())
    with ctx.transaction():
        capture.capture_pending(ctx)
        for statement in drop_trigger_statements(table):
            connection.execute(statement)
        shadow = quote_identifier(f"_syncmesh_shadow_{table}")
        for index in range(len(held.values), len(spec.value_columns)):
            connection.execute(f"ALTER TABLE {shadow} ADD COLUMN h{index} INTEGER")
            connection.execute(f"ALTER TABLE {shadow} ADD COLUMN s{index} INTEGER")
        connection.execute(
            "UPDATE _syncmesh_tables SET spec = ? WHERE name = ?",
            (
                json.dumps({"columns": spec.columns, "types": spec.declared_types, "pk": spec.pk}),
                table,
            ),
        )
        for statement in capture_triggers(spec, unique_column_sets(connection, table)):
            connection.execute(statement)
        # Every row's digest has a field per column: recompute them all.
        connection.execute(f"UPDATE {shadow} SET dg = NULL")
        connection.execute(TableSql(spec).sql_verify.fill_digests_sql)
        connection.execute("UPDATE _syncmesh_state SET tables_version = tables_version + 1")
    ctx.load()
    # The stored spec of this commit has no former names: keep them in memory.
    ctx.tables[table] = TableSql(spec)
    with ctx.transaction():
        waiting.merge_ready(ctx)
    store.summaries([table])  # rebuilt now, then kept up to date again
