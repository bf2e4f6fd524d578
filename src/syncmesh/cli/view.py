"""Human-readable status with rich: a few facts, then the tables and the peers as tables.

Colour only on a terminal (rich checks, and honours NO_COLOR).  Piped
output (grep, logs, tests) is at least `PIPE_COLUMNS` wide, so a
32-character site id is never cut; on a terminal narrower than
`WIDE_COLUMNS` the site ids are cut to their first characters (…) so that
the peer table still fits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from syncmesh.clock import SystemClock, feed_lag_ms
from syncmesh.store import StoreStatus, null_key_problem, null_key_problems

if TYPE_CHECKING:
    from syncmesh.node.cursors import FleetPosition, RestoreCheckMark

PIPE_COLUMNS = 160
WIDE_COLUMNS = 110  # narrower than this, site ids are cut to SITE_COLUMNS_NARROW
SITE_COLUMNS_NARROW = 14
STATE_STYLES = {"streaming": "green", "connecting": "yellow", "handshake": "yellow"}
LAG_CAPTION = (
    "lag in: how far this node trails the peer's feed.  lag out: rows of this"
    " node's feed the peer has not acknowledged, and their age."
)


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Scripts and logs read whole lines: at least PIPE_COLUMNS, whatever
        # COLUMNS a parent shell exported.
        console = Console(highlight=False, width=max(console.width, PIPE_COLUMNS))
    return console


def _facts(rows: Iterable[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, Text(value))  # Text: a peer's strings are never markup
    return grid


def _peer_column(table: Table, console: Console) -> None:
    """Site id over address; on a narrow terminal cut (…), never wrapped mid-id."""
    narrow = console.width < WIDE_COLUMNS
    table.add_column(
        "peer / address",
        no_wrap=True,
        overflow="ellipsis",
        max_width=SITE_COLUMNS_NARROW if narrow else None,
    )


def _titled(title: str, caption: str = "") -> Table:
    """An empty table of the views' one style: a simple head, no edge, title and caption left."""
    return Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title=title,
        title_justify="left",
        caption=caption or None,
        caption_justify="left",
    )


def _tables(tables: dict[str, int]) -> Table:
    table = Table(
        "table", "rows", box=box.SIMPLE_HEAD, show_edge=False, title="tables", title_justify="left"
    )
    table.columns[1].justify = "right"
    for name, rows in tables.items():
        table.add_row(Text(name), f"{rows:,}")
    if not tables:
        table.add_row("none tracked", "")
    return table


def duration(ms: float) -> str:
    """Coarse and short: "0 s", "2.5 s", "40 s", "4 min", "3 h", "2 d"."""
    seconds = max(0.0, ms) / 1000
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172_800, "h", 3600)):
        if seconds < limit:
            return f"{round(seconds / size)} {unit}"
    return f"{round(seconds / 86_400)} d"


def clock(at_ms: int) -> str:
    """A time of day in UTC, with the date when it is not today."""
    then = time.gmtime(at_ms / 1000)
    if time.strftime("%Y-%m-%d", then) == time.strftime(
        "%Y-%m-%d", time.gmtime(SystemClock().now_ms() / 1000)
    ):
        return time.strftime("%H:%M:%S UTC", then)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", then)


NOT_KNOWN = "not known yet"


def lag(ms: float | None) -> str:
    """A lag or age that may be unknown (None: nothing applied or heard yet), in words.

    Never the time since 1970 that a 0 stamp would give ("20795 d behind"
    of a healthy peer in its first seconds: new-user report).
    """
    return NOT_KNOWN if ms is None else duration(ms)


def age(then_ms: int, now_ms: int) -> str:
    return "never" if not then_ms else f"{duration(now_ms - then_ms)} ago"


def size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    value = count / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{value:.1f} {unit}"


def _lag_out(peer: dict[str, Any]) -> str:
    changes = peer.get("out_lag_changes")
    if changes is None:
        return "?"
    plus = "+" if changes >= 10_000 else ""
    return f"{changes:,}{plus} changes, {lag(peer.get('out_lag_ms'))}"


def _cell_facts(
    waiting: dict[str, dict[str, int]],
    discarded: dict[str, dict[str, int]],
    parked: dict[str, dict[str, int]],
) -> list[tuple[str, str]]:
    """Cells of columns not here yet (a rolling schema change), and of columns dropped here."""
    facts = [
        ("waiting", f"{table}.{column}: {cells:,} cells, for a column not added here yet")
        for table, columns in sorted(waiting.items())
        for column, cells in sorted(columns.items())
    ]
    facts += [
        ("discarded", f"{table}.{column}: {cells:,} cells of a column dropped here")
        for table, columns in sorted(discarded.items())
        for column, cells in sorted(columns.items())
    ]
    facts += [
        ("parked", f"{table}.{column}: {cells:,} cells, for the name if it is added again here")
        for table, columns in sorted(parked.items())
        for column, cells in sorted(columns.items())
    ]
    return facts


def lifecycle_facts(lifecycle: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Tombstones waiting and collected, and who holds collection back (ADR 0015)."""
    if not lifecycle:
        return []
    facts = [
        (
            "tombstones",
            f"{lifecycle['tombstones_waiting']:,} waiting,"
            f" {lifecycle['tombstones_collected']:,} collected"
            f" ({len(lifecycle['members'])} members)",
        )
    ]
    if lifecycle["holding_back"]:
        facts.append(
            (
                "held back by",
                f"site {lifecycle['holding_back']}"
                f" ({_behind(lifecycle['holding_back_ms'])};"
                " `syncmesh forget` it if it is gone for good)",
            )
        )
    if lifecycle["forgotten"]:
        facts.append(("forgotten", ", ".join(lifecycle["forgotten"])))
    return facts


def _behind(ms: int | None) -> str:
    """How far the member holding collection back is behind, or that it is not known yet."""
    if ms is None:
        return "how far behind is not known yet: it has not said it holds any of some site's writes"
    return f"{duration(ms)} behind"


def _held_back_facts(rounds: dict[str, Any] | None, fleet: bool) -> list[tuple[str, str]]:
    """What holds collection back: a fleet node's (docs/adr/0017-fleet-claims.md), or deletes
    held everywhere that wait for the lives they ended (docs/adr/0015)."""
    if not rounds or not rounds.get("held_back"):
        return []
    return [("fleet collection" if fleet else "collection", rounds["held_back"])]


def _print_fleet(console: Console, fleet: dict[str, Any], now_ms: int) -> None:
    """The fleet stream (NATS JetStream): our chain, the stream, and each other site."""
    console.print()
    error = f"  (last error: {fleet['last_error']})" if fleet["last_error"] else ""
    console.print(
        _facts(
            [
                ("fleet", f"{fleet['stream']} on {', '.join(fleet['servers'])}"),
                ("state", f"{fleet['state']}{error}"),
                ("our subject", fleet["subject"]),
                (
                    "published",
                    f"{fleet['published_messages']} messages, {fleet['published_rows']} rows,"
                    f" up to seq {fleet['published_seq']}",
                ),
                *(
                    [
                        (
                            "relayed",
                            f"{fleet['relayed_messages']} messages, {fleet['relayed_rows']} rows"
                            f" of sites off the stream, up to seq {fleet['relayed_seq']}",
                        )
                    ]
                    if fleet.get("relayed_messages")
                    else []
                ),
                (
                    "claims",
                    f"{fleet.get('claims_published', 0)} published (what we hold),"
                    f" {fleet.get('claims_refused', 0)} of other sites refused",
                ),
                (
                    "stream",
                    f"seq {fleet['stream_first_seq']}..{fleet['stream_last_seq']},"
                    f" {fleet['consumer_pending']} pending for us,"
                    f" {fleet['consumer_ack_pending']} unacknowledged",
                ),
                *([("own restore", fleet["own_restore"])] if fleet.get("own_restore") else []),
            ]
        )
    )
    sites = _chains_table("fleet sites", "site", fleet["sites"], now_ms)
    if not fleet["sites"]:
        sites.add_row("none yet", "", "", "", "", "")
    console.print()
    console.print(sites)
    if fleet.get("relays"):
        relays = _chains_table(
            "relay chains (writes of sites off the stream, per relayer)",
            "relayer",
            fleet["relays"],
            now_ms,
        )
        console.print()
        console.print(relays)
    for gap in fleet["gaps"]:
        console.print(gap, markup=False, style="red")
    for site in fleet["sites"]:
        if site.get("bootstrap"):
            console.print(f"site {site['site_id']}: {site['bootstrap']}", markup=False)
    for site in fleet["sites"]:
        if site.get("verified_ms"):
            console.print(verify_text(site, now_ms), markup=False)


def print_live_status(status: dict[str, Any], failed_checks: Sequence[str] = ()) -> None:
    """A running node's /v1/status document; `failed_checks`: what `status` adds to its health."""
    console = _console()
    store = status["store"]
    facts = [
        ("site id", f"{status['site_id']}  (listening on {status['listen']})"),
        ("local seq", str(store["seq"])),
        ("quarantined", f"{store['quarantined_rows']} rows"),
        ("conflicts", f"{sum(store.get('conflicts', {}).values())} recorded (GET /v1/conflicts)"),
        *(("problem", problem) for problem in store["schema_problems"]),
        *(
            ("problem", null_key_problem(table, rows))
            for table, rows in sorted(store.get("null_key_rows", {}).items())
        ),
        *_cell_facts(
            store.get("waiting_cells", {}),
            store.get("discarded_cells", {}),
            store.get("parked_cells", {}),
        ),
        *(("warning", warning) for warning in store.get("warnings", [])),
        *orphan_facts(store.get("orphans", {}), store.get("orphan_problems", [])),
        *lifecycle_facts(store.get("lifecycle")),
        *_held_back_facts(status.get("lifecycle"), bool(status.get("fleet"))),
    ]
    console.print(_facts(facts))
    console.print()
    console.print(_tables(store["tables"]))
    now_ms = SystemClock().now_ms()
    peers = _titled("peers", LAG_CAPTION)
    _peer_column(peers, console)
    peers.add_column("state", no_wrap=True)
    peers.add_column("lag in", justify="right")
    peers.add_column("lag out", justify="right")
    peers.add_column("last batch", justify="right")
    peers.add_column("bytes in / out", justify="right")
    for peer in status["peers"]:
        peers.add_row(
            Text(f"{peer['site_id'] or '?'}\n{peer['address']}"),
            Text(peer["state"], style=STATE_STYLES.get(peer["state"], "red")),
            lag(peer["lag_ms"]),
            _lag_out(peer),
            age(peer["last_batch_ms"], now_ms),
            f"{size(peer['bytes_in'])} / {size(peer['bytes_out'])}",
        )
    if not status["peers"]:
        peers.add_row("none", "", "", "", "", "")
    console.print()
    console.print(peers)
    for peer in status["peers"]:
        if peer.get("catchup_progress") is not None:
            console.print(
                f"catching up with {peer['site_id'] or peer['address']}: {catchup_text(peer)}"
            )
    for peer in status["peers"]:
        if peer.get("verified_ms") or peer.get("verify_waiting"):
            console.print(verify_text(peer, now_ms), markup=False)
    for peer in status["peers"]:
        # Schema differences are no refusal (ADR 0013): what both track syncs.
        for difference in peer.get("schema_differences") or ():
            name = peer["site_id"] or peer["address"]
            console.print(f"schema differs from {name}: {difference}", markup=False)
    for peer in status["peers"]:
        if peer["last_error"]:
            name = peer["site_id"] or peer["address"]
            at = peer.get("last_error_ms") or 0
            when = f" at {clock(at)}" if at else ""
            past = " (past: streaming again since)" if peer["state"] == "streaming" else ""
            console.print(f"last error of {name}{when}{past}: {peer['last_error']}", markup=False)
    if status.get("fleet"):
        _print_fleet(console, status["fleet"], now_ms)
    verdict = status.get("health")
    if verdict is not None:
        console.print()
        console.print("health       " + ("ok" if verdict["ok"] else "NOT ok"), markup=False)
        for reason in verdict["reasons"]:
            console.print(f"  - {reason}", markup=False)
    if failed_checks:
        console.print(
            "check        FAILED (exit 2), beyond the node's own verdict (a peer not"
            " streaming counts at once here, after health.peer_down_s_max there):",
            markup=False,
        )
        for problem in failed_checks:
            console.print(f"  - {problem}", markup=False)


def _chains_table(title: str, first: str, chains: list[dict[str, Any]], now_ms: int) -> Table:
    """One row per chain the fleet reads (a site's own, or a relayer's): position and lag."""
    table = _titled(title)
    for column in (first, "stream seq", "lag", "last applied", "rows", "refused"):
        table.add_column(column, justify="left" if column == first else "right")
    for chain in chains:
        table.add_row(
            Text(chain["site_id"]),
            f"{chain['stream_seq']} / {chain['last_stream_seq']}",
            lag(chain["lag_ms"]),
            age(chain["last_applied_ms"], now_ms),
            str(chain["rows_applied"]),
            str(chain["foreign_rows_refused"]),
        )
    return table


def verify_text(peer: dict[str, Any], now_ms: int) -> str:
    """The last periodic verify against a peer, in one line."""
    name = peer["site_id"] or peer["address"]
    if peer.get("verify_waiting"):
        # Rows in flight are no divergence: no verdict while a side catches up.
        last = (
            f" (last verified {age(peer['verified_ms'], now_ms)})"
            if peer.get("verified_ms")
            else ""
        )
        return f"verify against {name} waits: {peer['verify_waiting']}{last}"
    when = age(peer["verified_ms"], now_ms)
    if peer.get("verify_error"):
        return f"verify against {name} failed {when}: {peer['verify_error']}"
    if peer.get("verify_identical"):
        verdict = "identical"
        if peer.get("verify_repaired_rows_total"):
            verdict += f" ({peer['verify_repaired_rows_total']:,} rows repaired since start)"
    else:
        verdict = f"{peer['verify_divergent_rows']:,} rows differ"
        repaired = peer.get("verify_repaired_rows") or 0
        if repaired:
            verdict += f" ({repaired:,} rows repaired after it)"
    if peer.get("verify_unsettled_rows"):
        verdict += f", {peer['verify_unsettled_rows']:,} rows still changing (not judged)"
    if peer.get("verify_not_compared"):
        verdict += f"; not compared, columns differ there: {', '.join(peer['verify_not_compared'])}"
    return (
        f"verified against {name} {when}: {verdict}"
        f" ({peer['verify_round_trips']} round trips, {size(peer['verify_bytes'])})"
    )


def catchup_text(peer: dict[str, Any]) -> str:
    """'45% of its feed read, 12,000 rows/s, about 20 s left' (None progress: caught up)."""
    progress = peer.get("catchup_progress")
    if progress is None:
        return "caught up"
    eta = peer.get("catchup_eta_s")
    left = "time left unknown yet" if eta is None else f"about {eta:,.0f} s left"
    return f"{progress:.0%} of its feed read, {peer['catchup_rows_per_s']:,.0f} rows/s, {left}"


def orphan_facts(orphans: dict[str, int], problems: list[str]) -> list[tuple[str, str]]:
    """Status lines for rows whose foreign key names a missing parent, and what they block."""
    facts = [
        (
            "orphans",
            f"table {table!r}: {count} rows reference a parent row that is not there;"
            " PRAGMA foreign_key_check reports them, and Django's migrate on SQLite fails"
            " with IntegrityError until they are gone ([tables.orphans] in docs/keys.md,"
            ' "Foreign keys")',
        )
        for table, count in sorted(orphans.items())
    ]
    facts.extend(("orphan problem", problem) for problem in problems)
    return facts


def print_file_status(
    report: StoreStatus,
    marks: Sequence[RestoreCheckMark] = (),
    positions: Sequence[FleetPosition] = (),
) -> None:
    """A file's bookkeeping: what the last batches told it, node running or not.

    `marks`: the NATS restore check's marks (node.cursors), a fact of
    the file, not a peer.  `positions`: how far each fleet site's chain is
    applied (node.cursors), not peers either: a file cannot know the head of a
    site's chain, so they show no lag.
    """
    console = _console()
    facts = [
        ("site id", report.site_id),
        ("incarnation", report.incarnation),
        ("local seq", str(report.seq)),
        ("fingerprint", report.fingerprint),
        ("quarantined", f"{report.quarantined_rows} rows"),
        ("conflicts", f"{sum(report.conflicts.values())} recorded (syncmesh conflicts)"),
        *(("problem", problem) for problem in report.schema_problems),
        *(("problem", problem) for problem in null_key_problems(report)),
        *_cell_facts(report.waiting_cells, report.discarded_cells, report.parked_cells),
        *(("warning", warning) for warning in report.warnings),
        *orphan_facts(report.orphans, report.orphan_problems),
        *lifecycle_facts(
            None if report.lifecycle is None else dataclasses.asdict(report.lifecycle)
        ),
        *(
            (
                "restore check",
                f"own fleet subject {mark.subject} (cluster {mark.cluster}) checked up to"
                f" stream seq {mark.stream_seq:,}",
            )
            for mark in marks
        ),
    ]
    console.print(_facts(facts))
    console.print()
    console.print(_tables(report.tables))
    now_ms = SystemClock().now_ms()
    peers = _titled(
        "peers (their feed as applied here)",
        "lag: as of the peer's last batch; newer writes of a peer are not known here",
    )
    _peer_column(peers, console)
    peers.add_column("lag", justify="right")
    peers.add_column("rows applied", justify="right")
    peers.add_column("last batch", justify="right")
    for peer in report.peers:
        lag_ms = feed_lag_ms(peer.cursor, peer.head_seq)
        behind = NOT_KNOWN if lag_ms is None else duration(lag_ms)
        # The file knows only what the peer's last batch said: never "caught
        # up" about a peer that may have written much since.
        as_of = f"as of {clock(peer.last_applied_ms)}" if peer.last_applied_ms else "never heard"
        peers.add_row(
            Text(f"{peer.site_id}\n{peer.address}"),
            f"none {as_of}" if lag_ms == 0 else f"{behind} {as_of}",
            f"{peer.applied_rows:,}",
            age(peer.last_applied_ms, now_ms),
        )
    if not report.peers:
        peers.add_row("none yet", "", "", "")
    console.print()
    console.print(peers)
    if positions:
        console.print()
        console.print(_positions_table(positions, now_ms))


def _positions_table(positions: Sequence[FleetPosition], now_ms: int) -> Table:
    """The fleet sites' chains as applied in a file (no lag: the file knows no chain head)."""
    table = _titled(
        "fleet sites (their chain on the stream as applied here)",
        "a file knows no site's newer writes: run the node for the fleet's lag",
    )
    table.add_column("site")
    table.add_column("chain seq", justify="right")
    table.add_column("stream seq", justify="right")
    table.add_column("rows applied", justify="right")
    table.add_column("last message", justify="right")
    for position in positions:
        table.add_row(
            Text(f"{position.site_id}\n{position.subject} (cluster {position.cluster})"),
            f"{position.chain_seq:,}" if position.chain_seq else "none yet",
            f"{position.stream_seq:,}",
            f"{position.applied_rows:,}",
            age(position.last_applied_ms, now_ms),
        )
    return table
