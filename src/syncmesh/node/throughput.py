"""Rows captured and applied per interval over the last minutes, for the dashboard.

A bounded deque of fixed-width buckets, each counting the rows stamped by
local captures and the rows applied from peers during its interval.  The
counts are added where the rows are counted (the capture loop, a session's
apply, the quarantine retry), so no sampling task runs and the current,
still open bucket already shows a write made a moment ago.  Intervals with
no activity are filled with zero buckets when time moves past them, so the
buckets are always contiguous and the deque always covers the last
`interval_ms * samples_max` milliseconds (or the node's whole life if
shorter).

No I/O and no clock of its own: the caller passes the time (wall-clock
milliseconds, so that a browser can label the chart), which keeps the
arithmetic testable with made-up times.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass


@dataclass(slots=True)
class ThroughputSample:
    """One interval: `[start_ms, start_ms + interval_ms)`."""

    start_ms: int
    captured_rows: int = 0  # local writes stamped by the capture loop
    applied_rows: int = 0  # peers' rows that changed this file


class ThroughputHistory:
    """Example:

    history = ThroughputHistory(interval_ms=5_000, samples_max=120, now_ms=now)
    history.add(now, captured_rows=3)
    history.samples(now)[-1].captured_rows  # 3
    """

    def __init__(self, *, interval_ms: int, samples_max: int, now_ms: int) -> None:
        assert interval_ms > 0
        assert samples_max > 0
        self.interval_ms = interval_ms
        self._buckets: collections.deque[ThroughputSample] = collections.deque(maxlen=samples_max)
        self._buckets.append(ThroughputSample(self._start_of(now_ms)))

    def add(self, now_ms: int, *, captured_rows: int = 0, applied_rows: int = 0) -> None:
        assert captured_rows >= 0
        assert applied_rows >= 0
        bucket = self._advance(now_ms)
        bucket.captured_rows += captured_rows
        bucket.applied_rows += applied_rows

    def samples(self, now_ms: int) -> tuple[ThroughputSample, ...]:
        """Copies of the buckets, oldest first; the last one is the open interval."""
        self._advance(now_ms)
        return tuple(dataclasses.replace(bucket) for bucket in self._buckets)

    def _start_of(self, now_ms: int) -> int:
        return now_ms - now_ms % self.interval_ms

    def _advance(self, now_ms: int) -> ThroughputSample:
        """The bucket of `now_ms`, after appending zero buckets for the intervals passed."""
        last = self._buckets[-1]
        start = self._start_of(now_ms)
        if start <= last.start_ms:
            # The same interval, or the wall clock stepped back (NTP): count the
            # rows in the newest bucket rather than rewrite the past.
            return last
        samples_max = self._buckets.maxlen
        assert samples_max is not None
        # After a long quiet spell only the newest `samples_max` intervals
        # matter: the loop is bounded by the deque, not by the gap.
        first = max(last.start_ms + self.interval_ms, start - (samples_max - 1) * self.interval_ms)
        for bucket_start in range(first, start + 1, self.interval_ms):
            self._buckets.append(ThroughputSample(bucket_start))
        return self._buckets[-1]
