"""Issue 12 defect 3 where users meet it: `syncmesh track` and `config check` refuse a NOCASE key.

Concurrent inserts of 'a' and 'A' under a NOCASE key could never converge
(docs/keys.md), so the refusal must reach the user with the reason and the
fix, and leave the file as it was (no capture triggers, nothing tracked).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock
from syncmesh.store.sqlite import SqliteStore, tracking
from tests.helpers import ManualClock, run_cli
from tests.helpers import sqlite3_shell as shell

CLI_TIMEOUT_S = 60
BASE_MS = 1_700_000_000_000
NOCASE_SCHEMA = "CREATE TABLE people (id TEXT COLLATE NOCASE PRIMARY KEY, name TEXT)"


def make_db(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(NOCASE_SCHEMA)
        connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, v)")
    connection.close()


def test_track_refuses_a_nocase_key_with_the_reason_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    result = run_cli("track", str(db), "people", timeout_s=CLI_TIMEOUT_S)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    said = result.stdout + result.stderr
    assert "primary key column 'id' has COLLATE NOCASE" in said, said
    assert "Recreate the table with a BINARY key" in said, said
    # The file is as it was: the table is neither tracked nor given triggers.
    assert shell(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'") == "0\n"
    assert run_cli("track", str(db), "items", timeout_s=CLI_TIMEOUT_S).returncode == 0
    assert shell(db, "SELECT name FROM _syncmesh_tables ORDER BY name") == "items\n"


def test_config_check_names_a_nocase_key(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    config = tmp_path / "syncmesh.toml"
    config.write_text(
        f'[node]\ndatabase = "{db.as_posix()}"\n[tables]\ntrack = ["items", "people"]\n'
    )
    result = run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 1
    assert "tables.track: table 'people': primary key column 'id' has COLLATE NOCASE" in (
        result.stderr
    ), result.stderr
    assert "'items'" not in result.stderr


def test_a_nocase_key_tracked_before_the_refusal_keeps_syncing_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    clock = HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
    # As tracked by a version without the refusal.
    with monkeypatch.context() as patch:
        patch.setattr(tracking, "refuse_key_collations", lambda connection, spec: None)
        store = SqliteStore.open(db, clock=clock)
        store.init()
        store.track(["people"])
        store.close()
    config = tmp_path / "syncmesh.toml"
    config.write_text(f'[node]\ndatabase = "{db.as_posix()}"\n[tables]\ntrack = ["people"]\n')
    result = run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    store = SqliteStore.open(db, clock=clock)
    said = " ".join(store.tracked_table_warnings())
    store.close()
    assert "tracked table 'people': primary key column 'id' has COLLATE NOCASE" in said


# -- keys declared without a type (issue 12, defect 3: 1 and 1.0) ---------------------

UNTYPED_SCHEMA = "CREATE TABLE things (id PRIMARY KEY, name TEXT)"


def test_track_refuses_a_key_without_a_type_with_the_reason_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    shell(db, UNTYPED_SCHEMA)
    result = run_cli("track", str(db), "things", timeout_s=CLI_TIMEOUT_S)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "primary key column 'id' has no declared type, so it has no fixed affinity" in said
    assert "SQLite calls 1 and 1.0 (or 0 and -0.0) one key" in said, said
    assert "Recreate the table with the key's type declared" in said, said
    assert shell(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'") == "0\n"
    # A key declared BLOB (binary ids) is accepted, with a warning to keep numbers out.
    shell(db, "CREATE TABLE blobs (id BLOB PRIMARY KEY DEFAULT (randomblob(16)), name TEXT)")
    accepted = run_cli("track", str(db), "blobs", timeout_s=CLI_TIMEOUT_S)
    assert accepted.returncode == 0, accepted.stderr
    assert "Keep numbers out of it" in " ".join((accepted.stdout + accepted.stderr).split())


def test_a_key_without_a_type_tracked_before_the_refusal_keeps_syncing_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    shell(db, UNTYPED_SCHEMA)
    clock = HybridClock(ManualClock(BASE_MS), drift_ms_max=60_000)
    # As tracked by a version without the refusal.
    with monkeypatch.context() as patch:
        patch.setattr(tracking, "refuse_untyped_keys", lambda spec: None)
        store = SqliteStore.open(db, clock=clock)
        store.init()
        store.track(["things"])
        store.close()
    store = SqliteStore.open(db, clock=clock)
    try:
        said = " ".join(store.tracked_table_warnings())
        assert "tracked table 'things': primary key column 'id' has no declared type" in said
        assert "this one was tracked before and keeps syncing" in said
        [warning] = store.status().warnings
        assert "'things': primary key column 'id' has no declared type" in warning
        # It keeps syncing: tracked again (as `serve` does) and captured.
        store.track(["things"])
        store.connection.execute("INSERT INTO things VALUES ('k', 'still captured')")
        assert store.capture() == 1
    finally:
        store.close()
