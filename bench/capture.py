"""Scenario 1: what tracking a table costs its writers, and what the capture costs.

Two fresh files per repeat, each with `items` in WAL mode, synchronous=NORMAL:

- plain:    the table untracked: the baseline;
- tracked:  `syncmesh track`ed, and `Store.capture()` runs after every
            transaction (on the store's own connection, as the node does
            moments after each commit).

For the tracked file the application's transactions (`trigger only`: what
the triggers add to the writer) and the captures are timed apart; `trigger
+ capture` is their sum.  `capture() CPU` is the CPU time (`process_time`:
this process's, all of it SQLite's and ours) of the captures against the
CPU time of the plain writes: a figure a busy machine moves less than the
wall-clock ones (issue 17's capture target is CPU per row).  Triggers only
append to the table's change log; capturing between transactions keeps
that log short, as the node does.

Phases: insert every row, update one column of every row, delete every row,
each in TXN_ROWS-row transactions with executemany.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import INSERT_SQL, TXN_ROWS, Figure, connected, create_items, make_rows
from syncmesh.store.sqlite import SqliteStore

SCENARIO = "capture"
TARGET = "ratio <= 1.6"
PHASES = ("insert", "update", "delete")


def phase_statement(
    phase: str, rows: Sequence[tuple[str, str, int, float]]
) -> tuple[str, list[tuple[object, ...]]]:
    if phase == "insert":
        return INSERT_SQL, list(rows)
    if phase == "update":
        return "UPDATE items SET qty = ? WHERE id = ?", [(row[2] + 1, row[0]) for row in rows]
    return "DELETE FROM items WHERE id = ?", [(row[0],) for row in rows]


def _timed_phase(
    path: Path,
    sql: str,
    rows: Sequence[Sequence[object]],
    after_commit: Callable[[], object] | None,
) -> tuple[float, float, float, float]:
    """Seconds writing, in `after_commit`, and the CPU seconds of each, for one phase."""
    write_s = capture_s = write_cpu = capture_cpu = 0.0
    with connected(path) as connection:
        for start in range(0, len(rows), TXN_ROWS):
            began, began_cpu = time.perf_counter(), time.process_time()
            connection.execute("BEGIN")
            connection.executemany(sql, rows[start : start + TXN_ROWS])
            connection.execute("COMMIT")
            committed, committed_cpu = time.perf_counter(), time.process_time()
            write_s += committed - began
            write_cpu += committed_cpu - began_cpu
            if after_commit is not None:
                after_commit()
                capture_s += time.perf_counter() - committed
                capture_cpu += time.process_time() - committed_cpu
    return write_s, capture_s, write_cpu, capture_cpu


def run(repeats: int, rows_count: int, log: Callable[[str], None]) -> list[Figure]:
    figures: dict[tuple[str, str], Figure] = {}

    def figure(phase: str, what: str) -> Figure:
        key = (phase, what)
        if key not in figures:
            label = f"{phase} {rows_count:,} rows" if phase in PHASES else "all 3 phases"
            figures[key] = Figure(
                SCENARIO,
                f"{label}: {what}",
                "us/row",
                baseline_name={"plain": "", "capture() CPU": "plain CPU"}.get(what, "plain"),
                target=TARGET if what in ("trigger only", "trigger + capture") else "",
            )
        return figures[key]

    for repeat in range(repeats):
        rows = make_rows(rows_count, seed=repeat)
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-capture-") as directory:
            plain, tracked = Path(directory) / "plain.db", Path(directory) / "tracked.db"
            create_items(plain)
            create_items(tracked)
            store = SqliteStore.open(tracked)
            try:
                store.init()
                store.track(["items"])
                totals = dict.fromkeys(("plain", "trigger", "capture"), 0.0)
                for phase in PHASES:
                    sql, phase_rows = phase_statement(phase, rows)
                    # Alternate which file goes first: neither is always the cold one.
                    if repeat % 2 == 0:
                        plain_s, _, plain_cpu, _ = _timed_phase(plain, sql, phase_rows, None)
                        trigger_s, capture_s, _, capture_cpu = _timed_phase(
                            tracked, sql, phase_rows, store.capture
                        )
                    else:
                        trigger_s, capture_s, _, capture_cpu = _timed_phase(
                            tracked, sql, phase_rows, store.capture
                        )
                        plain_s, _, plain_cpu, _ = _timed_phase(plain, sql, phase_rows, None)
                    totals["plain"] += plain_s
                    totals["trigger"] += trigger_s
                    totals["capture"] += capture_s
                    us = {
                        "plain": plain_s / rows_count * 1e6,
                        "trigger": trigger_s / rows_count * 1e6,
                        "capture": capture_s / rows_count * 1e6,
                    }
                    figure(phase, "plain").add(us["plain"])
                    figure(phase, "trigger only").add(us["trigger"], us["plain"])
                    figure(phase, "trigger + capture").add(
                        us["trigger"] + us["capture"], us["plain"]
                    )
                    figure(phase, "capture() alone").add(us["capture"], us["plain"])
                    figure(phase, "capture() CPU").add(
                        capture_cpu / rows_count * 1e6, plain_cpu / rows_count * 1e6
                    )
                    log(
                        f"  capture {repeat + 1}/{repeats} {phase}: plain {us['plain']:.1f},"
                        f" trigger {us['trigger']:.1f}, capture() {us['capture']:.1f} us/row;"
                        f" CPU plain {plain_cpu / rows_count * 1e6:.1f},"
                        f" capture() {capture_cpu / rows_count * 1e6:.1f} us/row"
                    )
            finally:
                store.close()
            operations = rows_count * len(PHASES)
            us_all = {name: value / operations * 1e6 for name, value in totals.items()}
            figure("all", "trigger only").add(us_all["trigger"], us_all["plain"])
            figure("all", "trigger + capture").add(
                us_all["trigger"] + us_all["capture"], us_all["plain"]
            )
    return list(figures.values())
