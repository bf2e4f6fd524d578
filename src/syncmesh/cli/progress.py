"""Progress of long work in the CLI: a rich bar per table while `track` backfills.

On a terminal the bar shows rows done of rows in all, the rate and the
time remaining; elsewhere (a pipe, a log file) no bar is drawn.  Either
way one line per table tells, at the end, how many rows joined the feed
and how fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from syncmesh.store import TrackProgress


class RateColumn(ProgressColumn):
    """Rows per second, from rich's own moving estimate."""

    def render(self, task: Task) -> Text:
        if task.speed is None:
            return Text("- rows/s")
        return Text(f"{task.speed:,.0f} rows/s")


@contextmanager
def backfill_progress(console: Console | None = None) -> Iterator[TrackProgress]:
    """A `TrackProgress` callback drawing one bar per table."""
    console = console or Console(stderr=True)
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    tasks: dict[str, tuple[TaskID, float]] = {}

    def report(table: str, done: int, total: int) -> None:
        if table not in tasks:
            tasks[table] = (bars.add_task(f"track {table}", total=total), time.monotonic())
        task, started = tasks[table]
        bars.update(task, completed=done, total=max(total, done))
        if done >= total:
            elapsed = time.monotonic() - started
            rate = f", {done / elapsed:,.0f} rows/s" if elapsed > 0 and done else ""
            bars.console.print(
                f"{table}: {done:,} existing rows joined the feed in {elapsed:.1f} s{rate}",
                highlight=False,
            )

    with bars:
        yield report
