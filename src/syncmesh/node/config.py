"""A node's settings: every limit is named, with its unit in the name."""

from __future__ import annotations

from dataclasses import dataclass, field

from syncmesh.protocol import FRAME_BYTES_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    database_path: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 7401  # 0 picks a free port (tests, demo)
    peer_urls: tuple[str, ...] = field(default_factory=tuple)
    clock_drift_ms_max: int = 60_000  # stamps further ahead are refused
    batch_rows_max: int = 2_000  # rows per batch (whole local transactions may exceed it)
    batches_in_flight_max: int = 4  # unacknowledged batches per session (flow control)
    poll_interval_ms: int = 5  # how often to look for writes by other connections
    heartbeat_s: float = 5.0  # WebSocket ping interval; a missed pong closes the link
    handshake_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.1  # reconnect delay doubles from here ...
    backoff_max_s: float = 5.0  # ... up to here, with full jitter
    idle_resend_s: float = 2.0  # a sender with nothing new re-reads its feed this often
    relay_hold_ms: int = 10  # a batch of only others' writes waits this long (mesh dedup)
    quarantine_retry_s: float = 5.0
    conflict_ledger_rows_max: int = 10_000  # the ledger keeps the newest this many conflicts
    api_listen_host: str | None = None  # None: the API shares listen_host:listen_port
    api_listen_port: int = 0
    frame_bytes_max: int = FRAME_BYTES_MAX + 1024  # the WebSocket's limit: a frame plus slack

    def __post_init__(self) -> None:
        assert self.batch_rows_max > 0
        assert self.batches_in_flight_max > 0
        assert self.poll_interval_ms > 0
        assert 0 < self.backoff_initial_s <= self.backoff_max_s
        assert self.conflict_ledger_rows_max >= 0
