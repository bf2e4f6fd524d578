"""A rolling deploy of an ORM project over real sites, with writers running throughout.

Each site is a project directory (the application's code at some version),
a SQLite file and a `syncmesh serve` process on 127.0.0.1.  Writer
processes of the application run at some sites the whole time.  A deploy at
one site is what an operator does: stop that site's application, put the
new code there, run the real migration command, start the application
again; the other sites keep writing meanwhile.

After each step a barrier proves that the mesh still syncs: every writer
commits new rows, and each writer's newest row reaches every site; every
node's `/v1/health` is then 200.  At the end every site must hold exactly
the rows the writers' records say, with their last written values (a
column a row was never written in holds the column's default), and all
sites the same rows.

The framework (Django, Alembic) is a `Project`: it writes a site's files
at a version, runs its migration and names its writer command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from syncmesh.schema import quote_identifier
from tests.nodeproc import Cluster, NodeProcess, run_cli, wait_converged, wait_for

HERE = Path(__file__).resolve().parent
COMMAND_TIMEOUT_S = 90.0
WRITER_STOP_S = 30.0
BARRIER_S = 30.0  # a write reaches every site in well under a second on a quiet machine
CONVERGE_S = 60.0
BARRIER_WRITES = 5  # new committed writes per writer before a barrier looks
WRITES_MAX = 4_000  # per writer run: bounded in count ...
WRITER_SECONDS_MAX = 150.0  # ... and in time (below a test's timeout)
WRITER_PAUSE_S = 0.02

Row = dict[str, Any]


class Project(Protocol):
    """One framework's project: files by version, its migration, its writer."""

    def write(self, directory: Path, version: int) -> None:
        """Put the project's code at `version` into `directory` (a deploy)."""
        ...

    def migrate(self, directory: Path, db: Path) -> str:
        """Run the real migration command; its output (asserts exit status 0)."""
        ...

    def writer_command(self, directory: Path) -> list[str]:
        """argv of a writer process (run in `directory`; env names the files)."""
        ...

    def tables(self, version: int) -> list[str]:
        """The tables syncmesh tracks once `version` is migrated."""
        ...


@dataclass(frozen=True, slots=True)
class FinalSchema:
    """How the writers' records map onto the tables after the whole rollout."""

    renames: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # table: old -> new
    dropped: Mapping[str, frozenset[str]] = field(default_factory=dict)  # table: columns
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # never written
    # Generated columns: table: column -> its value computed from the row's written values.
    generated: Mapping[str, Mapping[str, Callable[[Row], Any]]] = field(default_factory=dict)


def run_command(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], what: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{what} exited with {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


@dataclass
class Site:
    name: str
    directory: Path
    db: Path
    writes: bool
    version: int = 1
    node: NodeProcess | None = None
    writer: subprocess.Popen[bytes] | None = None
    writer_log: IO[bytes] | None = None
    writer_runs: int = 0
    writer_exits: list[int] = field(default_factory=list)

    @property
    def record(self) -> Path:
        return self.directory / "writes.jsonl"

    @property
    def stop_file(self) -> Path:
        return self.directory / "writer.stop"

    @property
    def env(self) -> dict[str, str]:
        return {
            "SITE_NAME": self.name,
            "SITE_DB": str(self.db),
            "SITE_RECORD": str(self.record),
            "SITE_STOP": str(self.stop_file),
            "SITE_WRITES_MAX": str(WRITES_MAX),
            "SITE_WRITER_SECONDS_MAX": str(WRITER_SECONDS_MAX),
            "SITE_WRITER_PAUSE_S": str(WRITER_PAUSE_S),
            "PYTHONUNBUFFERED": "1",
        }


def read_record(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.endswith("}"):  # a line being written is not complete yet
            entries.append(json.loads(line))
    return entries


def table_rows(db: Path, table: str) -> dict[str, Row]:
    """id -> {column: value} of every row, on a fresh read-only connection."""
    quoted = quote_identifier(table)
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as connection:
        connection.row_factory = sqlite3.Row
        return {str(row["id"]): dict(row) for row in connection.execute(f"SELECT * FROM {quoted}")}


def has_table(db: Path, table: str) -> bool:
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as connection:
        found = connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
    return found is not None


def expected_rows(
    records: Sequence[Sequence[dict[str, Any]]], table: str, final: FinalSchema
) -> dict[str, Row]:
    """The rows of `table` the writers' records say, with final column names."""
    renames = final.renames.get(table, {})
    dropped = final.dropped.get(table, frozenset())
    rows: dict[str, Row] = {}
    for record in records:
        for entry in record:
            if entry["table"] != table:
                continue
            if entry["op"] == "delete":
                del rows[entry["id"]]
                continue
            row = rows.setdefault(entry["id"], {}) if entry["op"] == "update" else {}
            for column, value in entry["values"].items():
                final_column = renames.get(column, column)
                if final_column not in dropped:
                    row[final_column] = value
            rows[entry["id"]] = row
    return rows


def differences(db: Path, table: str, expected: Mapping[str, Row], final: FinalSchema) -> list[str]:
    """How `table` in `db` differs from the expected rows (empty: it holds exactly them)."""
    actual = table_rows(db, table)
    defaults = final.defaults.get(table, {})
    generated = final.generated.get(table, {})
    found = []
    lost = sorted(set(expected) - set(actual))
    phantom = sorted(set(actual) - set(expected))
    if lost:
        found.append(f"{db.name}: {len(lost)} written rows missing, e.g. {lost[:3]}")
    if phantom:
        found.append(f"{db.name}: {len(phantom)} rows nobody wrote, e.g. {phantom[:3]}")
    for key in sorted(set(expected) & set(actual)):
        for column, value in actual[key].items():
            if column == "id":
                continue
            if column in generated:
                want = generated[column]({**defaults, **expected[key]})
            else:
                want = expected[key].get(column, defaults.get(column))
            if value != want:
                found.append(f"{db.name}: row {key} {column} = {value!r}, written {want!r}")
    return found


class Rollout:
    """Sites, their nodes and writers; deploys one site at a time; the checks."""

    def __init__(
        self,
        project: Project,
        cluster: Cluster,
        directory: Path,
        sites: Sequence[str],
        writers: Sequence[str],
        *,
        track_patterns: Sequence[str] = (),
    ) -> None:
        """`track_patterns`: the nodes track `[tables] track = PATTERNS` (a config file)
        instead of `syncmesh track` of each new table after its migration."""
        self.project = project
        self.cluster = cluster
        self.track_patterns = list(track_patterns)
        self.sites = [
            Site(name, directory / name, directory / name / f"{name}.db", name in writers)
            for name in sites
        ]

    # -- set-up ---------------------------------------------------------------

    def start(self) -> None:
        """Version 1 everywhere: migrate, track, serve (full mesh), start the writers."""
        for site in self.sites:
            site.directory.mkdir(parents=True)
            shutil.copy(HERE / "writer_loop.py", site.directory / "writer_loop.py")
            self.project.write(site.directory, 1)
            self.project.migrate(site.directory, site.db)
            run_cli("init", str(site.db))
            run_cli("track", str(site.db), *self.project.tables(1))
        nodes: list[NodeProcess] = []
        for site in self.sites:
            extra_args: list[str] = []
            if self.track_patterns:
                config = site.directory / "syncmesh.toml"
                config.write_text(f"[tables]\ntrack = {json.dumps(self.track_patterns)}\n")
                extra_args = ["--config", str(config)]
            site.node = self.cluster.node(
                site.name, db=site.db, peers=list(nodes), extra_args=extra_args
            )
            nodes.append(site.node)
        self.cluster.start(*nodes)
        for site in self.sites:
            if site.writes:
                self.start_writer(site)
        self.barrier("before the rollout")

    def start_writer(self, site: Site) -> None:
        assert site.writer is None
        site.stop_file.unlink(missing_ok=True)
        site.writer_runs += 1
        site.writer_log = (site.directory / "writer.log").open("ab")
        site.writer = subprocess.Popen(
            self.project.writer_command(site.directory),
            cwd=site.directory,
            env={**os.environ, **site.env},
            stdin=subprocess.DEVNULL,
            stdout=site.writer_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_writer(self, site: Site) -> None:
        """Ask the writer to stop after its current write; it must exit 0."""
        writer = site.writer
        if writer is None:
            return
        site.stop_file.touch()
        try:
            code = writer.wait(timeout=WRITER_STOP_S)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=10)
            site.writer = None
            if site.writer_log is not None:
                site.writer_log.close()
        site.writer_exits.append(code)
        assert code == 0, f"the writer of {site.name} exited {code}\n{self.writer_log(site)}"

    def writer_log(self, site: Site) -> str:
        path = site.directory / "writer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        """Teardown: no writer is left running, whatever happened."""
        for site in self.sites:
            if site.writer is not None and site.writer.poll() is None:
                site.writer.kill()
                site.writer.wait(timeout=10)
            if site.writer_log is not None:
                site.writer_log.close()

    # -- the rollout ------------------------------------------------------------

    def deploy(
        self, site: Site, version: int, *, after: Callable[[Site], None] | None = None
    ) -> str:
        """Stop the site's application, new code, migrate, start it again; then the barrier.

        Returns the migration's output.
        """
        self.stop_writer(site)
        self.project.write(site.directory, version)
        output = self.project.migrate(site.directory, site.db)
        site.version = version
        new_tables = sorted(set(self.project.tables(version)) - set(self.project.tables(1)))
        if new_tables and not self.track_patterns:
            run_cli("track", str(site.db), *new_tables)
        if after is not None:
            after(site)
        if site.writes:
            self.start_writer(site)
        self.barrier(f"after {site.name} migrated to version {version}")
        return output

    def roll(self, version: int) -> list[str]:
        """Deploy `version` at every site, one after the other; the migrations' outputs."""
        return [self.deploy(site, version) for site in self.sites]

    # -- checks -------------------------------------------------------------------

    def describe(self) -> str:
        parts = [self.cluster.logs()]
        parts.extend(
            f"--- writer of {site.name}:\n{self.writer_log(site)}"
            for site in self.sites
            if site.writes
        )
        return "\n".join(parts)

    def shared_tables(self) -> set[str]:
        """Tables every site tracks now (a new table is shared once every site has it)."""
        tables = set(self.project.tables(self.sites[0].version))
        for site in self.sites[1:]:
            tables &= set(self.project.tables(site.version))
        return tables

    def barrier(self, moment: str) -> None:
        """Writers keep committing, and each one's newest row of a shared table is everywhere."""
        writers = [site for site in self.sites if site.writes]
        counts = {site.name: len(read_record(site.record)) for site in writers}
        for site in writers:

            def committed(site: Site = site) -> bool:
                return len(read_record(site.record)) >= counts[site.name] + BARRIER_WRITES

            wait_for(
                committed,
                BARRIER_S,
                f"the writer of {site.name} to commit {BARRIER_WRITES} writes ({moment})",
                self.describe,
            )
        shared = self.shared_tables()
        for writer in writers:
            newest = [
                entry
                for entry in read_record(writer.record)
                if entry["op"] == "insert" and entry["table"] in shared
            ]
            assert newest, f"the writer of {writer.name} inserted no row of {shared} ({moment})"
            entry = newest[-1]

            def everywhere(entry: dict[str, Any] = entry, writer: Site = writer) -> bool:
                deleted = any(
                    later["op"] == "delete" and later["id"] == entry["id"]
                    for later in read_record(writer.record)
                )
                return deleted or all(
                    entry["id"] in table_rows(site.db, entry["table"]) for site in self.sites
                )

            wait_for(
                everywhere,
                BARRIER_S,
                f"{writer.name}'s newest {entry['table']} row {entry['id']} to reach every site"
                f" ({moment})",
                self.describe,
            )
        self.assert_healthy(moment)

    def assert_healthy(self, moment: str) -> None:
        for site in self.sites:
            assert site.node is not None
            code, document = site.node.health()
            assert code == 200, f"{site.name}'s /v1/health is {code} {document} ({moment})"

    def finish(self, final: FinalSchema) -> dict[str, list[dict[str, Any]]]:
        """Stop the writers; every site converges on exactly what they wrote. The records."""
        for site in self.sites:
            self.stop_writer(site)
        records = [read_record(site.record) for site in self.sites if site.writes]
        assert all(records), "a writer recorded no write"
        paths = [site.db for site in self.sites]
        tables = self.project.tables(self.sites[0].version)
        for table in tables:
            expected = expected_rows(records, table, final)

            def as_written(_dump: object, table: str = table, expected: Row = expected) -> bool:
                return not differences(paths[0], table, expected, final)

            def describe(table: str = table, expected: Row = expected) -> str:
                found = differences(paths[0], table, expected, final)
                return "\n".join([*found[:20], self.describe()])

            wait_converged(paths, table, CONVERGE_S, check=as_written, describe=describe)
            for path in paths:
                assert not differences(path, table, expected, final)
        self.assert_healthy("after the rollout")
        for site in self.sites:
            assert site.node is not None
            assert site.node.status()["store"]["schema_problems"] == []
        return {site.name: read_record(site.record) for site in self.sites if site.writes}
