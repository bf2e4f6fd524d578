"""`python -m bench.schema_bytes [--rows N] [--written K]`: bytes a peer is sent for ADD COLUMN.

Issue 14's figure: adding a column to a tracked table of `--rows` rows
(1,000,000 by default) must not send every row again; the target is
under 1 KB plus the values actually written to the new column.

Two stores, A and B, hold the same table, B made from a copy of A's file
(`new_site_id`, as docs/operations.md describes a second site made from a
copy) and synced to A's head.  Then, at A only:

1. `ALTER TABLE items ADD COLUMN note TEXT` on another connection (the
   application's migration) and `reconcile_schema()` (the node's capture
   loop): the frames A's feed sends B afterwards, encoded as the wire has
   them, are counted;
2. `--written` rows get a value in the new column (an UPDATE each): the
   frames are counted again, beside the bytes of the values themselves.

B has not migrated: it keeps those cells as waiting cells (reported), and
merges them when it adds the column too (reported).  Prints one line per
figure.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench.common import INSERT_SQL, SCHEMA, connected, make_rows, write_in_transactions
from syncmesh.protocol.codec import encode
from syncmesh.protocol.messages import Batch
from syncmesh.store.sqlite import SqliteStore

ROWS_DEFAULT = 1_000_000
WRITTEN_DEFAULT = 100
BATCH_ROWS = 10_000  # the node's batch_rows_max default


def _pull(source: SqliteStore, target: SqliteStore) -> tuple[int, int, int]:
    """`target` reads `source`'s feed after its cursor up to the head; (frames, rows, bytes)."""
    cursor = target.peer_cursor(source.site_id)
    if cursor is None:
        target.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")
        cursor = target.peer_cursor(source.site_id)
        assert cursor is not None
    frames = rows = sent = 0
    position = cursor.cursor
    while True:
        batch = source.read_batch(position, target.vector(), BATCH_ROWS)
        frame = encode(Batch(batch))
        frames, rows, sent = frames + 1, rows + batch.row_count, sent + len(frame)
        target.apply_batch(source.site_id, batch)
        position = batch.to_seq
        if position >= source.head_seq():
            return frames, rows, sent


def _add_note_column(store: SqliteStore, path: Path) -> float:
    """The migration on another connection, then the reconcile; seconds the reconcile took."""
    with connected(path) as connection:
        connection.execute("ALTER TABLE items ADD COLUMN note TEXT")
    started = time.perf_counter()
    lines = store.reconcile_schema()
    assert lines, "the ADD COLUMN was not noticed"
    return time.perf_counter() - started


def run(rows: int, written: int, directory: Path) -> list[tuple[str, float, str]]:
    """(figure, value, unit) for each measurement."""
    a_path, b_path = directory / "a.db", directory / "b.db"
    data = make_rows(rows, seed=14)
    with connected(a_path) as connection:
        connection.execute(SCHEMA)
        write_in_transactions(connection, INSERT_SQL, data)
    a = SqliteStore.open(a_path)
    a.init()
    a.track(["items"])
    a.close()
    shutil.copyfile(a_path, b_path)  # closed, so the WAL was checkpointed into the file
    a, b = SqliteStore.open(a_path), SqliteStore.open(b_path)
    figures: list[tuple[str, float, str]] = []
    try:
        b.new_site_id()
        frames, synced, sent = _pull(a, b)
        figures.append(("B synced to A's head first: rows sent", synced, ""))

        seconds = _add_note_column(a, a_path)
        figures.append(("A: reconcile_schema() after ADD COLUMN", seconds, "s"))
        frames, sent_rows, sent = _pull(a, b)
        figures.append(("ADD COLUMN: frames A sent B", frames, ""))
        figures.append(("ADD COLUMN: rows A sent B", sent_rows, ""))
        figures.append(("ADD COLUMN: bytes A sent B", sent, "B"))

        values = [f"note {index}" for index in range(written)]
        with connected(a_path) as connection:
            connection.execute("BEGIN")
            connection.executemany(
                "UPDATE items SET note = ? WHERE id = ?",
                [(value, row[0]) for value, row in zip(values, data, strict=False)],
            )
            connection.execute("COMMIT")
        a.capture()
        value_bytes = sum(len(value.encode()) for value in values)
        frames, sent_rows, sent = _pull(a, b)
        figures.append((f"{written} values written to the column: their bytes", value_bytes, "B"))
        figures.append((f"{written} values written: rows A sent B", sent_rows, ""))
        figures.append((f"{written} values written: bytes A sent B", sent, "B"))
        figures.append(
            (f"{written} values written: bytes sent beyond the values", sent - value_bytes, "B")
        )
        waiting = b.status().waiting_cells.get("items", {}).get("note", 0)
        figures.append(("B (not migrated yet): cells waiting for the column", waiting, ""))

        seconds = _add_note_column(b, b_path)
        figures.append(("B: reconcile_schema() after ADD COLUMN, merging them", seconds, "s"))
        (landed,) = b.connection.execute(
            "SELECT count(*) FROM items WHERE note IS NOT NULL"
        ).fetchone()
        figures.append(("B: values in the column after it migrated", landed, ""))
        assert landed == written, f"{landed} of {written} values landed at B"
        assert b.status().waiting_cells == {}
    finally:
        a.close()
        b.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schema_bytes", description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS_DEFAULT, help="rows in the table")
    parser.add_argument(
        "--written", type=int, default=WRITTEN_DEFAULT, help="rows given a value in the new column"
    )
    arguments = parser.parse_args(argv)
    assert arguments.written <= arguments.rows
    print(
        f"ADD COLUMN on a tracked table of {arguments.rows:,} rows, bytes sent to a peer"
        f" (SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]})"
    )
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-schema-bytes-") as directory:
        for figure, value, unit in run(arguments.rows, arguments.written, Path(directory)):
            shown = f"{value:.3f} {unit}" if unit == "s" else f"{value:,.0f} {unit}".rstrip()
            print(f"  {figure:<60} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
