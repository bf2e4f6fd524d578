"""Optional sampling profiles of the node processes with py-spy (`--py-spy PATH`).

py-spy is not a dependency: point `--py-spy` at an installed binary, e.g.
`pip install --target .tools py-spy` then `--py-spy .tools/bin/py-spy`.
Each node is sampled (all threads, idle included) while the e2e run goes;
the raw folded stacks are kept in bench/results/ and summarised per thread:
where the store worker thread and the event-loop thread spend their time.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.nodes import NodeProcess

RATE_HZ = 100
MAX_DURATION_S = 120
STOP_TIMEOUT_S = 15.0

# The first frame of a stack (outermost first) that names an activity wins.
_STORE_ACTIVITIES = (
    ("Store.read_batch", "read_batch"),
    ("Store.apply_batch", "apply_batch"),
    ("Node._capture_once", "capture"),
    ("Store.capture", "capture"),
)
_LOOP_ACTIVITIES = (
    ("EpollSelector.select", "idle (select)"),
    ("decode ", "decode"),
    ("encode ", "encode"),
    ("WebSocketChannel.send", "websocket send"),
    ("WebSocketChannel.receive", "websocket receive"),
)


@contextmanager
def recording(
    binary: str, nodes: Mapping[str, NodeProcess], directory: Path, label: str
) -> Iterator[dict[str, Path]]:
    """Sample every node while the block runs; yields node name -> raw output path."""
    directory.mkdir(parents=True, exist_ok=True)
    outputs = {name: directory / f"pyspy-{label}-{name}.txt" for name in nodes}
    spies: list[subprocess.Popen[bytes]] = []
    try:
        for name, node in nodes.items():
            spies.append(
                subprocess.Popen(
                    [
                        binary,
                        "record",
                        "--pid",
                        str(node.pid),
                        "--rate",
                        str(RATE_HZ),
                        "--duration",
                        str(MAX_DURATION_S),
                        "--threads",
                        "--idle",
                        "--format",
                        "raw",
                        "--output",
                        str(outputs[name]),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield outputs
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    spy.kill()
                spy.wait(timeout=STOP_TIMEOUT_S)


def _activity(frames: list[str], table: tuple[tuple[str, str], ...], busy: str) -> str:
    for frame in frames:
        for prefix, name in table:
            if frame.startswith(prefix):
                return name
    return busy


def summarize(path: Path) -> dict[str, dict[str, float]]:
    """Per thread ("store", "loop"): share of samples (%) per activity."""
    counts: dict[str, collections.Counter[str]] = {
        "store": collections.Counter(),
        "loop": collections.Counter(),
    }
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        thread, *frames = stack.split(";")
        count = int(count_text)
        if "syncmesh-store" in thread:
            working = any(frame.startswith("_WorkItem.run") for frame in frames)
            name = _activity(frames, _STORE_ACTIVITIES, "other work") if working else "idle"
            counts["store"][name] += count
        elif "MainThread" in thread:
            counts["loop"][_activity(frames, _LOOP_ACTIVITIES, "other")] += count
    summary: dict[str, dict[str, float]] = {}
    for thread, counter in counts.items():
        total = sum(counter.values())
        if total:
            summary[thread] = {
                name: round(100 * count / total, 1) for name, count in counter.most_common()
            }
    return summary
