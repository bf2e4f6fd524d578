"""The `restore` fault with a UNIQUE collision in a quarantine (found by `syncmesh chaos`).

`syncmesh chaos --seed 4 --only 1 --nodes 3 --duration 6 --faults-per-schedule 4
--faults restore,kill,reset,pause,isolate --adversarial unique,negzero,fk`: a node
whose file was replaced by an older copy never got back orders it wrote after
the copy, although both other nodes held them (held-write, convergence,
liveness).  Restore detection compares a peer's HELLO claim about our own
writes with what our file holds; the peers had quarantined an earlier row of
ours (a UNIQUE collision), and a quarantined row caps the vector below its
stamp, so their claim about our writes stayed below the copy and nothing was
detected.  The fix: HELLO also carries `held`, per site the greatest entry
reaching-head batches showed before the quarantine's cap, and the restore
check reads our entry of it (ADR 0006, residual risk 4).  `held` is a field
of its own: HELLO's vector, which membership and tombstone collection read
too, stays capped.  The restored node stays in restore mode until a peer's
vector (not its `held` claim) reaches the floor, which p's does only once
the collision is resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from pathlib import Path

from syncmesh.transport.memory import MemoryNetwork
from tests.helpers import wait_until
from tests.memory_nodes import memory_config, memory_nodes
from tests.test_node import execute, make_db

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, email TEXT UNIQUE, qty INTEGER)"
TIMEOUT_S = 20.0


def held(path: Path, key: str) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT 1 FROM items WHERE id = ?", (key,)).fetchone() is not None


def quarantined(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[0])


def back_up(source: Path, target: Path) -> None:
    """A consistent copy of a live file (SQLite's backup API), as the fault takes it."""
    with (
        contextlib.closing(sqlite3.connect(source)) as live,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        live.backup(copy)


def put_back(copy: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, target)


async def test_restore_fault_a_quarantined_collision_does_not_hide_the_lost_writes(
    tmp_path: Path,
) -> None:
    """Goal: a node restored from a copy gets back its writes a peer holds, whatever that
    peer holds in quarantine.

    Method: n and p each insert a row with the same email before they meet:
    each quarantines the other's (UNIQUE).  n's file is copied; n then writes
    `lost`, which p applies.  n is stopped, its file replaced by the copy,
    and started again: it must detect the restore and get `lost` back.
    """
    n_db = make_db(tmp_path / "n.db", SCHEMA)
    p_db = make_db(tmp_path / "p.db", SCHEMA)
    execute(n_db, "INSERT INTO items VALUES ('from-n', 'same@example.com', 1)")
    execute(p_db, "INSERT INTO items VALUES ('from-p', 'same@example.com', 2)")
    network = MemoryNetwork()
    async with memory_nodes(network, {"p": memory_config(p_db)}):
        async with memory_nodes(network, {"n": memory_config(n_db, "p")}):
            await wait_until(
                lambda: quarantined(p_db) == 1 and quarantined(n_db) == 1,
                TIMEOUT_S,
                "each side to quarantine the other's colliding row",
            )
            await asyncio.to_thread(back_up, n_db, tmp_path / "copy.db")
            execute(n_db, "INSERT INTO items VALUES ('lost', 'own@example.com', 3)")
            await wait_until(lambda: held(p_db, "lost"), TIMEOUT_S, "p to hold n's write")
        put_back(tmp_path / "copy.db", n_db)
        assert not held(n_db, "lost")
        async with memory_nodes(network, {"n": memory_config(n_db, "p")}):
            await wait_until(
                lambda: held(n_db, "lost"),
                TIMEOUT_S,
                "the restored node to get back the write p held",
            )
            assert not held(p_db, "from-n")  # the collision still waits at p
