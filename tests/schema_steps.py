"""Schema changes at one store, for the mixed-version tests (issue 14).

The DDL itself runs through the sqlite3 shell, as a user's migration
would.  What the node then does about it is `Store.reconcile_schema()`,
schema-local's part of issue 14.  Until that lands, `reconcile` below is a
stand-in for the two changes these tests make, ADD COLUMN and RENAME
COLUMN, built from the store's own DDL helpers; it ends, as the real
reconcile does, with `waiting.merge_ready`.
"""

from __future__ import annotations

from pathlib import Path

from syncmesh.store.sqlite import SqliteStore
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


def drop_column(store: SqliteStore, table: str, column: str, *, shell: bool = True) -> None:
    """`ALTER TABLE table DROP COLUMN column`, then the reconcile."""
    _run(store, f"ALTER TABLE {table} DROP COLUMN {column}", shell=shell)
    reconcile(store, table)


def _run(store: SqliteStore, sql: str, *, shell: bool) -> None:
    store.capture()  # what the capture loop has done before the migration runs
    if shell:
        sqlite3_shell(Path(store.context.path), sql)
    else:
        store.connection.execute(sql)


def reconcile(store: SqliteStore, table: str, renamed: dict[str, str] | None = None) -> None:
    """What the node's capture loop does after DDL: `store.reconcile_schema()`."""
    del table, renamed
    assert store.reconcile_schema()
