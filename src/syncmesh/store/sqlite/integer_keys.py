"""The opt-in for tables whose keys SQLite allocates, kept with the table's tracking.

`track` refuses a table with an INTEGER PRIMARY KEY (or another key that
SQLite numbers per site, `introspect.allocated_key`) unless the user says
that only one site writes it, or that its ids never collide (docs/keys.md,
"Integer keys").  The answer is stored in the table's row of
`_syncmesh_tables`, as one more field of its `spec` JSON, so that:

- the warning for such a table is given only for tables tracked before the
  refusal existed (their spec has no such field), when `serve` starts, in
  status and on the dashboard;
- `track DATABASE TABLE --allow-integer-keys` of an already tracked table
  records the answer and silences the warning.

The field is read and written here only, by read-modify-write of the JSON
object, so that whoever else writes `spec` keeps it: keep unknown fields
when rewriting a table's spec.
"""

from __future__ import annotations

import json
import sqlite3

from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.introspect import allocated_key_warning

SPEC_FIELD = "integer_keys_allowed"  # true: the user opted in (absent: not asked)


def allowed(connection: sqlite3.Connection, table: str) -> bool:
    """Whether the user opted in for `table`'s allocated keys (False if untracked)."""
    row = connection.execute(
        "SELECT spec FROM _syncmesh_tables WHERE name = ?", (table,)
    ).fetchone()
    return row is not None and json.loads(row[0]).get(SPEC_FIELD) is True


def record_allowed(connection: sqlite3.Connection, table: str) -> None:
    """Store the opt-in with `table`'s tracking (the caller's transaction)."""
    row = connection.execute(
        "SELECT spec FROM _syncmesh_tables WHERE name = ?", (table,)
    ).fetchone()
    assert row is not None, f"{table} is not tracked"
    spec = json.loads(row[0])
    if spec.get(SPEC_FIELD) is True:
        return
    spec[SPEC_FIELD] = True
    connection.execute(
        "UPDATE _syncmesh_tables SET spec = ? WHERE name = ?", (json.dumps(spec), table)
    )


def warnings(ctx: StoreContext) -> list[str]:
    """One warning per tracked table whose keys SQLite allocates and that was not opted in."""
    found = []
    for name, table in sorted(ctx.tables.items()):
        try:
            if allowed(ctx.connection, name):
                continue
            warning = allocated_key_warning(ctx.connection, table.spec, ctx.path)
        except sqlite3.Error:
            continue  # the table is gone or unreadable: `schema_problems` reports it
        if warning is not None:
            found.append(warning)
    return found
