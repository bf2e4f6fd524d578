"""Peers with different message limits (issue 12): a node never sends what its peer cannot take.

Each node says in HELLO how many rows and bytes one message to it may
hold (`limits.rows_per_message_max`, `limits.message_bytes_max`); the
sender cuts its batches to the lower of its own limits and the peer's,
splitting a seq group when one group alone is too big.  Before, the
receiver refused the same batch on every session, for ever.

The real-process version (rows, set through the environment) is
tests/test_integrity_nodes.py::test_peers_with_different_row_limits_still_sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

from syncmesh.node import NodeConfig
from syncmesh.node.session import SendLimits
from syncmesh.protocol import PROTOCOL_VERSION, Hello
from syncmesh.transport.memory import MemoryNetwork
from tests.helpers import wait_until
from tests.memory_nodes import memory_config, memory_nodes
from tests.test_node import dump, make_db

TIMEOUT_S = 30.0
ROWS = 30
VALUE_BYTES = 1_000  # random bytes: zstd cannot shrink them below the limit


def _insert_wide_rows(path: Path) -> None:
    """ROWS rows of VALUE_BYTES random bytes each, in one transaction: one seq group."""
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(f"k{index}", os.urandom(VALUE_BYTES), index) for index in range(ROWS)],
        )


async def test_a_peer_with_a_lower_byte_limit_gets_every_row(tmp_path: Path) -> None:
    """Goal: 30 KB written in one transaction reach a node that takes 4 KB per message.

    Method: the sender runs at the default limit (64 MiB), so before the
    fix it sent the group whole and the receiver refused it on every
    session.  Now the sender splits the group until each frame fits.
    """
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    configs = {
        "a": memory_config(a),
        "b": memory_config(b, "a", message_bytes_max=4_096),
    }
    async with memory_nodes(MemoryNetwork(), configs) as nodes:
        await asyncio.to_thread(_insert_wide_rows, a)

        async def all_arrived() -> bool:
            return len(await asyncio.to_thread(dump, b)) == ROWS

        await wait_until(all_arrived, TIMEOUT_S, "every wide row to reach the 4 KB node")
        assert await asyncio.to_thread(dump, b) == await asyncio.to_thread(dump, a)
        for peer in (await nodes["b"].statistics()).peers:
            assert "exceeds" not in peer.last_error, peer.last_error


def _hello(rows: int, size: int) -> Hello:
    return Hello(
        PROTOCOL_VERSION,
        "b",
        "inc",
        "fp",
        ("items",),
        0,
        {},
        rows_per_message_max=rows,
        message_bytes_max=size,
    )


def test_send_limits_are_the_lower_of_ours_and_the_peers() -> None:
    ours = NodeConfig(database_path="x.db", rows_per_message_max=500, message_bytes_max=8_192)
    assert SendLimits.for_peer(ours, _hello(10, 1 << 20)) == SendLimits(10, 8_192, True)
    assert SendLimits.for_peer(ours, _hello(1_000, 4_096)) == SendLimits(500, 4_096, True)
    assert SendLimits.for_peer(ours, _hello(1_000, 1 << 20)) == SendLimits(500, 8_192, False)


def test_a_peer_that_says_no_limits_is_sent_within_ours() -> None:
    """A peer from before the field (0: not said) is sent batches within our limits, as before."""
    ours = NodeConfig(database_path="x.db", rows_per_message_max=500, message_bytes_max=8_192)
    assert SendLimits.for_peer(ours, _hello(0, 0)) == SendLimits(500, 8_192, False)
