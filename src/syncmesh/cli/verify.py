"""`syncmesh verify` and `syncmesh repair`: compare a file with a peer node, merge the difference.

The exchange is in syncmesh.node.verify; this module turns its reports
into a table for people (rich) or JSON, and its outcome into the exit
status: 0 identical (rows still changing at every re-read, writes in
flight, are listed but not judged), 1 different, 2 could not compare.

The peer is a node's URL (`--peer`, HTTP) or a site of a NATS fleet
(`--nats`/`--config` with `--site`, or `--all` for every site the fleet
knows: transport.nats_verify).  With `--all`, each site gets its report
and the exit status is the worst of them (2 before 1 before 0).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from syncmesh.cli.config import fleet_config, load_settings
from syncmesh.errors import SyncError
from syncmesh.node.config import FleetConfig, is_site_id
from syncmesh.node.lockfile import join_in_progress
from syncmesh.node.verify import (
    SETTLE_ROUNDS_DEFAULT,
    RepairReport,
    VerifyClient,
    VerifyReport,
    direct_call,
    repair,
    verify,
)
from syncmesh.store import Store
from syncmesh.store.open import open_store
from syncmesh.transport import HttpVerifyExchange, TlsFiles, client_context_for_site

DIFFERENT_EXIT = 1
FAILED_EXIT = 2
KEYS_SHOWN_MAX = 20
SETTLE_S_CLI = 1.0

T = TypeVar("T")


class VerifyFailed(click.ClickException):
    exit_code = FAILED_EXIT


def _options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("database", type=click.Path(dir_okay=False, path_type=Path)),
            click.option(
                "--peer",
                "url",
                metavar="[NAME=]URL",
                help="The peer node: http://HOST:PORT; with TLS NAME=https://HOST:PORT, NAME"
                " being the site its certificate must name (as --peer of serve).",
            ),
            click.option(
                "--nats",
                "nats_servers",
                multiple=True,
                metavar="URL",
                help="Reach the peer through this NATS fleet instead (nats://HOST:PORT; repeat"
                " for more servers), with --site or --all (docs/nats.md).",
            ),
            click.option(
                "--cluster",
                "nats_cluster",
                metavar="NAME",
                help="The fleet's name on NATS (as serve --cluster)  [default: default]",
            ),
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Take the fleet's settings ([transport.nats]: servers, cluster,"
                " credentials, TLS) from this node configuration file, as serve does.",
            ),
            click.option(
                "--site",
                "sites",
                multiple=True,
                metavar="SITE_ID",
                help="The fleet site to compare with, by its site id (repeat for more).",
            ),
            click.option(
                "--all",
                "all_sites",
                is_flag=True,
                help="Compare with every site the fleet knows, one report each.",
            ),
            click.option(
                "--table",
                "tables",
                multiple=True,
                metavar="TABLE",
                help="Only this table (repeat for more); default: every tracked table.",
            ),
            click.option(
                "--deep",
                is_flag=True,
                help="Hash the values too, read from both tables (a full scan on each side):"
                " finds rows changed behind syncmesh's back.",
            ),
            click.option(
                "--settle",
                type=click.FloatRange(0, 60),
                default=SETTLE_S_CLI,
                show_default=True,
                metavar="S",
                help="Re-read differing rows after this pause: writes in flight are not"
                " reported as divergence.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
            click.option("--tls-cert", metavar="FILE", help="This site's certificate (with TLS)."),
            click.option("--tls-key", metavar="FILE", help="This site's private key."),
            click.option("--tls-ca", metavar="FILE", help="The cluster CA certificate."),
        ]
    ):
        function = option(function)
    return function


@contextmanager
def _store(database: Path) -> Iterator[Store]:
    if refusal := join_in_progress(database):
        raise VerifyFailed(refusal)
    if not database.exists():
        raise VerifyFailed(f"{database} does not exist")
    try:
        store = open_store(database)
    except SyncError as exc:
        raise VerifyFailed(str(exc)) from exc
    try:
        yield store
    finally:
        store.close()


def _tls(cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
    given = [value for value in (cert, key, ca) if value]
    if not given:
        return None
    if len(given) != 3:
        raise VerifyFailed("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    return TlsFiles(cert=str(cert), key=str(key), ca=str(ca))


def _peer(value: str, tls: TlsFiles | None) -> tuple[str, ssl.SSLContext | None]:
    """(URL, TLS context) of --peer; with TLS the site name is required and checked."""
    name, separator, url = value.partition("=")
    if not separator or "://" in name:
        name, url = "", value
    if tls is None:
        return url, None
    if not name:
        raise VerifyFailed(
            f"with TLS, give the site the peer's certificate must name: --peer NAME={value}"
        )
    try:
        return url, client_context_for_site(tls, name)
    except SyncError as exc:
        raise VerifyFailed(str(exc)) from exc


def _run(work: Callable[[VerifyClient], Awaitable[T]], peer: str, tls: TlsFiles | None) -> T:
    url, context = _peer(peer, tls)

    async def run() -> T:
        async with VerifyClient(HttpVerifyExchange(url, ssl=context)) as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except SyncError as exc:
        raise VerifyFailed(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class _Target:
    """Whom to compare with: a node's URL, or sites of a fleet (`fleet` set)."""

    url: str = ""
    fleet: FleetConfig | None = None
    sites: tuple[str, ...] = ()  # (): every site the fleet knows (--all)


def _target(
    url: str | None,
    nats_servers: tuple[str, ...],
    nats_cluster: str | None,
    config_path: Path | None,
    sites: tuple[str, ...],
    all_sites: bool,
) -> _Target:
    """The peer the options name; VerifyFailed (exit 2) with one line for a bad combination."""
    by_fleet = bool(nats_servers or nats_cluster or config_path or sites or all_sites)
    if url and by_fleet:
        raise VerifyFailed(
            "give either --peer URL or a fleet site (--nats/--config with --site or --all)"
        )
    if url:
        return _Target(url=url)
    if not by_fleet:
        raise VerifyFailed(
            "give the peer: --peer URL, or --nats URL (or --config FILE with"
            " [transport.nats]) with --site SITE_ID or --all"
        )
    if bool(sites) == all_sites:
        raise VerifyFailed("with a fleet, give --site SITE_ID (one or more) or --all")
    if config_path is not None and not config_path.is_file():
        raise VerifyFailed(f"--config {config_path}: no such file")
    flags: dict[str, Any] = {
        "transport.nats.servers": list(nats_servers) or None,
        "transport.nats.cluster": nats_cluster,
    }
    try:
        fleet = fleet_config(load_settings(config_path, flags=flags))
    except SyncError as exc:
        raise VerifyFailed(str(exc)) from exc
    if fleet is None:
        where = f"{config_path} has no [transport.nats] servers" if config_path else "no fleet"
        raise VerifyFailed(f"{where}: give --nats URL (docs/nats.md)")
    for site in sites:
        if not is_site_id(site):
            raise VerifyFailed(f"--site {site!r} is not a site id (32 hex digits: syncmesh status)")
    return _Target(fleet=fleet, sites=tuple(dict.fromkeys(sites)))


def _fleet_run(
    work: Callable[[VerifyClient], Awaitable[T]], target: _Target, own_site: str
) -> list[tuple[str, T | str]]:
    """`work` against each site of the fleet: (site, result or the error's line) each."""
    fleet = target.fleet
    assert fleet is not None
    try:
        from syncmesh.node.fleet import STATE_MARKER, relayer_of
        from syncmesh.transport.nats import NatsAuth
        from syncmesh.transport.nats_verify import NatsVerifyConnection
    except ImportError as exc:
        raise VerifyFailed(
            f"verify over NATS needs nats-py: pip install 'syncmesh[nats]' ({exc})"
        ) from exc
    auth = NatsAuth(
        credentials=fleet.credentials,
        tls_ca=fleet.tls_ca,
        tls_cert=fleet.tls_cert,
        tls_key=fleet.tls_key,
    )

    async def run() -> list[tuple[str, T | str]]:
        async with NatsVerifyConnection(
            fleet.servers, fleet.cluster, own_site, auth=auth
        ) as connection:
            # A relay chain's token (`relay-<site>`) names no site that answers.
            known = tuple(
                site
                for site in await connection.fleet_sites(STATE_MARKER)
                if relayer_of(site) is None
            )
            for site in target.sites:
                if site not in known:
                    raise VerifyFailed(
                        f"site {site} is not a site of fleet {fleet.cluster!r}"
                        + (f" (it knows {', '.join(known)})" if known else " (it knows none)")
                    )
            results: list[tuple[str, T | str]] = []
            for site in target.sites or known:
                try:
                    async with VerifyClient(connection.exchange(site)) as client:
                        results.append((site, await work(client)))
                except SyncError as exc:
                    results.append((site, str(exc)))
            return results

    try:
        return asyncio.run(run())
    except SyncError as exc:
        raise VerifyFailed(str(exc)) from exc


def _fleet_label(target: _Target) -> str:
    assert target.fleet is not None
    return f"fleet {target.fleet.cluster!r} over NATS"


def _run_and_report(
    work: Callable[[VerifyClient], Awaitable[T]],
    target: _Target,
    own_site: str,
    tls: TlsFiles | None,
    as_json: bool,
    report: tuple[
        Callable[[T], dict[str, Any]], Callable[[T, bool, str], None], Callable[[T | str], int]
    ],
) -> None:
    """`work` against the peer at --peer, or each fleet site; print, and exit with the worst.

    `report`: the result as JSON, the result printed, the result's exit code.
    """
    as_dict, show, code = report
    if target.fleet is not None:
        found = _fleet_run(work, target, own_site)
        _print_fleet(found, _fleet_label(target), as_json, as_dict, show)
        _exit_status([code(result) for _, result in found])
        return
    result = _run(work, target.url, tls)
    show(result, as_json, target.url)
    _exit_status([code(result)])


def _exit_status(codes: list[int]) -> None:
    worst = max(codes, default=0)
    if worst:
        raise SystemExit(worst)


@click.command("verify")
@_options
def verify_command(
    database: Path,
    url: str | None,
    nats_servers: tuple[str, ...],
    nats_cluster: str | None,
    config_path: Path | None,
    sites: tuple[str, ...],
    all_sites: bool,
    tables: tuple[str, ...],
    deep: bool,
    settle: float,
    as_json: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> None:
    """Prove DATABASE and the node at --peer hold the same rows, at the cost of their differences.

    Compares hash trees of the tracked tables: one round trip when they
    agree, a few more to name the rows that differ.  Exit status 0 when
    identical, 1 when rows differ (listed), 2 when the comparison failed.
    Rows still changing at every re-read are listed, not judged.  With a
    fleet (--nats or --config, and --site or --all) the peer is a site of
    the fleet, reached over NATS request/reply; one report per site.
    """
    target = _target(url, nats_servers, nats_cluster, config_path, sites, all_sites)
    tls = _tls(tls_cert, tls_key, tls_ca)
    with _store(database) as store:

        def work(client: VerifyClient) -> Awaitable[VerifyReport]:
            return verify(
                store,
                direct_call,
                client,
                list(tables) or None,
                deep=deep,
                settle_s=settle,
                settle_rounds=SETTLE_ROUNDS_DEFAULT,
            )

        _run_and_report(
            work, target, store.site_id, tls, as_json, (_verify_json, _print_verify, _verify_code)
        )


def _verify_code(result: VerifyReport | str) -> int:
    if isinstance(result, str):
        return FAILED_EXIT
    return DIFFERENT_EXIT if result.diverged else 0


def _verify_json(report: VerifyReport) -> dict[str, Any]:
    return report.as_json()


def _print_verify(report: VerifyReport, as_json: bool, url: str) -> None:
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=_json_value))
    else:
        _print_report(Console(), report, url)


def _print_fleet(
    found: list[tuple[str, T | str]],
    label: str,
    as_json: bool,
    as_dict: Callable[[T], dict[str, Any]],
    show: Callable[[T, bool, str], None],
) -> None:
    """One report per fleet site (a failed one as its error line); JSON: one object by site."""
    if as_json:
        sites: dict[str, Any] = {
            site: {"error": result} if isinstance(result, str) else as_dict(result)
            for site, result in found
        }
        click.echo(json.dumps({"sites": sites}, indent=2, default=_json_value))
        return
    if not found:
        click.echo("the fleet knows no other site: nothing to compare with")
    for site, result in found:
        if isinstance(result, str):
            click.echo(f"Error: site {site}: {result}", err=True)
            continue
        show(result, False, label)


@click.command("repair")
@_options
def repair_command(
    database: Path,
    url: str | None,
    nats_servers: tuple[str, ...],
    nats_cluster: str | None,
    config_path: Path | None,
    sites: tuple[str, ...],
    all_sites: bool,
    tables: tuple[str, ...],
    deep: bool,
    settle: float,
    as_json: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> None:
    """Merge the rows that differ between DATABASE and the node at --peer, both ways.

    Runs verify, then exchanges exactly the differing rows through the
    normal merge (the newer write wins, on both sides), then verifies
    again.  With --deep, rows whose stamps agree but values differ (changed
    behind syncmesh's back) take this side's values.  Exit status 0 when
    the sites are identical afterwards.  With a fleet (--nats or --config,
    and --site or --all), each site in turn, over NATS request/reply.
    """
    target = _target(url, nats_servers, nats_cluster, config_path, sites, all_sites)
    tls = _tls(tls_cert, tls_key, tls_ca)
    with _store(database) as store:

        def work(client: VerifyClient) -> Awaitable[RepairReport]:
            return repair(
                store, direct_call, client, list(tables) or None, deep=deep, settle_s=settle
            )

        _run_and_report(
            work, target, store.site_id, tls, as_json, (_repair_json, _print_repair, _repair_code)
        )


def _repair_code(result: RepairReport | str) -> int:
    if isinstance(result, str):
        return FAILED_EXIT
    return DIFFERENT_EXIT if result.after.diverged else 0


def _print_repair(result: RepairReport, as_json: bool, url: str) -> None:
    if as_json:
        click.echo(json.dumps(_repair_json(result), indent=2, default=_json_value))
    else:
        console = Console()
        _print_report(console, result.before, url, title="before")
        console.print(
            f"repair: merged {result.fetched_rows} rows from the peer here, the peer merged"
            f" {result.pushed_rows} of ours"
            + (f", {result.restamped_rows} stamped anew here" if result.restamped_rows else "")
        )
        _print_report(console, result.after, url, title="after")


def _repair_json(result: RepairReport) -> dict[str, Any]:
    return {
        "before": result.before.as_json(),
        "fetched_rows": result.fetched_rows,
        "pushed_rows": result.pushed_rows,
        "restamped_rows": result.restamped_rows,
        "after": result.after.as_json(),
        "identical": result.after.identical,
    }


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _print_report(console: Console, report: VerifyReport, url: str, title: str = "") -> None:
    mode = "deep verify" if report.deep else "verify"
    heading = f"{mode} {title}".strip()
    figures = (
        f"{report.round_trips} round trips, {report.bytes_sent + report.bytes_received:,} bytes,"
        f" {report.seconds:.2f} s"
    )
    if report.corrected_digests:
        console.print(
            f"[yellow]{report.corrected_digests} stored digests here did not match their"
            " rows' stamps (the shadow table was edited); corrected[/]"
        )
    for name in report.not_shared:
        console.print(f"[yellow]table {name}: not tracked by the peer, or not shared with us[/]")
    for name, (here, there) in report.other_columns.items():
        console.print(
            f"[yellow]table {name}: not compared, its columns differ from the peer's"
            f" (here: {', '.join(here)}; there: {', '.join(there)}): a migration not run at"
            " both sites yet; verify again once it has[/]"
        )
    if report.identical:
        console.print(
            f"[green]{heading}: identical[/] to {url} (site {report.peer_site})"
            f" - {', '.join(report.tables)} - {figures}"
        )
        return
    if report.divergent_rows == 0 and report.unsettled_rows == 0:
        console.print(
            f"[yellow]{heading}: no rows differ[/] from {url} (site {report.peer_site})"
            f" in the tables compared - {figures}"
        )
    elif report.divergent_rows == 0:
        console.print(
            f"[yellow]{heading}: no rows differ[/] from {url} (site {report.peer_site}),"
            f" {report.unsettled_rows} still changing at every re-read (writes in flight,"
            f" not judged) - {figures}"
        )
    else:
        console.print(
            f"[red]{heading}: {report.divergent_rows} rows differ[/] from {url}"
            f" (site {report.peer_site}) - {figures}"
        )
    if not report.differences:
        return
    table = Table("table", "differ", "only there", "only here", "still changing", "keys")
    for name, found in report.differences.items():
        shown = [*found.divergent, *found.unsettled][:KEYS_SHOWN_MAX]
        more = len(found.divergent) + len(found.unsettled) - len(shown)
        keys = ", ".join(_key_text(key) for key in shown) + (f" (+{more})" if more > 0 else "")
        table.add_row(
            name,
            str(len(found.divergent)),
            str(len(found.missing_here)),
            str(len(found.missing_there)),
            str(len(found.unsettled)),
            keys,
        )
    console.print(table)


def _key_text(key: tuple[object, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)
