"""How far a session has read a peer's feed: progress, rate and time left.

A node that bootstraps from a peer, or comes back after a long partition,
reads the peer's feed from its cursor up to the peer's head.  The feed is
ordered by seq (an HLC value), so the position is measured on the seq axis
from where the session began to the peer's head as last reported: rows of
a backfilled table take one seq step per 1,000 rows, and writes made over
time spread over their wall-clock time.  The progress is an estimate, good
enough for a bar and a time remaining; rows per second are exact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 10.0  # rates are measured over the last seconds of batches
SAMPLES_MAX = 64


@dataclass(frozen=True, slots=True)
class CatchUpEstimate:
    progress: float  # 0..1 of the way from where the session began to the peer's head
    rows_per_s: float  # rows received per second, lately
    eta_s: float | None  # seconds left at the recent pace; None until a pace is known


@dataclass(slots=True)
class CatchUp:
    start: int  # the cursor when the session began (0: a first contact)
    samples: deque[tuple[float, int, int]] = field(
        default_factory=lambda: deque(maxlen=SAMPLES_MAX)
    )  # (monotonic time, cursor, rows received in all)

    def note(self, now: float, cursor: int, rows_total: int) -> None:
        if self.start == 0 and not self.samples:
            # A first contact reads from 0, but seqs are HLC values: the axis
            # starts at the first batch's seq, or a bootstrap would show 100%
            # from its first batch on.
            self.start = cursor - 1
        self.samples.append((now, cursor, rows_total))

    def estimate(self, cursor: int, head: int, now: float) -> CatchUpEstimate | None:
        """None once the cursor has reached the head (caught up) or nothing was to read."""
        if cursor >= head or head <= self.start:
            return None
        span = head - self.start
        progress = min(1.0, max(0.0, (cursor - self.start) / span))
        recent = [sample for sample in self.samples if now - sample[0] <= WINDOW_S]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return CatchUpEstimate(progress, 0.0, None)
        (t0, cursor0, rows0), (t1, cursor1, rows1) = recent[0], recent[-1]
        elapsed = t1 - t0
        rows_per_s = (rows1 - rows0) / elapsed
        advance_per_s = (cursor1 - cursor0) / elapsed
        eta = (head - cursor) / advance_per_s if advance_per_s > 0 else None
        return CatchUpEstimate(progress, rows_per_s, eta)
