"""Connection errors name the URL, the address and the cause in the user's words.

New-user report: `verify --peer http://...` and `join --from http://...`
to a node that was not running said "Cannot connect to host 127.0.0.1:7402
ssl:default [Connect call failed ('127.0.0.1', 7402)]" (aiohttp's
connection key, for a plain http URL), and `status --url` said "<urlopen
error [Errno 111] Connection refused>".  Here the real CLI against a port
nothing listens on, and against a listener that closes every connection
unanswered; and the sync dial against an HTTP server that is not a node.
All on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from syncmesh.errors import TransportError
from syncmesh.transport.websocket import dial
from tests.helpers import run_cli
from tests.nodeproc import free_port, make_db

CLI_TIMEOUT_S = 30.0
LIBRARY_WORDS = ("ssl:default", "Connect call failed", "urlopen error", "Errno", "Traceback")


def assert_plain(text: str) -> None:
    for words in LIBRARY_WORDS:
        assert words not in text, text


@pytest.fixture
def closing_listener() -> Iterator[int]:
    """A port whose listener accepts each connection, reads a little and closes it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1.0)
                with contextlib.suppress(OSError):
                    connection.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(timeout=5)
    server.close()


def test_cli_names_url_address_and_refusal_of_a_port_nothing_listens_on(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    make_db(db, "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runs = {
        "verify": run_cli("verify", str(db), "--peer", url, timeout_s=CLI_TIMEOUT_S),
        "join": run_cli("join", str(tmp_path / "b.db"), "--from", url, timeout_s=CLI_TIMEOUT_S),
        "status": run_cli("status", "--url", url, timeout_s=CLI_TIMEOUT_S),
    }
    for command, result in runs.items():
        assert result.returncode != 0, (command, result.stdout)
        said = result.stderr
        assert url in said, (command, said)
        assert f"cannot connect to 127.0.0.1:{port}: connection refused" in said, (command, said)
        assert "is the node running" in said, (command, said)
        assert_plain(said)
    # The failed join leaves no file behind: not the empty one its serve lock
    # created (a later `serve` without --create would take it for a database).
    assert not (tmp_path / "b.db").exists()
    assert not (tmp_path / "b.db.serve.lock").exists()


def test_cli_says_a_listener_closed_the_connection_unanswered(
    tmp_path: Path, closing_listener: int
) -> None:
    db = tmp_path / "a.db"
    make_db(db, "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)")
    url = f"http://127.0.0.1:{closing_listener}"
    result = run_cli("verify", str(db), "--peer", url, timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 2, result.stdout
    assert url in result.stderr
    assert f"127.0.0.1:{closing_listener} closed the connection without an answer" in (
        result.stderr
    ), result.stderr
    assert_plain(result.stderr)


async def test_dial_of_an_http_server_that_is_not_a_node_says_what_it_answered() -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(TransportError) as caught:
            await dial(url, heartbeat_s=5, frame_bytes_max=1 << 20, connect_timeout_s=5)
        said = str(caught.value)
        assert said.startswith(f"peer {url}: 127.0.0.1:{port} answered HTTP 404"), said
        assert "--listen address" in said
        assert_plain(said)
    finally:
        await runner.cleanup()
