"""Application triggers on tracked tables (issue 12): they must not run again on apply.

A trigger's effects at the origin are captured writes that sync.  Fired
again when a peer's row is applied, they are applied twice and the nodes
diverge (`syncmesh chaos --adversarial trigger` found it).  SQLite cannot
turn triggers off per connection, and the engine does not rewrite a user's
trigger: `track` names every application trigger that does not read the
apply flag, with the guard to add (docs/keys.md, "Application triggers").
Here: the warning from the real CLI, the guarded trigger between two real
nodes, and the chaos run that found it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import sqlite3_shell as shell
from tests.nodeproc import Cluster, NodeProcess, query, run_cli, wait_for

SYNC_S = 20.0
GUARD = "(SELECT applying FROM _syncmesh_state) = 0"
TABLE = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"


def trigger(when: str) -> str:
    return (
        f"CREATE TRIGGER items_checked AFTER INSERT ON items {when} BEGIN"
        " UPDATE items SET name = NEW.name || ' (checked)' WHERE id = NEW.id; END;"
    )


def tracked(path: Path, when: str) -> str:
    """A file with `items` and the application trigger, initialised and tracked: the output."""
    shell(path, f"{TABLE}; {trigger(when)}")
    run_cli("init", str(path))
    result = run_cli("track", str(path), "items")
    return result.stdout + result.stderr


def test_track_names_an_unguarded_application_trigger_and_the_guard(tmp_path: Path) -> None:
    output = tracked(tmp_path / "a.db", "")
    warning = [line for line in output.splitlines() if "items_checked" in line]
    assert len(warning) == 1, output
    assert warning[0].startswith("warning: table 'items'"), output
    assert "fires when a peer's row is applied" in warning[0]
    assert f"WHEN {GUARD}" in warning[0]
    assert "Application triggers" in warning[0]


def test_track_says_nothing_of_a_guarded_trigger(tmp_path: Path) -> None:
    output = tracked(tmp_path / "a.db", f"WHEN {GUARD}")
    assert "items_checked" not in output, output
    assert "trigger" not in output, output


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        print(cluster.logs())  # pytest shows it only when the test failed


def logs(*nodes: NodeProcess) -> str:
    return "\n".join(f"--- {node.name}\n{node.log_tail()}" for node in nodes)


@pytest.mark.multiprocess
def test_a_guarded_trigger_runs_once_at_the_origin_and_its_effect_syncs(
    nodes: Cluster, tmp_path: Path
) -> None:
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    tracked(a_db, f"WHEN {GUARD}")
    tracked(b_db, f"WHEN {GUARD}")
    a = nodes.node("a", a_db)
    b = nodes.node("b", b_db, peers=[a])
    nodes.start(a, b)
    shell(a_db, "INSERT INTO items VALUES ('from a', 'x')")
    shell(b_db, "INSERT INTO items VALUES ('from b', 'y')")
    expected = [("from a", "x (checked)"), ("from b", "y (checked)")]

    def both_checked_once() -> bool:
        return all(
            query(db, "SELECT id, name FROM items ORDER BY id") == expected for db in (a_db, b_db)
        )

    wait_for(
        both_checked_once,
        SYNC_S,
        "each row checked once, at its origin, on both nodes",
        describe=lambda: (
            f"{query(a_db, 'SELECT * FROM items')}"
            f" {query(b_db, 'SELECT * FROM items')}\n{logs(a, b)}"
        ),
    )
    assert not nodes.internal_errors()


@pytest.mark.multiprocess
def test_chaos_adversarial_trigger_run_is_clean(tmp_path: Path) -> None:
    """The run that found it (docs/chaos.md); its trigger carries the guard track asks for."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "syncmesh",
            "chaos",
            "--seed",
            "3",
            "--duration",
            "6",
            "--faults-per-schedule",
            "0",
            "--adversarial",
            "trigger",
            "--nodes",
            "3",
            "--topology",
            "mesh",
            "--only",
            "0",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "violations: none" in result.stdout, result.stdout


@pytest.mark.multiprocess
def test_a_trigger_created_after_track_is_named_when_the_node_starts(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Named once, by `serve` at start; read-only commands such as `status` do not repeat
    it every time (new-user report: a warning on every `status`)."""
    db = tmp_path / "a.db"
    shell(db, TABLE)
    run_cli("init", str(db))
    run_cli("track", str(db), "items")
    shell(db, trigger(""))  # the application adds its trigger later
    result = run_cli("status", str(db), check=False)
    assert "items_checked" not in result.stdout + result.stderr, result.stderr
    node = cluster.node("a", db)
    cluster.start(node)
    node.wait_for_log("tracked table 'items': application trigger 'items_checked'")
    assert f"WHEN {GUARD}" in node.log_text()
    assert node.log_text().count("application trigger 'items_checked'") == 1, node.log_text()
