"""The node's collection rounds and membership gossip, on in-memory nodes (ADR 0015).

A star: b and c dial a, so b learns of c's holdings only through a's
gossip (HELLO's membership, then MEMBERS).  The multi-process test with
the sqlite3 shell is tests/test_lifecycle_multiprocess.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from syncmesh.node import Node
from syncmesh.transport.memory import MemoryNetwork
from tests.helpers import wait_until
from tests.memory_nodes import memory_config, memory_nodes
from tests.test_node import execute, make_db

TIMEOUT_S = 30.0


def _shadow(path: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(connection.execute("SELECT k0, cl FROM _syncmesh_shadow_items ORDER BY k0"))


async def _tombstones(path: Path) -> int:
    return sum(1 for _key, cl in await asyncio.to_thread(_shadow, path) if cl % 2 == 0)


async def test_tombstones_go_once_every_node_holds_the_delete_and_gossip_reaches_all(
    tmp_path: Path,
) -> None:
    a, b, c = (make_db(tmp_path / f"{name}.db") for name in "abc")
    fast = {"lifecycle_interval_s": 0.2}
    configs = {
        "a": memory_config(a, **fast),
        "b": memory_config(b, "a", **fast),
        "c": memory_config(c, "a", **fast),
    }
    async with memory_nodes(MemoryNetwork(), configs) as nodes:
        await asyncio.to_thread(execute, b, "INSERT INTO items VALUES ('k', 'x', 1)")
        await asyncio.to_thread(execute, c, "INSERT INTO items VALUES ('j', 'y', 2)")
        await wait_until(
            lambda: all(len(_shadow(path)) == 2 for path in (a, b, c)), TIMEOUT_S, "the inserts"
        )
        await asyncio.to_thread(execute, b, "DELETE FROM items WHERE id = 'k'")
        await wait_until(
            lambda: all(_shadow(path) == [("j", 1)] for path in (a, b, c)),
            TIMEOUT_S,
            "the tombstone of 'k' collected at every node",
        )
        # b never talks to c: it knows c's vector from a's gossip alone.
        known = await nodes["b"].worker.call(nodes["b"].store.membership)
        c_site = await nodes["c"].worker.call(lambda: nodes["c"].store.site_id)
        assert known.seen[c_site], "b learned c's vector by gossip"
        assert nodes["b"].lifecycle.collected == 1
        assert nodes["b"].lifecycle.gossip_sent > 0
        # Key reuse after the collection: the new life wins everywhere.
        await asyncio.to_thread(execute, c, "INSERT INTO items VALUES ('k', 'again', 3)")
        await wait_until(
            lambda: all(("k", 3) in _shadow(path) for path in (a, b, c)),
            TIMEOUT_S,
            "the re-insert, in a life above the collected one",
        )


async def test_an_offline_node_holds_back_and_a_forgotten_one_is_refused(tmp_path: Path) -> None:
    a, b, c = (make_db(tmp_path / f"{name}.db") for name in "abc")
    fast = {"lifecycle_interval_s": 0.2}
    network = MemoryNetwork()
    async with memory_nodes(
        network, {"a": memory_config(a, **fast), "c": memory_config(c, "a", **fast)}
    ) as first:
        await asyncio.to_thread(execute, a, "INSERT INTO items VALUES ('k', 'x', 1)")
        await wait_until(lambda: len(_shadow(c)) == 1, TIMEOUT_S, "c has the row")
        c_site = await first["c"].worker.call(lambda: first["c"].store.site_id)
    # c is gone; a and b go on, and delete.
    configs = {"a": memory_config(a, **fast), "b": memory_config(b, "a", **fast)}
    async with memory_nodes(network, configs) as nodes:
        await wait_until(lambda: len(_shadow(b)) == 1, TIMEOUT_S, "b has the row")
        await asyncio.to_thread(execute, b, "DELETE FROM items WHERE id = 'k'")
        await wait_until(
            lambda: all(_shadow(path) == [("k", 2)] for path in (a, b)), TIMEOUT_S, "the delete"
        )
        node_a: Node = nodes["a"]
        await wait_until(lambda: node_a.lifecycle.passes >= 3, TIMEOUT_S, "a few collection passes")
        assert await _tombstones(a) == 1, "c (offline) does not hold the delete: kept"
        status = await node_a.worker.call(node_a.store.status)
        assert status.lifecycle is not None
        assert status.lifecycle.holding_back == c_site
        assert await node_a.worker.call(node_a.store.forget_site, c_site)
        await wait_until(
            lambda: all(_shadow(path) == [] for path in (a, b)),
            TIMEOUT_S,
            "the tombstone collected at a and, by gossip of the forget, at b",
        )
    # c comes back, with its live row of 'k': refused at both, with the fix.
    configs = {
        "a": memory_config(a, **fast),
        "b": memory_config(b, "a", **fast),
        "c": memory_config(c, "a", "b", **fast),
    }
    async with memory_nodes(network, configs) as nodes:

        async def refused_by_both() -> bool:
            peers = (await nodes["c"].statistics()).peers
            return len(peers) == 2 and all("was forgotten" in peer.last_error for peer in peers)

        await wait_until(refused_by_both, TIMEOUT_S, "c refused by a and b")
        # Its live row of 'k' did not come back: it never got past the handshake.
        assert _shadow(a) == []
        assert _shadow(b) == []


async def test_a_node_restored_from_before_a_collection_is_refused(tmp_path: Path) -> None:
    """Rule 3: a file older than the horizon (slept past it, or restored) would bring rows back."""
    a, b = (make_db(tmp_path / f"{name}.db") for name in "ab")
    old_copy = tmp_path / "b-backup.db"
    fast = {"lifecycle_interval_s": 0.2}
    network = MemoryNetwork()
    configs = {"a": memory_config(a, **fast), "b": memory_config(b, "a", **fast)}
    async with memory_nodes(network, configs) as nodes:
        await asyncio.to_thread(execute, a, "INSERT INTO items VALUES ('k', 'x', 1)")
        await wait_until(lambda: len(_shadow(b)) == 1, TIMEOUT_S, "b has the row")
        # A backup of b's file while it holds the live row (SQLite's backup API).
        with (
            contextlib.closing(sqlite3.connect(b)) as source,
            contextlib.closing(sqlite3.connect(old_copy)) as target,
        ):
            source.backup(target)
        await asyncio.to_thread(execute, a, "DELETE FROM items WHERE id = 'k'")
        await wait_until(
            lambda: _shadow(a) == [] and _shadow(b) == [],
            TIMEOUT_S,
            "the tombstone of 'k' collected at a and b",
        )
        assert nodes["a"].lifecycle.collected == 1
    old_copy.replace(b)  # b's file restored from the backup: 'k' alive again there
    async with memory_nodes(network, configs) as nodes:

        async def refused() -> bool:
            peers = (await nodes["b"].statistics()).peers
            return bool(peers) and "slept past the GC horizon" in peers[0].last_error

        await wait_until(refused, TIMEOUT_S, "b refused, with the reason")
        assert _shadow(a) == [], "the deleted row did not come back to a"
