"""`python -m bench profile`: where one batch's time goes, in-process, stage by stage.

A source file gets N rows (TXN_ROWS-row transactions, each captured), then
the batch path a node runs is timed stage by stage on one N-row batch:
capture, `Store.read_batch`, `encode`, `decode`, `Store.apply_batch` into a
fresh tracked file; then the same batch is applied again (every row held:
what a relay's copy costs in a mesh), reported apart.  Each stage is timed
once without the profiler, then run again under cProfile on fresh files;
the top functions by own time are printed and the .prof files are kept in
bench/results/.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.common import INSERT_SQL, TXN_ROWS, connected, make_rows
from bench.nodes import prepare_database
from syncmesh.model import ChangeBatch, SqlValue
from syncmesh.protocol import Batch, decode, encode
from syncmesh.store.sqlite import SqliteStore, feed
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.table import TableSql

RESULTS = Path(__file__).resolve().parent / "results"
TOP = 12
ROW_CHECK_REPEATS = 7  # read_batch with and without the feed's row check, interleaved
T = TypeVar("T")


class _Stages:
    def __init__(self, profile: bool) -> None:
        self.profile = profile
        self.seconds: dict[str, float] = {}
        self.profiles: dict[str, cProfile.Profile] = {}

    def run(self, name: str, function: Callable[[], T]) -> T:
        profiler = cProfile.Profile() if self.profile else None
        started = time.perf_counter()
        if profiler is not None:
            result = profiler.runcall(function)
            self.profiles[name] = profiler
        else:
            result = function()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return result


def _pipeline(directory: Path, rows_count: int, stages: _Stages) -> None:
    source_path, target_path = directory / "source.db", directory / "target.db"
    prepare_database(source_path)
    prepare_database(target_path)
    source, target = SqliteStore.open(source_path), SqliteStore.open(target_path)
    try:
        rows = make_rows(rows_count, seed=7)
        profiler = cProfile.Profile() if stages.profile else None
        capture_s = 0.0
        with connected(source_path) as writer:
            for start in range(0, rows_count, TXN_ROWS):
                writer.execute("BEGIN")
                writer.executemany(INSERT_SQL, rows[start : start + TXN_ROWS])
                writer.execute("COMMIT")
                began = time.perf_counter()
                if profiler is not None:
                    profiler.runcall(source.capture)
                else:
                    source.capture()
                capture_s += time.perf_counter() - began
        stages.seconds["capture"] = capture_s
        if profiler is not None:
            stages.profiles["capture"] = profiler
        batch = stages.run("read_batch", lambda: source.read_batch(0, target.vector(), rows_count))
        assert len(batch.rows) == rows_count, len(batch.rows)
        if not stages.profile:
            checked, unchecked = _row_check_cost(source, target.vector(), rows_count)
            stages.seconds["row_check_on"], stages.seconds["row_check_off"] = checked, unchecked
        frame = stages.run("encode", lambda: encode(Batch(batch)))
        message = stages.run("decode", lambda: decode(frame))
        assert isinstance(message, Batch)
        received: ChangeBatch = message.batch
        target.reset_peer_cursor(source.site_id, received.incarnation, received.head_seq, "")
        result = stages.run("apply_batch", lambda: target.apply_batch(source.site_id, received))
        assert result.applied_rows == rows_count, result
        # The same rows again, as a relay's copy arrives in a mesh or a chain.
        target.reset_peer_cursor(source.site_id, received.incarnation, received.head_seq, "")
        again = stages.run("apply_again", lambda: target.apply_batch(source.site_id, received))
        assert again.applied_rows == 0, again
        stages.seconds["frame_bytes"] = float(len(frame))
    finally:
        source.close()
        target.close()


def _row_check_cost(
    source: SqliteStore, vector: dict[str, int], rows_count: int
) -> tuple[float, float]:
    """Fastest `read_batch` of the whole feed with, and without, the per-row shadow check.

    The check (`feed.sound_rows`, issue 12: a corrupt shadow row is held
    back instead of wedging the feed) runs on every row that leaves a node;
    this measures what it costs, in the same process on the same file,
    runs interleaved so that load on the machine hits both alike.
    """
    sound_rows = feed.sound_rows
    checked, unchecked = float("inf"), float("inf")
    try:
        for _ in range(ROW_CHECK_REPEATS):
            feed.sound_rows = sound_rows
            started = time.perf_counter()
            source.read_batch(0, vector, rows_count)
            checked = min(checked, time.perf_counter() - started)
            feed.sound_rows = _unchecked
            started = time.perf_counter()
            source.read_batch(0, vector, rows_count)
            unchecked = min(unchecked, time.perf_counter() - started)
    finally:
        feed.sound_rows = sound_rows
    return checked, unchecked


def _unchecked(
    ctx: StoreContext, table: TableSql, rows: list[list[SqlValue]], sites_count: int
) -> list[list[SqlValue]]:
    """`feed.sound_rows` without its check (every row passes)."""
    del ctx, table, sites_count
    return rows


def _top(profile: cProfile.Profile) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile)
    entries = []
    for (filename, line, function), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("/src/")[-1].split("/site-packages/")[-1]
        entries.append(
            {
                "function": f"{short}:{line}({function})",
                "calls": calls,
                "own_s": round(own, 4),
                "cumulative_s": round(cumulative, 4),
            }
        )
    entries.sort(key=lambda entry: -float(entry["own_s"]))
    return entries[:TOP]


def run(rows_count: int, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-profile-") as name:
        timed = _Stages(profile=False)
        _pipeline(Path(name), rows_count, timed)
    with tempfile.TemporaryDirectory(prefix="syncmesh-bench-profile-") as name:
        profiled = _Stages(profile=True)
        _pipeline(Path(name), rows_count, profiled)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "rows": rows_count,
        "frame_bytes": int(timed.seconds.pop("frame_bytes")),
        "stages": {},
    }
    profiled.seconds.pop("frame_bytes", None)
    checked, unchecked = timed.seconds.pop("row_check_on"), timed.seconds.pop("row_check_off")
    # Not a stage of the batch's path: the cost of a duplicate (reported apart).
    again_s = timed.seconds.pop("apply_again")
    profiled.seconds.pop("apply_again", None)
    profiled.profiles.pop("apply_again").dump_stats(str(RESULTS / "profile-apply_again.prof"))
    report["apply_again"] = {"seconds": again_s, "us_per_row": again_s / rows_count * 1e6}
    report["feed_row_check"] = {
        "read_batch_s": checked,
        "read_batch_without_check_s": unchecked,
        "ratio": checked / unchecked,
        "us_per_row": (checked - unchecked) / rows_count * 1e6,
    }
    total = sum(timed.seconds.values())
    print(f"one batch of {rows_count:,} rows ({report['frame_bytes']:,} bytes on the wire):")
    for stage, seconds in timed.seconds.items():
        share = 100 * seconds / total
        per_row = seconds / rows_count * 1e6
        print(f"  {stage:<12} {seconds * 1000:8.1f} ms  {per_row:6.1f} us/row  {share:4.1f} %")
        profile = profiled.profiles[stage]
        profile.dump_stats(str(RESULTS / f"profile-{stage}.prof"))
        report["stages"][stage] = {
            "seconds": seconds,
            "us_per_row": seconds / rows_count * 1e6,
            "top_own_time": _top(profile),
        }
    print(f"  {'total':<12} {total * 1000:8.1f} ms  {total / rows_count * 1e6:6.1f} us/row")
    print(
        f"the same batch applied again (a relay's copy, every row held):"
        f" {again_s * 1000:.1f} ms, {again_s / rows_count * 1e6:.1f} us/row"
    )
    print(
        f"feed's per-row shadow check: read_batch {checked * 1000:.1f} ms with it,"
        f" {unchecked * 1000:.1f} ms without (fastest of {ROW_CHECK_REPEATS} each):"
        f" x{checked / unchecked:.3f}, {(checked - unchecked) / rows_count * 1e6:.2f} us/row"
    )
    for stage, entry in report["stages"].items():
        print(f"\n{stage}: top functions by own time (cProfile)")
        for item in entry["top_own_time"]:
            own, cumulative = item["own_s"] * 1000, item["cumulative_s"] * 1000
            print(
                f"  {own:8.1f} ms own {cumulative:8.1f} ms cum"
                f"  {item['calls']:>8}  {item['function']}"
            )
    log(f"profiles: {RESULTS}/profile-*.prof")
    return report
