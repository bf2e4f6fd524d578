"""Candidate shadow layouts for the metadata budget (issue 16), measured on real shadow rows.

`python -m bench metadata` measures the shadow table as syncmesh writes it
today.  Before the layout is rewritten (a change to every statement that
reads or writes a shadow row, with an upgrade path), this module measures
what the candidates would cost: the tracked file's own shadow rows (real
stamps, digests, key hashes and value fingerprints) are copied, in feed
order, into each candidate's tables in a fresh file, and the bytes of each
table and index are read from `dbstat`.  Nothing here is used by syncmesh.

The candidates (each keeps what the merge, the feed, verify and the
reconcile read today; none drops a column's information):

- `today`: the shadow as it is (WITHOUT ROWID keyed by the key, an index
  on `seq`), for comparison with the tracked file's own figure;
- `one stamp`: the same, with a cell's (hlc, site) NULL while it equals
  the row's causal-length stamp (rows written whole by one write);
- `feed order + key index`: a rowid table whose rowid is the row's place
  in the feed (a row moves to the end when it gets a new seq, so the feed
  is read in rowid order and needs no seq index; a seq group's first rowid
  kept apart, one row per group), a UNIQUE index on the key, one stamp;
- `feed order + key hash index`: the same, found by its key hash (`kh`,
  already kept for the hash trees; a lookup compares the key too, so a
  hash collision costs a second row read, not a wrong row) instead of the
  key: the key is stored once.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

SLOTS = 3  # bench.metadata's table: name, qty, price
_CELLS = "".join(f", h{slot} INTEGER, s{slot} INTEGER" for slot in range(SLOTS))
_ROW = f"cl INTEGER NOT NULL, cl_hlc INTEGER, cl_site INTEGER{_CELLS}, pasts TEXT, vf BLOB"
CANDIDATES: dict[str, list[str]] = {
    "today": [
        f"CREATE TABLE sh (k0, {_ROW}, seq INTEGER, kh INTEGER, dg INTEGER, PRIMARY KEY (k0))"
        " WITHOUT ROWID",
        "CREATE INDEX sh_seq ON sh (seq)",
    ],
    "one stamp": [
        f"CREATE TABLE sh (k0, {_ROW}, seq INTEGER, kh INTEGER, dg INTEGER, PRIMARY KEY (k0))"
        " WITHOUT ROWID",
        "CREATE INDEX sh_seq ON sh (seq)",
    ],
    "feed order + key index": [
        f"CREATE TABLE sh (place INTEGER PRIMARY KEY, k0, {_ROW}, kh INTEGER, dg INTEGER)",
        "CREATE UNIQUE INDEX sh_key ON sh (k0)",
        "CREATE TABLE groups (seq INTEGER PRIMARY KEY, first_place INTEGER)",
    ],
    "feed order + key hash index": [
        f"CREATE TABLE sh (place INTEGER PRIMARY KEY, k0, {_ROW}, kh INTEGER, dg INTEGER)",
        "CREATE INDEX sh_kh ON sh (kh)",
        "CREATE TABLE groups (seq INTEGER PRIMARY KEY, first_place INTEGER)",
    ],
}


def _shadow_rows(tracked: Path, table: str) -> list[tuple[object, ...]]:
    cells = ", ".join(f"h{slot}, s{slot}" for slot in range(SLOTS))
    with closing(sqlite3.connect(tracked)) as connection:
        return connection.execute(
            f"SELECT k0, cl, cl_hlc, cl_site, {cells}, pasts, vf, seq, kh, dg"
            f" FROM _syncmesh_shadow_{table} ORDER BY seq"
        ).fetchall()


def _one_stamp(row: tuple[object, ...]) -> tuple[object, ...]:
    """The row with each cell stamp equal to the row's causal-length stamp left NULL."""
    key, cl, cl_hlc, cl_site, *rest = row
    cells = rest[: 2 * SLOTS]
    for slot in range(SLOTS):
        if cells[2 * slot] == cl_hlc and cells[2 * slot + 1] == cl_site:
            cells[2 * slot] = cells[2 * slot + 1] = None
    return (key, cl, cl_hlc, cl_site, *cells, *rest[2 * SLOTS :])


def measure(tracked: Path, table: str, directory: Path) -> dict[str, int]:
    """Bytes (whole pages, tables and indexes) each candidate takes for `tracked`'s shadow."""
    rows = _shadow_rows(tracked, table)
    sizes: dict[str, int] = {}
    for index, (name, ddl) in enumerate(CANDIDATES.items()):
        path = directory / f"layout{index}.db"
        with closing(sqlite3.connect(path)) as connection, connection:
            for statement in ddl:
                connection.execute(statement)
            if name == "today":
                connection.executemany(f"INSERT INTO sh VALUES ({_marks(15)})", rows)
            elif name == "one stamp":
                connection.executemany(
                    f"INSERT INTO sh VALUES ({_marks(15)})", [_one_stamp(row) for row in rows]
                )
            else:
                placed = [(None, *_one_stamp(row)[:-3], row[-2], row[-1]) for row in rows]
                connection.executemany(f"INSERT INTO sh VALUES ({_marks(15)})", placed)
                connection.executemany(
                    "INSERT OR IGNORE INTO groups VALUES (?, ?)",
                    ((row[-3], place) for place, row in enumerate(rows, start=1)),
                )
        with closing(sqlite3.connect(path)) as connection:
            sizes[name] = int(
                connection.execute(
                    "SELECT sum(pgsize) FROM dbstat WHERE name NOT LIKE 'sqlite_%'"
                ).fetchone()[0]
            )
    return sizes


def _marks(count: int) -> str:
    return ", ".join("?" * count)
