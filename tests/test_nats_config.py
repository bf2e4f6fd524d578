"""`[transport.nats]` and `serve --nats`: read, checked, and refused with the key and the fix.

No NATS server here: these are the settings' checks, which run before
anything connects (tests/test_nats.py runs the transport on real servers).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from syncmesh.api.http import fleet_link
from syncmesh.cli.config import load_settings, node_config, render
from syncmesh.errors import ConfigError
from syncmesh.node.config import FleetConfig
from tests.helpers import run_cli
from tests.nodeproc import make_db


def config_file(tmp_path: Path, nats_table: str) -> Path:
    path = tmp_path / "syncmesh.toml"
    path.write_text(f'[node]\ndatabase = "a.db"\n\n[transport.nats]\n{nats_table}', "utf-8")
    return path


def test_the_nats_table_becomes_the_fleet_config(tmp_path: Path) -> None:
    creds = tmp_path / "site.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n", "utf-8")
    path = config_file(
        tmp_path,
        'servers = ["nats://10.0.0.1:4222", "tls://10.0.0.2:4222"]\n'
        f'cluster = "shops"\ncredentials = "{creds}"\nreplicas = 1\n',
    )
    config = node_config(load_settings(path, environ={}))
    assert config.fleet == FleetConfig(
        servers=("nats://10.0.0.1:4222", "tls://10.0.0.2:4222"),
        cluster="shops",
        credentials=str(creds),
        replicas=1,
    )
    flags = {"transport.nats.servers": ["nats://127.0.0.1:4222"], "transport.nats.cluster": "x"}
    from_flags = node_config(load_settings(path, environ={}, flags=flags)).fleet
    assert from_flags is not None
    assert (from_flags.servers, from_flags.cluster) == (("nats://127.0.0.1:4222",), "x")
    rendered = tomllib.loads(render(load_settings(path, environ={})))
    assert rendered["transport"]["nats"]["cluster"] == "shops"


def test_without_servers_there_is_no_fleet(tmp_path: Path) -> None:
    assert (
        node_config(load_settings(None, environ={"SYNCMESH_NODE_DATABASE": "a.db"})).fleet is None
    )


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('servers = ["http://x:4222"]\n', "transport.nats.servers", "not a nats://HOST:PORT"),
        ('servers = ["nats://x"]\ncluster = "Shops!"\n', "transport.nats.cluster", "not a cluster"),
        ('servers = ["nats://x"]\ncredentials = "/nonexistent.creds"\n', "credentials", "not a"),
        ('servers = ["nats://x"]\nreplicas = 7\n', "transport.nats.replicas", "at most 5"),
        ('servers = ["nats://x"]\nsubject = "y"\n', "transport.nats.subject", "unknown setting"),
    ],
)
def test_bad_nats_settings_name_the_key(tmp_path: Path, table: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        node_config(load_settings(config_file(tmp_path, table), environ={}))
    assert key in caught.value.key


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x", "utf-8")
    path = config_file(tmp_path, f'servers = ["nats://x"]\ntls_cert = "{cert}"\n')
    with pytest.raises(ConfigError, match="needs its key"):
        node_config(load_settings(path, environ={}))


def test_the_environment_names_the_nats_settings(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        environ={
            "SYNCMESH_NODE_DATABASE": "a.db",
            "SYNCMESH_TRANSPORT_NATS_SERVERS": "nats://a:4222, nats://b:4222",
            "SYNCMESH_TRANSPORT_NATS_CLUSTER": "plants",
        },
    )
    fleet = node_config(settings).fleet
    assert fleet is not None
    assert fleet.servers == ("nats://a:4222", "nats://b:4222")
    assert fleet.cluster == "plants"


def test_without_nats_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # as if nats-py were not installed
    monkeypatch.delitem(sys.modules, "syncmesh.transport.nats", raising=False)
    with pytest.raises(ConfigError, match=r"syncmesh\[nats\]"):
        fleet_link(FleetConfig(servers=("nats://127.0.0.1:4222",)))


def test_serve_refuses_a_bad_nats_url_before_it_starts(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db", "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
    result = run_cli("serve", str(db), "--listen", "127.0.0.1:0", "--nats", "127.0.0.1:4222")
    assert result.returncode == 1
    assert "transport.nats.servers" in result.stderr
    assert "not a nats://HOST:PORT" in result.stderr
