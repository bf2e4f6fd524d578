"""`syncmesh status`: a file's bookkeeping, or a running node's live view, as text or JSON.

The health verdict (exit status 2) makes the command usable as a check in
systemd, cron or a load balancer: a peer that is not streaming (live view
only: a file does not know whether its node runs) or further behind than
`--max-lag` seconds is unhealthy.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

import click

from syncmesh.clock import feed_lag_ms
from syncmesh.store import StoreStatus

URL_TIMEOUT_S = 5.0
UNHEALTHY_EXIT = 2


def file_report(report: StoreStatus, *, as_json: bool, max_lag_s: float | None) -> list[str]:
    """Print a file's status; returns the reasons it is unhealthy (empty: healthy)."""
    problems = []
    for peer in report.peers:
        lag_ms = feed_lag_ms(peer.cursor, peer.head_seq)
        if max_lag_s is not None and lag_ms > max_lag_s * 1000:
            problems.append(f"peer {peer.site_id} is {lag_ms} ms behind (as of its last batch)")
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
        return problems
    click.echo(f"site id      {report.site_id}")
    click.echo(f"incarnation  {report.incarnation}")
    click.echo(f"local seq    {report.seq}")
    click.echo(f"fingerprint  {report.fingerprint}")
    click.echo(f"quarantined  {report.quarantined_rows} rows")
    click.echo(f"conflicts    {sum(report.conflicts.values())} recorded (syncmesh conflicts)")
    for problem in report.schema_problems:
        click.echo(f"problem      {problem}")
    click.echo("tables:")
    for name, rows in report.tables.items():
        click.echo(f"  {name:<24} {rows} rows")
    click.echo("peers (their feed as applied here):")
    if not report.peers:
        click.echo("  none yet")
    for peer in report.peers:
        lag_ms = feed_lag_ms(peer.cursor, peer.head_seq)
        behind = "caught up" if lag_ms == 0 else f"behind by {lag_ms} ms of changes"
        click.echo(
            f"  {peer.site_id}  {behind} (as of its last batch)"
            f"  {peer.applied_rows} rows applied  {peer.address}"
        )
    return problems


def fetch(url: str) -> dict[str, Any]:
    """The JSON of a running node's /v1/status; ClickException if it cannot be had."""
    address = url.rstrip("/") + "/v1/status"
    if not address.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// URL", param_hint="--url")
    try:
        with urllib.request.urlopen(address, timeout=URL_TIMEOUT_S) as response:
            body: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {address}: {exc}") from exc
    return body


def live_report(status: dict[str, Any], *, as_json: bool, max_lag_s: float | None) -> list[str]:
    """Print a running node's status; returns the reasons it is unhealthy."""
    problems = []
    for peer in status["peers"]:
        name = peer["site_id"] or peer["address"]
        if peer["state"] != "streaming":
            detail = f": {peer['last_error']}" if peer["last_error"] else ""
            problems.append(f"peer {name} is {peer['state']}{detail}")
        elif max_lag_s is not None and peer["lag_ms"] > max_lag_s * 1000:
            problems.append(f"peer {name} is {peer['lag_ms']} ms behind")
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return problems
    store = status["store"]
    click.echo(f"site id      {status['site_id']}  (listening on {status['listen']})")
    click.echo(f"local seq    {store['seq']}")
    click.echo(f"quarantined  {store['quarantined_rows']} rows")
    conflicts = sum(store.get("conflicts", {}).values())
    click.echo(f"conflicts    {conflicts} recorded (GET /v1/conflicts)")
    for problem in store["schema_problems"]:
        click.echo(f"problem      {problem}")
    click.echo("tables:")
    for name, rows in store["tables"].items():
        click.echo(f"  {name:<24} {rows} rows")
    click.echo("peers:")
    if not status["peers"]:
        click.echo("  none")
    for peer in status["peers"]:
        lag = "caught up" if peer["lag_ms"] == 0 else f"{peer['lag_ms']} ms behind"
        error = f"  last error: {peer['last_error']}" if peer["last_error"] else ""
        click.echo(
            f"  {peer['site_id'] or '?':<32}  {peer['state']:<10} {lag}"
            f"  in {peer['rows_in']} / out {peer['rows_out']} rows  {peer['address']}{error}"
        )
    return problems
