"""The metadata budget (issue 16): what syncmesh's bookkeeping costs per row and per cell.

For each row size of the issue (about 100 and about 50 bytes per row,
random 128-bit TEXT keys), `rows` rows are written to a plain SQLite file
and to a tracked one (through the application's connection, then one
capture), and both are checkpointed.  Reported, from SQLite's `dbstat`:

- bytes in use (pages minus free pages) of each file, and their ratio
  (the issue's targets: <= 1.5x at 100 bytes, <= 2.0x at 50 bytes);
- per row: the shadow table, its seq index, the verify columns (`kh`,
  `dg`: the shadow's size with digests, minus without), the pasts (the
  `pasts` text, NULL for rows only one site wrote), the bookkeeping
  tables; per cell: the shadow's bytes per value column;
- the capture log per logged write, measured before the capture (the
  log is empty once captured).

The sizes are deterministic (no timing), so one repeat is enough; each
repeat adds the same sample.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import layouts
from bench.common import Figure, connected, write_in_transactions
from syncmesh.store.sqlite import SqliteStore

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL)"
INSERT_SQL = "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)"
VALUE_COLUMNS = 3
# Name lengths that make a record of about 100 and about 50 bytes: a 32-char
# key, an integer and a real, the record header, and the name.
ROW_SIZES = {100: 51, 50: 2}
TARGETS = {100: "ratio <= 1.5", 50: "ratio <= 2.0"}
SCENARIO = "metadata"


def _rows(count: int, name_chars: int, seed: int) -> list[tuple[str, str, int, float]]:
    rng = random.Random(seed)
    return [
        (f"{rng.getrandbits(128):032x}", "n" * name_chars, rng.getrandbits(24), rng.random())
        for _ in range(count)
    ]


def _in_use(path: Path) -> int:
    """Bytes in use of a checkpointed file: pages minus free pages."""
    with connected(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def _by_object(path: Path) -> dict[str, int]:
    """Bytes of each table and index (dbstat: whole pages)."""
    with connected(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {
            name: int(size)
            for name, size in connection.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
            )
        }


def _tracked(path: Path, rows: list[tuple[str, str, int, float]], *, digests: bool) -> int:
    """A tracked file with `rows` written and captured; returns the log's bytes per write."""
    with connected(path) as connection:
        connection.execute(SCHEMA)
    store = SqliteStore.open(path, digests=digests)
    try:
        store.init()
        store.track(["items"])
        with connected(path) as connection:
            write_in_transactions(connection, INSERT_SQL, rows)
        log_bytes = _by_object(path).get("_syncmesh_log_items", 0)
        store.capture()
    finally:
        store.close()
    return log_bytes


def measure(rows: int, row_bytes: int, seed: int = 16) -> dict[str, float]:
    """The budget of one row size, in bytes (totals and per row / cell)."""
    data = _rows(rows, ROW_SIZES[row_bytes], seed)
    with tempfile.TemporaryDirectory(prefix="syncmesh-metadata-") as directory:
        plain, tracked, no_digests = (Path(directory) / name for name in ("p.db", "t.db", "n.db"))
        with connected(plain) as connection:
            connection.execute(SCHEMA)
            write_in_transactions(connection, INSERT_SQL, data)
        log_bytes = _tracked(tracked, data, digests=True)
        _tracked(no_digests, data, digests=False)
        objects = _by_object(tracked)
        plain_objects = _by_object(plain)
        shadow = objects["_syncmesh_shadow_items"]
        with connected(tracked) as connection:
            record = connection.execute(
                "SELECT avg(length(id) + length(name) + 4 + 8) FROM items"
            ).fetchone()[0]
            pasts = connection.execute(
                "SELECT coalesce(sum(length(pasts)), 0) FROM _syncmesh_shadow_items"
            ).fetchone()[0]
        candidates = layouts.measure(tracked, "items", Path(directory))
        user = objects["items"] + objects.get("sqlite_autoindex_items_1", 0)
        bookkeeping = sum(
            size
            for name, size in objects.items()
            if name.startswith("_syncmesh")
            and not name.startswith(("_syncmesh_shadow_items", "_syncmesh_log_items"))
        )
        return {
            "rows": rows,
            "row_value_bytes": float(record),
            "plain_in_use": _in_use(plain),
            "tracked_in_use": _in_use(tracked),
            "plain_table": plain_objects["items"]
            + plain_objects.get("sqlite_autoindex_items_1", 0),
            "user_table": user,
            "shadow": shadow,
            "shadow_seq_index": objects.get("_syncmesh_shadow_items_seq", 0),
            "verify_columns": shadow - _by_object(no_digests)["_syncmesh_shadow_items"],
            "pasts": pasts,
            "bookkeeping": bookkeeping,
            "log_per_write": log_bytes / rows,
            **{f"layout {name}": size for name, size in candidates.items()},
        }


def run(repeats: int, rows: int, log: Callable[[str], None]) -> list[Figure]:
    figures: list[Figure] = []
    for row_bytes in ROW_SIZES:
        found = measure(rows, row_bytes)
        log(f"  metadata, rows of about {row_bytes} bytes: {found}")
        label = f"{row_bytes}-byte rows"
        ratio = Figure(
            SCENARIO,
            f"bytes in use, {rows:,} {label}",
            "bytes",
            baseline_name="plain SQLite file, same rows",
            target=TARGETS[row_bytes],
        )
        per_row = {
            "shadow table per row": found["shadow"] / rows,
            "shadow seq index per row": found["shadow_seq_index"] / rows,
            "verify columns (kh, dg) per row": found["verify_columns"] / rows,
            "pasts per row": found["pasts"] / rows,
            "capture log per logged write (before capture)": found["log_per_write"],
            "shadow per value cell": found["shadow"] / rows / VALUE_COLUMNS,
            "user table and key index per row": found["user_table"] / rows,
            "other bookkeeping tables per row": found["bookkeeping"] / rows,
        }
        for _ in range(repeats):
            ratio.add(found["tracked_in_use"], found["plain_in_use"])
        figures.append(ratio)
        # The same file with each candidate shadow layout in place of today's
        # shadow table and seq index (bench/layouts.py).
        today = found["shadow"] + found["shadow_seq_index"]
        for name in layouts.CANDIDATES:
            candidate = found[f"layout {name}"]
            projected = Figure(
                SCENARIO,
                f"bytes in use with the {name!r} shadow layout, {label}",
                "bytes",
                baseline_name="plain SQLite file, same rows",
                note=f"projected: shadow and its indexes {candidate / rows:.1f} B/row",
            )
            for _ in range(repeats):
                projected.add(found["tracked_in_use"] - today + candidate, found["plain_in_use"])
            figures.append(projected)
        for name, value in per_row.items():
            figure = Figure(SCENARIO, f"{name}, {label}", "bytes")
            for _ in range(repeats):
                figure.add(value)
            figures.append(figure)
    return figures


def sqlite_has_dbstat() -> bool:
    with sqlite3.connect(":memory:") as connection:
        try:
            connection.execute("SELECT 1 FROM dbstat LIMIT 1")
        except sqlite3.OperationalError:
            return False
    return True
