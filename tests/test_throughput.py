"""The throughput history: bounded, contiguous buckets that count what was added to them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncmesh.node.throughput import ThroughputHistory, ThroughputSample

INTERVAL_MS = 5_000
T0 = 1_700_000_000_000  # a multiple of INTERVAL_MS


def test_rows_land_in_the_interval_they_were_added_in() -> None:
    history = ThroughputHistory(interval_ms=INTERVAL_MS, samples_max=120, now_ms=T0 + 1)
    history.add(T0 + 10, captured_rows=3)
    history.add(T0 + 4_999, applied_rows=2)
    history.add(T0 + 5_000, captured_rows=1)
    history.add(T0 + 17_000, applied_rows=7)
    assert history.samples(T0 + 19_999) == (
        ThroughputSample(T0, captured_rows=3, applied_rows=2),
        ThroughputSample(T0 + 5_000, captured_rows=1),
        ThroughputSample(T0 + 10_000),  # a quiet interval is there, with zeros
        ThroughputSample(T0 + 15_000, applied_rows=7),
    )


def test_reading_moves_the_window_and_returns_copies() -> None:
    history = ThroughputHistory(interval_ms=INTERVAL_MS, samples_max=3, now_ms=T0)
    history.add(T0, captured_rows=1)
    later = history.samples(T0 + 12_000)
    assert [sample.start_ms for sample in later] == [T0, T0 + 5_000, T0 + 10_000]
    later[0].captured_rows = 99
    assert history.samples(T0 + 12_000)[0].captured_rows == 1


def test_the_history_keeps_only_the_newest_intervals() -> None:
    history = ThroughputHistory(interval_ms=INTERVAL_MS, samples_max=4, now_ms=T0)
    for step in range(10):
        history.add(T0 + step * INTERVAL_MS, captured_rows=step)
    samples = history.samples(T0 + 9 * INTERVAL_MS)
    assert [sample.captured_rows for sample in samples] == [6, 7, 8, 9]
    # A quiet spell much longer than the window leaves one window of zeros.
    after_a_day = T0 + 86_400_000
    quiet = history.samples(after_a_day)
    assert len(quiet) == 4
    assert all(sample.captured_rows == sample.applied_rows == 0 for sample in quiet)
    assert quiet[-1].start_ms == after_a_day


def test_a_clock_stepping_back_counts_in_the_newest_interval() -> None:
    history = ThroughputHistory(interval_ms=INTERVAL_MS, samples_max=10, now_ms=T0 + 6_000)
    history.add(T0 - 60_000, applied_rows=4)  # NTP moved the wall clock back a minute
    assert history.samples(T0 + 6_000) == (ThroughputSample(T0 + 5_000, applied_rows=4),)


@given(
    st.lists(
        st.tuples(st.integers(0, 50 * INTERVAL_MS), st.integers(0, 1_000), st.integers(0, 1_000)),
        max_size=60,
    ),
    st.integers(1, 20),
)
def test_window_sums_equal_what_was_added_within_it(
    additions: list[tuple[int, int, int]], samples_max: int
) -> None:
    """Whatever the order of times: bounded length, contiguous starts, exact sums."""
    additions.sort()
    history = ThroughputHistory(interval_ms=INTERVAL_MS, samples_max=samples_max, now_ms=T0)
    for offset_ms, captured, applied in additions:
        history.add(T0 + offset_ms, captured_rows=captured, applied_rows=applied)
    end_ms = T0 + 50 * INTERVAL_MS
    samples = history.samples(end_ms)
    assert 1 <= len(samples) <= samples_max
    starts = [sample.start_ms for sample in samples]
    assert starts == list(range(starts[0], starts[0] + len(samples) * INTERVAL_MS, INTERVAL_MS))
    assert starts[-1] == end_ms
    in_window = [(c, a) for offset_ms, c, a in additions if T0 + offset_ms >= starts[0]]
    assert sum(sample.captured_rows for sample in samples) == sum(c for c, _ in in_window)
    assert sum(sample.applied_rows for sample in samples) == sum(a for _, a in in_window)
