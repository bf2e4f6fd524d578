"""`GET /metrics`: the node's statistics in Prometheus' text format.

Every scrape renders one `Node.statistics()` snapshot through a registry of
its own, so several nodes in one process (tests, the demo) never share
series, and nothing is kept between scrapes: the node's counters are the
single source of the numbers, exactly as `/v1/status` shows them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from syncmesh.clock import wall_ms_of
from syncmesh.node import LAG_CHANGES_MAX, NodeStatistics, PeerStatistics
from syncmesh.node.fleet import FleetSiteStatistics, FleetStatistics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PEER_LABELS = ["peer", "address"]


def render(statistics: NodeStatistics, *, now_ms: int) -> bytes:
    """The exposition text of one snapshot; `now_ms` from the node's clock (ages)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(statistics, now_ms))
    return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, statistics: NodeStatistics, now_ms: int) -> None:
        self._statistics = statistics
        self._now_ms = now_ms

    def collect(self) -> Iterator[Metric]:
        yield from _node_metrics(self._statistics)
        yield from _peer_metrics(self._statistics.peers, self._now_ms)
        if self._statistics.fleet is not None:
            yield from _fleet_metrics(self._statistics.fleet)


def _node_metrics(statistics: NodeStatistics) -> Iterator[Metric]:
    store = statistics.store
    info = InfoMetricFamily("syncmesh_node", "This node's identity.")
    info.add_metric(
        [],
        {
            "site_id": store.site_id,
            "incarnation": store.incarnation,
            "fingerprint": store.fingerprint,
            "listen": statistics.listen,
        },
    )
    yield info
    yield GaugeMetricFamily(
        "syncmesh_local_seq", "The newest seq of this node's change feed.", value=store.seq
    )
    yield _per_table("syncmesh_table_rows", "Rows per tracked table.", store.tables)
    yield GaugeMetricFamily(
        "syncmesh_quarantined_rows",
        "Peers' rows held back: refused by a constraint or the drift limit.",
        value=store.quarantined_rows,
    )
    yield GaugeMetricFamily(
        "syncmesh_schema_problems",
        "Tracked tables altered after they were tracked.",
        value=len(store.schema_problems),
    )
    yield GaugeMetricFamily(
        "syncmesh_row_problems",
        "Rows the change feed holds back because it cannot read them faithfully.",
        value=len(store.row_problems),
    )
    yield _per_table(
        "syncmesh_orphan_rows",
        "Rows whose foreign key names a parent row that is not there, per tracked table.",
        store.orphans,
    )
    yield _per_table(
        "syncmesh_null_key_rows",
        "Rows with a NULL key value, which are not synced, per tracked table.",
        store.null_key_rows,
    )
    yield GaugeMetricFamily(
        "syncmesh_orphan_problems",
        "Foreign-key orphans the orphan policy could not resolve.",
        value=len(store.orphan_problems),
    )
    yield GaugeMetricFamily(
        "syncmesh_restoring",
        "1 while own writes lost by a restore are being recovered.",
        value=1 if store.restore_floor else 0,
    )
    yield CounterMetricFamily(
        "syncmesh_captures", "Captures that stamped local writes.", value=statistics.captures
    )
    yield CounterMetricFamily(
        "syncmesh_rights_refused_rows",
        "Rows refused because a peer may not send their table, since start.",
        value=statistics.rights_refused_rows,
    )
    yield CounterMetricFamily(
        "syncmesh_refused_connections",
        "Connections refused before HELLO: a certificate of no configured peer, or a limit.",
        value=statistics.refused_connections,
    )
    yield from _lifecycle_metrics(statistics)
    yield from _snapshot_metrics(statistics)
    conflicts = CounterMetricFamily(
        "syncmesh_conflicts",
        "Conflicts (concurrent writes to one cell) this node's merges resolved, per table.",
        labels=["table"],
    )
    for table, total in store.conflicts.items():
        conflicts.add_metric([table], total)
    yield conflicts


def _per_table(name: str, documentation: str, counts: dict[str, int]) -> GaugeMetricFamily:
    """A gauge with one sample per tracked table."""
    gauge = GaugeMetricFamily(name, documentation, labels=["table"])
    for table, count in counts.items():
        gauge.add_metric([table], count)
    return gauge


def _lifecycle_metrics(statistics: NodeStatistics) -> Iterator[Metric]:
    """Tombstone collection (ADR 0015): what waits, what went, who holds it back."""
    lifecycle = statistics.store.lifecycle
    if lifecycle is None:
        return
    yield GaugeMetricFamily(
        "syncmesh_tombstones_waiting",
        "Deleted rows' shadow rows kept: not every member holds the delete yet.",
        value=lifecycle.tombstones_waiting,
    )
    yield CounterMetricFamily(
        "syncmesh_tombstones_collected",
        "Tombstones collected in this file, ever.",
        value=lifecycle.tombstones_collected,
    )
    yield CounterMetricFamily(
        "syncmesh_stale_rows_dropped",
        "Arriving rows of keys whose delete was collected here, dropped.",
        value=lifecycle.stale_dropped,
    )
    yield GaugeMetricFamily(
        "syncmesh_members", "Sites the stability frontier waits for.", value=len(lifecycle.members)
    )
    yield GaugeMetricFamily(
        "syncmesh_forgotten_sites",
        "Sites taken out of the membership by `syncmesh forget`.",
        value=len(lifecycle.forgotten),
    )
    frontier = GaugeMetricFamily(
        "syncmesh_stability_frontier_ms",
        "Per origin: every member holds its writes up to this wall time (ms of the stamp).",
        labels=["origin"],
    )
    for origin, hlc in sorted(lifecycle.frontier.items()):
        if hlc > 0:  # 0: not every member holds any of its writes yet, not 1970
            frontier.add_metric([origin], wall_ms_of(hlc))
    yield frontier
    holding = GaugeMetricFamily(
        "syncmesh_holding_back_ms",
        "How far (ms of stamps) the member holding collection back most is behind us.",
        labels=["site"],
    )
    if lifecycle.holding_back and lifecycle.holding_back_ms is not None:  # None: not known
        holding.add_metric([lifecycle.holding_back], lifecycle.holding_back_ms)
    yield holding


def _snapshot_metrics(statistics: NodeStatistics) -> Iterator[Metric]:
    """Snapshots served to joining nodes (ADR 0016), in this run."""
    snapshots = statistics.snapshots
    yield CounterMetricFamily(
        "syncmesh_snapshots_served",
        "Snapshots of this file taken for joining nodes (`syncmesh join`), since start.",
        value=snapshots.taken,
    )
    yield CounterMetricFamily(
        "syncmesh_snapshots_refused",
        "Snapshot requests refused (a bad request, a forgotten site id, a failed copy).",
        value=snapshots.refused,
    )
    yield GaugeMetricFamily(
        "syncmesh_snapshot_taking", "1 while a snapshot is being taken.", value=snapshots.taking
    )
    yield GaugeMetricFamily(
        "syncmesh_snapshot_last_bytes",
        "Size of the last snapshot taken.",
        value=snapshots.bytes_last,
    )
    yield GaugeMetricFamily(
        "syncmesh_snapshot_last_seconds",
        "How long the last snapshot took to take (copy, trim, checksum).",
        value=snapshots.seconds_last,
    )


def _peer_metrics(peers: tuple[PeerStatistics, ...], now_ms: int) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "syncmesh_peer_up", "1 while a session streams with the peer.", labels=PEER_LABELS
    )
    lag = GaugeMetricFamily(
        "syncmesh_peer_lag_seconds",
        "How much older our cursor on the peer's feed is than its head.",
        labels=PEER_LABELS,
    )
    out_lag = GaugeMetricFamily(
        "syncmesh_peer_out_lag_changes",
        f"Rows of our feed the peer has not acknowledged (counted up to {LAG_CHANGES_MAX}).",
        labels=PEER_LABELS,
    )
    out_lag_seconds = GaugeMetricFamily(
        "syncmesh_peer_out_lag_seconds",
        "How much older the peer's acknowledged position on our feed is than our head.",
        labels=PEER_LABELS,
    )
    catchup = GaugeMetricFamily(
        "syncmesh_peer_catchup_progress",
        "While reading the peer's feed up to its head: 0..1 of the way (absent when caught up).",
        labels=PEER_LABELS,
    )
    catchup_eta = GaugeMetricFamily(
        "syncmesh_peer_catchup_eta_seconds",
        "While catching up with the peer: time left at the recent pace.",
        labels=PEER_LABELS,
    )
    schema_differences = GaugeMetricFamily(
        "syncmesh_peer_schema_differences",
        "Tables tracked on one side only, or with columns one side lacks (no refusal:"
        " only what both track is exchanged; /v1/status names them).",
        labels=PEER_LABELS,
    )
    age = GaugeMetricFamily(
        "syncmesh_peer_last_batch_age_seconds",
        "Time since the last batch from the peer was applied.",
        labels=PEER_LABELS,
    )
    counters = {
        name: CounterMetricFamily(f"syncmesh_peer_{name}", text, labels=PEER_LABELS)
        for name, text in (
            ("rows_received", "Rows received from the peer (this session)."),
            ("rows_sent", "Rows sent to the peer (this session)."),
            ("batches_received", "Batches received from the peer (this session)."),
            ("batches_sent", "Batches sent to the peer (this session)."),
            ("bytes_received", "Frame bytes received from the peer (this session)."),
            ("bytes_sent", "Frame bytes sent to the peer (this session)."),
            ("quarantined_rows", "Rows from the peer put in quarantine (this session)."),
            ("rights_refused_rows", "Rows of tables the peer may not send, refused (session)."),
            ("reconnects", "Sessions with the peer that ended and were dialled again."),
        )
    }
    by_table = {
        name: CounterMetricFamily(
            f"syncmesh_peer_table_{name}", text, labels=[*PEER_LABELS, "table"]
        )
        for name, text in (
            ("applied_rows", "Rows from the peer that changed a table here (this session)."),
            ("bytes_received", "Frame bytes from the peer, apportioned by rows (this session)."),
        )
    }
    verify = _verify_families("syncmesh_peer_verify", "the peer", PEER_LABELS)
    apply = HistogramMetricFamily(
        "syncmesh_batch_apply_seconds", "Time to apply one batch from the peer.", labels=PEER_LABELS
    )
    for peer in peers:
        labels = [peer.site_id or "unknown", peer.address]
        up.add_metric(labels, 1 if peer.state == "streaming" else 0)
        if peer.lag_ms is not None:  # None: nothing applied yet, no lag to tell
            lag.add_metric(labels, peer.lag_ms / 1000)
        if peer.out_lag_changes is not None:
            out_lag.add_metric(labels, peer.out_lag_changes)
        if peer.out_lag_ms is not None:
            out_lag_seconds.add_metric(labels, peer.out_lag_ms / 1000)
        if peer.catchup_progress is not None:
            catchup.add_metric(labels, peer.catchup_progress)
        if peer.catchup_eta_s is not None:
            catchup_eta.add_metric(labels, peer.catchup_eta_s)
        if peer.last_batch_ms:
            age.add_metric(labels, max(0, now_ms - peer.last_batch_ms) / 1000)
        schema_differences.add_metric(labels, len(peer.schema_differences))
        for name, value in (
            ("rows_received", peer.rows_in),
            ("rows_sent", peer.rows_out),
            ("batches_received", peer.batches_in),
            ("batches_sent", peer.batches_out),
            ("bytes_received", peer.bytes_in),
            ("bytes_sent", peer.bytes_out),
            ("quarantined_rows", peer.quarantined_rows),
            ("rights_refused_rows", peer.rights_refused_rows),
            ("reconnects", peer.reconnects),
        ):
            counters[name].add_metric(labels, value)
        for table, rows in peer.applied_rows_by_table.items():
            by_table["applied_rows"].add_metric([*labels, table], rows)
        for table, size in peer.bytes_in_by_table.items():
            by_table["bytes_received"].add_metric([*labels, table], size)
        apply.add_metric(labels, _cumulative(peer), peer.apply_seconds_sum)
        _add_verify(verify, labels, peer)
    yield from (up, lag, out_lag, out_lag_seconds, catchup, catchup_eta, age, schema_differences)
    yield from (*counters.values(), *by_table.values(), *verify.values(), apply)


def _verify_families(
    prefix: str, whom: str, labels: list[str]
) -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    """The gauges of the last periodic verify against a peer or a fleet site."""
    return {
        name: GaugeMetricFamily(f"{prefix}_{name}", text, labels=labels)
        for name, text in (
            ("timestamp_seconds", f"When the last periodic verify against {whom} ended."),
            ("identical", f"1 if the last verify found {whom} identical, 0 if not."),
            ("divergent_rows", f"Rows that differ from {whom}'s, by the last verify."),
            ("unsettled_rows", "Rows still changing at the last verify (not judged)."),
            ("round_trips", "Round trips the last verify took."),
            ("bytes", "Bytes the last verify sent and received."),
            ("seconds", "How long the last verify took."),
            (
                "waiting",
                f"1 while the verify of {whom} waits for both sides to catch up (rows in"
                " flight are no divergence): the other figures are the last verdict's.",
            ),
        )
    } | {
        # A count since start, to alert on: rows a feed missed, found and merged.
        "repaired_rows": CounterMetricFamily(
            f"{prefix}_repaired_rows",
            f"Rows the periodic verify found differing from {whom}'s and merged both ways"
            " (sync.verify_repair), since the node started.",
            labels=labels,
        )
    }


def _add_verify(
    verify: dict[str, GaugeMetricFamily | CounterMetricFamily],
    labels: list[str],
    verified: PeerStatistics | FleetSiteStatistics,
) -> None:
    if verified.verified_ms or verified.verify_waiting:
        verify["waiting"].add_metric(labels, 1 if verified.verify_waiting else 0)
    if not verified.verified_ms:
        return
    verify["timestamp_seconds"].add_metric(labels, verified.verified_ms / 1000)
    if verified.verify_identical is not None:
        verify["identical"].add_metric(labels, 1 if verified.verify_identical else 0)
    figures: tuple[tuple[str, float], ...] = (
        ("divergent_rows", verified.verify_divergent_rows),
        ("unsettled_rows", verified.verify_unsettled_rows),
        ("round_trips", verified.verify_round_trips),
        ("bytes", verified.verify_bytes),
        ("seconds", verified.verify_seconds),
        ("repaired_rows", verified.verify_repaired_rows_total),
    )
    for name, figure in figures:
        verify[name].add_metric(labels, figure)


def _cumulative(peer: PeerStatistics) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(peer.apply_seconds_buckets, peer.apply_seconds_counts, strict=False):
        total += count
        buckets.append((repr(bound), total))
    buckets.append(("+Inf", total + peer.apply_seconds_counts[-1]))
    return buckets


def _fleet_metrics(fleet: FleetStatistics) -> Iterator[Metric]:
    """The fleet stream (NATS JetStream): our chain, the stream, the consumer, per site."""
    labels = ["stream"]
    up = GaugeMetricFamily(
        "syncmesh_fleet_up", "1 while the fleet stream is reachable and streaming.", labels=labels
    )
    up.add_metric([fleet.stream], 1 if fleet.state == "streaming" else 0)
    yield up
    gauges = (
        ("published_seq", "Where our chain of messages ends (our feed's seq).", "published_seq"),
        ("stream_first_seq", "The oldest message the stream retains.", "stream_first_seq"),
        ("stream_last_seq", "The newest message in the stream.", "stream_last_seq"),
        ("consumer_pending", "Messages not yet delivered to our consumer.", "consumer_pending"),
        (
            "consumer_ack_pending",
            "Messages delivered to us, not yet acknowledged.",
            "consumer_ack_pending",
        ),
        ("gaps", "Sites whose messages the stream dropped before we read them.", None),
    )
    for name, text, field in gauges:
        family = GaugeMetricFamily(f"syncmesh_fleet_{name}", text, labels=labels)
        value = len(fleet.gaps) if field is None else getattr(fleet, field)
        family.add_metric([fleet.stream], value)
        yield family
    counters = (
        ("published_messages", "Messages we published.", "published_messages"),
        ("published_rows", "Rows we published.", "published_rows"),
        ("publish_retries", "Publishes tried again.", "publish_retries"),
        (
            "undecodable_messages",
            "Messages that were not a readable batch.",
            "undecodable_messages",
        ),
        (
            "state_published_rows",
            "Rows we published to the compacted state stream.",
            "state_published_rows",
        ),
        ("bootstraps", "Gaps closed from the compacted state stream.", "bootstraps"),
        (
            "claims_published",
            "Claims of what we hold we published (tombstone collection, ADR 0017).",
            "claims_published",
        ),
        ("claims_refused", "Other sites' claims that did not parse.", "claims_refused"),
        (
            "own_restores",
            "Restores of this file whose lost own writes came back from the stream.",
            "own_restores",
        ),
        (
            "relayed_messages",
            "Messages we published on our relay chain (writes of sites off the stream).",
            "relayed_messages",
        ),
        (
            "relayed_rows",
            "Rows of sites off the stream (WebSocket peers) we relayed onto the stream.",
            "relayed_rows",
        ),
    )
    for name, text, field in counters:
        counter = CounterMetricFamily(f"syncmesh_fleet_{name}", text, labels=labels)
        counter.add_metric([fleet.stream], getattr(fleet, field))
        yield counter
    site_labels = ["stream", "site"]
    lag = GaugeMetricFamily(
        "syncmesh_fleet_site_lag_seconds",
        "How much older our position on a site's chain is than its newest write we know of.",
        labels=site_labels,
    )
    position = GaugeMetricFamily(
        "syncmesh_fleet_site_stream_seq",
        "The stream sequence of the last message of the site we applied.",
        labels=site_labels,
    )
    behind = GaugeMetricFamily(
        "syncmesh_fleet_site_stream_seq_behind",
        "Stream sequences between the last message of the site we applied and its newest.",
        labels=site_labels,
    )
    applied = CounterMetricFamily(
        "syncmesh_fleet_site_rows_applied",
        "Rows of the site applied from the stream (this run).",
        labels=site_labels,
    )
    refused = CounterMetricFamily(
        "syncmesh_fleet_site_foreign_rows_refused",
        "Rows on the site's subject refused for claiming another origin (this run).",
        labels=site_labels,
    )
    verify = _verify_families("syncmesh_fleet_site_verify", "the site", site_labels)
    for site in fleet.sites:
        key = [fleet.stream, site.site_id]
        if site.lag_ms is not None:  # None: nothing of the site applied yet
            lag.add_metric(key, site.lag_ms / 1000)
        position.add_metric(key, site.stream_seq)
        behind.add_metric(key, max(0, site.last_stream_seq - site.stream_seq))
        applied.add_metric(key, site.rows_applied)
        refused.add_metric(key, site.foreign_rows_refused)
        _add_verify(verify, key, site)
    yield from (lag, position, behind, applied, refused, *verify.values())
    yield from _relay_metrics(fleet)


def _relay_metrics(fleet: FleetStatistics) -> Iterator[Metric]:
    """Other sites' relay chains read here, per relayer (docs/adr/0014, relaying)."""
    relay_labels = ["stream", "relayer"]
    lag = GaugeMetricFamily(
        "syncmesh_fleet_relay_lag_seconds",
        "How much older our position on a relayer's relay chain is than its newest message.",
        labels=relay_labels,
    )
    behind = GaugeMetricFamily(
        "syncmesh_fleet_relay_stream_seq_behind",
        "Stream sequences between the relayer's last relay message applied and its newest.",
        labels=relay_labels,
    )
    applied = CounterMetricFamily(
        "syncmesh_fleet_relay_rows_applied",
        "Rows of the relayer's relay chain applied from the stream (this run).",
        labels=relay_labels,
    )
    refused = CounterMetricFamily(
        "syncmesh_fleet_relay_rows_refused",
        "Rows on the relayer's relay subject refused for claiming a fleet site's write.",
        labels=relay_labels,
    )
    for relay in fleet.relays:
        key = [fleet.stream, relay.site_id]
        if relay.lag_ms is not None:
            lag.add_metric(key, relay.lag_ms / 1000)
        behind.add_metric(key, max(0, relay.last_stream_seq - relay.stream_seq))
        applied.add_metric(key, relay.rows_applied)
        refused.add_metric(key, relay.foreign_rows_refused)
    yield from (lag, behind, applied, refused)
