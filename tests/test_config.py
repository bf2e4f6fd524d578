"""syncmesh.toml: every key documented, precedence file < env < flags, clear refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from syncmesh.cli.config import SETTINGS, env_name, load_settings, node_config
from syncmesh.errors import ConfigError
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import run_cli
from tests.nodeproc import free_port

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
def test_every_setting_is_documented(setting) -> None:
    text = DOCS.read_text()
    assert f"`{setting.name}`" in text
    assert env_name(setting) in text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncmesh.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\ndatabase = "a.db"\n[limits]\nbatch_rows_max = 100\n'
        '[peers]\nurls = ["http://127.0.0.1:1"]\n',
    )
    settings = load_settings(path, environ={})
    assert settings["limits.batch_rows_max"] == 100
    assert settings["peers.urls"] == ["http://127.0.0.1:1"]
    env = {
        "SYNCMESH_LIMITS_BATCH_ROWS_MAX": "200",
        "SYNCMESH_PEERS_URLS": "http://127.0.0.1:2, http://127.0.0.1:3",
    }
    settings = load_settings(path, environ=env)
    assert settings["limits.batch_rows_max"] == 200
    assert settings["peers.urls"] == ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    settings = load_settings(path, environ=env, flags={"limits.batch_rows_max": 300})
    assert settings["limits.batch_rows_max"] == 300
    config = node_config(settings)
    assert config.batch_rows_max == 300
    assert config.peer_urls == ("http://127.0.0.1:2", "http://127.0.0.1:3")


@pytest.mark.parametrize(
    ("text", "environ", "key", "problem"),
    [
        ("[sync]\nspeed = 3\n", {}, "sync.speed", "unknown setting"),
        ("[limits]\nbatch_rows_max = 'many'\n", {}, "limits.batch_rows_max", "expected int"),
        ("[limits]\nbatch_rows_max = 0\n", {}, "limits.batch_rows_max", "at least 1"),
        ("[logging]\nformat = 'xml'\n", {}, "logging.format", "must be one of"),
        ("[peers]\nurls = 'http://x'\n", {}, "peers.urls", "list of strings"),
        ("node = 3\n", {}, "node", "[section]"),
        ("[sync]\n", {"SYNCMESH_SYNC_RELAY_HOLD_MS": "soon"}, "sync.relay_hold_ms", "not a number"),
        ("[peers]\nbackoff_initial_s = 9.0\n", {}, "peers.backoff_initial_s", "must not exceed"),
        ("[sync\n", {}, "syncmesh.toml", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, environ, key, problem) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(write(tmp_path, text), environ=environ)
    assert key in caught.value.key


def test_node_config_needs_a_database_and_valid_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database"):
        node_config(load_settings(None, environ={}))
    settings = load_settings(
        None, environ={"SYNCMESH_NODE_DATABASE": "a.db", "SYNCMESH_PEERS_URLS": "ftp://x"}
    )
    with pytest.raises(ConfigError, match="not an http"):
        node_config(settings)


run = run_cli


def test_config_check_prints_the_effective_settings_or_the_bad_key(tmp_path: Path) -> None:
    good = write(tmp_path, '[node]\ndatabase = "a.db"\n[sync]\nmax_clock_drift_s = 5\n')
    result = run("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert "max_clock_drift_s = 5.0" in result.stdout
    assert "batch_rows_max = 2000" in result.stdout
    bad = write(tmp_path, '[node]\ndatabase = "a.db"\n[sync]\nmax_clock_drift_s = -1\n')
    result = run("config", "check", str(bad))
    assert result.returncode == 1
    assert "sync.max_clock_drift_s" in result.stderr


def test_serve_from_a_config_file_tracks_tables_and_logs_json(tmp_path: Path) -> None:
    """Goal: a node runs from its file alone: it tracks [tables] and writes JSON logs."""
    database = tmp_path / "app.db"
    store = SqliteStore.open(database)
    store.connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    store.close()
    port = free_port()
    path = write(
        tmp_path,
        f'[node]\ndatabase = "{database.as_posix()}"\n'
        f'listen = "127.0.0.1:{port}"\n[tables]\ntrack = ["items"]\n'
        '[logging]\nformat = "json"\n',
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "syncmesh", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = _wait_for_status(port)
        assert status["store"]["tables"] == {"items": 0}
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("tracking table items" in entry["message"] for entry in logged), err
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in logged)


def _wait_for_status(port: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as r:
                body: dict[str, Any] = json.loads(r.read())
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_named_peers_tls_and_rights_from_the_file(tmp_path: Path, cluster_pki) -> None:
    files = cluster_pki.files("a")
    path = write(
        tmp_path,
        '[node]\ndatabase = "a.db"\n'
        f'[tls]\ncert = "{files.cert}"\nkey = "{files.key}"\nca = "{files.ca}"\n'
        '[peers.hq]\nurl = "https://127.0.0.1:1"\nsend = ["items"]\n'
        '[peers.shop2]\nreceive = ["items", "prices"]\n',
    )
    settings = load_settings(path, environ={}, flags={"peers.named": {"shop3": "https://x:2"}})
    config = node_config(settings)
    peers = {peer.name: peer for peer in config.peers}
    assert peers["hq"].send == frozenset({"items"})
    assert peers["hq"].receive is None
    assert peers["shop2"].url == ""
    assert peers["shop2"].may_receive("prices")
    assert not peers["shop2"].may_receive("salaries")
    assert peers["shop3"].url == "https://x:2"
    assert not peers["shop3"].restricted
    assert config.tls is not None
    assert config.tls.cert == files.cert


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[peers.hq]\nurl = "https://x:1"\nwrite = []\n', "peers.hq.write", "unknown key"),
        ('[peers."Bad Name"]\n', "peers.Bad Name", "site name"),
        ("[peers.hq]\nsend = 'items'\n", "peers.hq.send", "list of table names"),
        ("[node]\ninsecure_no_tls = 'yes'\n", "node.insecure_no_tls", "true or false"),
        ("[limits]\nmessage_bytes_max = 999999999\n", "limits.message_bytes_max", "at most"),
    ],
)
def test_bad_peer_tables_and_security_settings_name_the_key(tmp_path, text, key, problem) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert key in caught.value.key


def test_tls_needs_all_three_files() -> None:
    settings = load_settings(
        None, environ={"SYNCMESH_NODE_DATABASE": "a.db", "SYNCMESH_TLS_CERT": "a.crt"}
    )
    with pytest.raises(ConfigError, match="all three"):
        node_config(settings)


def test_a_config_file_that_is_not_toml_is_named_as_a_file_not_a_key(tmp_path: Path) -> None:
    """The message a user reads: "config file 'PATH': not valid TOML: ...", not "config key"."""
    path = write(tmp_path, "[peers\nurls = 1\n")
    result = run("serve", str(tmp_path / "a.db"), "--config", str(path))
    assert result.returncode != 0
    assert f"config file {str(path)!r}: not valid TOML" in result.stderr
    assert "config key" not in result.stderr
