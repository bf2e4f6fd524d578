"""`python -m bench.schema [--rows N]`: what a schema change costs the store (issue 14).

Times `Store.reconcile_schema()` (what the node's capture loop runs once
`PRAGMA schema_version` moved) after DDL that another connection ran on a
tracked table of `--rows` rows (1,000,000 by default):

- ADD COLUMN (nullable): a new slot, the new cells' default stamp and the
  rows' digests refreshed, no row sent again;
- a Django-style rebuild (create, copy, drop, rename, with a column added):
  triggers put back and the catch-up compare of every key with its shadow
  row;
- RENAME COLUMN, for comparison (no pass over the rows);
- a rebuild that drops a column (Django removing an indexed field, Alembic
  batch `drop_column`), with 100 rows updated by the same connection right
  after it, before the reconcile: the cells that are left are compared
  with their per-cell fingerprints, and the fingerprints are rewritten
  without the dropped slot;
- a rebuild that renames a column (Alembic batch `alter_column(
  new_column_name=)`, `sqlite-utils transform --rename`): recognised by
  the column's values (one pass comparing them with the dropped column's
  fingerprints), so no row is sent again.

Also reports how many rows each change put in the change feed (what peers
would be sent): 0 where no row was written meanwhile, and the 100 updated
rows for the rebuild that drops a column.  Prints
one line per figure; the figures go in the closing note of issue 14.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench.common import INSERT_SQL, SCHEMA, connected, make_rows, write_in_transactions
from syncmesh.store.sqlite import SqliteStore

ROWS_DEFAULT = 1_000_000

DJANGO_REBUILD = """
BEGIN;
CREATE TABLE "new__items" ("id" TEXT NOT NULL PRIMARY KEY, "name" TEXT NULL,
    "qty" INTEGER NULL, "price" REAL NULL, "note" TEXT NULL,
    "colour" TEXT DEFAULT 'green' NOT NULL);
INSERT INTO "new__items" ("id", "name", "qty", "price", "note", "colour")
    SELECT "id", "name", "qty", "price", "note", 'green' FROM "items";
DROP TABLE "items";
ALTER TABLE "new__items" RENAME TO "items";
COMMIT;
"""


UPDATED_MEANWHILE = 100
DROP_REBUILD = f"""
BEGIN;
CREATE TABLE "new__items" ("id" TEXT NOT NULL PRIMARY KEY, "name" TEXT NULL,
    "qty" INTEGER NULL, "price" REAL NULL, "colour" TEXT DEFAULT 'green' NOT NULL);
INSERT INTO "new__items" ("id", "name", "qty", "price", "colour")
    SELECT "id", "name", "qty", "price", "colour" FROM "items";
DROP TABLE "items";
ALTER TABLE "new__items" RENAME TO "items";
COMMIT;
UPDATE items SET name = name || ' (updated)'
    WHERE id IN (SELECT id FROM items ORDER BY id LIMIT {UPDATED_MEANWHILE});
"""

RENAME_REBUILD = """
BEGIN;
CREATE TABLE "new__items" ("id" TEXT NOT NULL PRIMARY KEY, "title" TEXT NULL,
    "qty" INTEGER NULL, "price" REAL NULL, "colour" TEXT DEFAULT 'green' NOT NULL);
INSERT INTO "new__items" ("id", "title", "qty", "price", "colour")
    SELECT "id", "name", "qty", "price", "colour" FROM "items";
DROP TABLE "items";
ALTER TABLE "new__items" RENAME TO "items";
COMMIT;
"""


def _feed_rows_after(store: SqliteStore, seq: int) -> int:
    """Rows of the feed after `seq`: what a peer at `seq` would be sent."""
    return store.feed_rows_after([seq], 10_000_000)[0]


def _ddl(path: Path, sql: str) -> float:
    """Run `sql` on another connection, as the application would; seconds it took."""
    started = time.perf_counter()
    with connected(path) as connection:
        connection.executescript(sql)
    return time.perf_counter() - started


def _timed_reconcile(store: SqliteStore) -> tuple[float, list[str]]:
    started = time.perf_counter()
    lines = store.reconcile_schema()
    return time.perf_counter() - started, lines


def run(rows: int, directory: Path) -> list[tuple[str, float, str]]:
    """(figure, value, unit) for each measurement."""
    path = directory / "schema.db"
    with connected(path) as connection:
        connection.execute(SCHEMA)
        write_in_transactions(connection, INSERT_SQL, make_rows(rows, seed=14))
    store = SqliteStore.open(path)
    figures: list[tuple[str, float, str]] = []
    try:
        store.init()
        started = time.perf_counter()
        store.track(["items"])
        figures.append(("track (backfill) of the table", time.perf_counter() - started, "s"))
        for label, sql in (
            ("ADD COLUMN note TEXT", 'ALTER TABLE items ADD COLUMN "note" TEXT'),
            ("RENAME COLUMN qty TO amount", "ALTER TABLE items RENAME COLUMN qty TO amount"),
            ("RENAME COLUMN amount TO qty", "ALTER TABLE items RENAME COLUMN amount TO qty"),
            ("Django rebuild adding a column", DJANGO_REBUILD),
            (
                f"rebuild dropping a column, {UPDATED_MEANWHILE} rows updated meanwhile",
                DROP_REBUILD,
            ),
            ("rebuild renaming a column", RENAME_REBUILD),
        ):
            head = store.head_seq()
            figures.append((f"{label}: the application's DDL", _ddl(path, sql), "s"))
            seconds, lines = _timed_reconcile(store)
            assert lines, f"{label}: nothing reconciled"
            if sql is RENAME_REBUILD:
                assert any("recognised by its values" in line for line in lines), lines
            figures.append((f"{label}: reconcile_schema()", seconds, "s"))
            figures.append((f"{label}: rows put in the feed", _feed_rows_after(store, head), ""))
        seconds, lines = _timed_reconcile(store)
        assert lines == []
        figures.append(("reconcile_schema() with no DDL since", seconds, "s"))
    finally:
        store.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schema", description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS_DEFAULT, help="rows in the table")
    arguments = parser.parse_args(argv)
    print(
        f"schema changes on a tracked table of {arguments.rows:,} rows"
        f" (SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]})"
    )
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-schema-") as directory:
        for figure, value, unit in run(arguments.rows, Path(directory)):
            shown = f"{value:.3f} {unit}" if unit else f"{value:.0f}"
            print(f"  {figure:<75} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
