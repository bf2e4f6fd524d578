"""`syncmesh status`: a running node's live view, or a file's bookkeeping, as tables or JSON.

`syncmesh status FILE` looks for the node serving FILE through its lock
file (syncmesh.node.lockfile) and shows that node's live view; only when
no node runs does it show the file's bookkeeping, and then it says so and
dates every peer's figures by that peer's last batch: a file cannot know
whether a peer it has not heard from since is still caught up.

The health verdict (exit status 2) makes the command usable as a check in
systemd, cron or a load balancer: the node's own health reasons
(syncmesh.node.health), a peer that is not streaming, or one further
behind than `--max-lag` seconds.  The tables are drawn by rich
(syncmesh.cli.view); `--json` prints the documents unchanged for scripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from syncmesh.clock import feed_lag_ms
from syncmesh.errors import SyncError
from syncmesh.node.cursors import split_cursors
from syncmesh.node.health import UP_STATES
from syncmesh.node.lockfile import join_refusal, running_holder
from syncmesh.store import StoreStatus, null_key_problems
from syncmesh.store.open import open_store
from syncmesh.transport.failures import address_of, os_error_words

URL_TIMEOUT_S = 5.0
# --max-lag of a peer none of whose feed is applied yet: its lag cannot be
# told (a 0 cursor is no time), so it is not within the bound either.
LAG_NOT_KNOWN = "lag not known yet (nothing of its feed applied here yet)"
UNHEALTHY_EXIT = 2


def status_of_file(database: Path, *, as_json: bool, max_lag_s: float | None) -> list[str]:
    """The live view of the node serving `database`, or, if none runs, the file's; problems."""
    holder = running_holder(database)
    silent: list[str] = []  # the serving node, alive but not answering
    if holder is not None and holder.api_url:
        try:
            document = fetch(holder.api_url)
        except click.ClickException as exc:
            click.echo(
                f"{database}: served by pid {holder.pid} at {holder.api_url}, but its live view"
                f" cannot be read ({exc.message}); the file's bookkeeping instead:",
                err=True,
            )
            # A node that holds the file but does not answer (hung, stopped with
            # SIGSTOP, overloaded) is not a healthy one: exit 2, so a health check
            # built on `status FILE` notices (new-user report: it exited 0).  A
            # node that answers 401/403 is alive and wants a token: not a problem.
            denied = isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code in (
                401,
                403,
            )
            if not denied:
                silent.append(
                    f"the node serving {database} (pid {holder.pid}) does not answer at"
                    f" {holder.api_url}: {exc.message}"
                )
        else:
            click.echo(
                f"{database}: served by pid {holder.pid}; its live view ({holder.api_url}):",
                err=True,
            )
            return live_report(document, as_json=as_json, max_lag_s=max_lag_s)
    elif holder is not None and holder.command == "join":
        # Not opened: the file is about to be replaced (or is the empty one the
        # join's lock created, which an open would turn into a database).
        raise click.ClickException(join_refusal(database, holder))
    elif holder is not None:
        click.echo(f"{database}: a node (pid {holder.pid}) is starting on it", err=True)
    else:
        click.echo(
            f"{database}: no node is running on it; the file's bookkeeping, each peer as of"
            " its last batch:",
            err=True,
        )
    try:
        store = open_store(database)
        try:
            report = store.status()
        finally:
            store.close()
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    return silent + file_report(report, as_json=as_json, max_lag_s=max_lag_s)


def file_report(report: StoreStatus, *, as_json: bool, max_lag_s: float | None) -> list[str]:
    """Print a file's status; returns the reasons it is unhealthy (empty: healthy).

    What the file itself can tell, as a node's health would say it
    (syncmesh.node.health): a tracked table it cannot follow or whose
    capture triggers are gone, and own writes lost by a restore.
    """
    problems = [*report.schema_problems, *null_key_problems(report)]
    if report.restore_floor:
        problems.append("recovering own writes lost by a restore from an old copy")
    # Fleet positions and the NATS restore check's mark share the peers' cursor
    # table; neither is a peer (node.cursors).
    cursors = split_cursors(report.peers)
    report = dataclasses.replace(report, peers=cursors.peers)
    for peer in report.peers:
        if max_lag_s is not None:
            lag_ms = feed_lag_ms(peer.cursor, peer.head_seq)
            if lag_ms is None:
                problems.append(f"peer {peer.site_id}: {LAG_NOT_KNOWN}")
            elif lag_ms > max_lag_s * 1000:
                problems.append(f"peer {peer.site_id} is {lag_ms} ms behind (as of its last batch)")
    if as_json:
        document = dataclasses.asdict(report)
        document["fleet_positions"] = [dataclasses.asdict(p) for p in cursors.positions]
        document["fleet_restore_checks"] = [dataclasses.asdict(mark) for mark in cursors.marks]
        click.echo(json.dumps(document, indent=2))
        return problems
    from syncmesh.cli import view  # rich loads only when a table is printed

    view.print_file_status(report, cursors.marks, cursors.positions)
    return problems


def fetch(url: str) -> dict[str, Any]:
    """The JSON of a running node's /v1/status; ClickException if it cannot be had."""
    address = url.rstrip("/") + "/v1/status"
    if not address.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// URL", param_hint="--url")
    try:
        with urllib.request.urlopen(address, timeout=URL_TIMEOUT_S) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        # A node that cannot read its own store answers 503 with the reason.
        with contextlib.suppress(ValueError, OSError):
            document = json.loads(exc.read())
            error = document.get("error") if isinstance(document, dict) else None
            if error:
                raise click.ClickException(f"{address}: {error}") from exc
        raise click.ClickException(f"cannot read {address}: {exc}") from exc
    except urllib.error.URLError as exc:
        # urllib's "<urlopen error [Errno 111] Connection refused>" in words (new-user report).
        cause = exc.reason if isinstance(exc.reason, BaseException) else OSError(exc.reason)
        raise click.ClickException(
            f"cannot read {address}: cannot connect to {address_of(address)}:"
            f" {os_error_words(cause)}"
        ) from exc
    except (TimeoutError, OSError) as exc:
        raise click.ClickException(
            f"cannot read {address} ({address_of(address)}): {os_error_words(exc)}"
        ) from exc
    except ValueError as exc:
        raise click.ClickException(f"cannot read {address}: not a node's status ({exc})") from exc
    return body


def live_report(status: dict[str, Any], *, as_json: bool, max_lag_s: float | None) -> list[str]:
    """Print a running node's status; returns the reasons it is unhealthy."""
    problems = list(status.get("health", {}).get("reasons", []))
    for peer in status["peers"]:
        name = peer["site_id"] or peer["address"]
        if peer["state"] not in UP_STATES:
            detail = f": {peer['last_error']}" if peer["last_error"] else ""
            problems.append(f"peer {name} is {peer['state']}{detail}")
        elif max_lag_s is not None and peer["lag_ms"] is None:
            problems.append(f"peer {name}: {LAG_NOT_KNOWN}")
        elif max_lag_s is not None and peer["lag_ms"] > max_lag_s * 1000:
            problems.append(f"peer {name} is {peer['lag_ms']} ms behind")
    fleet = status.get("fleet")
    if fleet:
        if fleet["state"] != "streaming":
            detail = f": {fleet['last_error']}" if fleet["last_error"] else ""
            problems.append(f"fleet stream {fleet['stream']} is {fleet['state']}{detail}")
        for site in fleet["sites"]:
            if max_lag_s is not None and site["lag_ms"] is None:
                problems.append(f"fleet site {site['site_id']}: {LAG_NOT_KNOWN}")
            elif max_lag_s is not None and site["lag_ms"] > max_lag_s * 1000:
                problems.append(
                    f"fleet site {site['site_id']} is {site['lag_ms']} ms behind on the stream"
                )
        for relay in fleet.get("relays", []):
            if max_lag_s is not None and (relay["lag_ms"] or 0) > max_lag_s * 1000:
                problems.append(
                    f"the relay chain of fleet site {relay['site_id']} is {relay['lag_ms']} ms"
                    " behind on the stream"
                )
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return problems
    from syncmesh.cli import view  # rich loads only when a table is printed

    # The checks this command adds to the node's own verdict (a peer not
    # streaming yet within the node's grace, --max-lag): shown beside it, so
    # that "health ok" never stands alone above an exit status 2.
    own = len(status.get("health", {}).get("reasons", []))
    view.print_live_status(status, failed_checks=problems[own:])
    return problems
