"""Scenario verify: what the hash trees cost and what a verify costs (docs/verify.md).

Two parts:

- **upkeep**: the capture with and without the rows' digests and the
  tree (Store.open(digests=False) turns them off), on two fresh tracked
  files, same phases as the capture scenario (insert, update one column,
  delete; 1,000-row transactions).  The files take turns transaction by
  transaction and the figure is this process's CPU time, so the noise of
  a busy machine falls on both alike.  The figure is the ratio of
  trigger + capture with digests to without.
- **exchange**: site A is a file of `--verify-rows` rows (1,000,000 by
  default), site B a copy given its own site id and served by a real node
  process on 127.0.0.1.  Per repeat, from A's Store in this process: a
  verify of identical sites, then after 100 rows changed at A, then after
  10,000: round trips, bytes both ways, seconds (including the settle
  pause of 0.2 s before the one re-read).  A first verify after the node
  starts builds both trees by a scan; it is measured apart.  A deep
  verify of identical sites (a scan with values on both sides) once per
  repeat.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.capture import PHASES, phase_statement
from bench.common import (
    INSERT_SQL,
    TXN_ROWS,
    Figure,
    connect,
    connected,
    create_items,
    make_rows,
)
from bench.nodes import NodeProcess
from syncmesh.node.verify import VerifyClient, VerifyReport, direct_call, verify
from syncmesh.store.sqlite import SqliteStore
from syncmesh.transport import HttpVerifyExchange

SCENARIO = "verify"
SETTLE_S = 0.2
DIFFERENCES = (100, 10_000)


def run(
    repeats: int, upkeep_rows: int, exchange_rows: int, log: Callable[[str], None]
) -> list[Figure]:
    return [*upkeep(repeats, upkeep_rows, log), *exchange(repeats, exchange_rows, log)]


def _chunk_cost(
    connection: sqlite3.Connection, store: SqliteStore, sql: str, rows: object
) -> float:
    """CPU seconds of this process for one transaction and its capture."""
    began = time.process_time()
    connection.execute("BEGIN")
    connection.executemany(sql, rows)  # type: ignore[arg-type]
    connection.execute("COMMIT")
    store.capture()
    return time.process_time() - began


def upkeep(repeats: int, rows_count: int, log: Callable[[str], None]) -> list[Figure]:
    """Trigger + capture with digests vs without, interleaved per 1,000-row transaction.

    CPU time of this process (the writer and the capture both run here),
    and the two files take turns transaction by transaction, so what the
    rest of the machine does falls on both sides alike.
    """
    figures = {
        phase: Figure(
            SCENARIO,
            f"tree upkeep, {phase} {rows_count:,} rows: trigger + capture with digests",
            "us/row",
            baseline_name="without digests",
            target="ratio <= 1.10",
        )
        for phase in (*PHASES, "all 3 phases")
    }
    for repeat in range(repeats):
        rows = make_rows(rows_count, seed=repeat)
        with tempfile.TemporaryDirectory(prefix="syncmesh-bench-verify-") as directory:
            sides = {}
            for kind in ("with", "without"):
                path = Path(directory) / f"{kind}.db"
                create_items(path)
                store = SqliteStore.open(path, digests=kind == "with")
                store.init()
                store.track(["items"])
                sides[kind] = (connect(path), store)
            try:
                totals = dict.fromkeys(sides, 0.0)
                for phase in PHASES:
                    sql, phase_rows = phase_statement(phase, rows)
                    spent = dict.fromkeys(sides, 0.0)
                    for index, start in enumerate(range(0, len(phase_rows), TXN_ROWS)):
                        chunk = phase_rows[start : start + TXN_ROWS]
                        order = ("with", "without") if index % 2 == 0 else ("without", "with")
                        for kind in order:
                            connection, store = sides[kind]
                            spent[kind] += _chunk_cost(connection, store, sql, chunk)
                    for kind in sides:
                        totals[kind] += spent[kind]
                    us = {kind: spent[kind] / rows_count * 1e6 for kind in sides}
                    figures[phase].add(us["with"], us["without"])
                    log(
                        f"  verify upkeep {repeat + 1}/{repeats} {phase}: with digests"
                        f" {us['with']:.2f}, without {us['without']:.2f} us/row (CPU)"
                    )
                operations = rows_count * len(PHASES)
                figures["all 3 phases"].add(
                    totals["with"] / operations * 1e6, totals["without"] / operations * 1e6
                )
            finally:
                for connection, store in sides.values():
                    connection.close()
                    store.close()
    return list(figures.values())


def _build_site(path: Path, rows_count: int, log: Callable[[str], None]) -> None:
    """A tracked file of `rows_count` rows (written first, then tracked: one backfill)."""
    create_items(path)
    started = time.perf_counter()
    with connected(path) as connection:
        for start in range(0, rows_count, 100_000):
            rows = make_rows(min(100_000, rows_count - start), seed=start + 1)
            for at in range(0, len(rows), TXN_ROWS * 10):
                connection.execute("BEGIN")
                connection.executemany(INSERT_SQL, rows[at : at + TXN_ROWS * 10])
                connection.execute("COMMIT")
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["items"])
    finally:
        store.close()
    log(f"  verify: built a {rows_count:,}-row site in {time.perf_counter() - started:.1f} s")


def _shuffled_keys(path: Path, seed: int) -> list[str]:
    with connected(path) as connection:
        keys = [str(row[0]) for row in connection.execute("SELECT id FROM items")]
    random.Random(seed).shuffle(keys)
    return keys


def _change_rows(path: Path, chosen: list[str]) -> None:
    """Update these rows at the site (captured by its SqliteStore later)."""
    with connected(path) as connection:
        connection.execute("BEGIN")
        connection.executemany(
            "UPDATE items SET qty = qty + 1 WHERE id = ?", [(key,) for key in chosen]
        )
        connection.execute("COMMIT")


async def _verify(store: SqliteStore, url: str, *, deep: bool = False) -> VerifyReport:
    async with VerifyClient(HttpVerifyExchange(url)) as client:
        return await verify(store, direct_call, client, deep=deep, settle_s=SETTLE_S)


def exchange(repeats: int, rows_count: int, log: Callable[[str], None]) -> list[Figure]:
    def figure(name: str, unit: str, target: str = "") -> Figure:
        return Figure(SCENARIO, f"{rows_count:,} rows, {name}", unit, target=target)

    cases = {
        0: ("identical", "value <= 1", "value <= 65536"),
        100: ("100 rows differ", "value <= 4", "value <= 524288"),
        10_000: ("10,000 rows differ", "", ""),
    }
    figures: dict[str, Figure] = {}
    for differing, (label, trips_target, bytes_target) in cases.items():
        figures[f"{differing} trips"] = figure(f"{label}: round trips", "trips", trips_target)
        figures[f"{differing} bytes"] = figure(f"{label}: bytes sent + received", "B", bytes_target)
        figures[f"{differing} s"] = figure(f"{label}: time", "s")
        figures[f"{differing} found"] = figure(f"{label}: rows reported divergent", "rows")
    figures["first"] = figure("first verify after start (both trees built by a scan)", "s")
    figures["deep"] = figure("deep verify, identical (values hashed by a scan, both sides)", "s")
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-verify-") as directory:
        pristine = Path(directory) / "pristine.db"
        _build_site(pristine, rows_count, log)
        for repeat in range(repeats):
            a, node_b = Path(directory) / "a.db", NodeProcess("b", Path(directory))
            shutil.copy(pristine, a)
            shutil.copy(pristine, node_b.path)
            store_b = SqliteStore.open(node_b.path)
            store_b.new_site_id()
            store_b.close()
            store = SqliteStore.open(a)
            try:
                node_b.start([])
                url = node_b.wait_listening()
                started = time.perf_counter()
                first = asyncio.run(_verify(store, url))
                figures["first"].add(time.perf_counter() - started)
                assert first.identical, first.as_json()
                # Distinct random rows: the first 100 of one order, then the next 9,900.
                order = _shuffled_keys(a, seed=repeat)
                changed = 0
                for differing in cases:
                    target = min(differing, len(order))
                    if target > changed:
                        _change_rows(a, order[changed:target])
                        store.capture()
                        changed = target
                    report = asyncio.run(_verify(store, url))
                    figures[f"{differing} trips"].add(report.round_trips)
                    figures[f"{differing} bytes"].add(report.bytes_sent + report.bytes_received)
                    figures[f"{differing} s"].add(report.seconds)
                    figures[f"{differing} found"].add(report.divergent_rows)
                    log(
                        f"  verify {repeat + 1}/{repeats}, {differing:,} differ:"
                        f" {report.divergent_rows:,} found, {report.round_trips} trips,"
                        f" {report.bytes_sent + report.bytes_received:,} B,"
                        f" {report.seconds:.2f} s"
                    )
                # Identical again, for the deep verify: the file replaced while
                # no connection has it open (closing one checkpoints its WAL).
                store.close()
                for suffix in ("-wal", "-shm"):
                    Path(str(a) + suffix).unlink(missing_ok=True)
                shutil.copy(pristine, a)
                store = SqliteStore.open(a)
                deep = asyncio.run(_verify(store, url, deep=True))
                assert deep.identical, deep.as_json()
                figures["deep"].add(deep.seconds)
                log(f"  verify {repeat + 1}/{repeats}: deep, identical, {deep.seconds:.1f} s")
            finally:
                store.close()
                node_b.stop()
                for path in (a, node_b.path):
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(path) + suffix).unlink(missing_ok=True)
    return list(figures.values())
