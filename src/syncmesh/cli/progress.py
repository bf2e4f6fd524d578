"""Progress of long work in the CLI: bars while `track` backfills and while a node catches up.

On a terminal the bar shows rows done of rows in all, the rate and the
time remaining; elsewhere (a pipe, a log file) no bar is drawn.  Either
way one line per table tells, at the end, how many rows joined the feed
and how fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from syncmesh.store import TrackProgress

WATCH_POLL_S = 1.0


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
    # The store may report a table's end more than once (an empty table, the
    # last step and the closing call): one line per table.
    finished: set[str] = set()

    def report(table: str, done: int, total: int) -> None:
        if table not in tasks:
            tasks[table] = (bars.add_task(f"track {table}", total=total), time.monotonic())
        task, started = tasks[table]
        bars.update(task, completed=done, total=max(total, done))
        if done >= total and table not in finished:
            finished.add(table)
            elapsed = time.monotonic() - started
            rate = f", {done / elapsed:,.0f} rows/s" if elapsed > 0 and done else ""
            bars.console.print(
                f"{table}: {done:,} existing rows joined the feed in {elapsed:.1f} s{rate}",
                highlight=False,
            )

    with bars:
        yield report


@contextmanager
def snapshot_progress(console: Console | None = None) -> Iterator[Callable[[int, int], None]]:
    """A bar of a snapshot's bytes as they arrive (`syncmesh join`), on a terminal."""
    console = console or Console(stderr=True)
    bars = Progress(
        TextColumn("[bold]snapshot"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task: list[TaskID] = []

    def report(done: int, total: int) -> None:
        if not task:
            task.append(bars.add_task("snapshot", total=total))
        bars.update(task[0], completed=done, total=max(total, done))

    with bars:
        yield report


def watch_catchup(
    fetch: Callable[[], dict[str, Any]],
    *,
    timeout_s: float,
    poll_s: float = WATCH_POLL_S,
    console: Console | None = None,
) -> bool:
    """A bar per peer while the node catches up with it; True once caught up with all.

    Polls the node's status every `poll_s`; False if `timeout_s` passes
    first.  Off a terminal, one line per peer still behind at each poll.
    """
    from syncmesh.cli.view import catchup_text

    console = console or Console(stderr=True)
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[detail]}"),
        console=console,
        disable=not console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}
    deadline = time.monotonic() + timeout_s
    with bars:
        while True:
            peers = fetch()["peers"]
            for peer in peers:
                name = str(peer["site_id"] or peer["address"])
                progress = peer.get("catchup_progress")
                if progress is not None and name not in tasks:
                    tasks[name] = bars.add_task(name, total=100, detail="")
                if name in tasks:
                    done = 100.0 if progress is None else 100.0 * progress
                    bars.update(tasks[name], completed=done, detail=catchup_text(peer))
                if progress is not None and not console.is_terminal:
                    console.print(f"{name}: {catchup_text(peer)}", highlight=False)
            behind = [peer for peer in peers if peer.get("catchup_progress") is not None]
            if peers and not behind and all(peer["state"] == "streaming" for peer in peers):
                console.print("caught up with every peer", highlight=False)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
