"""Secure by default: no plain HTTP off loopback, a bearer token for an exposed API.

The refusals are checked before anything is bound (`--listen 0.0.0.0:PORT`
while a socket of the test holds that port: the answer must be the TLS
refusal, not "address in use").  The token is checked on a real node whose
API listens on 127.0.0.1 with `api_require_token`, the same middleware that
guards an API off loopback.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import stat
from pathlib import Path

import aiohttp
import pytest

import syncmesh.api.http as http_api
from syncmesh.api import running_node
from syncmesh.cli.config import load_settings, node_config
from syncmesh.errors import ConfigError
from syncmesh.node import NodeConfig
from syncmesh.node.config import PeerConfig, Secret, is_loopback
from syncmesh.store.sqlite import SqliteStore
from syncmesh.transport import TlsFiles
from tests.helpers import run_cli, wait_until
from tests.test_node import converged, execute, make_db

TOKEN = "s3cret-token-for-tests-0123456789"


def settings(**env: str) -> NodeConfig:
    environ = {"SYNCMESH_NODE_DATABASE": "a.db", **env}
    return node_config(load_settings(None, environ=environ))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("example.com", False),
        ("192.0.2.7", False),  # TEST-NET-1 (documentation range), never routed
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_listen_without_tls_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="without TLS") as caught:
        settings(SYNCMESH_NODE_LISTEN="0.0.0.0:7401", SYNCMESH_API_TOKEN=TOKEN)
    message = str(caught.value)
    assert "syncmesh tls init" in message
    assert "--insecure-no-tls" in message
    assert "127.0.0.1" in message


def test_the_insecure_flag_allows_it_with_a_loud_warning() -> None:
    config = settings(
        SYNCMESH_NODE_LISTEN="0.0.0.0:7401",
        SYNCMESH_NODE_INSECURE_NO_TLS="true",
        SYNCMESH_API_TOKEN=TOKEN,
    )
    warnings = config.check_exposure()
    assert len(warnings) == 1
    assert warnings[0].startswith("INSECURE")


def test_an_api_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="bearer token"):
        settings(SYNCMESH_API_LISTEN="0.0.0.0:7402")
    config = settings(SYNCMESH_API_LISTEN="0.0.0.0:7402", SYNCMESH_API_TOKEN=TOKEN)
    assert config.token_required()
    assert config.api_token == Secret(TOKEN)
    assert TOKEN not in repr(config)


def test_the_token_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    config = settings(SYNCMESH_API_TOKEN_FILE=str(path), SYNCMESH_API_REQUIRE_TOKEN="1")
    assert config.api_token == Secret(TOKEN)
    with pytest.raises(ConfigError, match="once"):
        settings(SYNCMESH_API_TOKEN_FILE=str(path), SYNCMESH_API_TOKEN=TOKEN)
    with pytest.raises(ConfigError, match="16 characters"):
        settings(SYNCMESH_API_TOKEN="short")


def test_rights_without_tls_are_refused() -> None:
    config = NodeConfig(
        database_path="a.db", peers=(PeerConfig(name="b", send=frozenset({"items"})),)
    )
    with pytest.raises(ConfigError, match="need TLS"):
        config.check_exposure()


def test_with_tls_every_peer_is_named_and_https() -> None:
    tls = TlsFiles(cert="c", key="k", ca="a")
    with pytest.raises(ConfigError, match="needs a name"):
        NodeConfig(database_path="a.db", tls=tls, peer_urls=("https://x:1",)).check_exposure()
    with pytest.raises(ConfigError, match="https"):
        NodeConfig(
            database_path="a.db", tls=tls, peers=(PeerConfig(name="b", url="http://x:1"),)
        ).check_exposure()


def test_serve_refuses_before_binding(tmp_path: Path) -> None:
    """Goal: the refusal comes first: a port we hold would otherwise say "in use"."""
    database = tmp_path / "a.db"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("0.0.0.0", 0))  # bound, never listening: nothing can connect
        port = held.getsockname()[1]
        result = run_cli("serve", str(database), "--listen", f"0.0.0.0:{port}")
    assert result.returncode == 1, result.stderr
    assert "without TLS" in result.stderr
    assert "in use" not in result.stderr
    assert not database.exists(), "the node opened its file before refusing"


def test_config_check_masks_the_token(tmp_path: Path) -> None:
    path = tmp_path / "syncmesh.toml"
    path.write_text(f'[node]\ndatabase = "a.db"\n[api]\ntoken = "{TOKEN}"\n')
    os.chmod(path, 0o600)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert 'token = "***"' in result.stdout


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(original(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    expected = TOKEN.encode()
    assert http_api.token_matches(f"Bearer {TOKEN}", expected)
    assert not http_api.token_matches(f"Bearer {TOKEN}x", expected)
    assert not http_api.token_matches(f"Basic {TOKEN}", expected)
    assert not http_api.token_matches("", expected)
    assert len(calls) == 4, "every check, even of a wrong scheme, goes through compare_digest"


async def test_the_api_asks_for_the_token_and_never_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Goal: 401 without the right token on every data route; health and page stay open;
    peers still sync (the WebSocket is not an API route); the token is never logged."""
    caplog.set_level(logging.DEBUG)
    paths = [make_db(tmp_path / f"{name}.db") for name in "ab"]
    guarded = NodeConfig(
        database_path=str(paths[0]),
        listen_port=0,
        api_require_token=True,
        api_token=Secret(TOKEN),
        heartbeat_s=1.0,
        backoff_max_s=0.5,
    )
    async with running_node(guarded) as node_a:
        peer = NodeConfig(
            database_path=str(paths[1]), listen_port=0, peer_urls=(f"http://{node_a.listen}",)
        )
        async with running_node(peer), aiohttp.ClientSession() as client:
            await execute_async(paths[1])
            await wait_until(lambda: converged(*paths, rows=1), 20, "b's row to reach a")
            base = f"http://{node_a.listen}"
            for path in ("/v1/status", "/v1/quarantine", "/v1/throughput", "/metrics"):
                for headers in ({}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
                    async with client.get(base + path, headers=headers) as answer:
                        assert answer.status == 401, (path, headers)
                        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                async with client.get(
                    base + path, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as answer:
                    assert answer.status == 200, path
            for path in ("/v1/health", "/", "/dashboard/app.js"):
                async with client.get(base + path) as answer:
                    assert answer.status == 200, path
    assert TOKEN not in caplog.text
    assert TOKEN[:-1] not in caplog.text


async def execute_async(path: Path) -> None:
    import asyncio

    await asyncio.to_thread(execute, path, "INSERT INTO items VALUES ('b', 'b', 1)")


def test_a_new_database_file_is_private(tmp_path: Path) -> None:
    """Goal: the file (and its WAL and shared-memory files) 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        store = SqliteStore.open(tmp_path / "new.db")
        try:
            store.init()
            modes = {
                path.name: stat.S_IMODE(os.stat(path).st_mode)
                for path in tmp_path.iterdir()
                if path.name.startswith("new.db")
            }
        finally:
            store.close()
    finally:
        os.umask(old)
    assert modes["new.db"] == 0o600, modes
    assert all(mode == 0o600 for mode in modes.values()), modes
