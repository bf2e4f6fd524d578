"""Scenarios 4 and 5: bootstrap of a new node from a large table, then bytes on the wire.

Per repeat, with fresh files and processes:

1. A source file gets N rows of ROW_BYTES bytes each (a 32-hex-digit key, a
   52-character name, an integer and a real: 100 bytes of values per row, so
   1M rows are a 100 MB table), in one transaction, and is then tracked
   (`syncmesh track` backfills the feed).  The baseline of the bootstrap is
   the same table copied file to file by SQLite itself (`INSERT INTO ...
   SELECT` across an ATTACHed file): the physical floor of moving it.
2. **bootstrap**: node a serves the source; node b starts on an empty
   tracked file and dials a through a byte-counting TCP proxy.  Timed from
   the start of b's process until all N rows are in b's file.  b's peak RSS
   is VmHWM from /proc/PID/status.
3. **wire**: once b has caught up and gone quiet, a random WIRE_FRACTION of
   the rows (1% by default) get one column (`qty`) updated at a, in
   TXN_ROWS-row transactions.  The proxy counts every byte between b and a,
   both ways (WebSocket framing, ACKs, heartbeats included), until all of
   them are visible at b, and a moment after, for the last ACK.  The
   baseline, "changed-row bytes", is the size of the changed rows as stored:
   for each changed row, its key and every column value, text as its
   length in bytes, integers and reals as 8 bytes.  A stricter second
   baseline, "changed-cell bytes", counts only each changed row's key and
   its new `qty` (8 bytes).
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import Figure, connected, create_items
from bench.nodes import NodeProcess, cluster, prepare_database
from bench.proxy import CountingProxy, counting_proxy
from syncmesh.store.sqlite import SqliteStore

BOOTSTRAP = "bootstrap"
WIRE = "wire"
ROW_BYTES = 100  # 32 (key) + 52 (name) + 8 (qty) + 8 (price)
NAME_HEX_BITS = 208  # 52 hex digits
WIRE_FRACTION = 0.01
BOOTSTRAP_TIMEOUT_S = 180.0
WIRE_TIMEOUT_S = 60.0
QUIET_TIMEOUT_S = 60.0
POLL_S = 0.05
SETTLE_S = 0.5  # after the last row shows at b: for its ACK to cross the proxy
TXN_ROWS = 1_000
STREAMING_TIMEOUT_S = 60.0
INSERT_SQL = "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)"


def big_rows(count: int, seed: int) -> Iterator[tuple[str, str, int, float]]:
    rng = random.Random(seed)
    for index in range(count):
        yield (
            f"{rng.getrandbits(128):032x}",
            f"{rng.getrandbits(NAME_HEX_BITS):052x}",
            index,
            index * 0.25,
        )


def prepare_source(path: Path, count: int, seed: int) -> None:
    """`count` rows in a fresh file, then tracked (the backfill puts them in the feed)."""
    create_items(path)
    with connected(path) as connection:
        connection.execute("BEGIN")
        connection.executemany(INSERT_SQL, big_rows(count, seed))
        connection.execute("COMMIT")
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["items"])
    finally:
        store.close()
    with connected(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def plain_copy_seconds(source: Path, directory: Path) -> float:
    """Seconds for SQLite to copy `items` from `source` into a fresh plain file."""
    target = directory / "copy.db"
    create_items(target)
    with connected(target) as connection:
        connection.execute("ATTACH DATABASE ? AS source", (f"file:{source}?mode=ro",))
        started = time.perf_counter()
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO items (id, name, qty, price) SELECT id, name, qty, price FROM source.items"
        )
        connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.execute("DETACH DATABASE source")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    return elapsed


def _rows_in(reader: sqlite3.Connection) -> int:
    """Rows in `items` of a file that only ever gained rows (rowids 1..n): cheap."""
    return int(reader.execute("SELECT coalesce(max(rowid), 0) FROM items").fetchone()[0])


def _wait_quiet(a: NodeProcess, b: NodeProcess, timeout_s: float) -> bool:
    """Until b has read a's feed to its head and a knows b acknowledged all of it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a_peers, b_peers = a.status()["peers"], b.status()["peers"]
        if (
            a_peers
            and b_peers
            and all(p["out_lag_changes"] == 0 for p in a_peers)
            and all(p["cursor"] >= p["peer_head_seq"] for p in b_peers)
        ):
            return True
        time.sleep(POLL_S * 4)
    return False


class _Figures:
    def __init__(self, rows: int, fraction: float) -> None:
        changed = max(1, round(rows * fraction))
        self.boot_s = Figure(
            BOOTSTRAP,
            f"empty node b syncs {rows:,} rows ({rows * ROW_BYTES / 1e6:.0f} MB) from a",
            "s",
            baseline_name="SQLite file-to-file copy",
            target="value <= 30",
        )
        self.boot_rate = Figure(BOOTSTRAP, "bootstrap rate", "rows/s")
        self.boot_rss = Figure(BOOTSTRAP, "peak RSS of b (VmHWM)", "MiB", target="value <= 150")
        self.boot_rss_a = Figure(BOOTSTRAP, "peak RSS of a, the source (VmHWM)", "MiB")
        self.boot_cpu_b = Figure(BOOTSTRAP, "CPU time of b, start to last row", "s")
        self.boot_cpu_a = Figure(BOOTSTRAP, "CPU time of a while b bootstraps", "s")
        self.file_mb = Figure(BOOTSTRAP, "a's file (table, index, shadow)", "MB")
        self.wire_total = Figure(
            WIRE,
            f"{fraction:.0%} random updates ({changed:,} rows of {rows:,}): bytes both ways",
            "bytes",
            baseline_name="changed-row bytes",
            target="ratio <= 1.3",
        )
        self.wire_forward = Figure(
            WIRE, "bytes a->b only", "bytes", baseline_name="changed-row bytes"
        )
        self.wire_cells = Figure(
            WIRE,
            "bytes both ways, against the changed cells only (key + qty)",
            "bytes",
            baseline_name="changed-cell bytes",
        )
        self.wire_per_row = Figure(WIRE, "bytes both ways per changed row", "bytes")
        self.wire_s = Figure(WIRE, "seconds until all updates visible at b", "s")

    def bootstrap(self) -> list[Figure]:
        return [
            self.boot_s,
            self.boot_rate,
            self.boot_rss,
            self.boot_rss_a,
            self.boot_cpu_b,
            self.boot_cpu_a,
            self.file_mb,
        ]

    def wire(self) -> list[Figure]:
        return [
            self.wire_total,
            self.wire_forward,
            self.wire_cells,
            self.wire_per_row,
            self.wire_s,
        ]


def _bootstrap(
    a: NodeProcess,
    b: NodeProcess,
    peer_url: str,
    rows: int,
    timeout_s: float,
    figures: _Figures,
    baseline_s: float,
) -> bool:
    a_cpu = a.cpu_seconds()
    started = time.perf_counter()
    b.start([peer_url])
    b.wait_listening()
    done = False
    with connected(b.path, read_only=True) as reader:
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if _rows_in(reader) >= rows:
                done = True
                break
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        present = int(reader.execute("SELECT count(*) FROM items").fetchone()[0])
    if not done:
        figures.boot_s.note = f"a repeat timed out after {timeout_s:.0f} s ({present:,} rows)"
    figures.boot_s.add(elapsed, baseline_s)
    figures.boot_rate.add(present / elapsed)
    figures.boot_rss.add(b.peak_rss_mb())
    figures.boot_rss_a.add(a.peak_rss_mb())
    figures.boot_cpu_b.add(b.cpu_seconds())
    figures.boot_cpu_a.add(a.cpu_seconds() - a_cpu)
    return done


def _wire(
    a: NodeProcess,
    b: NodeProcess,
    proxy: CountingProxy,
    rows: int,
    fraction: float,
    seed: int,
    figures: _Figures,
    log: Callable[[str], None],
) -> None:
    if not _wait_quiet(a, b, QUIET_TIMEOUT_S):
        log("  wire: b did not catch up and go quiet in time; measuring anyway")
    time.sleep(1.0)
    rng = random.Random(seed)
    changed = max(1, round(rows * fraction))
    rowids = rng.sample(range(1, rows + 1), changed)
    with connected(a.path) as writer:
        keys = [
            str(writer.execute("SELECT id FROM items WHERE rowid = ?", (rowid,)).fetchone()[0])
            for rowid in rowids
        ]
        changed_bytes = sum(
            int(
                writer.execute(
                    "SELECT length(CAST(id AS BLOB)) + length(CAST(name AS BLOB)) + 8 + 8"
                    " FROM items WHERE id = ?",
                    (key,),
                ).fetchone()[0]
            )
            for key in keys
        )
        # The stricter baseline: only what changed, each row's key and its new qty.
        changed_cell_bytes = sum(len(key.encode()) + 8 for key in keys)
        updates = [(-(index + 1), key) for index, key in enumerate(keys)]
        forward0, backward0 = proxy.counters()
        started = time.perf_counter()
        for start in range(0, changed, TXN_ROWS):
            writer.execute("BEGIN")
            writer.executemany("UPDATE items SET qty = ? WHERE id = ?", updates[start:][:TXN_ROWS])
            writer.execute("COMMIT")
    last_key = keys[-1]
    with connected(b.path, read_only=True) as reader:
        deadline = started + WIRE_TIMEOUT_S
        seen = 0
        while time.perf_counter() < deadline:
            found = reader.execute("SELECT qty FROM items WHERE id = ?", (last_key,)).fetchone()
            if found is not None and found[0] == -changed:
                seen = int(reader.execute("SELECT count(*) FROM items WHERE qty < 0").fetchone()[0])
                if seen >= changed:
                    break
            time.sleep(POLL_S / 5)
        elapsed = time.perf_counter() - started
    time.sleep(SETTLE_S)
    forward1, backward1 = proxy.counters()
    # The dialler is b: "forward" is b -> a, "backward" is a -> b.
    a_to_b = backward1 - backward0
    total = a_to_b + forward1 - forward0
    if seen < changed:
        figures.wire_total.note = f"a repeat saw {seen:,} of {changed:,} updates in time"
    figures.wire_total.add(total, changed_bytes)
    figures.wire_forward.add(a_to_b, changed_bytes)
    figures.wire_cells.add(total, changed_cell_bytes)
    figures.wire_per_row.add(total / changed)
    figures.wire_s.add(elapsed)
    log(
        f"  wire: {total:,} bytes both ways ({a_to_b:,} a->b) for {changed:,} changed rows of"
        f" {changed_bytes:,} bytes: {total / changed_bytes:.2f}x; visible in {elapsed:.2f} s"
    )


def run(
    repeats: int,
    rows: int,
    log: Callable[[str], None],
    *,
    bootstrap: bool = True,
    wire: bool = True,
    fraction: float = WIRE_FRACTION,
    timeout_s: float = BOOTSTRAP_TIMEOUT_S,
) -> list[Figure]:
    figures = _Figures(rows, fraction)
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-bulk-") as name:
            directory = Path(name)
            source = directory / "source.db"
            began = time.perf_counter()
            prepare_source(source, rows, seed=500 + repeat)
            file_mb = sum(
                Path(f"{source}{suffix}").stat().st_size
                for suffix in ("", "-wal")
                if Path(f"{source}{suffix}").exists()
            )
            log(
                f"  bulk {repeat + 1}/{repeats}: source of {rows:,} rows ready in"
                f" {time.perf_counter() - began:.1f} s ({file_mb / 1e6:.0f} MB)"
            )
            baseline_s = plain_copy_seconds(source, directory)
            figures.file_mb.add(file_mb / 1e6)
            source.rename(directory / "a.db")

            def prepare(node: str, path: Path) -> None:
                if node != "a":
                    prepare_database(path)

            with (
                cluster(directory, {"a": ()}, prepare=prepare) as nodes,
                counting_proxy(nodes["a"].port) as proxy,
            ):
                a = nodes["a"]
                b = NodeProcess("b", directory)
                prepare_database(b.path)
                try:
                    done = _bootstrap(a, b, proxy.url, rows, timeout_s, figures, baseline_s)
                    log(
                        f"  bootstrap {repeat + 1}/{repeats}: {figures.boot_s.samples[-1]:.1f} s"
                        f" (SQLite copy {baseline_s:.1f} s), b peak RSS"
                        f" {figures.boot_rss.samples[-1]:.0f} MiB, a"
                        f" {figures.boot_rss_a.samples[-1]:.0f} MiB"
                    )
                    if wire and done:
                        _wire(a, b, proxy, rows, fraction, 900 + repeat, figures, log)
                finally:
                    b.stop()
    found: list[Figure] = []
    if bootstrap:
        found += figures.bootstrap()
    if wire:
        found += figures.wire()
    return found
