"""The command line, run as users run it: the installed `syncmesh` entry point."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from syncmesh.cli import view
from syncmesh.cli.main import cli
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


DEFAULT_SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, v)"


def make_items(path: Path, schema: str = DEFAULT_SCHEMA) -> None:
    connection = sqlite3.connect(path)
    connection.execute(schema)
    if schema == DEFAULT_SCHEMA:
        connection.execute("INSERT INTO items VALUES ('existing', 1)")
    connection.commit()
    connection.close()


def test_init_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    first = run("init", str(db)).stdout
    second = run("init", str(db)).stdout
    assert first == second
    assert re.search(r"site id [0-9a-f]{32}", first)


def test_track_then_status_json(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_items(db)
    run("init", str(db))
    assert "tracking items" in run("track", str(db), "items").stdout
    status = json.loads(run("status", str(db), "--json").stdout)
    assert status["tables"] == {"items": 1}
    assert status["seq"] >= 1  # the existing row joined the feed
    assert re.fullmatch(r"[0-9a-f]{32}", status["site_id"])
    assert status["peers"] == []
    human = run("status", str(db)).stdout
    assert "items" in human
    assert status["site_id"] in human


def test_track_reports_how_many_existing_rows_joined_the_feed(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)")
        connection.executemany(
            "INSERT INTO items VALUES (?, 'x', ?)", [(f"k{i}", i) for i in range(60_000)]
        )
    connection.close()
    result = run("track", str(db), "items")
    said = result.stdout + result.stderr
    assert "items: 60,000 existing rows joined the feed in" in said
    assert "rows/s" in said


def test_track_refuses_a_table_without_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_items(db, "CREATE TABLE logs (line TEXT)")
    result = run("track", str(db), "logs", check=False)
    assert result.returncode == 1
    assert "no PRIMARY KEY" in result.stderr
    assert "randomblob" in result.stderr


def test_track_warns_about_risky_schemas(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_items(
        db,
        "CREATE TABLE items (id INT PRIMARY KEY, email TEXT UNIQUE,"
        " owner TEXT REFERENCES owners(id))",
    )
    result = run("track", str(db), "items")
    assert "is not allocated by SQLite, so the application picks its values" in result.stderr
    assert "UNIQUE" in result.stderr
    assert "FOREIGN KEY" in result.stderr


def test_unknown_table_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_items(db)
    assert "does not exist" in run("track", str(db), "nope", check=False).stderr
    assert "does not exist" in run("status", str(tmp_path / "missing.db"), check=False).stderr


def test_status_of_a_plain_sqlite_file_says_to_init(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_items(db)
    result = run("status", str(db), check=False)
    assert result.returncode == 1
    assert "syncmesh init" in result.stderr


def test_serve_rejects_bad_arguments(tmp_path: Path) -> None:
    db = str(tmp_path / "app.db")
    assert "HOST:PORT" in run("serve", db, "--listen", "nonsense", check=False).stderr
    assert "http://" in run("serve", db, "--peer", "ftp://x", check=False).stderr


def test_demo_converges() -> None:
    result = run("demo", "--rows", "20")
    assert "converged: 61 identical rows on all 3 nodes" in result.stdout


def _commands() -> dict[str, click.Command]:
    assert isinstance(cli, click.Group)
    return dict(cli.commands)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_complete_help(name: str) -> None:
    command = _commands()[name]
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert command.help, f"{name}: no help"
    assert len(command.help.split()) >= 8, f"{name}: help is too thin"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts}: option without help"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_and_option_is_documented(name: str) -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    assert f"syncmesh {name}" in text, f"docs/cli.md does not describe `syncmesh {name}`"
    for param in _commands()[name].params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in text, f"docs/cli.md does not mention {name} {opt}"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0 s"), (2_500, "2.5 s"), (9_999, "10 s"), (45_000, "45 s"), (240_000, "4 min")],
)
def test_status_durations_are_short(ms: int, text: str) -> None:
    assert view.duration(ms) == text


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 B"), (999, "999 B"), (1_234, "1.2 kB"), (5_600_000, "5.6 MB")]
)
def test_status_sizes_are_short(count: int, text: str) -> None:
    assert view.size(count) == text


def test_live_status_prints_peer_strings_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """A peer's address or error text that looks like rich markup is printed, not styled."""
    peer = {
        "site_id": "f" * 32,
        "address": "[bold]http://h:1[/bold]",
        "state": "backoff",
        "lag_ms": 1_500,
        "out_lag_changes": 12,
        "out_lag_ms": 3_000,
        "last_batch_ms": 0,
        "bytes_in": 2_048,
        "bytes_out": 10,
        "last_error": "[red]boom[/red]",
    }
    store = {"seq": 7, "quarantined_rows": 0, "schema_problems": [], "tables": {"items": 3}}
    status = {"site_id": "a" * 32, "listen": "127.0.0.1:7401", "store": store, "peers": [peer]}
    view.print_live_status(status)
    out = capsys.readouterr().out
    assert "f" * 32 in out
    assert "[bold]http://h:1[/bold]" in out
    assert "last error of " + "f" * 32 + ": [red]boom[/red]" in out
    assert "12 changes, 3 s" in out
    assert "2.0 kB / 10 B" in out


@pytest.mark.parametrize("verified_before", [False, True])
def test_status_says_the_verify_waits_for_a_peer_catching_up(
    capsys: pytest.CaptureFixture[str], verified_before: bool
) -> None:
    """No verdict while a peer catches up: the line says the verify waits, never that rows
    differ, with the last verdict's time if there was one (docs/verify.md)."""
    peer = {
        "site_id": "f" * 32,
        "address": "http://h:1",
        "state": "streaming",
        "lag_ms": 900,
        "out_lag_changes": 0,
        "out_lag_ms": 0,
        "last_batch_ms": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "last_error": "",
        "verify_waiting": "catching up: this node still reads the peer's feed, 900 ms",
    }
    if verified_before:
        peer |= {
            "verified_ms": 1,
            "verify_identical": False,
            "verify_divergent_rows": 0,
            "verify_unsettled_rows": 0,
            "verify_round_trips": 1,
            "verify_bytes": 100,
            "verify_error": "",
        }
    store = {"seq": 7, "quarantined_rows": 0, "schema_problems": [], "tables": {"items": 3}}
    status = {"site_id": "a" * 32, "listen": "127.0.0.1:7401", "store": store, "peers": [peer]}
    view.print_live_status(status)
    out = capsys.readouterr().out
    expected = f"verify against {'f' * 32} waits: catching up: this node still reads the peer's"
    assert expected in out, out
    assert "rows differ" not in out, out
    assert ("(last verified " in out) == verified_before, out


def test_status_names_a_peers_schema_differences(capsys: pytest.CaptureFixture[str]) -> None:
    """A schema difference is no refusal (ADR 0013), but `syncmesh status` tells it."""
    peer = {
        "site_id": "f" * 32,
        "address": "http://h:1",
        "state": "streaming",
        "lag_ms": 0,
        "out_lag_changes": 0,
        "out_lag_ms": 0,
        "last_batch_ms": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "last_error": "",
        "schema_differences": ["table 'items': column 'note' only here"],
    }
    store = {"seq": 7, "quarantined_rows": 0, "schema_problems": [], "tables": {"items": 3}}
    status = {"site_id": "a" * 32, "listen": "127.0.0.1:7401", "store": store, "peers": [peer]}
    view.print_live_status(status)
    out = capsys.readouterr().out
    assert f"schema differs from {'f' * 32}: table 'items': column 'note' only here" in out
