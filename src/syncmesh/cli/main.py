"""`syncmesh` commands.  Each one maps library errors to a clear message and exit 1.

syncmesh init app.db
syncmesh track app.db items orders
syncmesh untrack app.db orders
syncmesh serve app.db --listen 127.0.0.1:7401 --peer http://127.0.0.1:7402
syncmesh join new.db --from http://127.0.0.1:7401
syncmesh status app.db [--json]
syncmesh conflicts app.db [--table T] [--since 2h] [--limit N] [--json]
syncmesh demo
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from syncmesh import __version__
from syncmesh.api import running_node
from syncmesh.api.conflicts import LIMIT_DEFAULT, LIMIT_MAX, since_ms
from syncmesh.cli import conflicts as conflict_report
from syncmesh.cli.chaos import chaos
from syncmesh.cli.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    NAMED_PEERS,
    file_permission_warnings,
    load_settings,
    node_config,
    render,
    tracked_table_problems,
)
from syncmesh.cli.status import UNHEALTHY_EXIT, fetch, live_report, status_of_file
from syncmesh.cli.tls import tls
from syncmesh.cli.verify import repair_command, verify_command
from syncmesh.clock import SystemClock
from syncmesh.errors import SyncError
from syncmesh.node import NodeConfig
from syncmesh.node.config import is_loopback, is_pattern
from syncmesh.node.lockfile import (
    AlreadyServed,
    LockHolder,
    ServeLock,
    join_in_progress,
    running_holder,
)
from syncmesh.node.patterns import track_matches
from syncmesh.store import Store
from syncmesh.store.open import open_store

GC_YOUNG_OBJECTS = 50_000
# How often a serving node checks that its lock file is still there (see ServeLock.republish).
LOCK_FILE_CHECK_S = 2.0
DATABASE = click.argument("database", type=click.Path(dir_okay=False, path_type=Path))


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    try:
        yield
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _open_store(database: Path, *, must_exist: bool = True) -> Iterator[Store]:
    if refusal := join_in_progress(database):
        raise click.ClickException(refusal)
    if must_exist and not database.exists():
        raise click.ClickException(f"{database} does not exist")
    with _errors_as_messages():
        store = open_store(database)
        try:
            yield store
        finally:
            store.close()


@click.group()
@click.version_option(__version__, prog_name="syncmesh")
def cli() -> None:
    """Keep SQLite tables in sync between servers, each writing locally.

    Start with `syncmesh demo`, or: init a database file, track its tables,
    and serve it with the addresses of its peers.  Docs: docs/index.md.
    """


@cli.command()
@DATABASE
@click.option(
    "--new-site-id",
    is_flag=True,
    help="Give the file a new site id (for a copy of another node's file).",
)
def init(database: Path, new_site_id: bool) -> None:
    """Create syncmesh's bookkeeping tables and this node's site id (idempotent).

    The file is created if it does not exist.  Run it again safely: the
    site id stays the same unless --new-site-id is given.
    """
    with _open_store(database, must_exist=False) as store, _errors_as_messages():
        site_id = store.init()
        if new_site_id:
            site_id = store.new_site_id()
    click.echo(f"{database}: site id {site_id}")


@cli.command()
@DATABASE
@click.argument("tables", nargs=-1, required=True)
@click.option(
    "--allow-integer-keys",
    is_flag=True,
    help="Track TABLES even if SQLite allocates their keys (INTEGER PRIMARY KEY): only for"
    " tables that one site alone writes, or whose ids the application allocates so that"
    " sites never collide (per-site ranges).  Kept with the table (docs/keys.md).",
)
def track(database: Path, tables: tuple[str, ...], allow_integer_keys: bool) -> None:
    """Start syncing TABLES of DATABASE; rows that already exist are included.

    Each table needs a PRIMARY KEY; prefer random TEXT or BLOB keys
    (docs/keys.md).  A key that SQLite allocates at each site (INTEGER
    PRIMARY KEY, with or without AUTOINCREMENT) is refused unless
    --allow-integer-keys says that sites cannot collide on it.  Warnings
    name the other risks of the schema: integer keys the application
    allocates, UNIQUE indexes and foreign keys.  On a terminal, a progress
    bar per table shows its existing rows joining the feed.
    """
    from syncmesh.cli.progress import backfill_progress  # rich loads only when used

    with _open_store(database) as store, _errors_as_messages(), backfill_progress() as progress:
        store.init()
        allowed = tables if allow_integer_keys else ()
        try:
            warnings = store.track(list(tables), progress, allow_integer_keys=allowed)
        except SyncError as exc:
            if len(set(tables)) > 1:  # all or nothing: say which
                raise click.ClickException(f"{exc} (no table was tracked)") from exc
            raise
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{database}: tracking {', '.join(spec.name for spec in store.specs())}")
    _tell_about_serving_node(database)


def _tell_about_serving_node(database: Path) -> None:
    """After `track` or `untrack`: say that a node serving the file follows by itself."""
    holder = running_holder(database)
    if holder is not None:
        click.echo(
            f"the node serving {database} (pid {holder.pid}) reloads its tables and restarts"
            " its sessions by itself"
        )


@cli.command()
@DATABASE
@click.argument("tables", nargs=-1, required=True)
def untrack(database: Path, tables: tuple[str, ...]) -> None:
    """Stop syncing TABLES of DATABASE; their rows stay as they are.

    Drops syncmesh's capture triggers, shadow and log tables of each; a
    table that is not tracked is an error and nothing changes.  A node
    serving the file notices, reloads its tables and restarts its
    sessions.  A table that a [tables] track pattern matches is tracked
    again by the node: narrow the pattern first.
    """
    with _open_store(database) as store, _errors_as_messages():
        store.untrack(list(tables))
        remaining = ", ".join(spec.name for spec in store.specs()) or "no tables"
        click.echo(f"{database}: stopped tracking {', '.join(tables)}; tracking {remaining}")
    _tell_about_serving_node(database)


@cli.command()
@click.argument("database", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A syncmesh.toml with the node's settings (docs/config.md).",
)
@click.option(
    "--listen",
    help="HOST:PORT to serve the sync protocol and status API on (port 0: any)."
    "  [default: 127.0.0.1:7401]",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="[NAME=]URL",
    help="A peer to dial, as http://HOST:PORT, or NAME=https://HOST:PORT with TLS (NAME:"
    " the site in its certificate); repeat for several.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="This site's certificate (PEM, from `syncmesh tls issue`).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True),
    help="This site's private key (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True),
    help="The cluster CA's certificate (PEM): peers must present one it signed.",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    default=None,
    help="Allow plain HTTP on a non-loopback --listen address (a trusted network only).",
)
@click.option(
    "--max-clock-drift",
    "drift_s",
    type=click.FloatRange(min=0.001),
    help="Refuse stamps further than this (seconds) ahead.  [default: 60]",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    help="Rows per batch sent to a peer.  [default: 2000]",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    help="Least severe log level written to stderr.  [default: info]",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="plain text, or one JSON object per line.  [default: plain]",
)
@click.option(
    "--create",
    is_flag=True,
    help="Create DATABASE if it does not exist (without it, a missing file is refused:"
    " a typo would serve an empty database).",
)
@click.option(
    "--nats",
    "nats_servers",
    multiple=True,
    metavar="URL",
    help="Sync through this NATS JetStream cluster as well, as nats://HOST:PORT; repeat for"
    " several servers of one cluster (docs/nats.md; needs syncmesh[nats]).",
)
@click.option(
    "--cluster",
    "nats_cluster",
    help="The fleet's name on NATS: the stream SYNCMESH_<NAME>, subjects syncmesh.<NAME>.*"
    "  [default: default]",
)
def serve(
    database: Path | None,
    config_path: Path | None,
    listen: str | None,
    peers: tuple[str, ...],
    drift_s: float | None,
    batch_rows: int | None,
    log_level: str | None,
    log_format: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    insecure_no_tls: bool | None,
    create: bool,
    nats_servers: tuple[str, ...],
    nats_cluster: str | None,
) -> None:
    """Run a node for DATABASE until SIGINT or SIGTERM.

    Serves the sync protocol on --listen and dials every --peer; peers that
    dial in are synced too.  Initialises the file if needed, and tracks the
    tables named in the config's [tables] track.  Settings come from
    --config, then SYNCMESH_* environment variables, then these flags.
    Status: GET http://LISTEN/v1/status.

    Off loopback the node needs TLS (--tls-cert, --tls-key, --tls-ca;
    docs/security.md) or --insecure-no-tls.

    With --nats the node also syncs through a NATS JetStream fleet stream:
    it publishes its own writes and applies every other site's
    (docs/nats.md).  WebSocket peers keep working alongside.

    DATABASE must exist (`syncmesh init` creates it) unless --create is
    given.  One node per file: serve holds a lock on DATABASE itself for
    its whole life, so a second serve refuses, naming the first (deleting
    any file does not fool it).  A lock file next to it
    (DATABASE.serve.lock) holds the pid, host and API address, through which
    `syncmesh status DATABASE` finds the node.
    """
    urls, named = _split_peers(peers)
    flags: dict[str, Any] = {
        "node.database": None if database is None else str(database),
        "node.listen": listen,
        "node.insecure_no_tls": insecure_no_tls,
        "tls.cert": tls_cert,
        "tls.key": tls_key,
        "tls.ca": tls_ca,
        "peers.urls": urls or None,
        NAMED_PEERS: named,
        "sync.max_clock_drift_s": drift_s,
        "limits.batch_rows_max": batch_rows,
        "logging.level": log_level,
        "logging.format": log_format,
        "transport.nats.servers": list(nats_servers) or None,
        "transport.nats.cluster": nats_cluster,
    }
    with _errors_as_messages():
        settings = load_settings(config_path, flags=flags)
        config = node_config(settings)
    _configure_logging(settings["logging.level"], settings["logging.format"])
    for warning in file_permission_warnings(settings, config_path):
        logging.getLogger("syncmesh.cli").warning("%s", warning)
    if not create and not Path(config.database_path).exists():
        raise click.ClickException(
            f"{config.database_path} does not exist; create it with `syncmesh init"
            f" {config.database_path}` (or serve --create), or check the name"
        )
    lock = ServeLock(config.database_path)
    with _errors_as_messages():
        lock.acquire()
    try:
        _serve_locked(config, settings, lock)
    finally:
        lock.release()


def _serve_locked(config: NodeConfig, settings: dict[str, Any], lock: ServeLock) -> None:
    """`serve` once the file's lock is ours: track the configured tables, run the node.

    Named tables must exist and be trackable (or serve stops with the
    reason); a table that a pattern matches and that cannot be tracked is
    logged and skipped (`node.patterns`), and the node matches the patterns
    again whenever the database's tables change.
    """
    with _errors_as_messages():
        store = open_store(config.database_path)
        try:
            store.init()
            # Said here once, at start (opening the store says nothing, so
            # that `status` and other read-only commands do not repeat it);
            # tables tracked below are warned about by `track` itself.
            for warning in store.tracked_table_warnings():
                logging.getLogger("syncmesh.cli").warning("%s", warning)
            if settings["tables.track"]:
                named = [name for name in settings["tables.track"] if not is_pattern(name)]
                for warning in (
                    store.track(
                        named,
                        _log_track_progress,
                        allow_integer_keys=settings["tables.allow_integer_keys"],
                    )
                    if named
                    else []
                ):
                    logging.getLogger("syncmesh.cli").warning("%s", warning)
                track_matches(
                    store,
                    config.track_patterns,
                    _log_track_progress,
                    allow_integer_keys=config.allow_integer_keys,
                )
        finally:
            store.close()
        listening: list[bool] = []
        try:
            asyncio.run(_serve(config, lock, listening))
        except OSError as exc:
            if listening:
                # Not the bind: something failed while the node ran or shut down.
                raise click.ClickException(f"the node stopped on an error: {exc}") from exc
            raise click.ClickException(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc}"
            ) from exc


def _log_track_progress(table: str, done: int, total: int) -> None:
    """Progress of a backfill in the log: one line per step of existing rows."""
    if done == total:
        logging.getLogger("syncmesh.cli").info(
            "track %s: %d existing rows joined the feed", table, done
        )
    elif done:
        logging.getLogger("syncmesh.cli").info(
            "track %s: %d of %d existing rows", table, done, total
        )


def _split_peers(values: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """`--peer` values: unnamed URLs, and NAME=URL pairs by name."""
    urls: list[str] = []
    named: dict[str, str] = {}
    for value in values:
        name, equals, url = value.partition("=")
        if equals and "://" not in name:
            named[name] = url
        else:
            urls.append(value)
    return urls, named


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the error, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


@cli.group()
def config() -> None:
    """Check a syncmesh.toml before a node uses it (docs/config.md lists every key)."""


@config.command("check")
@click.argument("config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def config_check(config_file: Path) -> None:
    """Validate CONFIG_FILE with the environment's SYNCMESH_* overrides; print the result.

    Exits 1 with the offending key and the reason when a setting is wrong,
    or when a table of [tables] track is missing from the database or has
    no primary key (the database is opened read-only).
    """
    with _errors_as_messages():
        settings = load_settings(config_file)
        node_config(settings)
    problems = tracked_table_problems(settings)
    if problems:
        for problem in problems:
            click.echo(f"Error: {problem}", err=True)
        sys.exit(1)
    click.echo(render(settings))
    click.echo(f"# {config_file}: ok", err=True)


async def _serve(config: NodeConfig, lock: ServeLock, listening: list[bool]) -> None:
    """Run the node until SIGINT or SIGTERM; `listening` gets an entry once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_node(config) as node:
        listening.append(True)
        # The process is ours: batches allocate many short-lived objects and no
        # cycles to speak of, so collect young objects rarely, and never scan
        # what start-up allocated (bench/: about a third off decode and read).
        gc.freeze()
        gc.set_threshold(GC_YOUNG_OBJECTS, 50, 100)
        api_tls = config.tls is not None and (
            config.api_listen_host is None or not is_loopback(config.api_host())
        )
        lock.publish(node.listen, node.api_listen, "https" if api_tls else "http")
        click.echo(f"syncmesh: site {node.store.site_id} listening on {node.listen}", err=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOCK_FILE_CHECK_S)
            if lock.republish():  # deleted: `status FILE` finds the node through it
                logging.getLogger("syncmesh.cli").warning(
                    "%s was removed while this node serves the file; written again (the lock"
                    " itself is on the database and held all along)",
                    lock.path,
                )
        click.echo("syncmesh: shutting down", err=True)


@cli.command()
@click.argument("database", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", metavar="URL", help="A running node (http://HOST:PORT): its live view.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--max-lag",
    "max_lag_s",
    type=click.FloatRange(min=0),
    help="Exit 2 when a peer is more than this many seconds behind.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="With --url: a progress bar per peer (rate, time left) until the node has caught up"
    " with every peer, as after a bootstrap or a partition; then the status.",
)
@click.option(
    "--watch-timeout",
    "watch_timeout_s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds --watch waits at most; exit 2 if not caught up by then.",
)
def status(
    database: Path | None,
    url: str | None,
    as_json: bool,
    max_lag_s: float | None,
    watch: bool,
    watch_timeout_s: float,
) -> None:
    """Show a node: its live view if one runs on DATABASE, else the file's bookkeeping.

    With DATABASE, finds the node serving it through its lock file
    (DATABASE.serve.lock) and shows its live view: each session's state,
    lag, last error and the node's health.  If no node runs, it says so and
    shows what the file knows: site id, local seq, tracked tables and each
    peer's cursor as of that peer's last batch.  --url URL shows the live
    view of the node at URL.  Exit status 2 (for health checks) when the
    node is unhealthy or a peer is not streaming (live view) or, with
    --max-lag, further behind than allowed; the reasons go to stderr.
    """
    if (database is None) == (url is None):
        raise click.UsageError("give either DATABASE or --url")
    if watch and url is None:
        raise click.UsageError("--watch needs --url (a running node)")
    if watch and url is not None:
        from syncmesh.cli.progress import watch_catchup

        if not watch_catchup(lambda: fetch(url), timeout_s=watch_timeout_s):
            click.echo(f"unhealthy: not caught up after {watch_timeout_s:g} s", err=True)
            sys.exit(UNHEALTHY_EXIT)
    if url is not None:
        problems = live_report(fetch(url), as_json=as_json, max_lag_s=max_lag_s)
    else:
        assert database is not None
        if not database.exists():
            raise click.ClickException(f"{database} does not exist")
        problems = status_of_file(database, as_json=as_json, max_lag_s=max_lag_s)
    for problem in problems:
        click.echo(f"unhealthy: {problem}", err=True)
    if problems:
        sys.exit(UNHEALTHY_EXIT)


@cli.command()
@DATABASE
@click.option("--table", metavar="TABLE", help="Only conflicts in this table.")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only conflicts resolved since WHEN: a duration back from now (15m, 2h, 7d)"
    " or an ISO 8601 time (2024-05-01T12:00:00Z; UTC without an offset).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, LIMIT_MAX),
    default=LIMIT_DEFAULT,
    show_default=True,
    help="Show at most this many, the newest.",
)
@click.option("--json", "as_json", is_flag=True, help="The same document as GET /v1/conflicts.")
def conflicts(
    database: Path, table: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List the conflicts DATABASE's node resolved: two concurrent writes to one cell.

    Newest first: when this node resolved it, the table, key and column,
    the value that won (kept on every node) and the one that lost, each
    with the site that wrote it.  A write that replaced a value its writer
    had seen is not a conflict.  Reads the file, node running or not.
    """
    since_at = None
    if since is not None:
        try:
            since_at = since_ms(since, SystemClock().now_ms())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from exc
    with _open_store(database) as store, _errors_as_messages():
        records = store.conflicts(table=table, since_ms=since_at, limit=limit)
    conflict_report.report(records, as_json=as_json)


@cli.group()
def quarantine() -> None:
    """Rows from peers that could not be applied here, and what to do with them.

    A row is quarantined when a constraint refuses it (a secondary UNIQUE
    index, a CHECK) or when its stamp lies beyond --max-clock-drift.  The
    node retries them every few seconds; these commands let an operator
    look, retry now, or drop them for good.
    """


@quarantine.command("list")
@DATABASE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine_list(database: Path, as_json: bool) -> None:
    """List DATABASE's quarantined rows: id, table, key, origin and reason."""
    with _open_store(database) as store, _errors_as_messages():
        entries = store.quarantine()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no quarantined rows")
    for entry in entries:
        click.echo(
            f"{entry['id']:>6}  {entry['table']}  ({entry['pk']})  from {entry['origin']}:"
            f" {entry['reason']}"
        )


@quarantine.command("retry")
@DATABASE
def quarantine_retry(database: Path) -> None:
    """Merge DATABASE's quarantined rows again now; prints how many went through.

    Safe while a node serves the file: the retry is one transaction through
    the normal merge, so a row that lost meanwhile changes nothing.
    """
    with _open_store(database) as store, _errors_as_messages():
        resolved = store.retry_quarantine()
        left = len(store.quarantine())
    click.echo(f"{resolved} rows applied, {left} still quarantined")


@quarantine.command("drop")
@DATABASE
@click.argument("ids", nargs=-1, required=True, type=int)
def quarantine_drop(database: Path, ids: tuple[int, ...]) -> None:
    """Delete the quarantined rows IDS of DATABASE for good (see `quarantine list`).

    The rows' changes are then lost on this node unless a newer write to
    the same cells arrives; the other nodes keep their own state.
    """
    with _open_store(database) as store, _errors_as_messages():
        held = {entry["id"] for entry in store.quarantine()}
        unknown = [str(row_id) for row_id in ids if row_id not in held]
        # An id that is not quarantined (a typo, one dropped or retried
        # already) is refused, and then nothing is dropped: "0 rows dropped"
        # with exit 0 read as done (new-user report).
        dropped = 0 if unknown else store.drop_quarantined(list(ids))
    if unknown:
        raise click.ClickException(
            f"no quarantined row with id {', '.join(unknown)} (`syncmesh quarantine list`"
            " shows them); nothing was dropped"
        )
    click.echo(f"{dropped} rows dropped")


@cli.command()
@DATABASE
@click.argument("site")
def forget(database: Path, site: str) -> None:
    """Take the decommissioned site SITE out of the cluster's membership.

    Deleted rows' tombstones are collected once every member holds the
    delete; a site that is gone for good holds that back for ever.  After
    `forget`, this node leaves SITE out, and the node serving DATABASE tells
    its peers at its next round (gossip), so every node moves on.  A
    forgotten site that comes back is refused, with the fix: a new identity
    on an empty file (docs/operations.md, "Tombstones and membership").
    """
    with _open_store(database) as store, _errors_as_messages():
        changed = store.forget_site(site)
    if changed:
        click.echo(f"{database}: site {site} forgotten; peers hear of it by gossip")
    else:
        click.echo(f"{database}: site {site} was forgotten already")


@cli.command()
@DATABASE
@click.option(
    "--from",
    "source",
    required=True,
    metavar="[NAME=]URL",
    help="The peer to copy, as http://HOST:PORT, or NAME=https://HOST:PORT with TLS (NAME: the"
    " site in its certificate).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="This site's certificate (PEM); the peer must have it as a peer.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Its key (PEM).")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False, exists=True), help="The cluster CA (PEM)."
)
def join(
    database: Path,
    source: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> None:
    """Make DATABASE a new member from a consistent snapshot of the peer at --from.

    Much faster than syncing an empty file from the peer's feed: the peer
    copies its file at one point of its feed (its tracked tables that this
    site may receive, their bookkeeping, its vector and membership), the
    copy is checked and gets a new site id, and `syncmesh serve DATABASE
    --peer URL` then syncs only what was written since.  The way back for a
    site that was refused (forgotten, or asleep past the GC horizon): a file
    already at DATABASE is moved aside to DATABASE.before-join-TIME, never
    merged, and its own writes that the cluster never got are listed in its
    table _syncmesh_unsynced (docs/operations.md, "Joining from a snapshot").
    """
    from syncmesh.cli.progress import snapshot_progress
    from syncmesh.node.bootstrap import join as join_from_snapshot
    from syncmesh.transport import TlsFiles, WebSocketConnector

    name, equals, url = source.partition("=")
    site_name = name if equals and "://" not in name else None
    url = url if site_name is not None else source
    tls_flags = (tls_cert, tls_key, tls_ca)
    if any(tls_flags) and not all(tls_flags):
        raise click.UsageError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    tls = (
        None if tls_cert is None else TlsFiles(cert=str(tls_cert), key=str(tls_key), ca=str(tls_ca))
    )
    defaults = NodeConfig(database_path=str(database))
    connector = WebSocketConnector(
        heartbeat_s=defaults.heartbeat_s,
        frame_bytes_max=defaults.frame_bytes_max,
        connect_timeout_s=defaults.connect_timeout_s,
        tls=tls,
    )
    # The serve lock, held until the new file is in place: a node serving
    # the file would go on writing into the file moved aside, and a `serve`
    # started meanwhile would open the old file or a half-installed one.
    lock = ServeLock(database, command="join")
    existed = database.exists()
    try:
        lock.acquire()  # creates the file if there is none: the lock is a flock on it
    except AlreadyServed as exc:
        raise click.ClickException(_join_refusal(database, exc.holder)) from exc
    joined = False
    try:
        with _errors_as_messages(), snapshot_progress() as progress:
            report = asyncio.run(
                join_from_snapshot(
                    database, connector.snapshot_source(url, site_name), progress=progress
                )
            )
        joined = True
    finally:
        if not existed and not joined:
            with contextlib.suppress(OSError):
                if database.stat().st_size == 0:
                    database.unlink()  # the lock's empty file: a failed join leaves none
        lock.release()
    click.echo(
        f"{database}: joined as site {report.site_id} from a snapshot of site"
        f" {report.source_site} (tables: {', '.join(report.tables) or 'none'});"
        f" serve it with --peer {url}"
    )
    if report.side_file:
        unsynced = sum(report.unsynced.values())
        click.echo(
            f"the file that was there is kept at {report.side_file}; {unsynced} of its own"
            " writes never reached the cluster (listed in its table _syncmesh_unsynced;"
            " nothing of it was merged)"
        )


def _join_refusal(database: Path, holder: LockHolder | None) -> str:
    """Why `join` cannot replace `database` now: who holds its serve lock."""
    if holder is None:
        return (
            f"{database} is held by another process (it has the serve lock on the file):"
            " stop that node before joining; join replaces the file"
        )
    if holder.command == "join":
        return f"another `syncmesh join` ({holder.named()}) is replacing {database}"
    where = f", API {holder.api_url}" if holder.api_url else ""
    return (
        f"{database} is served by a running node ({holder.named()}{where}): stop that"
        " `syncmesh serve` before joining; join replaces the file"
    )


@cli.command()
@click.option(
    "--nodes", type=click.IntRange(2, 9), default=3, show_default=True, help="How many nodes."
)
@click.option(
    "--rows",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Rows each node inserts.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory with the files.")
def demo(nodes: int, rows: int, keep: bool) -> None:
    """Start NODES local nodes in a temporary directory and show them converge.

    Each node writes rows of its own, all of them update one shared row at
    once (a conflict), one deletes a row; the demo waits until every node
    holds the same table and prints it.
    """
    from syncmesh.cli.demo import run_demo

    with _errors_as_messages():
        code = asyncio.run(run_demo(nodes, rows, keep=keep))
    sys.exit(code)


cli.add_command(chaos)
cli.add_command(tls)
cli.add_command(verify_command)
cli.add_command(repair_command)
