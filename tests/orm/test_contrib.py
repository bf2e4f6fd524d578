"""`syncmesh.contrib.django` and `syncmesh.contrib.sqlalchemy` as users meet them.

Real projects in temporary directories, run with the real `manage.py` and
`alembic` commands against real SQLite files (no node runs here; the
rollouts in test_django_rollout.py and test_alembic_rollout.py run them
with nodes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

from syncmesh.contrib.sqlalchemy import recheck_tracked_tables
from tests.nodeproc import query, run_cli
from tests.orm.alembic_project import CHANGES as ALEMBIC_CHANGES
from tests.orm.alembic_project import AlembicProject
from tests.orm.django_project import CHANGES as DJANGO_CHANGES
from tests.orm.django_project import DjangoProject
from tests.orm.rollout import HERE, run_command

REBUILD = next(change for change in DJANGO_CHANGES if change.name == "field_with_default")
BATCH_REBUILD = next(change for change in ALEMBIC_CHANGES if change.name == "batch_rebuild")
# contenttypes too: Django sends post_migrate once per app with models.
APPS = ["django.contrib.contenttypes", "shop", "syncmesh.contrib.django"]


def django_site(tmp_path: Path) -> tuple[DjangoProject, Path, Path]:
    project = DjangoProject(REBUILD, apps=APPS)
    directory = tmp_path / "site"
    directory.mkdir()
    shutil.copy(HERE / "writer_loop.py", directory / "writer_loop.py")
    project.write(directory, 1)
    return project, directory, directory / "site.db"


def manage(directory: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=directory,
        env={**os.environ, "SITE_DB": str(db)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def syncmesh_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("syncmesh: ")]


def test_migrate_leaves_a_database_that_syncmesh_does_not_sync_alone(tmp_path: Path) -> None:
    project, directory, db = django_site(tmp_path)
    output = project.migrate(directory, db)
    assert syncmesh_lines(output) == [
        f"syncmesh: {db}: not a syncmesh file yet (`syncmesh track` its tables to sync them)"
    ]
    assert (
        query(db, "SELECT name FROM sqlite_schema WHERE name LIKE '\\_syncmesh%' ESCAPE '\\'") == []
    )
    assert query(db, "PRAGMA journal_mode") == [("delete",)]  # not switched to WAL


def test_migrate_rechecks_the_tracked_tables_once(tmp_path: Path) -> None:
    """After a rebuild of a tracked table, `migrate` says what syncmesh found, in one block."""
    project, directory, db = django_site(tmp_path)
    project.migrate(directory, db)
    run_cli("track", str(db), "shop_item")
    project.write(directory, 2)
    output = project.migrate(directory, db)
    assert "Applying shop.0002_field_with_default... OK" in output
    lines = syncmesh_lines(output)
    assert lines, output
    assert all(line.startswith(f"syncmesh: {db}: ") for line in lines)
    assert any("shop_item" in line for line in lines), lines
    # Once per migrate, although Django sends post_migrate once per app with models.
    assert len(lines) == len(set(lines))


def test_migrate_leaves_no_schema_problem_after_a_rebuild(tmp_path: Path) -> None:
    """With no node running, the re-check alone puts the rebuilt table's capture back."""
    project, directory, db = django_site(tmp_path)
    project.migrate(directory, db)
    run_cli("track", str(db), "shop_item")
    project.write(directory, 2)
    output = project.migrate(directory, db)
    assert not [line for line in syncmesh_lines(output) if "problem:" in line], output
    status = json.loads(run_cli("status", str(db), "--json").stdout)
    assert status["schema_problems"] == []


def test_migrate_with_verbosity_0_prints_nothing_of_syncmesh(tmp_path: Path) -> None:
    _, directory, db = django_site(tmp_path)
    result = manage(directory, db, "migrate", "--no-input", "-v", "0")
    assert result.returncode == 0, result.stderr
    assert syncmesh_lines(result.stdout + result.stderr) == []


def test_syncmesh_status_shows_the_file_when_no_node_runs(tmp_path: Path) -> None:
    project, directory, db = django_site(tmp_path)
    project.migrate(directory, db)
    site_id = run_cli("init", str(db)).stdout.split("site id ")[1].strip()
    run_cli("track", str(db), "shop_item")
    result = manage(directory, db, "syncmesh_status")
    assert result.returncode == 0, result.stderr
    assert "no node is running on it" in result.stderr
    assert site_id in result.stdout
    assert "shop_item" in result.stdout
    as_json = manage(directory, db, "syncmesh_status", "--json")
    assert json.loads(as_json.stdout)["site_id"] == site_id


def test_syncmesh_status_names_a_database_that_is_not_there(tmp_path: Path) -> None:
    _, directory, db = django_site(tmp_path)
    result = manage(directory, db, "syncmesh_status")
    assert result.returncode == 1
    assert f"{db} does not exist (run `manage.py migrate` first)" in result.stderr


def test_alembic_upgrade_rechecks_the_tracked_tables(tmp_path: Path) -> None:
    project = AlembicProject(BATCH_REBUILD)
    directory = tmp_path / "site"
    directory.mkdir()
    db = directory / "site.db"
    project.write(directory, 1)
    first = project.migrate(directory, db)
    assert syncmesh_lines(first) == [
        f"syncmesh: {db}: not a syncmesh file yet (`syncmesh track` its tables to sync them)"
    ]
    run_cli("track", str(db), "items")
    project.write(directory, 2)
    output = project.migrate(directory, db)
    assert "Running upgrade 0001 -> 0002" in output
    lines = syncmesh_lines(output)
    assert lines, output
    assert any("items" in line for line in lines), lines


def test_the_sqlalchemy_hook_skips_in_memory_databases() -> None:
    result = recheck_tracked_tables(sqlalchemy.create_engine("sqlite://"), quiet=True)
    assert not result.synced
    assert result.lines() == []


def test_run_command_reports_a_failing_migration(tmp_path: Path) -> None:
    """The harness's own check: a failing command is a failure naming it, with its output."""
    with pytest.raises(AssertionError, match="broken exited with 3"):
        run_command([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {}, "broken")
