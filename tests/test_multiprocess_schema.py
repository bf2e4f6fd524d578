"""Schema changes on real `syncmesh serve` processes while applications write (issue 14).

A rolling deploy as users run one: each site migrates in turn with the
`sqlite3` shell (the DDL of Django, Alembic or a hand-written ALTER TABLE)
while a writer thread keeps inserting rows at every site.  Oracles: every
row a writer committed is at every site in the end (no lost write), the
files converge on every column, sessions are never refused for the schema,
and `/v1/health`, `/v1/status` and `/metrics` name a table that cannot be
synced.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeproc import (
    Cluster,
    NodeProcess,
    make_db,
    query,
    run_cli,
    table_dump,
    wait_converged,
    wait_for,
)
from tests.test_multiprocess import shell

pytestmark = pytest.mark.multiprocess

ITEMS = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
CONVERGE_S = 45.0
HEALTHY_AGAIN_S = 10.0  # a restarted session is back well within this
WRITER_ROWS_MAX = 2_000  # a writer stops after this many rows, or when told
WRITER_INTERVAL_S = 0.02
WRITER_SECONDS_MAX = 120.0


class Writer:
    """An application writing `items` from a thread: one row per transaction, bounded.

    It names only `id` and `name`, columns no migration here touches, so it
    keeps writing through every DDL.  `written` holds the ids it committed.
    """

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.written: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer {prefix}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + WRITER_SECONDS_MAX
        with contextlib.closing(sqlite3.connect(self.path, timeout=10.0)) as connection:
            for index in range(WRITER_ROWS_MAX):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                row_id = f"{self.prefix}-{index:05d}"
                try:
                    with connection:
                        connection.execute(
                            "INSERT INTO items (id, name) VALUES (?, ?)", (row_id, self.prefix)
                        )
                except sqlite3.Error as exc:  # reported by stop(): a write the app lost
                    self.errors.append(f"{row_id}: {exc}")
                    continue
                self.written.append(row_id)
                self._stop.wait(WRITER_INTERVAL_S)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def wait_rows(self, count: int) -> list[str]:
        """Wait until it has committed `count` more rows; the ids committed so far."""
        target = len(self.written) + count
        wait_for(lambda: len(self.written) >= target, 30.0, f"writer {self.prefix}'s rows")
        return list(self.written)

    def signal_stop(self) -> None:
        """Ask the writer to stop after its current row (teardown: not waited for)."""
        self._stop.set()

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), f"writer {self.prefix} did not stop"
        assert not self.errors, f"writer {self.prefix} failed: {self.errors[:3]}"
        return list(self.written)


@contextlib.contextmanager
def writers(*nodes: NodeProcess) -> Iterator[list[Writer]]:
    started = [Writer(node.db, node.name).start() for node in nodes]
    try:
        yield started
    finally:
        for writer in started:
            writer.signal_stop()


def ids(path: Path) -> set[str]:
    return {str(row[0]) for row in query(path, "SELECT id FROM items")}


def wait_ids(node: NodeProcess, expected: list[str], describe: Cluster) -> None:
    """Wait until every id of `expected` is in `node`'s items."""
    wait_for(
        lambda: set(expected) <= ids(node.db),
        CONVERGE_S,
        f"{len(expected)} rows at {node.name}",
        describe=describe.logs,
    )


def assert_never_refused(cluster: Cluster) -> None:
    for node in cluster.nodes:
        text = node.log_text()
        assert "schema mismatch" not in text, node.log_tail()
        # A session or a site refused; not a dial before the peer listened ("cannot
        # reach peer ...: connection refused: nothing listens there").
        refusals = [
            line for line in text.splitlines() if "refused" in line and "cannot reach" not in line
        ]
        assert not refusals, node.log_tail()


def started_pair(cluster: Cluster, tmp_path: Path) -> tuple[NodeProcess, NodeProcess]:
    make_db(tmp_path / "a.db", ITEMS)
    make_db(tmp_path / "b.db", ITEMS)
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    wait_for(lambda: _streams(b), CONVERGE_S, "b's session with a", describe=cluster.logs)
    return a, b


def _streams(node: NodeProcess) -> bool:
    return any(peer["state"] == "streaming" for peer in node.status()["peers"])


def test_a_new_table_tracked_at_one_site_first(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: tracking a new table at A first refuses no session; items keep syncing
    meanwhile; the table syncs, with the rows A wrote before B tracked it, once B does."""
    a, b = started_pair(cluster, tmp_path)
    with writers(a, b) as (writer_a, writer_b):
        shell(a.db, "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
        run_cli("track", str(a.db), "notes")
        shell(a.db, "INSERT INTO notes VALUES ('n1', 'before b tracked notes')")
        wait_for(
            lambda: any("'notes'" in text for text in _differences(b, _site(a))),
            CONVERGE_S,
            "b to name the table a tracks alone",
            describe=cluster.logs,
        )
        # Items keep syncing both ways while only A tracks notes.
        wait_ids(b, writer_a.wait_rows(5), cluster)
        wait_ids(a, writer_b.wait_rows(5), cluster)
        shell(b.db, "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
        run_cli("track", str(b.db), "notes")
        shell(a.db, "INSERT INTO notes VALUES ('n2', 'after')")
        written = writer_a.stop() + writer_b.stop()
    notes = wait_converged([a.db, b.db], "notes", CONVERGE_S, describe=cluster.logs)
    assert [row[0][0] for row in notes] == ["n1", "n2"]
    wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert set(written) <= ids(a.db)
    assert_never_refused(cluster)
    assert _differences(b, _site(a)) == []


def _differences(node: NodeProcess, site: str) -> list[str]:
    """What `node` says differs from the peer `site` (none while it has no session)."""
    peer = node.peer(site)
    return [] if peer is None else list(peer["schema_differences"])


def _site(node: NodeProcess) -> str:
    site = node.status()["site_id"]
    assert isinstance(site, str)
    return site


def test_a_nullable_column_added_at_one_site_then_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: the shared columns sync throughout; the new column converges, with the
    values A wrote to it before B migrated."""
    a, b = started_pair(cluster, tmp_path)
    with writers(a, b) as (writer_a, writer_b):
        shell(a.db, "ALTER TABLE items ADD COLUMN note TEXT")
        shell(a.db, "INSERT INTO items (id, name, note) VALUES ('early', 'a', 'before b migrated')")
        wait_ids(b, [*writer_a.wait_rows(5), "early"], cluster)
        wait_ids(a, writer_b.wait_rows(5), cluster)
        [b_row, *_] = writer_b.written
        shell(a.db, f"UPDATE items SET note = 'set at a' WHERE id = '{b_row}'")
        shell(b.db, "ALTER TABLE items ADD COLUMN note TEXT")
        shell(b.db, "INSERT INTO items (id, name) VALUES ('late-b', 'b')")
        written = writer_a.stop() + writer_b.stop()
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    notes = {row[0][0]: row[3][0] for row in dump}
    assert notes["early"] == "before b migrated"
    assert notes[b_row] == "set at a"
    assert notes["late-b"] is None  # B's insert reaches A with the column's default
    assert set(written) <= set(notes)
    assert_never_refused(cluster)


def test_a_column_added_at_one_site_then_the_other_records_no_conflict(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a rolling ADD COLUMN with writes at both sites leaves `syncmesh conflicts`
    empty at both (new-user report: every row written meanwhile was listed as a conflict
    whose loser was NULL or the default "from site 00000000", nobody's write)."""
    a, b = started_pair(cluster, tmp_path)
    shell(a.db, "INSERT INTO items (id, name, qty) VALUES ('k1', 'bolt', 1), ('k2', 'nut', 2)")
    wait_for(lambda: ids(b.db) == {"k1", "k2"}, CONVERGE_S, "k1, k2 at b", describe=cluster.logs)
    shell(a.db, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
    shell(a.db, "UPDATE items SET note = 'set at a' WHERE id = 'k1'")
    shell(b.db, "UPDATE items SET name = 'bolt at b' WHERE id = 'k1'")  # b lacks `note` yet
    shell(b.db, "INSERT INTO items (id, name) VALUES ('k3', 'washer')")
    wait_for(
        lambda: (
            query(a.db, "SELECT name FROM items WHERE id = 'k1'") == [("bolt at b",)]
            and ids(a.db) == {"k1", "k2", "k3"}
        ),
        CONVERGE_S,
        "b's writes at a",
        describe=cluster.logs,
    )
    shell(b.db, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
    shell(b.db, "UPDATE items SET note = 'set at b' WHERE id = 'k2'")
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert {row[0][0]: (row[1][0], row[3][0]) for row in dump} == {
        "k1": ("bolt at b", "set at a"),
        "k2": ("nut", "set at b"),
        "k3": ("washer", "none"),
    }
    for node in (a, b):
        listed = json.loads(run_cli("conflicts", str(node.db), "--json").stdout)
        assert listed == {"conflicts": []}, f"{node.name}: {listed}"
    assert_never_refused(cluster)


def test_a_column_renamed_at_one_site_then_the_other(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: values written under the old name at the site not yet migrated land in the
    renamed column, and values written under the new name reach the old column."""
    a, b = started_pair(cluster, tmp_path)
    with writers(a, b) as (writer_a, writer_b):
        shell(a.db, "ALTER TABLE items RENAME COLUMN qty TO quantity")
        shell(a.db, "INSERT INTO items (id, name, quantity) VALUES ('new-name', 'a', 5)")
        shell(b.db, "INSERT INTO items (id, name, qty) VALUES ('old-name', 'b', 7)")
        wait_for(
            lambda: query(b.db, "SELECT qty FROM items WHERE id = 'new-name'") == [(5,)],
            CONVERGE_S,
            "a's value under the new name in b's old column",
            describe=cluster.logs,
        )
        wait_for(
            lambda: query(a.db, "SELECT quantity FROM items WHERE id = 'old-name'") == [(7,)],
            CONVERGE_S,
            "b's value under the old name in a's renamed column",
            describe=cluster.logs,
        )
        wait_ids(b, writer_a.wait_rows(5), cluster)
        shell(b.db, "ALTER TABLE items RENAME COLUMN qty TO quantity")
        shell(b.db, "UPDATE items SET quantity = 8 WHERE id = 'new-name'")
        written = writer_a.stop() + writer_b.stop()
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    quantities = {row[0][0]: row[2][0] for row in dump}
    assert (quantities["new-name"], quantities["old-name"]) == (8, 7)
    assert set(written) <= set(quantities)
    assert_never_refused(cluster)


def django_rebuild(path: Path) -> None:
    """What Django's SQLite schema editor does to add a field with a default.

    One transaction: create the new table, copy the rows, drop the old one,
    rename the new one (the capture triggers go with the old table).
    """
    shell(
        path,
        "PRAGMA foreign_keys = OFF; BEGIN;"
        ' CREATE TABLE "new__items" (id TEXT PRIMARY KEY, name TEXT, qty INTEGER,'
        " flag INTEGER NOT NULL DEFAULT 0);"
        ' INSERT INTO "new__items" (id, name, qty, flag) SELECT id, name, qty, 0 FROM items;'
        " DROP TABLE items;"
        ' ALTER TABLE "new__items" RENAME TO items;'
        " COMMIT;",
    )


def test_a_django_style_rebuild_at_one_site_while_another_writes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: the rebuilding site keeps capturing (rows written by its own writer right
    after the rebuild included), the other site's rows keep arriving, and once both
    have rebuilt, every row any writer committed is at both sites with the new column."""
    a, b = started_pair(cluster, tmp_path)
    with writers(a, b) as (writer_a, writer_b):
        writer_a.wait_rows(5)
        django_rebuild(a.db)
        wait_ids(b, writer_a.wait_rows(10), cluster)  # A captures after its rebuild
        wait_ids(a, writer_b.wait_rows(5), cluster)
        django_rebuild(b.db)
        written = writer_a.stop() + writer_b.stop()
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert set(written) <= {row[0][0] for row in dump}
    assert {row[3] for row in dump} == {(0, "integer")}
    assert_never_refused(cluster)
    # A schema change restarts the sessions, so health may be 503 for the moment
    # a session is down: it must be 200 again once the sessions are back.
    for node in (a, b):
        wait_for(
            lambda node=node: node.health()[0] == 200,  # type: ignore[misc]
            HEALTHY_AGAIN_S,
            f"a 200 from {node.name}'s health",
            describe=lambda node=node: f"{node.health()[1]}\n{node.log_tail()}",  # type: ignore[misc]
        )


def test_an_update_right_after_a_rebuild_reaches_the_peer(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: an UPDATE of a row the rebuild copied, made by another writer between the
    rebuild's commit and the node's reconcile, is captured and reaches the peer.

    The node is paused (SIGSTOP) while the sqlite3 shell rebuilds the table
    and then updates a copied row, so the update lands before the node can
    put its triggers back, every time; resumed, the node reconciles.
    """
    a, b = started_pair(cluster, tmp_path)
    shell(a.db, "INSERT INTO items (id, name, qty) VALUES ('r1', 'before', 1), ('r2', 'kept', 2)")
    wait_ids(b, ["r1", "r2"], cluster)
    a.pause_outside_a_write()
    try:
        django_rebuild(a.db)
        shell(a.db, "UPDATE items SET name = 'after the rebuild', qty = 5 WHERE id = 'r1'")
    finally:
        a.resume()
    wait_for(
        lambda: (
            query(b.db, "SELECT name, qty FROM items WHERE id = 'r1'") == [("after the rebuild", 5)]
        ),
        CONVERGE_S,
        "the update made right after the rebuild, at b",
        describe=cluster.logs,
    )
    django_rebuild(b.db)
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert {row[0][0]: row[1][0] for row in dump} == {"r1": "after the rebuild", "r2": "kept"}
    assert "rows inserted, updated or deleted meanwhile caught up" in a.log_text()
    assert_never_refused(cluster)


def sqlite_utils(*arguments: str) -> None:
    """Run the real `sqlite-utils` command line (another writer of the file)."""
    command = Path(sys.executable).with_name("sqlite-utils")
    result = subprocess.run(
        [str(command), *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"sqlite-utils {arguments} exited {result.returncode}: {result}"


def test_sqlite_utils_transform_at_one_site_while_both_write(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: `sqlite-utils transform` (a table rebuild that drops the triggers) at each site
    in turn while writers run: every row any writer committed reaches both sites, and an
    UPDATE made with `sqlite-utils query` right after the transform, before the node has
    reconciled (the node is paused meanwhile), reaches the peer."""
    a, b = started_pair(cluster, tmp_path)
    shell(a.db, "INSERT INTO items (id, name, qty) VALUES ('r1', 'before', 1)")
    wait_ids(b, ["r1"], cluster)
    with writers(a, b) as (writer_a, writer_b):
        writer_a.wait_rows(5)
        a.pause_outside_a_write()
        try:
            sqlite_utils("transform", str(a.db), "items", "--default", "qty", "0")
            sqlite_utils("query", str(a.db), "UPDATE items SET qty = 5 WHERE id = 'r1'")
        finally:
            a.resume()
        wait_ids(b, writer_a.wait_rows(10), cluster)
        wait_ids(a, writer_b.wait_rows(5), cluster)
        sqlite_utils("transform", str(b.db), "items", "--default", "qty", "0")
        written = writer_a.stop() + writer_b.stop()
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert set(written) <= {row[0][0] for row in dump}
    assert {row[0][0]: row[2][0] for row in dump}["r1"] == 5
    for node in (a, b):
        assert "capture triggers were gone" in node.log_text(), node.log_tail()
    assert_never_refused(cluster)


def test_an_update_right_after_a_rebuild_that_drops_a_column_reaches_the_peer(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: `sqlite-utils transform --drop qty` (a rebuild that drops a column, as Django
    removing an indexed field or Alembic's batch `drop_column` does), then an UPDATE of
    `name` with `sqlite-utils query` before the node has reconciled (the node is paused
    meanwhile): the update reaches the peer, and so does nothing else."""
    a, b = started_pair(cluster, tmp_path)
    shell(a.db, "INSERT INTO items (id, name, qty) VALUES ('r1', 'before', 1), ('r2', 'kept', 2)")
    wait_ids(b, ["r1", "r2"], cluster)
    a.pause_outside_a_write()
    try:
        sqlite_utils("transform", str(a.db), "items", "--drop", "qty")
        sqlite_utils("query", str(a.db), "UPDATE items SET name = 'after' WHERE id = 'r1'")
    finally:
        a.resume()
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'r1'") == [("after",)],
        CONVERGE_S,
        "the update made right after the rebuild, at b",
        describe=cluster.logs,
    )
    sqlite_utils("transform", str(b.db), "items", "--drop", "qty")
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert {row[0][0]: row[1][0] for row in dump} == {"r1": "after", "r2": "kept"}
    log_a = a.log_text()
    assert "column 'qty' dropped" in log_a, a.log_tail()
    assert "cannot be told" not in log_a, a.log_tail()
    assert_never_refused(cluster)


def test_a_column_renamed_by_sqlite_utils_transform_keeps_syncing_both_ways(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: `sqlite-utils transform --rename name label` (a table rebuild that renames a
    column) at one site, writes to `label` there and to `name` at the site not migrated yet,
    then the same rebuild there: every write survives at both sites (the rename is
    recognised by the column's values, not taken for a drop and an add)."""
    a, b = started_pair(cluster, tmp_path)
    shell(
        a.db,
        "INSERT INTO items (id, name, qty) VALUES ('r1', 'one', 1), ('r2', 'two', 2),"
        " ('r3', 'three', 3)",
    )
    wait_ids(b, ["r1", "r2", "r3"], cluster)
    sqlite_utils("transform", str(a.db), "items", "--rename", "name", "label")
    wait_for(
        lambda: "recognised by its values" in a.log_text(),
        CONVERGE_S,
        "a's reconcile of the rename",
        describe=cluster.logs,
    )
    shell(a.db, "UPDATE items SET label = 'from a' WHERE id = 'r1'")
    shell(b.db, "UPDATE items SET name = 'from b' WHERE id = 'r2'")
    wait_for(
        lambda: query(b.db, "SELECT name FROM items WHERE id = 'r1'") == [("from a",)],
        CONVERGE_S,
        "a's write of label, at b as name",
        describe=cluster.logs,
    )
    wait_for(
        lambda: query(a.db, "SELECT label FROM items WHERE id = 'r2'") == [("from b",)],
        CONVERGE_S,
        "b's write of name, at a as label",
        describe=cluster.logs,
    )
    sqlite_utils("transform", str(b.db), "items", "--rename", "name", "label")
    wait_for(
        lambda: "recognised by its values" in b.log_text(),
        CONVERGE_S,
        "b's reconcile of the rename",
        describe=cluster.logs,
    )
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    assert {row[0][0]: row[1][0] for row in dump} == {"r1": "from a", "r2": "from b", "r3": "three"}
    assert_never_refused(cluster)


def test_health_is_503_for_a_table_that_lost_its_triggers_and_cannot_be_repaired(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a tracked table rebuilt with another primary key (its triggers gone with
    the old table; syncmesh cannot map rows of another key) is never silent: 503 on
    /v1/health naming the table, in the status and in /metrics."""
    make_db(tmp_path / "a.db", ITEMS)
    a = cluster.node("a")
    cluster.start(a)
    assert a.health()[0] == 200
    shell(
        a.db,
        "BEGIN;"
        ' CREATE TABLE "new__items" (id TEXT, name TEXT PRIMARY KEY, qty INTEGER);'
        ' INSERT INTO "new__items" SELECT id, name, qty FROM items;'
        " DROP TABLE items;"
        ' ALTER TABLE "new__items" RENAME TO items;'
        " COMMIT;",
    )
    wait_for(lambda: a.health()[0] == 503, CONVERGE_S, "a 503 from a", describe=a.log_tail)
    _code, verdict = a.health()
    assert any("items" in reason for reason in verdict["reasons"]), verdict
    problems = a.status()["store"]["schema_problems"]
    assert problems, a.status()
    assert all("items" in problem for problem in problems), problems
    with a.open_url("/metrics", 5.0) as answer:
        metrics = answer.read().decode()
    assert f"syncmesh_schema_problems {float(len(problems))}" in metrics
    shell(a.db, "INSERT INTO items VALUES ('x', 'written after', 1)")
    # Still unhealthy after more writes: the table is not captured, and says so.
    assert a.health()[0] == 503
    assert table_dump(a.db, "items")
