"""Guards against ordinary mistakes, and a status that never says "fine" when it is not.

Every test runs the real `syncmesh` command (a subprocess), as a user
would: `serve` on a typo, two `serve`s on one file, a node killed and
served again, `status FILE` with and without a node running, `config
check` on a table that does not exist and on a binary file, and `track`'s
progress line.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import run_cli, sqlite3_shell
from tests.nodeproc import Cluster, free_port, make_db, wait_converged, wait_for

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"
CLI_TIMEOUT_S = 30.0


def test_serve_refuses_a_missing_file_unless_create(tmp_path: Path) -> None:
    typo = tmp_path / "tpyo.db"
    result = run_cli("serve", str(typo), "--listen", "127.0.0.1:0", timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 1
    assert f"Error: {typo} does not exist" in result.stderr
    assert "syncmesh init" in result.stderr
    assert "--create" in result.stderr
    assert "Traceback" not in result.stderr
    assert not typo.exists(), "a refused serve must not create the file"


@pytest.mark.multiprocess
def test_serve_create_makes_the_file(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.node("a", tmp_path / "new.db", extra_args=["--create"])
    cluster.start(node)
    assert (tmp_path / "new.db").exists()
    assert node.status()["store"]["tables"] == {}


@pytest.mark.multiprocess
def test_a_second_serve_refuses_and_names_the_first(cluster: Cluster, tmp_path: Path) -> None:
    make_db(tmp_path / "a.db", SCHEMA)
    first = cluster.node("a")
    cluster.start(first)
    lock = json.loads((tmp_path / "a.db.serve.lock").read_text())
    assert lock["pid"] == first.pid
    assert lock["api"] == f"127.0.0.1:{first.port}"
    second = run_cli(
        "serve", str(tmp_path / "a.db"), "--listen", "127.0.0.1:0", timeout_s=CLI_TIMEOUT_S
    )
    assert second.returncode == 1
    assert f"already served by pid {first.pid}" in second.stderr
    assert f"http://127.0.0.1:{first.port}" in second.stderr
    assert first.is_running()
    first.stop()
    assert not (tmp_path / "a.db.serve.lock").exists(), "a clean stop removes the lock file"


@pytest.mark.multiprocess
def test_a_stale_lock_of_a_killed_node_is_taken_over(cluster: Cluster, tmp_path: Path) -> None:
    make_db(tmp_path / "a.db", SCHEMA)
    first = cluster.node("a")
    cluster.start(first)
    first.kill()  # SIGKILL: the lock file stays behind, naming a dead pid
    lock_file = tmp_path / "a.db.serve.lock"
    assert json.loads(lock_file.read_text())["pid"] == first.pid
    again = cluster.node("a2", db=tmp_path / "a.db")
    cluster.start(again)
    assert json.loads(lock_file.read_text())["pid"] == again.pid


@pytest.mark.multiprocess
def test_status_file_shows_the_running_nodes_live_view_then_says_none_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: `status FILE` finds the node serving FILE (its lock file) and shows the live
    view and health; with no node it says so, and never "caught up": the figures are as
    of each peer's last batch, a time it names."""
    for name in "ab":
        make_db(tmp_path / f"{name}.db", SCHEMA)
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    with sqlite3.connect(tmp_path / "a.db", timeout=10) as connection:
        connection.execute("INSERT INTO items VALUES ('x', 'from a', 1)")
    connection.close()
    wait_converged([tmp_path / "a.db", tmp_path / "b.db"], "items", timeout_s=20)

    live = run_cli("status", str(tmp_path / "b.db"), timeout_s=CLI_TIMEOUT_S)
    assert live.returncode == 0, live.stderr
    assert f"served by pid {b.pid}" in live.stderr
    assert f"listening on 127.0.0.1:{b.port}" in live.stdout
    assert "streaming" in live.stdout
    assert re.search(r"health\s+ok", live.stdout)
    as_json = json.loads(
        run_cli("status", str(tmp_path / "b.db"), "--json", timeout_s=CLI_TIMEOUT_S).stdout
    )
    assert as_json["health"] == {"ok": True, "reasons": []}

    b.stop()
    a.stop()
    offline = run_cli("status", str(tmp_path / "b.db"), timeout_s=CLI_TIMEOUT_S)
    assert offline.returncode == 0, offline.stderr
    assert "no node is running on it" in offline.stderr
    assert "caught up" not in offline.stdout
    assert re.search(r"none as of \d\d:\d\d:\d\d UTC", offline.stdout), offline.stdout


@pytest.mark.multiprocess
def test_status_file_of_an_unhealthy_node_exits_2_with_the_reasons(
    cluster: Cluster, tmp_path: Path
) -> None:
    make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node("a")
    cluster.start(a)
    with sqlite3.connect(tmp_path / "a.db", timeout=10) as connection:
        # A rebuild with another primary key: rows of another key cannot be mapped,
        # so the table is not synced until someone fixes it (a lost trigger alone
        # the node puts back by itself).
        connection.executescript(
            'CREATE TABLE "new__items" (id TEXT, name TEXT PRIMARY KEY, qty INTEGER);'
            ' INSERT INTO "new__items" SELECT id, name, qty FROM items;'
            " DROP TABLE items;"
            ' ALTER TABLE "new__items" RENAME TO items;'
        )
        connection.execute("INSERT INTO items VALUES ('x', 'lost', 1)")
    connection.close()

    def reported() -> bool:
        return a.health()[0] == 503

    wait_for(reported, 20, "a 503 from a's health")
    result = run_cli("status", str(tmp_path / "a.db"), timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 2
    assert "unhealthy: table 'items'" in result.stderr, result.stderr
    assert "NOT ok" in result.stdout


@pytest.mark.multiprocess
def test_status_file_of_a_node_that_does_not_answer_exits_2(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a node that holds the file but does not answer (hung; here SIGSTOP) fails
    `status FILE` as a health check.  New-user report: it printed the file's view and
    exited 0, so a cron or systemd check built on it said all was well."""
    make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node("a")
    cluster.start(a)
    a.pause()
    try:
        result = run_cli("status", str(tmp_path / "a.db"), timeout_s=CLI_TIMEOUT_S)
    finally:
        a.resume()
    assert result.returncode == 2, result.stderr
    assert f"unhealthy: the node serving {tmp_path / 'a.db'} (pid {a.pid}) does not answer" in (
        result.stderr
    )
    answered = run_cli("status", str(tmp_path / "a.db"), timeout_s=CLI_TIMEOUT_S)
    assert answered.returncode == 0, answered.stderr


@pytest.mark.multiprocess
def test_status_never_shows_health_ok_alone_above_an_exit_2(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a peer that is down fails `status` at once, while the node's own health
    waits health.peer_down_s_max; the output says which check failed beside "health ok".
    New-user report: "health       ok" stood alone on stdout above an exit status 2."""
    make_db(tmp_path / "a.db", SCHEMA)
    nobody = f"http://127.0.0.1:{free_port()}"
    a = cluster.node("a", peers=[nobody])
    cluster.start(a)
    wait_for(
        lambda: any(peer["state"] == "backoff" for peer in a.status()["peers"]),
        20,
        "a's peer to be in backoff",
    )
    result = run_cli("status", str(tmp_path / "a.db"), timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 2, result.stderr
    assert re.search(r"health\s+ok", result.stdout)
    assert re.search(r"check\s+FAILED \(exit 2\)", result.stdout), result.stdout
    assert f"peer {nobody} is backoff" in result.stdout


def test_status_file_without_a_node_exits_2_for_a_table_it_cannot_follow(
    tmp_path: Path,
) -> None:
    """With no node running, the file's own problems still make the status unhealthy:
    the sqlite3 shell rebuilds a tracked table with another primary key."""
    db = make_db(tmp_path / "a.db", SCHEMA)
    healthy = run_cli("status", str(db), timeout_s=CLI_TIMEOUT_S)
    assert healthy.returncode == 0, healthy.stderr
    sqlite3_shell(
        db,
        'CREATE TABLE "new__items" (id TEXT, name TEXT PRIMARY KEY, qty INTEGER);'
        ' INSERT INTO "new__items" SELECT id, name, qty FROM items;'
        " DROP TABLE items;"
        ' ALTER TABLE "new__items" RENAME TO items;',
    )
    result = run_cli("status", str(db), timeout_s=CLI_TIMEOUT_S)
    assert "no node is running on it" in result.stderr
    assert result.returncode == 2, result.stderr
    assert "unhealthy: table 'items'" in result.stderr, result.stderr
    assert "primary key" in result.stderr


def test_track_prints_its_line_once_per_table(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as connection:
        connection.execute(SCHEMA)
        connection.execute("CREATE TABLE empty (id TEXT PRIMARY KEY)")
        connection.executemany(
            "INSERT INTO items VALUES (?, 'x', ?)", [(f"k{i}", i) for i in range(2_500)]
        )
    connection.close()
    result = run_cli("track", str(db), "items", "empty", timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert said.count("items: 2,500 existing rows joined the feed") == 1, said
    assert said.count("empty: 0 existing rows joined the feed") == 1, said


def test_config_check_names_a_missing_table_and_one_without_a_key(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as connection:
        connection.execute(SCHEMA)
        connection.execute("CREATE TABLE logs (line TEXT)")
    connection.close()
    config = tmp_path / "syncmesh.toml"
    config.write_text(
        f'[node]\ndatabase = "{db.as_posix()}"\n[tables]\ntrack = ["items", "itmes", "logs"]\n'
    )
    result = run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 1
    assert "table 'itmes' does not exist" in result.stderr
    assert "'logs'" in result.stderr
    assert "PRIMARY KEY" in result.stderr.upper()
    assert "'items'" not in result.stderr
    config.write_text(f'[node]\ndatabase = "{db.as_posix()}"\n[tables]\ntrack = ["items"]\n')
    assert run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S).returncode == 0


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b'[node]\ndatabase = "caf\xe9.db"\n'],
    ids=["binary", "latin-1"],
)
def test_config_check_of_a_binary_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "syncmesh.toml"
    config.write_bytes(content)
    for command in (["config", "check"], ["serve", "--config"]):
        result = run_cli(*command, str(config), timeout_s=CLI_TIMEOUT_S)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: ")
        assert "not UTF-8" in lines[0]


def test_demo_shows_its_rows_as_a_table_not_tuples() -> None:
    result = run_cli("demo", "--rows", "5", timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+id\s+name\s+qty\s+note$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^\s+[0-9a-f]{32}\s+\w row \d+\s+\d+\s+\d+ bytes$", result.stdout, re.M)
    # No Python tuples such as ('013d...', 'a row 40', 40, 'integer', b'\x01(').
    assert not re.search(r"^\s*\('", result.stdout, re.MULTILINE), result.stdout
    assert "b'\\x" not in result.stdout


def test_hello_carries_columns_and_decodes_without_them() -> None:
    """HELLO's optional columns: sent, decoded, absent from older peers, bounded."""
    import msgpack

    from syncmesh.errors import ProtocolError
    from syncmesh.protocol import PROTOCOL_VERSION, Hello, decode, encode

    hello = Hello(
        PROTOCOL_VERSION,
        "a" * 32,
        "i" * 32,
        "f" * 16,
        ("items",),
        7,
        {},
        {"items": ("id TEXT key",)},
    )
    assert decode(encode(hello)) == hello
    older = Hello(PROTOCOL_VERSION, "a" * 32, "i" * 32, "f" * 16, ("items",), 7, {})
    decoded = decode(encode(older))
    assert isinstance(decoded, Hello)
    assert decoded.columns == {}
    plain = {
        "t": "hello",
        "v": PROTOCOL_VERSION,
        "site": "a" * 32,
        "inc": "i",
        "fp": "f",
        "tables": ["items"],
        "head": 7,
        "vv": {},
        "cols": {"items": [1, 2]},
    }
    with pytest.raises(ProtocolError, match="cols"):
        decode(encode(older)[:1] + msgpack.packb(plain))
