"""`syncmesh join` holds the serve lock while it replaces the file (node.lockfile).

Real `syncmesh serve` processes and the real CLI.  A join onto a file that a
node serves must refuse, naming that node, and leave the file and the node
alone: join moves the file aside and puts another in its place, under a
node that would go on writing into the one moved aside.  And while a join
runs (its source is paused, so it waits for the snapshot), a `serve` of the
file it is replacing must refuse, naming the join, and `status` and every
other command that opens the file must say so without opening it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from syncmesh.node.lockfile import ServeLock, running_holder
from tests.nodeproc import HOST, Cluster, free_port, make_db, run_cli, wait_for
from tests.test_lifecycle_multiprocess import shell

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
TIMEOUT_S = 30.0


@pytest.mark.multiprocess
def test_join_refuses_a_file_a_node_serves(cluster: Cluster, tmp_path: Path) -> None:
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    shell(b_db, "INSERT INTO items VALUES ('b1', 'only at b')")
    a = cluster.node("a", a_db)
    b = cluster.node("b", b_db)
    cluster.start(a, b)
    b_site = b.status()["site_id"]

    refused = run_cli("join", str(b_db), "--from", a.url, check=False)

    assert refused.returncode != 0, refused.stdout
    assert f"served by a running node (pid {b.pid}" in refused.stderr, refused.stderr
    assert "stop that `syncmesh serve` before joining" in refused.stderr, refused.stderr
    # Nothing was replaced: the node serves the same file, with its own row.
    assert b.is_running()
    assert b.status()["site_id"] == b_site
    assert shell(b_db, "SELECT name FROM items WHERE id = 'b1'").strip() == "only at b"
    assert not list(tmp_path.glob("b.db.before-join*"))


@pytest.mark.multiprocess
def test_serve_refuses_a_file_a_join_is_replacing(cluster: Cluster, tmp_path: Path) -> None:
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    shell(a_db, "INSERT INTO items VALUES ('a1', 'from a')")
    a = cluster.node("a", a_db)
    cluster.start(a)
    new_db = tmp_path / "new.db"
    lock_file = tmp_path / "new.db.serve.lock"

    a.pause()  # the join asks a for its snapshot and waits for the answer
    join = subprocess.Popen(
        [sys.executable, "-m", "syncmesh", "join", str(new_db), "--from", a.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(
            lambda: lock_file.exists() and '"join"' in lock_file.read_text(encoding="utf-8"),
            TIMEOUT_S,
            "the join holding the serve lock",
        )
        holder = json.loads(lock_file.read_text(encoding="utf-8"))
        assert holder["pid"] == join.pid
        served = subprocess.run(
            [
                sys.executable,
                "-m",
                "syncmesh",
                "serve",
                str(new_db),
                "--create",
                "--listen",
                f"{HOST}:{free_port()}",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert served.returncode != 0, served.stderr
        assert "being replaced by `syncmesh join`" in served.stderr, served.stderr
        assert f"pid {join.pid}" in served.stderr, served.stderr
        # status says what happens to the file, and leaves it alone.
        shown = run_cli("status", str(new_db), check=False)
        assert shown.returncode == 1, shown.stdout
        assert f"`syncmesh join` (pid {join.pid}" in shown.stderr, shown.stderr
        assert "is replacing it" in shown.stderr, shown.stderr
        # So does every command that would open it: reading the file on its way
        # out, or making the join's empty lock file a database the join then
        # had to keep aside.
        for command in (
            ("init", str(new_db)),
            ("track", str(new_db), "items"),
            ("conflicts", str(new_db)),
            ("quarantine", "list", str(new_db)),
            ("verify", str(new_db), "--peer", a.url),
        ):
            opened = run_cli(*command, check=False)
            assert opened.returncode != 0, (command, opened.stdout)
            assert f"`syncmesh join` (pid {join.pid}" in opened.stderr, (command, opened.stderr)
            assert "is replacing it" in opened.stderr, (command, opened.stderr)
    finally:
        a.resume()
        out, err = join.communicate(timeout=TIMEOUT_S * 2)
    assert join.returncode == 0, out + err
    assert "joined as site" in out
    # The join's lock's empty file was no file to keep: nothing moved aside.
    assert "kept at" not in out, out
    assert not list(tmp_path.glob("new.db.before-join*"))
    assert not lock_file.exists()
    assert shell(new_db, "SELECT name FROM items WHERE id = 'a1'").strip() == "from a"


def test_a_reader_never_finds_the_lock_file_empty_while_its_node_rewrites_it(
    tmp_path: Path,
) -> None:
    """The lock file is put in place whole: a reader (`status FILE`, `running_holder`)
    that caught it between truncate and write found no node serving the file (a CI run
    read an empty file once).  A reader thread reads it while the lock is published
    again and again (bounded: 1,500 rewrites), and must always find the holder."""
    database = tmp_path / "a.db"
    lock = ServeLock(database)
    lock.acquire()
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set() and len(seen) < 200_000:
            seen.append(lock.path.read_text(encoding="utf-8"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(1_500):
            lock.publish(f"127.0.0.1:{index}", f"127.0.0.1:{index}", "http")
    finally:
        done.set()
        reader.join(timeout=30)
        lock.release()
    assert len(seen) > 100, "the reader read the file while it was rewritten"
    broken = [text for text in seen if not text.endswith("}\n")]
    assert broken == [], broken[:3]
    assert running_holder(database) is None  # released: the file is gone
