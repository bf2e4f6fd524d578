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

import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from syncmesh.errors import StoreError
from syncmesh.model import SqlValue, is_utf8_text, text_bytes

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
        require_transaction(connection, exc)
    except UnicodeEncodeError:
        pass  # TEXT that is not UTF-8: such rows are bound one by one (`bindable`)
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
        changed = connection.execute(*bindable(sql, row)).rowcount
    except sqlite3.IntegrityError as exc:
        require_transaction(connection, exc)
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


def execute_one(connection: sqlite3.Connection, sql: str, row: Row) -> sqlite3.Cursor:
    """`connection.execute`, that also binds TEXT that is not UTF-8 (`bindable`).

    sqlite3 refuses such a str while binding, before the statement runs,
    so trying the plain call first costs nothing for every other row.
    """
    try:
        return connection.execute(sql, row)
    except UnicodeEncodeError:
        return connection.execute(*bindable(sql, row))


def bindable(sql: str, row: Row) -> tuple[str, list[SqlValue]]:
    """`sql` and `row` as sqlite3 can bind them, TEXT that is not UTF-8 included.

    sqlite3 binds a str as UTF-8 and refuses one with lone surrogates (a
    TEXT value that is not UTF-8, model.TEXT_ERRORS).  Such a value is
    bound as its bytes, and its placeholders (`?`, or every `?N` naming
    it) become `CAST(... AS TEXT)`, which stores exactly those bytes as
    TEXT.  Rows without one (nearly all) are returned as they are.
    """
    params = list(row)
    dirty = {
        index
        for index, value in enumerate(params)
        if isinstance(value, str) and not is_utf8_text(value)
    }
    if not dirty:
        return sql, params
    for index in dirty:
        params[index] = text_bytes(str(params[index]))
    out: list[str] = []
    sequential = 0
    for quoted, text in _segments(sql):
        if quoted:
            out.append(text)
            continue
        pieces = _PLACEHOLDER.split(text)
        # split() with one group: text, number (or ''), text, number, ...
        out.append(pieces[0])
        for number, after in zip(pieces[1::2], pieces[2::2], strict=True):
            if number:
                index = int(number) - 1
                placeholder = f"?{number}"
            else:
                index = sequential
                sequential += 1
                placeholder = "?"
            out.append(f"CAST({placeholder} AS TEXT)" if index in dirty else placeholder)
            out.append(after)
    return "".join(out), params


_PLACEHOLDER = re.compile(r"\?(\d*)")


def _segments(sql: str) -> list[tuple[bool, str]]:
    """`sql` cut into (quoted?, text): quoted names and strings hold no placeholders."""
    segments: list[tuple[bool, str]] = []
    start = 0
    quote = ""
    for at, char in enumerate(sql):
        if quote:
            if char == quote:
                segments.append((True, sql[start : at + 1]))
                start, quote = at + 1, ""
        elif char in "\"'":
            segments.append((False, sql[start:at]))
            start, quote = at, char
    segments.append((bool(quote), sql[start:]))
    return segments


def require_transaction(connection: sqlite3.Connection, exc: sqlite3.IntegrityError) -> None:
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


def execute_many(connection: sqlite3.Connection, sql: str, rows: Sequence[Row]) -> int:
    """`executemany`, that also binds TEXT that is not UTF-8 (`bindable`); rows changed.

    The fast path is one `executemany` in a savepoint; only when sqlite3
    cannot bind a row's text is it undone and the rows run one by one.
    """
    connection.execute("SAVEPOINT syncmesh_bind")
    try:
        changed = connection.executemany(sql, rows).rowcount
    except UnicodeEncodeError:
        connection.execute("ROLLBACK TO syncmesh_bind")
        changed = sum(max(connection.execute(*bindable(sql, row)).rowcount, 0) for row in rows)
    connection.execute("RELEASE syncmesh_bind")
    return changed
