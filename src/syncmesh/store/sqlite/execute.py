"""Running a write statement over many rows, checking that each took effect.

The apply asks SQLite for one change per row (an upsert or a delete of one
key).  SQLite can say yes without doing it: an `ON CONFLICT IGNORE`
constraint or an application trigger's `RAISE(IGNORE)` skips the write
without an error (issue 12, defect 1).  So every write is counted: the
rows' `changes()` must add up to one per row.  When they do not, or when a
constraint refuses a row, the rows are written again one by one, each in
its own savepoint, to find and undo exactly the ones that did not take
effect; the rest stay written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence

from syncmesh.errors import StoreError
from syncmesh.model import SqlValue

Row = Sequence[SqlValue]

# Why a write that changed no row did not take effect, when no error said so.
NOT_WRITTEN = (
    "SQLite did not write the row (changes() = 0): an ON CONFLICT IGNORE constraint or"
    " an application trigger's RAISE(IGNORE) skipped it"
)


def execute_checked(
    connection: sqlite3.Connection,
    sql: str,
    rows: Iterable[Row],
    settled: Callable[[Row], bool] | None = None,
) -> list[tuple[int, str]]:
    """Run `sql` (one row changed per parameter row); (index, reason) of the rows that failed.

    A row fails when a constraint refuses it, or when it changed no row and
    `settled(row)` (the end state holds anyway: a delete of a row that is
    already gone) is not true.  A failed row's effects are undone.  The
    fast path is one `executemany` inside one savepoint.
    """
    materialized = list(rows)
    if not materialized:
        return []
    connection.execute("SAVEPOINT syncmesh_write")
    try:
        if connection.executemany(sql, materialized).rowcount == len(materialized):
            connection.execute("RELEASE syncmesh_write")
            return []
    except sqlite3.IntegrityError as exc:
        _require_transaction(connection, exc)
    # Undo the partial executemany, then find the rows that fail, one by one.
    connection.execute("ROLLBACK TO syncmesh_write")
    failures: list[tuple[int, str]] = []
    for index, row in enumerate(materialized):
        reason = _write_one(connection, sql, row, settled)
        if reason is not None:
            failures.append((index, reason))
    connection.execute("RELEASE syncmesh_write")
    return failures


def _write_one(
    connection: sqlite3.Connection,
    sql: str,
    row: Row,
    settled: Callable[[Row], bool] | None,
) -> str | None:
    """Write one row in its own savepoint; the reason it failed (undone), or None."""
    connection.execute("SAVEPOINT syncmesh_row")
    try:
        changed = connection.execute(sql, row).rowcount
    except sqlite3.IntegrityError as exc:
        _require_transaction(connection, exc)
        connection.execute("RELEASE syncmesh_row")  # SQLite undid the statement itself
        return f"constraint failed: {exc}"
    if changed == 1 or (changed == 0 and settled is not None and settled(row)):
        connection.execute("RELEASE syncmesh_row")
        return None
    connection.execute("ROLLBACK TO syncmesh_row")
    connection.execute("RELEASE syncmesh_row")
    if changed == 0:
        return NOT_WRITTEN
    return f"SQLite changed {changed} rows for one key's write"


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
