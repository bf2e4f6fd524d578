"""Hybrid logical clock: 47 bits of milliseconds, 16 bits of counter, one int64.

A stamp is packed into one integer that sorts like (wall_ms, counter), so the
store can keep it in an INTEGER column and compare it in SQL.  The site id
that breaks ties lives beside it (see `syncmesh.model.Stamp`).

Rules (Kulkarni et al., "Logical Physical Clocks", 2014):
- `tick()` for a local write returns a stamp greater than every stamp this
  clock issued or observed, and close to the physical time;
- `observe()` folds in a remote stamp so later local writes sort after it,
  but refuses one further ahead of the physical clock than `drift_ms_max`:
  one node with a wrong clock must not win every conflict for ever.

The clock never reads the system time itself: a `PhysicalClock` is injected,
so tests drive skew and jumps deterministically.
"""

from __future__ import annotations

import time
from typing import Protocol

from syncmesh.errors import ClockDriftError

COUNTER_BITS = 16
COUNTER_MAX = (1 << COUNTER_BITS) - 1
# 47 bits of milliseconds keep the packed value inside SQLite's signed int64
# (until the year 6429).
WALL_MS_MAX = (1 << (63 - COUNTER_BITS)) - 1


def pack(wall_ms: int, counter: int) -> int:
    assert 0 <= wall_ms <= WALL_MS_MAX, wall_ms
    assert 0 <= counter <= COUNTER_MAX, counter
    return (wall_ms << COUNTER_BITS) | counter


def unpack(hlc: int) -> tuple[int, int]:
    return hlc >> COUNTER_BITS, hlc & COUNTER_MAX


def wall_ms_of(hlc: int) -> int:
    return hlc >> COUNTER_BITS


class PhysicalClock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """The machine's wall clock, in milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class HybridClock:
    """Issues stamps for one node.  Not thread-safe: the store thread owns it."""

    def __init__(self, physical: PhysicalClock, *, drift_ms_max: int) -> None:
        assert drift_ms_max > 0
        self._physical = physical
        self._drift_ms_max = drift_ms_max
        self._last = 0

    @property
    def last(self) -> int:
        """The greatest stamp issued or observed so far."""
        return self._last

    @property
    def drift_ms_max(self) -> int:
        return self._drift_ms_max

    def restore(self, floor: int) -> None:
        """Never issue anything at or below `floor` (the last stamp on disk).

        The wall clock may have gone backwards while the node was down, so the
        stamps already written, not the wall clock, are the lower bound.
        """
        self._last = max(self._last, floor)

    def tick(self) -> int:
        """A stamp for a local write, greater than any issued or observed."""
        now_ms = self._physical.now_ms()
        last_ms, last_counter = unpack(self._last)
        if now_ms > last_ms:
            return self._advance(pack(now_ms, 0))
        return self._advance(self._successor(last_ms, last_counter))

    def physical_ms(self) -> int:
        """The injected physical clock's reading, in milliseconds."""
        return self._physical.now_ms()

    def check(self, remote: int, site_id: str) -> None:
        """Raise ClockDriftError if `remote` lies too far ahead of physical time."""
        drift_ms = wall_ms_of(remote) - self._physical.now_ms()
        if drift_ms > self._drift_ms_max:
            raise ClockDriftError(site_id, drift_ms, self._drift_ms_max)

    def observe(self, remote: int, site_id: str) -> None:
        """Fold in a peer's stamp so that later local writes sort after it."""
        self.check(remote, site_id)
        self.absorb(remote)

    def absorb(self, remote: int) -> None:
        """Fold in a stamp already checked against a drift bound read earlier.

        A batch's rows are checked against one reading of the physical clock
        (the store's drift bound).  Checking again would read the clock a
        second time, and a wall clock stepped back in between (NTP, an
        operator) would refuse a stamp the bound accepted and fail the whole
        apply.  Found by `syncmesh chaos` (the `jump` fault).
        """
        if remote > self._last:
            self._last = remote

    def _successor(self, wall_ms: int, counter: int) -> int:
        if counter < COUNTER_MAX:
            return pack(wall_ms, counter + 1)
        # 65,536 stamps inside one millisecond: borrow the next millisecond
        # rather than fail.  The drift limit bounds how far this can go.
        return pack(wall_ms + 1, 0)

    def _advance(self, successor: int) -> int:
        assert successor > self._last, (successor, self._last)
        self._last = successor
        return successor


def feed_lag_ms(cursor: int, head: int) -> int | None:
    """How far a cursor trails a head of the same feed, in milliseconds; None if unknown.

    Seqs are HLC values, so their wall-clock parts tell the age of the
    changes not yet applied.  A cursor of 0 (nothing applied yet) says
    nothing of how old the first change not applied is: None, shown as
    "not known yet", never the time since 1970 ("20795 d behind" of a
    healthy peer in its first seconds: new-user report).
    """
    if cursor >= head:
        return 0
    if cursor <= 0:
        return None
    return max(1, wall_ms_of(head) - wall_ms_of(cursor))
