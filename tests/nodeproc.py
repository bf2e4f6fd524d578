"""Real `syncmesh serve` processes on 127.0.0.1, in the style of rqlite's e2e helpers.

`NodeProcess` runs one node as a child process (`python -m syncmesh serve`)
with its output in a log file, and knows how to wait for it, read its status
API, stop it cleanly (SIGTERM, exit code 0), kill it (SIGKILL) and pause it
(SIGSTOP/SIGCONT).  `Cluster` starts nodes and kills whatever is left at
teardown, so no test leaves a process behind even when it fails.

The database helpers go through the real command line (`syncmesh init`,
`syncmesh track`) and read files with fresh read-only connections, so they
observe exactly what another program would.  Every wait is a deadline loop
on a state, never a fixed sleep that decides pass or fail.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from syncmesh.chaos.natsservers import free_port as free_port  # one picker for all
from syncmesh.model import SqlValue
from syncmesh.schema import quote_identifier

TypedRow = tuple[tuple[SqlValue, str], ...]

HOST = "127.0.0.1"
PAUSE_ATTEMPTS_S = 10.0  # pause_outside_a_write tries again this long
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40
HTTP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 60.0
# The engine logs these only for bugs: `log.exception` on unexpected errors.
INTERNAL_ERROR_MARKERS = ("Traceback (most recent call last)", "failed unexpectedly")

# Every process started here, so that even a crashed test run leaves none behind.
_LIVE: set[subprocess.Popen[bytes]] = set()


def _kill_live() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


atexit.register(_kill_live)


def _deadline_loop(timeout_s: float, what: str, check: Callable[[], bool]) -> None:
    """Call `check` every 50 ms until it is true; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


class NodeProcess:
    """One `syncmesh serve` child process on 127.0.0.1:`port`.

    The port is chosen once, so a restarted node is found at the same
    address by the peers that dial it.  Output of every run is appended to
    one log file, each run headed by a marker line.
    """

    def __init__(
        self,
        name: str,
        db: Path,
        log_path: Path,
        *,
        peers: Sequence[str] = (),
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        """`ssl_context`: the node serves TLS, and the harness connects with this context
        (a client certificate of the cluster); `token`: the API's bearer token."""
        self.name = name
        self.db = db
        self.log_path = log_path
        self.peers = tuple(peers)
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.ssl_context = ssl_context
        self.token = token
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def open_url(self, path: str, timeout_s: float) -> Any:
        """urlopen(URL + path) with the node's TLS context and token, if any."""
        request = urllib.request.Request(f"{self.url}{path}")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        return urllib.request.urlopen(request, timeout=timeout_s, context=self.ssl_context)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"node {self.name} was never started"
        return self.process.pid

    def command(self) -> list[str]:
        peer_args = [arg for url in self.peers for arg in ("--peer", url)]
        return [
            sys.executable,
            "-m",
            "syncmesh",
            "serve",
            str(self.db),
            "--listen",
            f"{HOST}:{self.port}",
            *peer_args,
            "--log-level",
            "info",
            *self.extra_args,
        ]

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> NodeProcess:
        assert not self.is_running(), f"node {self.name} is already running"
        self._close_log()
        self.runs += 1
        self._log_file = self.log_path.open("ab")
        self._log_file.write(
            f"==== harness: run {self.runs} of node {self.name}: {self.command()}\n".encode()
        )
        self._log_file.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **self.env)
        # A new session: a Ctrl-C meant for pytest does not reach the nodes.
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        _LIVE.add(self.process)
        return self

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until_ready(self, timeout_s: float = 20.0) -> NodeProcess:
        """Poll GET /v1/health until it answers (200, or 503: up but unwell); else the log tail."""
        deadline = time.monotonic() + timeout_s
        last_error = "no attempt"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"node {self.name} exited with code {self.process.returncode} before it"
                    f" was ready\n{self.log_tail()}"
                )
            try:
                with self.open_url("/v1/health", timeout_s=1.0) as answer:
                    if answer.status == 200:
                        return self
                    last_error = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                if exc.code == 503:  # it runs, and names what is wrong (syncmesh.node.health)
                    return self
                last_error = str(exc)
            except (OSError, urllib.error.URLError) as exc:
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"node {self.name} was not ready at {self.url} after {timeout_s} s"
                    f" (last error: {last_error})\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def health(self, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
        """GET /v1/health: the HTTP status (200 or 503) and the document (ok, reasons)."""
        try:
            with self.open_url("/v1/health", timeout_s) as answer:
                return int(answer.status), dict(json.loads(answer.read()))
        except urllib.error.HTTPError as exc:
            return int(exc.code), dict(json.loads(exc.read()))

    def status(self, timeout_s: float = HTTP_TIMEOUT_S) -> dict[str, Any]:
        """GET /v1/status as a dict (NodeStatistics)."""
        with self.open_url("/v1/status", timeout_s) as answer:
            assert answer.status == 200, f"/v1/status of {self.name} answered {answer.status}"
            decoded = json.loads(answer.read())
        assert isinstance(decoded, dict)
        return decoded

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the node to shut down (SIGTERM by default) and assert a clean exit (code 0)."""
        process = self.process
        assert process is not None, f"node {self.name} was never started"
        assert process.poll() is None, (
            f"node {self.name} had already exited with code {process.returncode}\n{self.log_tail()}"
        )
        process.send_signal(sig)
        os.kill(process.pid, signal.SIGCONT)  # a paused node handles the signal too
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # SIGABRT makes faulthandler (PYTHONFAULTHANDLER=1) write every thread's
            # stack to the log: the failure message then shows where it hung.
            process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            raise AssertionError(
                f"node {self.name} did not exit within {timeout_s} s of {sig.name}\n"
                f"{self.log_tail()}"
            ) from None
        finally:
            _LIVE.discard(process)
            self._close_log()
        assert code == 0, (
            f"node {self.name} exited with code {code} on {sig.name}, expected a clean 0\n"
            f"{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, a power cut for the process)."""
        process = self.process
        assert process is not None, f"node {self.name} was never started"
        assert process.poll() is None, f"node {self.name} is not running"
        process.kill()
        process.wait(timeout=10)
        _LIVE.discard(process)
        self._close_log()

    def pause(self) -> None:
        assert self.is_running(), f"node {self.name} is not running"
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.is_running(), f"node {self.name} is not running"
        os.kill(self.pid, signal.SIGCONT)

    def pause_outside_a_write(self) -> None:
        """SIGSTOP at a moment the node holds no write lock on its file.

        A node stopped inside one of its own write transactions (a capture, a
        collection round) keeps every other writer of the file out until it
        resumes: SQLite's rule, not the node's.  A test that writes the paused
        node's file (an application, a migration) must not meet that, so the
        node is resumed and paused again until a write can begin (bounded).
        """
        deadline = time.monotonic() + PAUSE_ATTEMPTS_S
        while True:
            self.pause()
            try:
                with contextlib.closing(sqlite3.connect(self.db, timeout=0.2)) as probe:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:
                self.resume()
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f"node {self.name} held its file's write lock at every pause"
                        f" for {PAUSE_ATTEMPTS_S} s"
                    ) from None
                time.sleep(0.03)

    def cleanup(self) -> None:
        """Kill the process if it is still there (teardown); never raises."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if process is not None:
            _LIVE.discard(process)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- logs -----------------------------------------------------------------------

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} log lines of node {self.name} ({self.log_path}):\n" + (
            "\n".join(tail)
        )

    def wait_for_log(self, needle: str, timeout_s: float = 15.0, *, since: int = 0) -> None:
        """Wait until the log (from character `since` on) contains `needle`."""
        try:
            _deadline_loop(timeout_s, f"{needle!r}", lambda: needle in self.log_text()[since:])
        except AssertionError as exc:
            raise AssertionError(f"node {self.name}: {exc}\n{self.log_tail()}") from None

    # -- status shortcuts -------------------------------------------------------------

    def peer(self, site_id: str) -> dict[str, Any] | None:
        """This node's live statistics of its session with `site_id`, if any."""
        for peer in self.status()["peers"]:
            assert isinstance(peer, dict)
            if peer["site_id"] == site_id:
                return peer
        return None

    def __repr__(self) -> str:
        return f"NodeProcess({self.name!r}, {self.url}, db={self.db})"


class Cluster:
    """A factory of nodes in one directory; `close()` kills every node left running.

    Use through the `cluster` fixture, which closes it at teardown.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[NodeProcess] = []

    def node(
        self,
        name: str,
        db: Path | None = None,
        *,
        peers: Iterable[NodeProcess | str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> NodeProcess:
        """A node (not started yet) for `db` (default: DIR/NAME.db) dialling `peers`.

        With TLS a peer node is dialled by name: `--peer NAME=https://...`.
        """
        urls = [
            (f"{peer.name}={peer.url}" if peer.ssl_context is not None else peer.url)
            if isinstance(peer, NodeProcess)
            else peer
            for peer in peers
        ]
        node = NodeProcess(
            name,
            db if db is not None else self.directory / f"{name}.db",
            self.directory / f"{name}.log",
            peers=urls,
            extra_args=extra_args,
            env=env,
            ssl_context=ssl_context,
            token=token,
        )
        self.nodes.append(node)
        return node

    def start(self, *nodes: NodeProcess, timeout_s: float = 20.0) -> None:
        """Start `nodes` together, then wait until each one answers /v1/health."""
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_until_ready(timeout_s)

    def logs(self) -> str:
        return "\n".join(node.log_tail() for node in self.nodes)

    def internal_errors(self) -> list[str]:
        """Log lines that show a bug rather than an operating error (tracebacks)."""
        return [
            f"{node.name}: {line}"
            for node in self.nodes
            for line in node.log_text().splitlines()
            if any(marker in line for marker in INTERNAL_ERROR_MARKERS)
        ]

    def close(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- database files -------------------------------------------------------------------


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m syncmesh ARGS`; asserts exit code 0 unless `check` is false."""
    result = subprocess.run(
        [sys.executable, "-m", "syncmesh", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, (
            f"syncmesh {' '.join(args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def user_tables(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [
            str(name)
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'"
                " AND name NOT LIKE '\\_syncmesh%' ESCAPE '\\'"
                " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]


def make_db(path: Path, tables_sql: str | Sequence[str]) -> Path:
    """Create the tables, then `syncmesh track` them (the real CLI; it initialises the
    file first, as `syncmesh init` would: one process start-up per file, not two)."""
    statements = [tables_sql] if isinstance(tables_sql, str) else list(tables_sql)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for statement in statements:
            connection.executescript(statement)
        connection.commit()
    tables = user_tables(path)
    assert tables, f"{tables_sql!r} created no table"
    run_cli("track", str(path), *tables)
    return path


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)


def table_dump(path: Path, table: str) -> list[TypedRow]:
    """Every row of `table` as ((value, typeof(value)), ...), sorted by primary key.

    A fresh read-only connection each time: it sees what is committed now.
    """
    quoted = quote_identifier(table)
    with contextlib.closing(_read_only(path)) as connection:
        info = connection.execute(f"PRAGMA table_info({quoted})").fetchall()
        assert info, f"table {table!r} does not exist in {path}"
        columns = [str(row[1]) for row in info]
        pk = [str(row[1]) for row in sorted((row for row in info if row[5]), key=lambda r: r[5])]
        order_columns = pk or columns
        selected = ", ".join(
            f"{quote_identifier(c)}, typeof({quote_identifier(c)})" for c in columns
        )
        order = ", ".join(f"{quote_identifier(c)} COLLATE BINARY" for c in order_columns)
        rows = connection.execute(f"SELECT {selected} FROM {quoted} ORDER BY {order}").fetchall()
    return [
        tuple((row[2 * index], str(row[2 * index + 1])) for index in range(len(columns)))
        for row in rows
    ]


def row_count(path: Path, table: str) -> int:
    with contextlib.closing(_read_only(path)) as connection:
        return int(
            connection.execute(f"SELECT count(*) FROM {quote_identifier(table)}").fetchone()[0]
        )


def query(path: Path, sql: str, params: Sequence[SqlValue] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a fresh connection."""
    with contextlib.closing(_read_only(path)) as connection:
        return connection.execute(sql, params).fetchall()


def integrity_check(path: Path) -> str:
    with contextlib.closing(_read_only(path)) as connection:
        return "\n".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))


def cell_stamps(path: Path, table: str) -> dict[tuple[SqlValue, ...], dict[str, Any]]:
    """Per row: causal length, its stamp, and each live cell's stamp as (hlc, site_id).

    Site ordinals are local to a file, so they are translated to site ids;
    `seq` is local too and left out.  A deleted row shows no cells (their
    old stamps do not matter to the merge), so two replicas that agree on
    every write hold equal dictionaries: the tombstones and per-column
    stamps half of PROPERTIES.md P1.
    """
    with contextlib.closing(_read_only(path)) as connection:
        sites = dict(connection.execute("SELECT ordinal, site_id FROM _syncmesh_sites"))
        spec = json.loads(
            connection.execute(
                "SELECT spec FROM _syncmesh_tables WHERE name = ?", (table,)
            ).fetchone()[0]
        )
        values = [column for column in spec["columns"] if column not in spec["pk"]]
        shadow = quote_identifier(f"_syncmesh_shadow_{table}")
        keys = [f"k{index}" for index in range(len(spec["pk"]))]
        cells = [f"h{index}, s{index}" for index in range(len(values))]
        rows = connection.execute(
            f"SELECT {', '.join([*keys, 'cl', 'cl_hlc', 'cl_site', *cells])} FROM {shadow}"
        ).fetchall()
    result: dict[tuple[SqlValue, ...], dict[str, Any]] = {}
    for row in rows:
        pk = tuple(row[: len(keys)])
        cl, cl_hlc, cl_site = row[len(keys) : len(keys) + 3]
        entry: dict[str, Any] = {"cl": cl, "cl_stamp": (cl_hlc, sites.get(cl_site))}
        if cl % 2 == 1:
            base = len(keys) + 3
            for index, column in enumerate(values):
                hlc, site = row[base + 2 * index], row[base + 2 * index + 1]
                entry[column] = None if hlc is None else (hlc, sites.get(site))
        result[pk] = entry
    return result


def _describe_difference(dumps: Sequence[list[TypedRow]], paths: Sequence[Path]) -> str:
    lines = [f"  {path.name}: {len(dump)} rows" for path, dump in zip(paths, dumps, strict=True)]
    first = dumps[0]
    first_set = set(first)
    for path, dump in zip(paths[1:], dumps[1:], strict=True):
        dump_set = set(dump)
        missing = [row for row in first if row not in dump_set][:3]
        extra = [row for row in dump if row not in first_set][:3]
        if missing or extra:
            lines.append(f"  {paths[0].name} has, {path.name} lacks: {missing}")
            lines.append(f"  {path.name} has, {paths[0].name} lacks: {extra}")
    return "\n".join(lines)


def wait_converged(
    paths: Sequence[Path],
    table: str,
    timeout_s: float,
    *,
    check: Callable[[list[TypedRow]], bool] | None = None,
    describe: Callable[[], str] | None = None,
) -> list[TypedRow]:
    """Wait until every file holds the same dump of `table` (and `check(dump)` holds).

    Polls every 50 ms against a deadline; returns the common dump.  On
    timeout the AssertionError shows how the dumps differ, plus `describe()`
    (the node logs, typically).
    """
    assert len(paths) >= 2
    deadline = time.monotonic() + timeout_s
    while True:
        dumps = [table_dump(path, table) for path in paths]
        equal = all(dump == dumps[0] for dump in dumps[1:])
        if equal and (check is None or check(dumps[0])):
            return dumps[0]
        if time.monotonic() >= deadline:
            reason = "equal dumps fail the check" if equal else "dumps differ"
            raise AssertionError(
                f"{table} did not converge within {timeout_s} s ({reason}):\n"
                f"{_describe_difference(dumps, paths)}\n{describe() if describe else ''}"
            )
        time.sleep(POLL_INTERVAL_S)


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    describe: Callable[[], str] | None = None,
) -> None:
    """Deadline loop (50 ms polls) on `predicate`; the failure names `what` (and `describe()`)."""
    try:
        _deadline_loop(timeout_s, what, predicate)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe() if describe else ''}") from None
