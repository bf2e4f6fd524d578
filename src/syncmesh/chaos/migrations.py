"""The rolling schema changes of the `migrate` fault (issue 14, ADR 0013).

A `migrate` fault changes the workload's `kv` table at every node, one node
at a time, while the other faults run and every client keeps writing.  The
change is one of these shapes, chosen by the schedule's seed:

- `add`: `ALTER TABLE kv ADD COLUMN c TEXT` (nullable) and `ADD COLUMN d
  TEXT NOT NULL DEFAULT 'd-default'` (rows inserted at nodes that have not
  migrated arrive without `d`: only the database's default can fill it);
- `rebuild`: what Django does on SQLite to add a column: create
  `new__kv` with the new column, copy the rows, drop `kv`, rename
  `new__kv` to `kv`;
- `rename`: `ALTER TABLE kv RENAME COLUMN b TO bee`.

Each migration runs as an application's migration does: by the client
process of that node (the application), inside one transaction, and the
client writes again only once the node has reconciled the table (its
stored column list is the table's), as docs/schema.md's rollout says (stop
the site's writers while it migrates).  That is what keeps the known limit
of ADR 0013 out of the run: an UPDATE of an existing row by another
connection between a rebuild's commit and the node's reconcile is not
captured.  The fault does not exercise that window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from syncmesh.model import SqlValue


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change of `kv`: its SQL and what it does to the columns."""

    name: str
    statements: tuple[str, ...]  # run in one transaction, in order
    renames: Mapping[str, str] = field(default_factory=dict)  # old name -> new name
    # Columns the change adds, with the value rows nobody wrote hold (their default).
    added: Mapping[str, SqlValue] = field(default_factory=dict)

    def columns_after(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        """`kv`'s value columns once the migration ran, given those before."""
        return tuple(self.renames.get(column, column) for column in columns) + tuple(self.added)


MIGRATIONS: dict[str, Migration] = {
    "add": Migration(
        "add",
        (
            "ALTER TABLE kv ADD COLUMN c TEXT",
            "ALTER TABLE kv ADD COLUMN d TEXT NOT NULL DEFAULT 'd-default'",
        ),
        added={"c": None, "d": "d-default"},
    ),
    "rebuild": Migration(
        "rebuild",
        (
            "CREATE TABLE new__kv (k INTEGER PRIMARY KEY, a TEXT, b TEXT, n INTEGER, c TEXT)",
            "INSERT INTO new__kv (k, a, b, n, c) SELECT k, a, b, n, NULL FROM kv",
            "DROP TABLE kv",
            "ALTER TABLE new__kv RENAME TO kv",
        ),
        added={"c": None},
    ),
    "rename": Migration("rename", ("ALTER TABLE kv RENAME COLUMN b TO bee",), renames={"b": "bee"}),
}
MIGRATION_SHAPES = tuple(MIGRATIONS)  # a schedule's fault names its shape by index here
