"""`syncmesh verify` and `syncmesh repair`: compare a file with a peer node, merge the difference.

The exchange is in syncmesh.node.verify; this module turns its reports
into a table for people (rich) or JSON, and its outcome into the exit
status: 0 identical (rows still changing at every re-read, writes in
flight, are listed but not judged), 1 different, 2 could not compare.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from syncmesh.errors import SyncError
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
                required=True,
                metavar="[NAME=]URL",
                help="The peer node: http://HOST:PORT; with TLS NAME=https://HOST:PORT, NAME"
                " being the site its certificate must name (as --peer of serve).",
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


@click.command("verify")
@_options
def verify_command(
    database: Path,
    url: str,
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
    Rows still changing at every re-read are listed, not judged.
    """
    tls = _tls(tls_cert, tls_key, tls_ca)
    with _store(database) as store:
        report = _run(
            lambda client: verify(
                store,
                direct_call,
                client,
                list(tables) or None,
                deep=deep,
                settle_s=settle,
                settle_rounds=SETTLE_ROUNDS_DEFAULT,
            ),
            url,
            tls,
        )
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=_json_value))
    else:
        _print_report(Console(), report, url)
    if report.diverged:
        raise SystemExit(DIFFERENT_EXIT)


@click.command("repair")
@_options
def repair_command(
    database: Path,
    url: str,
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
    the sites are identical afterwards.
    """
    tls = _tls(tls_cert, tls_key, tls_ca)
    with _store(database) as store:
        result = _run(
            lambda client: repair(
                store, direct_call, client, list(tables) or None, deep=deep, settle_s=settle
            ),
            url,
            tls,
        )
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
    if result.after.diverged:
        raise SystemExit(DIFFERENT_EXIT)


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
    if report.identical:
        console.print(
            f"[green]{heading}: identical[/] to {url} (site {report.peer_site})"
            f" - {', '.join(report.tables)} - {figures}"
        )
        return
    if report.divergent_rows == 0:
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
