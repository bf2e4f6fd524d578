"""The hybrid logical clock: monotonic, causal, bounded by the drift limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncmesh.clock import COUNTER_BITS, HybridClock, pack, unpack, wall_ms_of
from syncmesh.clock.hlc import COUNTER_MAX, WALL_MS_MAX
from syncmesh.errors import ClockDriftError
from tests.helpers import ManualClock

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 60_000


def make_clock(
    ms: int = BASE_MS, drift_ms_max: int = DRIFT_MS_MAX
) -> tuple[ManualClock, HybridClock]:
    physical = ManualClock(ms)
    return physical, HybridClock(physical, drift_ms_max=drift_ms_max)


# -- pack / unpack ------------------------------------------------------------------


@given(st.integers(0, WALL_MS_MAX), st.integers(0, COUNTER_MAX))
def test_pack_unpack_roundtrip(wall_ms: int, counter: int) -> None:
    packed = pack(wall_ms, counter)
    assert unpack(packed) == (wall_ms, counter)
    assert wall_ms_of(packed) == wall_ms
    assert 0 <= packed < 1 << 63  # fits SQLite's signed 64-bit INTEGER


@given(
    st.tuples(st.integers(0, WALL_MS_MAX), st.integers(0, COUNTER_MAX)),
    st.tuples(st.integers(0, WALL_MS_MAX), st.integers(0, COUNTER_MAX)),
)
def test_packed_order_is_wall_then_counter(left: tuple[int, int], right: tuple[int, int]) -> None:
    assert (pack(*left) < pack(*right)) == (left < right)
    assert (pack(*left) == pack(*right)) == (left == right)


def test_counter_has_sixteen_bits() -> None:
    assert COUNTER_BITS == 16
    assert pack(1, 0) == 1 << 16
    assert unpack(pack(5, COUNTER_MAX)) == (5, 0xFFFF)


# -- tick ---------------------------------------------------------------------------


def test_tick_uses_physical_time_with_zero_counter() -> None:
    _physical, clock = make_clock()
    assert clock.tick() == pack(BASE_MS, 0)
    assert clock.last == pack(BASE_MS, 0)


def test_tick_in_same_millisecond_increments_counter() -> None:
    _physical, clock = make_clock()
    stamps = [clock.tick() for _ in range(5)]
    assert [unpack(stamp) for stamp in stamps] == [(BASE_MS, counter) for counter in range(5)]


def test_tick_strictly_monotonic_when_physical_clock_jumps_back() -> None:
    physical, clock = make_clock()
    before = clock.tick()
    physical.set(BASE_MS - 3_600_000)  # an hour back (NTP step, VM restore)
    after = clock.tick()
    assert after > before
    assert unpack(after) == (BASE_MS, 1)  # stays on the greatest wall time seen
    physical.set(BASE_MS + 10)
    assert clock.tick() == pack(BASE_MS + 10, 0)


@given(st.lists(st.integers(-100_000, 100_000), min_size=1, max_size=200))
def test_tick_strictly_monotonic_under_any_physical_jumps(jumps_ms: list[int]) -> None:
    physical, clock = make_clock()
    previous = clock.last
    for jump_ms in jumps_ms:
        physical.advance(jump_ms)
        stamp = clock.tick()
        assert stamp > previous
        assert clock.last == stamp
        # Never behind the physical clock: the wall part is at least "now".
        assert wall_ms_of(stamp) >= physical.now_ms()
        previous = stamp


def test_counter_overflow_borrows_next_millisecond() -> None:
    _physical, clock = make_clock()
    clock.restore(pack(BASE_MS, COUNTER_MAX))
    stamp = clock.tick()
    assert unpack(stamp) == (BASE_MS + 1, 0)
    assert unpack(clock.tick()) == (BASE_MS + 1, 1)


def test_many_ticks_in_one_millisecond_overflow_and_stay_monotonic() -> None:
    _physical, clock = make_clock()
    stamps = [clock.tick() for _ in range(COUNTER_MAX + 3)]
    assert all(later > earlier for earlier, later in itertools.pairwise(stamps))
    assert unpack(stamps[COUNTER_MAX]) == (BASE_MS, COUNTER_MAX)
    assert unpack(stamps[COUNTER_MAX + 1]) == (BASE_MS + 1, 0)


# -- restore ------------------------------------------------------------------------


def test_restore_floor_is_respected_when_wall_clock_went_back() -> None:
    _physical, clock = make_clock(BASE_MS - 5_000)  # restarted with the clock moved back
    floor = pack(BASE_MS, 7)  # the last stamp written to disk before the restart
    clock.restore(floor)
    assert clock.last == floor
    assert clock.tick() == pack(BASE_MS, 8)


def test_restore_never_lowers_the_clock() -> None:
    _physical, clock = make_clock()
    issued = clock.tick()
    clock.restore(issued - 100)
    assert clock.last == issued
    assert clock.tick() > issued


@given(st.integers(0, pack(BASE_MS + 10_000_000, COUNTER_MAX)), st.integers(-10_000, 10_000))
def test_tick_after_restore_exceeds_floor(floor: int, offset_ms: int) -> None:
    _physical, clock = make_clock(BASE_MS + offset_ms)
    clock.restore(floor)
    assert clock.tick() > floor


# -- observe / check ----------------------------------------------------------------


def test_observe_advances_past_remote_stamp() -> None:
    _physical, clock = make_clock()
    remote = pack(BASE_MS + 30_000, 42)  # a peer 30 s ahead, within the drift limit
    clock.observe(remote, "peer")
    assert clock.last == remote
    local = clock.tick()
    assert local > remote
    assert unpack(local) == (BASE_MS + 30_000, 43)


def test_observe_older_stamp_changes_nothing() -> None:
    _physical, clock = make_clock()
    issued = clock.tick()
    clock.observe(pack(BASE_MS - 1_000, 0), "peer")
    assert clock.last == issued


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tick", "observe", "jump"]),
            st.integers(-DRIFT_MS_MAX, DRIFT_MS_MAX),
            st.integers(0, COUNTER_MAX),
        ),
        min_size=1,
        max_size=100,
    )
)
def test_every_tick_exceeds_everything_issued_or_observed(
    steps: list[tuple[str, int, int]],
) -> None:
    physical, clock = make_clock()
    greatest = 0
    for action, offset_ms, counter in steps:
        if action == "tick":
            stamp = clock.tick()
            assert stamp > greatest
            greatest = stamp
        elif action == "observe":
            remote = pack(physical.now_ms() + offset_ms, counter)
            clock.observe(remote, "peer")  # within the limit: never refused
            greatest = max(greatest, remote)
        else:
            physical.advance(offset_ms)
        assert clock.last == greatest


def test_observe_refuses_stamp_beyond_drift_limit() -> None:
    _physical, clock = make_clock()
    before = clock.tick()
    remote = pack(BASE_MS + DRIFT_MS_MAX + 1, 0)
    with pytest.raises(ClockDriftError) as caught:
        clock.observe(remote, "fast-peer")
    assert caught.value.site_id == "fast-peer"
    assert caught.value.drift_ms == DRIFT_MS_MAX + 1
    assert "fast-peer" in str(caught.value)
    assert clock.last == before  # not adopted
    assert clock.tick() < remote


def test_check_refuses_without_changing_the_clock() -> None:
    _physical, clock = make_clock()
    before = clock.last
    with pytest.raises(ClockDriftError):
        clock.check(pack(BASE_MS + 10 * DRIFT_MS_MAX, 0), "peer")
    assert clock.last == before
    clock.check(pack(BASE_MS + DRIFT_MS_MAX, COUNTER_MAX), "peer")  # exactly at the limit: ok
    assert clock.last == before  # check() never advances


def test_drift_limit_follows_physical_clock() -> None:
    physical, clock = make_clock()
    remote = pack(BASE_MS + 2 * DRIFT_MS_MAX, 0)
    with pytest.raises(ClockDriftError):
        clock.observe(remote, "peer")
    physical.advance(DRIFT_MS_MAX)  # our clock caught up: the stamp is now acceptable
    clock.observe(remote, "peer")
    assert clock.last == remote


@given(st.integers(-10 * DRIFT_MS_MAX, 10 * DRIFT_MS_MAX), st.integers(0, COUNTER_MAX))
def test_check_accepts_exactly_the_stamps_within_the_limit(offset_ms: int, counter: int) -> None:
    _physical, clock = make_clock()
    remote = pack(BASE_MS + offset_ms, counter)
    if offset_ms > DRIFT_MS_MAX:
        with pytest.raises(ClockDriftError):
            clock.check(remote, "peer")
    else:
        clock.check(remote, "peer")


def test_drift_ms_max_is_exposed() -> None:
    _physical, clock = make_clock(drift_ms_max=1234)
    assert clock.drift_ms_max == 1234
