"""The hybrid logical clock: pure, no I/O; the physical time is injected."""

from syncmesh.clock.hlc import (
    COUNTER_BITS,
    COUNTER_MAX,
    HybridClock,
    PhysicalClock,
    SystemClock,
    feed_lag_ms,
    pack,
    unpack,
    wall_ms_of,
)

__all__ = [
    "COUNTER_BITS",
    "COUNTER_MAX",
    "HybridClock",
    "PhysicalClock",
    "SystemClock",
    "feed_lag_ms",
    "pack",
    "unpack",
    "wall_ms_of",
]
