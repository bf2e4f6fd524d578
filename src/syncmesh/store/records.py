"""The plain records the store hands out: peer cursors, apply results, status.

Also the wall-clock helper the store stamps bookkeeping times with
(`last_applied_ms`, a quarantine entry's `created_ms`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PeerCursor:
    site_id: str
    incarnation: str
    cursor: int
    head_seq: int
    address: str
    applied_rows: int
    last_applied_ms: int


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied_rows: int  # rows whose merged state differed from ours
    quarantined_rows: int
    drift_refused_rows: int
    seq: int  # our head after the batch


@dataclass(frozen=True, slots=True)
class StoreStatus:
    site_id: str
    incarnation: str
    seq: int
    hlc: int
    fingerprint: str
    tables: dict[str, int]
    vector: dict[str, int]
    peers: list[PeerCursor]
    quarantined_rows: int
    restore_floor: int
    path: str = field(default="")
    schema_problems: list[str] = field(default_factory=list)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
