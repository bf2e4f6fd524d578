"""`syncmesh status`: a file's bookkeeping, or a running node's live view, as tables or JSON.

The health verdict (exit status 2) makes the command usable as a check in
systemd, cron or a load balancer: a peer that is not streaming (live view
only: a file does not know whether its node runs) or further behind than
`--max-lag` seconds is unhealthy.  The tables are drawn by rich
(syncmesh.cli.view); `--json` prints the documents unchanged for scripts.
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
    from syncmesh.cli import view  # rich loads only when a table is printed

    view.print_file_status(report)
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
    from syncmesh.cli import view  # rich loads only when a table is printed

    view.print_live_status(status)
    return problems
