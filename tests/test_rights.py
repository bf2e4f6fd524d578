"""Least privilege between sites: per peer, the tables it may send us and receive from us.

Real nodes in this process, over mutual TLS on 127.0.0.1 (rights are
keyed by the site name in the certificate).  A branch may read the price
list but not write it: its price rows are refused, counted, reported in
one log line, while its other rows in the same batch apply and the
session goes on.  A peer that may not receive a table never sees it.  And
the version vector stays true: rows refused from one peer still arrive
from another that may send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from syncmesh.api import running_node
from syncmesh.errors import TransportError
from syncmesh.node import Node, NodeConfig
from syncmesh.node.bootstrap import join
from syncmesh.node.config import PeerConfig
from syncmesh.store.sqlite import SqliteStore
from syncmesh.transport import TlsFiles, WebSocketConnector
from tests.helpers import rows_with_types, wait_until
from tests.tlsfiles import Pki

TIMEOUT_S = 30.0
SCHEMA = (
    "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER);"
    "CREATE TABLE prices (id TEXT PRIMARY KEY, price REAL)"
)


def make_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(SCHEMA)
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["items", "prices"])
    finally:
        store.close()
    return path


def write(path: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(sql)


def dump(path: Path, table: str) -> list[object]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(rows_with_types(connection, table))


def ids(path: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {str(row[0]) for row in connection.execute(f"SELECT id FROM {table}")}


def node_config(path: Path, tls: TlsFiles, *peers: PeerConfig) -> NodeConfig:
    return NodeConfig(
        database_path=str(path),
        listen_port=0,
        tls=tls,
        peers=peers,
        heartbeat_s=1.0,
        backoff_max_s=0.5,
        quarantine_retry_s=0.5,
    )


def url(node: Node) -> str:
    return f"https://{node.listen}"


async def holds(path: Path, table: str, *keys: str) -> bool:
    return set(keys) <= await asyncio.to_thread(ids, path, table)


async def test_a_branch_reads_the_price_list_but_cannot_write_it(
    tmp_path: Path, cluster_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Goal: b's price rows are refused at a, counted and logged once per batch; b's
    items in the same batch apply; the session streams on; a's prices reach b."""
    caplog.set_level(logging.INFO, logger="syncmesh")
    a_db, b_db = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    branch = PeerConfig(name="b", send=frozenset({"items"}))  # b may receive everything
    async with running_node(node_config(a_db, cluster_pki.files("a"), branch)) as node_a:
        hub = PeerConfig(name="a", url=url(node_a))
        async with running_node(node_config(b_db, cluster_pki.files("b"), hub)):
            # One transaction, so one batch: an item and a forged price.
            write(
                b_db,
                "INSERT INTO items VALUES ('i1', 'x', 1);"
                "INSERT INTO prices VALUES ('p-forged', 0.01)",
            )
            await wait_until(lambda: holds(a_db, "items", "i1"), TIMEOUT_S, "b's item at a")
            assert "p-forged" not in await asyncio.to_thread(ids, a_db, "prices")
            statistics = await node_a.statistics()
            assert statistics.rights_refused_rows == 1
            (peer,) = statistics.peers
            assert (peer.name, peer.rights_refused_rows, peer.state) == ("b", 1, "streaming")
            refusals = [r.getMessage() for r in caplog.records if "may not send" in r.message]
            assert refusals == [
                "refused 1 rows from site b: tables it may not send here: prices (1)"
            ]

            # The session goes on, both ways.
            write(a_db, "INSERT INTO prices VALUES ('p1', 9.5)")
            write(b_db, "INSERT INTO items VALUES ('i2', 'y', 2)")
            await wait_until(lambda: holds(b_db, "prices", "p1"), TIMEOUT_S, "a's price at b")
            await wait_until(lambda: holds(a_db, "items", "i2"), TIMEOUT_S, "b's 2nd item at a")
            (peer,) = (await node_a.statistics()).peers
            assert (peer.reconnects, peer.state) == (0, "streaming")
            # b keeps its forged row (its own write); a never gets it.
            assert "p-forged" in await asyncio.to_thread(ids, b_db, "prices")
            assert "p-forged" not in await asyncio.to_thread(ids, a_db, "prices")
            metrics = await _metrics(node_a)
            assert "syncmesh_peer_rights_refused_rows_total{address=" in metrics
            assert "syncmesh_rights_refused_rows_total 1.0" in metrics


async def test_a_peer_does_not_receive_tables_outside_its_rights(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: a leaves prices out of the feed it sends c; items still flow."""
    a_db, c_db = make_db(tmp_path / "a.db"), make_db(tmp_path / "c.db")
    write(a_db, "INSERT INTO prices VALUES ('p1', 1.0); INSERT INTO items VALUES ('i1', 'x', 1)")
    plant = PeerConfig(name="c", receive=frozenset({"items"}))
    async with running_node(node_config(a_db, cluster_pki.files("a"), plant)) as node_a:
        hub = PeerConfig(name="a", url=url(node_a))
        async with running_node(node_config(c_db, cluster_pki.files("c"), hub)):
            write(
                a_db,
                "INSERT INTO prices VALUES ('p2', 2.0); INSERT INTO items VALUES ('i2', 'y', 2)",
            )
            await wait_until(lambda: holds(c_db, "items", "i1", "i2"), TIMEOUT_S, "items at c")
            assert await asyncio.to_thread(dump, c_db, "prices") == []
            # c may send prices to a (a's rights for c do not restrict sending).
            write(c_db, "INSERT INTO prices VALUES ('p-c', 3.0)")
            await wait_until(lambda: holds(a_db, "prices", "p-c"), TIMEOUT_S, "c's price at a")


async def test_refused_rows_still_arrive_from_a_peer_that_may_send_them(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: the vector stays true.  c writes a price; b relays it to a, which refuses it
    (b may not send prices); a must not then claim to hold it, or c, dialling a later,
    would filter it out.  a must get the price from c."""
    paths = {name: make_db(tmp_path / f"{name}.db") for name in "abc"}
    a_peers = (PeerConfig(name="b", send=frozenset({"items"})), PeerConfig(name="c"))
    async with running_node(node_config(paths["a"], cluster_pki.files("a"), *a_peers)) as node_a:
        to_a = PeerConfig(name="a", url=url(node_a))
        b_config = node_config(paths["b"], cluster_pki.files("b"), to_a, PeerConfig(name="c"))
        async with running_node(b_config) as node_b:
            to_b = PeerConfig(name="b", url=url(node_b))
            async with running_node(node_config(paths["c"], cluster_pki.files("c"), to_b)):
                write(
                    paths["c"],
                    "INSERT INTO prices VALUES ('p-c', 7.0);"
                    "INSERT INTO items VALUES ('i-c', 'c', 1)",
                )
                await wait_until(
                    lambda: holds(paths["a"], "items", "i-c"), TIMEOUT_S, "c's item at a via b"
                )

                async def refused() -> bool:
                    return (await node_a.statistics()).rights_refused_rows >= 1

                await wait_until(refused, TIMEOUT_S, "a to refuse c's price relayed by b")
                # Settle: b's later batches (to head, with b's vector) reach a too.
                write(paths["b"], "INSERT INTO items VALUES ('i-b', 'b', 1)")
                await wait_until(
                    lambda: holds(paths["a"], "items", "i-b"), TIMEOUT_S, "b's item at a"
                )
            assert "p-c" not in await asyncio.to_thread(ids, paths["a"], "prices")
            # c comes back, now dialling a directly too.
            c_config = node_config(paths["c"], cluster_pki.files("c"), to_b, to_a)
            async with running_node(c_config):
                await wait_until(
                    lambda: holds(paths["a"], "prices", "p-c"), TIMEOUT_S, "c's price at a"
                )


async def _metrics(node: Node) -> str:
    from syncmesh.api.metrics import render

    return render(await node.statistics(), now_ms=node.clock.now_ms()).decode()


async def test_withheld_rows_still_arrive_from_a_peer_that_may_send_them(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal: the vector stays true the other way.  a keeps its prices from c, so it must
    not tell c its vector (which covers them): c would claim prices it never got, and b,
    which may send c everything, would filter them out."""
    paths = {name: make_db(tmp_path / f"{name}.db") for name in "abc"}
    a_peers = (PeerConfig(name="b"), PeerConfig(name="c", receive=frozenset({"items"})))
    async with running_node(node_config(paths["a"], cluster_pki.files("a"), *a_peers)) as node_a:
        to_a = PeerConfig(name="a", url=url(node_a))
        b_config = node_config(paths["b"], cluster_pki.files("b"), to_a, PeerConfig(name="c"))
        async with running_node(b_config) as node_b:
            to_b = PeerConfig(name="b", url=url(node_b))
            async with running_node(node_config(paths["c"], cluster_pki.files("c"), to_a)):
                write(
                    paths["a"],
                    "INSERT INTO prices VALUES ('p-a', 7.0);"
                    "INSERT INTO items VALUES ('i-a', 'a', 1)",
                )
                await wait_until(lambda: holds(paths["c"], "items", "i-a"), TIMEOUT_S, "i-a at c")
                await wait_until(lambda: holds(paths["b"], "prices", "p-a"), TIMEOUT_S, "p-a at b")
                write(paths["a"], "INSERT INTO items VALUES ('i-a2', 'a', 2)")
                await wait_until(lambda: holds(paths["c"], "items", "i-a2"), TIMEOUT_S, "i-a2")
            assert "p-a" not in await asyncio.to_thread(ids, paths["c"], "prices")
            c_config = node_config(paths["c"], cluster_pki.files("c"), to_a, to_b)
            async with running_node(c_config):
                await wait_until(
                    lambda: holds(paths["c"], "prices", "p-a"), TIMEOUT_S, "a's price at c via b"
                )


async def test_a_snapshot_holds_only_the_tables_the_joiner_may_receive(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """Goal (issue 16, ADR 0016): `join` from a over TLS as site c gets items, not prices;
    a certificate of no configured peer gets no snapshot at all."""
    a_db = make_db(tmp_path / "a.db")
    write(
        a_db,
        "INSERT INTO prices VALUES ('price-kept-at-a', 1.0);"
        " INSERT INTO items VALUES ('i1', 'x', 1)",
    )
    plant = PeerConfig(name="c", receive=frozenset({"items"}))
    async with running_node(node_config(a_db, cluster_pki.files("a"), plant)) as node_a:

        def connector(site: str) -> WebSocketConnector:
            return WebSocketConnector(
                heartbeat_s=1.0,
                frame_bytes_max=1 << 20,
                connect_timeout_s=5.0,
                tls=cluster_pki.issue(site),
            )

        report = await join(tmp_path / "c.db", connector("c").snapshot_source(url(node_a), "a"))
        assert report.tables == ("items",)
        assert await asyncio.to_thread(ids, tmp_path / "c.db", "items") == {"i1"}
        with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_schema")}
        assert "prices" not in tables
        assert "_syncmesh_shadow_prices" not in tables
        assert b"price-kept-at-a" not in (tmp_path / "c.db").read_bytes()

        with pytest.raises(TransportError, match="403"):
            await join(tmp_path / "x.db", connector("x").snapshot_source(url(node_a), "a"))
        assert not (tmp_path / "x.db").exists()
