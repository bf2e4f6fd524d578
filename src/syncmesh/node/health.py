"""Is this node well?  One verdict, behind both `/v1/health` and the dashboard.

A node that runs is not necessarily a node that syncs: a cluster wedged by
a renamed column refuses every session, a feed stuck on an unreadable
value fails every send, a table whose capture triggers were dropped
silently stops capturing.  Each of these used to leave `/v1/health` at
`{"ok": true}`.  `assess()` names every such reason, from one
`NodeStatistics` snapshot and the few facts the node keeps over time
(`HealthMonitor`), so the HTTP probe, the dashboard's "degraded" and
`syncmesh status` can never disagree.

The reasons:

- a peer this node dials has not kept a session for longer than
  `peer_down_s_max`: unreachable, refused, or failing again and again (a
  session that ends with an error before it was stable does not count as
  kept); a peer that dialled us instead ("connected by peer") streams;
- the capture, or the feed read for a peer, failed `FAILURES_REPEATED`
  times in a row;
- a schema problem: a tracked table altered after `track`, or without its
  capture triggers (`Store.schema_problems`);
- quarantine grew within the last `quarantine_window_s` (rows that stay
  quarantined are a note on the dashboard, not a degraded node);
- the node is recovering its own writes after a restore from an old copy;
- two live database files share a site id (this node found it, or a peer
  refused us for it: node/identity.py);
- the fleet stream (NATS): a gap; the stream out of reach (not streaming:
  connecting, starting or backing off) for longer than `peer_down_s_max`;
  or our own writes waiting for longer than that with no publish acked
  (a link that is up but does not move: issue 15).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncmesh.clock import PhysicalClock, SystemClock
from syncmesh.node.config import NodeConfig
from syncmesh.store import null_key_problems

if TYPE_CHECKING:
    from syncmesh.node.node import NodeStatistics

FAILURES_REPEATED = 3  # failures in a row (capture, or a feed read) that make a node unhealthy
UP_STATES = frozenset({"streaming", "connected by peer"})


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict: ok, or the reasons it is not, in words an operator can act on."""

    ok: bool
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "reasons": list(self.reasons)}


@dataclass(slots=True)
class _Failures:
    in_a_row: int = 0
    last_error: str = ""
    last_ms: int = 0


@dataclass(slots=True)
class HealthMonitor:
    """What the verdict needs over time: failures in a row, and quarantine's growth.

    The node reports each capture and each feed read (`note_failure`,
    `note_success`); the quarantine count is compared with the last one
    seen, and the time of the last rise kept.
    """

    # The node's injected clock (one clock: wall time is never read directly).
    clock: PhysicalClock = field(default_factory=SystemClock)
    failures: dict[str, _Failures] = field(default_factory=dict)
    quarantined_seen: int | None = None
    quarantine_rose_ms: int = 0

    def note_failure(self, what: str, error: BaseException | str) -> None:
        entry = self.failures.setdefault(what, _Failures())
        entry.in_a_row += 1
        entry.last_error = str(error)
        entry.last_ms = self.clock.now_ms()

    def note_success(self, what: str) -> None:
        entry = self.failures.get(what)
        if entry is not None:
            entry.in_a_row = 0

    def note_quarantined(self, rows: int, at_ms: int) -> None:
        """The current quarantine count; a rise over the last one seen is remembered."""
        if self.quarantined_seen is not None and rows > self.quarantined_seen:
            self.quarantine_rose_ms = at_ms
        self.quarantined_seen = rows


def assess(
    statistics: NodeStatistics,
    monitor: HealthMonitor,
    config: NodeConfig,
    *,
    at_ms: int | None = None,
) -> Health:
    """The node's health from one `NodeStatistics` snapshot and what `monitor` kept."""
    now = monitor.clock.now_ms() if at_ms is None else at_ms
    reasons: list[str] = []
    down_ms_max = config.health_peer_down_s_max * 1000
    for peer in statistics.peers:
        # Only dialled peers are known to be expected: one that dials us may
        # be a laptop that comes and goes.
        if not peer.dialed or peer.state in UP_STATES or not peer.down_since_ms:
            continue
        down_ms = now - peer.down_since_ms
        if down_ms <= down_ms_max:
            continue
        who = peer.name or peer.site_id or peer.address
        error = f": {peer.last_error}" if peer.last_error else ""
        reasons.append(
            f"peer {who} ({peer.address}) has not kept a session for {down_ms // 1000} s"
            f" (since {clock_time(peer.down_since_ms)}), {peer.state}{error}"
        )
    for what, entry in sorted(monitor.failures.items()):
        if entry.in_a_row >= FAILURES_REPEATED:
            reasons.append(
                f"{what} failed {entry.in_a_row} times in a row, last at"
                f" {clock_time(entry.last_ms)}: {entry.last_error}"
            )
    reasons.extend(_fleet_reasons(statistics, now, down_ms_max))
    reasons.extend(statistics.store.schema_problems)
    reasons.extend(null_key_problems(statistics.store))
    reasons.extend(statistics.identity_conflicts)
    monitor.note_quarantined(statistics.store.quarantined_rows, now)
    window_ms = config.health_quarantine_window_s * 1000
    if monitor.quarantine_rose_ms and now - monitor.quarantine_rose_ms <= window_ms:
        reasons.append(
            f"quarantine is growing: {statistics.store.quarantined_rows} rows, the last added"
            f" at {clock_time(monitor.quarantine_rose_ms)} (syncmesh quarantine list)"
        )
    if statistics.store.restore_floor:
        reasons.append("recovering own writes lost by a restore from an old copy")
    return Health(ok=not reasons, reasons=tuple(reasons))


def _fleet_reasons(statistics: NodeStatistics, now: int, down_ms_max: float) -> list[str]:
    """The fleet stream's gaps (errors with the fix), a stream out of reach, writes stuck.

    Out of reach means not streaming: a fleet that connected but whose
    publish side never started counts (its `down_since_ms` stays set).
    Writes stuck is the publish side's own clock: our writes waited longer
    than the window with no publish acked, whatever the link's state says.
    """
    fleet = statistics.fleet
    if fleet is None:
        return []
    reasons = list(fleet.gaps)
    if fleet.site_id_conflict:
        reasons.append(f"fleet: {fleet.site_id_conflict}")
    if fleet.configuration_error:
        # Refused by the servers, not out of reach: no grace period, no retry fixes it.
        reasons.append(f"fleet: {fleet.configuration_error}")
        return reasons
    error = f": {fleet.last_error}" if fleet.last_error else ""
    if fleet.down_since_ms and now - fleet.down_since_ms > down_ms_max:
        reasons.append(
            f"fleet stream {fleet.stream} ({', '.join(fleet.servers)}) out of reach for"
            f" {(now - fleet.down_since_ms) // 1000} s (since"
            f" {clock_time(fleet.down_since_ms)}), {fleet.state}{error}"
        )
    waiting_since = fleet.publish_waiting_since_ms
    if waiting_since and now - waiting_since > down_ms_max:
        reasons.append(
            f"fleet: our writes have not reached stream {fleet.stream} for"
            f" {(now - waiting_since) // 1000} s (since {clock_time(waiting_since)}),"
            f" {fleet.state}{error}"
        )
    return reasons


def clock_time(at_ms: int) -> str:
    """A wall-clock time in UTC, as the reasons and the status name it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at_ms / 1000))
