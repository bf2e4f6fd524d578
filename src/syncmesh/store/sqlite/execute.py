"""Running a write statement over many rows, finding the ones a constraint refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from syncmesh.errors import StoreError
from syncmesh.model import SqlValue


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
