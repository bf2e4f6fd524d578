"""A 30 MB row between two real nodes: the session stays up and the row arrives.

New-user report: one ~30 MB TEXT row, written with the sqlite3 shell, made
the sessions drop on PONG timeouts, again at each retry.  aiohttp answers a
ping only inside `receive()`, and the session did not call it while it
decoded and applied the batch; the sender's loop also compressed the frame
itself.  How long the apply takes depends on the machine (its disk, its
load: the user's took longer than the pong's 2.5 s); here an application
on b holds a write transaction for 2.5 s when the row comes, so the apply
waits for it, as on a busy machine, and the heartbeat is 1 s (a pong must
come within 0.5 s).  Before the fix the session dropped in every run.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import sqlite3_shell
from tests.nodeproc import Cluster, make_db, query, wait_for

SCHEMA = "CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT)"
ROW_CHARS = 30 << 20  # hex of 15 MiB of random bytes: 30 MiB of TEXT
ARRIVAL_S = 20.0
APP_TRANSACTION_S = 2.5  # the application's write transaction on b (its workload, not a wait)
HEARTBEAT = {"SYNCMESH_PEERS_HEARTBEAT_S": "1.0"}


@pytest.mark.multiprocess
def test_a_30_mb_row_arrives_without_the_session_dropping(cluster: Cluster, tmp_path: Path) -> None:
    for name in "ab":
        make_db(tmp_path / f"{name}.db", SCHEMA)
    a = cluster.node("a", env=HEARTBEAT)
    b = cluster.node("b", peers=[a], env=HEARTBEAT)
    cluster.start(a, b)
    wait_for(
        lambda: [p["state"] for p in b.status()["peers"]] == ["streaming"],
        timeout_s=10,
        what="b streaming with a",
    )
    with contextlib.closing(sqlite3.connect(tmp_path / "b.db", isolation_level=None)) as app:
        app.execute("BEGIN IMMEDIATE")  # b's application, in a long write transaction
        sqlite3_shell(
            tmp_path / "a.db",
            f"INSERT INTO docs VALUES ('big', hex(randomblob({ROW_CHARS // 2})))",
        )
        started = time.monotonic()
        time.sleep(APP_TRANSACTION_S)
        app.execute("COMMIT")
    wait_for(
        lambda: (
            query(tmp_path / "b.db", "SELECT length(body) FROM docs WHERE id = 'big'")
            == [(ROW_CHARS,)]
        ),
        timeout_s=ARRIVAL_S,
        what="the 30 MB row at b",
    )
    arrived_s = time.monotonic() - started
    assert query(tmp_path / "a.db", "SELECT body FROM docs") == query(
        tmp_path / "b.db", "SELECT body FROM docs"
    )
    for node in (a, b):
        log = node.log_text()
        assert "No PONG" not in log, f"{node.name} (row arrived after {arrived_s:.1f} s):\n{log}"
        assert " ended: " not in log, f"{node.name}: a session ended:\n{log}"
    assert cluster.internal_errors() == []
