"""Verify and repair against a real node over loopback HTTP (syncmesh.node.verify).

Site A is a file opened as a Store (as `syncmesh verify app.db` does); site
B is a node serving its own file.  B starts as a copy of A given its own
site id, so both hold the same rows with the same stamps; each test then
makes them differ in one way and checks that verify names exactly the
rows that differ, in the round trips promised, and that repair heals them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import re
import shutil
import sqlite3
import subprocess
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgpack
import pytest
from aiohttp import web

from syncmesh.api import running_node
from syncmesh.errors import StoreError, SyncError
from syncmesh.model import DEFAULT_CELL_STAMP, ChangeBatch, TableRows
from syncmesh.node import Node, NodeConfig, PeerStatistics
from syncmesh.node.config import PeerConfig
from syncmesh.node.fleet import relayer_of
from syncmesh.node.verify import (
    TableDifference,
    VerifyClient,
    VerifyReport,
    direct_call,
    merge_divergent,
    repair,
    rows_past_held,
    verify,
)
from syncmesh.node.verify_server import (
    FleetVerifyTargets,
    VerifyOutcome,
    fleet_candidates,
    next_fleet_site,
    repair_found,
    verify_peer,
)
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.ddl import EXISTING_TRIGGERS_SQL, capture_triggers, drop_trigger_sql
from syncmesh.store.summary import LEAF_MASK, LEAVES_PER_BRANCH, key_hash
from syncmesh.transport import VERIFY_PATH, HttpVerifyExchange, client_context_for_site
from syncmesh.transport.base import UnreachableError
from tests.helpers import rows_with_types, run_cli, served_route, sqlite3_shell, wait_until
from tests.test_node import config, converged, execute, make_db
from tests.tlsfiles import Pki

ROWS = 2_000
TIMEOUT_S = 30.0


def fill(path: Path, rows: int = ROWS) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(f"k-{index}", f"name {index}", index) for index in range(rows)],
        )
    store = SqliteStore.open(path)
    try:
        store.capture()
    finally:
        store.close()


def twin_files(tmp_path: Path, rows: int = ROWS) -> tuple[Path, Path]:
    """A with `rows` rows, and B: a copy of A with its own site id."""
    a = make_db(tmp_path / "a.db")
    fill(a, rows)
    b = tmp_path / "b.db"
    shutil.copy(a, b)
    store = SqliteStore.open(b)
    try:
        store.new_site_id()
    finally:
        store.close()
    return a, b


def fill_more(path: Path, rows: int) -> None:
    """`rows` new rows in one transaction, as an application's import would write them."""
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(f"bulk-{index}", "bulk", index) for index in range(rows)],
        )


@contextlib.contextmanager
def opened(path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore.open(path)
    try:
        yield store
    finally:
        store.close()


@contextlib.asynccontextmanager
async def serving(path: Path, *peers: Node, **overrides: object) -> AsyncIterator[Node]:
    settings = {"verify_interval_s": 0.0, **overrides}
    async with running_node(config(path, *peers, **settings)) as node:
        yield node


def url_of(node: Node) -> str:
    return f"http://{node.listen}"


async def check(store: SqliteStore, node: Node, *, deep: bool = False) -> VerifyReport:
    async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
        return await verify(store, direct_call, client, deep=deep, settle_s=0.05)


def divergent_keys(report: VerifyReport) -> set[object]:
    found = report.differences.get("items")
    return set() if found is None else {key[0] for key in found.divergent}


def items(path: Path) -> list[object]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(rows_with_types(connection, "items"))


def name_of(path: Path, key: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        row = connection.execute("SELECT name FROM items WHERE id = ?", (key,)).fetchone()
    return None if row is None else row[0]


async def test_identical_sites_answer_in_one_round_trip(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path)
    async with serving(b) as node:
        with opened(a) as store:
            report = await check(store, node)
    assert report.identical
    assert report.round_trips == 1
    assert report.bytes_sent + report.bytes_received < 1_000
    assert report.peer_site == SqliteStore.open(b).site_id


async def test_the_differing_rows_are_named_exactly_in_three_round_trips(
    tmp_path: Path,
) -> None:
    a, b = twin_files(tmp_path)
    execute(a, "UPDATE items SET qty = -1 WHERE id IN ('k-1', 'k-2')")
    execute(a, "DELETE FROM items WHERE id = 'k-3'")
    execute(a, "INSERT INTO items VALUES ('new-a', 'only here', 0)")
    execute(b, "INSERT INTO items VALUES ('new-b', 'only there', 0)")
    async with serving(b) as node:
        # The node captured its own write; A's writes are captured here.
        await wait_until(lambda: name_of(b, "new-b") is not None, TIMEOUT_S, "B's insert")
        with opened(a) as store:
            store.capture()
            report = await check(store, node)
    assert not report.identical
    assert divergent_keys(report) == {"k-1", "k-2", "k-3", "new-a", "new-b"}
    found = report.differences["items"]
    assert [key[0] for key in found.missing_here] == ["new-b"]
    assert [key[0] for key in found.missing_there] == ["new-a"]
    assert report.round_trips == 3  # roots, leaves, one re-check


async def test_repair_merges_the_differing_rows_both_ways_and_keeps_the_newer_write(
    tmp_path: Path,
) -> None:
    a, b = twin_files(tmp_path)
    execute(a, "UPDATE items SET name = 'older, at A' WHERE id = 'k-5'")
    execute(a, "INSERT INTO items VALUES ('new-a', 'only here', 0)")
    with opened(a) as store:
        store.capture()
    execute(b, "DELETE FROM items WHERE id = 'k-6'")
    async with serving(b) as node:
        execute(b, "UPDATE items SET name = 'newer, at B' WHERE id = 'k-5'")
        await wait_until(lambda: name_of(b, "k-5") == "newer, at B", TIMEOUT_S, "B's write")
        await asyncio.sleep(0.05)
        with opened(a) as store:
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                result = await repair(store, direct_call, client, settle_s=0.05)
        assert divergent_keys(result.before) == {"k-5", "k-6", "new-a"}
        assert result.after.identical
        assert result.after.round_trips == 1
        await wait_until(lambda: converged(a, b), TIMEOUT_S, "both files equal")
    assert name_of(a, "k-5") == "newer, at B"  # the newer write won on both sides
    assert name_of(a, "k-6") is None
    assert name_of(b, "new-a") == "only here"


async def test_writes_in_flight_between_two_syncing_nodes_are_not_divergence(
    tmp_path: Path,
) -> None:
    a, b = twin_files(tmp_path, rows=200)
    async with serving(b) as node_b, serving(a, node_b) as node_a:
        await wait_until(lambda: node_a.streaming_with(url_of(node_b)), TIMEOUT_S, "a session")

        async def write() -> None:
            for index in range(150):  # bounded: 150 writes, about 3 s
                execute(a, "UPDATE items SET qty = ? WHERE id = ?", index, f"k-{index % 40}")
                execute(b, "UPDATE items SET name = ? WHERE id = ?", f"b{index}", f"k-{index % 7}")
                await asyncio.sleep(0.02)

        writer = asyncio.create_task(write())
        outcomes = []
        while not writer.done():
            outcomes.append(await verify_peer(node_a, url_of(node_b), ["items"]))
        await writer
        await wait_until(lambda: converged(a, b), TIMEOUT_S, "both files equal")
        final = await verify_peer(node_a, url_of(node_b), ["items"])
    assert outcomes, "no verify ran while writing"
    assert all(outcome.error == "" for outcome in outcomes)
    assert all(outcome.divergent_rows == 0 for outcome in outcomes), outcomes
    assert all(outcome.identical for outcome in outcomes), outcomes
    assert final.identical
    assert final.round_trips == 1


@pytest.mark.parametrize("bulk_at", ["peer", "here"])
async def test_a_verify_begun_before_a_backlog_arrives_gives_no_verdict_until_caught_up(
    tmp_path: Path, bulk_at: str
) -> None:
    """The gate before a round (both sides caught up lately) cannot see a bulk
    insert not sent yet: the verify then finds its rows missing on one side,
    still missing after every re-read.  It must wait until each side has
    applied the other's feed up to where the trees were read (the peer's
    head: from the roots answer), and give no verdict if that does not come
    in time, never "rows differ".  Both ways: the bulk at the peer (this
    node pulls it) and here (the peer pulls it)."""
    a, b = twin_files(tmp_path, rows=50)
    # The receiver takes at most 10 rows a batch, the sender keeps one batch
    # in flight: the pull of the bulk below takes seconds.
    slow_in = {"rows_per_message_max": 10}
    slow_out = {"batches_in_flight_max": 1}
    async with (
        serving(b, **(slow_out if bulk_at == "peer" else slow_in)) as node_b,
        serving(
            a, node_b, verify_settle_s=0.05, **(slow_in if bulk_at == "peer" else slow_out)
        ) as node_a,
    ):
        peer = url_of(node_b)
        await wait_until(lambda: node_a.streaming_with(peer), TIMEOUT_S, "a session")
        assert (await verify_peer(node_a, peer, ["items"])).identical
        await asyncio.to_thread(fill_more, b if bulk_at == "peer" else a, 1_000)
        outcomes: list[VerifyOutcome] = []
        for _round in range(200):  # bounded; the pull ends well before
            outcomes.append(await verify_peer(node_a, peer, ["items"]))
            if await converged(a, b):
                break
        await wait_until(lambda: converged(a, b), TIMEOUT_S, "caught up")
        final = await verify_peer(node_a, peer, ["items"])
    assert all(outcome.divergent_rows == 0 for outcome in outcomes), outcomes
    waited = [outcome.waiting for outcome in outcomes if outcome.waiting]
    assert waited, outcomes
    assert all(reason.startswith("catching up") for reason in waited), waited
    assert final.identical, final
    assert not final.waiting, final


async def test_deep_finds_an_edit_made_while_the_triggers_were_dropped(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path)
    with opened(a) as store:
        layout = store.context.tables["items"].layout
    with contextlib.closing(sqlite3.connect(a)) as connection, connection:
        triggers = connection.execute(EXISTING_TRIGGERS_SQL, ("items",)).fetchall()
        for name, _sql in triggers:
            connection.execute(drop_trigger_sql(name))
        connection.execute("UPDATE items SET name = 'edited unseen' WHERE id = 'k-7'")
        for statement in capture_triggers(layout).values():
            connection.execute(statement)
    async with serving(b) as node:
        with opened(a) as store:
            # The change feed never saw it: the stamps agree, so does verify.
            assert (await check(store, node)).identical
            deep = await check(store, node, deep=True)
            assert divergent_keys(deep) == {"k-7"}
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                result = await repair(store, direct_call, client, deep=True, settle_s=0.05)
        assert result.restamped_rows == 1
        assert result.after.identical
        await wait_until(lambda: converged(a, b), TIMEOUT_S, "both files equal")
    assert name_of(b, "k-7") == "edited unseen"


async def test_deep_finds_a_shadow_row_edited_by_hand_and_repair_heals_it(
    tmp_path: Path,
) -> None:
    a, b = twin_files(tmp_path)
    # Corrupt A's merge state behind its back: a stamp made older.
    execute(a, "UPDATE _syncmesh_shadow_items SET h0 = h0 - 1000 WHERE k0 = 'k-9'")
    execute(b, "UPDATE items SET name = 'restamped at B' WHERE id = 'k-9'")
    async with serving(b) as node:
        await wait_until(lambda: name_of(b, "k-9") == "restamped at B", TIMEOUT_S, "B's write")
        with opened(a) as store:
            deep = await check(store, node, deep=True)
            assert deep.corrected_digests == 1
            assert divergent_keys(deep) == {"k-9"}
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                result = await repair(store, direct_call, client, deep=True, settle_s=0.05)
            assert result.fetched_rows == 1
            assert result.after.identical
            assert (await check(store, node, deep=True)).identical
    assert name_of(a, "k-9") == "restamped at B"


async def test_a_file_restored_from_an_old_backup_is_found_and_repaired(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path)
    backup = tmp_path / "a-backup.db"
    shutil.copy(a, backup)
    for index in range(20):
        execute(a, "UPDATE items SET qty = qty + 1000 WHERE id = ?", f"k-{index}")
    async with serving(b) as node:
        with opened(a) as store:
            store.capture()
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                assert (await repair(store, direct_call, client, settle_s=0.05)).after.identical
        shutil.copy(backup, a)  # the disk fails; the file comes back from the backup
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "a.db-wal").unlink()
        with opened(a) as store:
            report = await check(store, node)
            assert divergent_keys(report) == {f"k-{index}" for index in range(20)}
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                result = await repair(store, direct_call, client, settle_s=0.05)
    assert result.fetched_rows == 20
    assert result.after.identical
    assert items(a) == items(b)


async def test_a_bad_verify_request_gets_a_named_refusal_and_the_node_carries_on(
    tmp_path: Path,
) -> None:
    a, b = twin_files(tmp_path, rows=50)
    async with serving(b) as node, aiohttp.ClientSession() as http:
        target = url_of(node) + VERIFY_PATH
        for body, expected in (
            (b"\xc1 not msgpack", "not valid msgpack"),
            (msgpack.packb([1, 2]), "not a map"),
            (msgpack.packb({"v": 99, "op": "roots"}), "version 99"),
            (msgpack.packb({"v": 1, "op": "drop tables"}), "unknown verify op"),
            (msgpack.packb({"v": 1, "op": "digests", "tables": {"nope": []}}), "'nope'"),
            (msgpack.packb({"v": 1, "op": "digests", "tables": {"items": [[{}]]}}), "SQL value"),
            (msgpack.packb({"v": 1, "op": "push", "batch": b"\x00junk"}), "push"),
        ):
            async with http.post(target, data=body) as response:
                assert response.status == 400
                detail = msgpack.unpackb(await response.read())["detail"]
                assert expected in detail, detail
        with opened(a) as store:
            assert (await check(store, node)).identical
    assert items(a) == items(b)


async def test_the_node_verifies_its_peers_and_shows_the_result(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path, rows=100)
    # A row vanishes from B behind the engine's back, before the nodes meet:
    # B's vector still claims it, so no feed will ever bring it back.
    with contextlib.closing(sqlite3.connect(b)) as connection, connection:
        connection.execute("UPDATE _syncmesh_state SET applying = 1")
        connection.execute("DELETE FROM items WHERE id = 'k-3'")
        connection.execute("DELETE FROM _syncmesh_shadow_items WHERE k0 = 'k-3'")
        connection.execute("UPDATE _syncmesh_state SET applying = 0")
    async with (
        serving(b) as node_b,
        serving(
            a, node_b, verify_interval_s=0.3, verify_settle_s=0.05, verify_repair=False
        ) as node_a,
    ):
        peer_url = url_of(node_b)

        async def verified(**expected: object) -> bool:
            for peer in (await node_a.statistics()).peers:
                if peer.address == peer_url and peer.verified_ms:
                    return all(getattr(peer, key) == value for key, value in expected.items())
            return False

        await wait_until(
            lambda: verified(verify_identical=False, verify_divergent_rows=1),
            TIMEOUT_S,
            "the divergence seen",
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(url_of(node_a) + "/metrics") as response:
                metrics = await response.text()
            async with http.get(url_of(node_a) + "/v1/status") as response:
                status = await response.json()
        shown = await asyncio.to_thread(run_cli, "status", "--url", url_of(node_a))
        # Repaired from A's file while both nodes run; the next round sees it.
        with opened(a) as store:
            async with VerifyClient(HttpVerifyExchange(peer_url)) as client:
                assert (await repair(store, direct_call, client, settle_s=0.05)).pushed_rows == 1
        await wait_until(lambda: verified(verify_identical=True), TIMEOUT_S, "identical again")
    assert "syncmesh_peer_verify_divergent_rows{" in metrics
    assert "syncmesh_peer_verify_identical{" in metrics
    peer = next(p for p in status["peers"] if p["address"] == peer_url)
    assert peer["verify_divergent_rows"] == 1
    assert peer["verify_round_trips"] >= 2
    assert name_of(b, "k-3") == "name 3"
    assert "1 rows differ" in shown.stdout, shown.stdout


async def test_the_node_repairs_what_its_periodic_verify_finds(tmp_path: Path) -> None:
    """Anti-entropy (`sync.verify_repair`, on by default): a row no feed will bring
    back (B's vector claims it) is merged back into B by A's periodic verify, with
    no command; status and /metrics count it, and the next round is identical.
    Without the repair the row stays missing for ever (the test above)."""
    a, b = twin_files(tmp_path, rows=100)
    with contextlib.closing(sqlite3.connect(b)) as connection, connection:
        connection.execute("UPDATE _syncmesh_state SET applying = 1")
        connection.execute("DELETE FROM items WHERE id = 'k-3'")
        connection.execute("DELETE FROM _syncmesh_shadow_items WHERE k0 = 'k-3'")
        connection.execute("UPDATE _syncmesh_state SET applying = 0")
    async with (
        serving(b) as node_b,
        serving(a, node_b, verify_interval_s=0.3, verify_settle_s=0.05) as node_a,
    ):
        peer_url = url_of(node_b)

        async def peer_of_a() -> PeerStatistics | None:
            for peer in (await node_a.statistics()).peers:
                if peer.address == peer_url and peer.verified_ms:
                    return peer
            return None

        async def repaired_and_identical() -> bool:
            peer = await peer_of_a()
            return (
                peer is not None
                and peer.verify_repaired_rows_total == 1
                and bool(peer.verify_identical)
            )

        await wait_until(repaired_and_identical, TIMEOUT_S, "the row repaired, then identical")
        async with (
            aiohttp.ClientSession() as http,
            http.get(url_of(node_a) + "/metrics") as response,
        ):
            metrics = await response.text()
    assert name_of(b, "k-3") == "name 3"
    assert items(a) == items(b)
    assert re.search(r"syncmesh_peer_verify_repaired_rows_total\{[^}]*\} 1\.0", metrics), metrics


async def test_a_table_whose_columns_differ_at_the_peer_is_named_not_compared(
    tmp_path: Path,
) -> None:
    """A rolling deploy: B has run a migration (ADD COLUMN, then writes to it), A not
    yet.  Every row B wrote since has a cell A holds only as a waiting cell, so their
    digests differ: the periodic verify said "N rows differ" for the whole deploy (and
    its repair fetched them at every round).  Now the table is named as not compared,
    in status, the log and the command line, and nothing is reported as divergent."""
    a, b = twin_files(tmp_path, rows=100)
    async with (
        serving(b) as node_b,
        serving(a, node_b, verify_interval_s=0.3, verify_settle_s=0.05) as node_a,
    ):
        sqlite3_shell(b, "ALTER TABLE items ADD COLUMN extra TEXT DEFAULT 'x'")
        sqlite3_shell(b, "UPDATE items SET extra = 'set at b' WHERE id IN ('k-1', 'k-2', 'k-3')")
        peer_url = url_of(node_b)

        async def not_compared() -> PeerStatistics | None:
            for peer in (await node_a.statistics()).peers:
                if peer.address == peer_url and peer.verify_not_compared:
                    return peer
            return None

        async def seen() -> bool:
            return await not_compared() is not None

        await wait_until(seen, TIMEOUT_S, "the verify to name the table as not compared")
        peer = await not_compared()
        assert peer is not None
        assert peer.verify_not_compared == ("items",)
        assert peer.verify_divergent_rows == 0
        assert peer.verify_repaired_rows_total == 0
        shown = await asyncio.to_thread(run_cli, "verify", str(a), "--peer", peer_url)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    printed = " ".join(shown.stdout.split())
    assert "table items: not compared, its columns differ from the peer's" in printed
    assert "(here: name, qty; there: name, qty, extra)" in printed, printed
    assert "no rows differ" in printed, printed
    assert "in the tables compared" in printed, printed


def two_tables(path: Path) -> Path:
    """An order table and a lines table, both tracked."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER);"
            " CREATE TABLE lines (id TEXT PRIMARY KEY, order_id TEXT, qty INTEGER);"
        )
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(["orders", "lines"])
    finally:
        store.close()
    return path


async def test_a_repair_merges_the_rows_of_every_table_of_a_chunk_in_one_transaction(
    tmp_path: Path,
) -> None:
    """An order and its line that both differ are merged here in one transaction, so
    no reader sees the line without its order (`syncmesh chaos --transport nats`, a
    torn-transaction violation once the periodic verify repaired, table by table).
    Rows merged in one transaction share one seq of the feed."""
    a, b = two_tables(tmp_path / "a.db"), two_tables(tmp_path / "b.db")
    with contextlib.closing(sqlite3.connect(a)) as connection, connection:
        connection.execute("INSERT INTO orders VALUES ('o1', 5)")
        connection.execute("INSERT INTO lines VALUES ('l1', 'o1', 2)")
    async with serving(a) as node_a:
        with opened(b) as store:
            async with VerifyClient(HttpVerifyExchange(url_of(node_a))) as client:
                report = await verify(store, direct_call, client, settle_s=0.05)
                assert report.divergent_rows == 2
                fetched, pushed, _ = await merge_divergent(store, direct_call, client, report)
            assert (fetched, pushed) == (2, 0)
            (order_seq,) = store.connection.execute(
                "SELECT seq FROM _syncmesh_shadow_orders WHERE k0 = 'o1'"
            ).fetchone()
            (line_seq,) = store.connection.execute(
                "SELECT seq FROM _syncmesh_shadow_lines WHERE k0 = 'l1'"
            ).fetchone()
    assert order_seq == line_seq


class WritesAfterTheRoots:
    """A verify exchange to a node that runs `write` once the roots are answered:
    the node's application writing between the verify's requests."""

    def __init__(self, inner: HttpVerifyExchange, write: Callable[[], None]) -> None:
        self._inner = inner
        self._write = write
        self._posts = 0
        self.url = inner.url

    async def __aenter__(self) -> WritesAfterTheRoots:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        answer = await self._inner.post(body)
        self._posts += 1
        if self._posts == 1:
            await asyncio.to_thread(self._write)
        return answer


def branch_of(key: str) -> int:
    """The tree branch of a one-column key (the same on every site)."""
    return (key_hash([key]) & LEAF_MASK) // LEAVES_PER_BRANCH


def lines_without_their_order(path: Path) -> list[str]:
    """What a reader of the file sees of a torn order: lines whose order is not there."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [
            line
            for (line,) in connection.execute(
                "SELECT id FROM lines WHERE order_id NOT IN (SELECT id FROM orders) ORDER BY id"
            )
        ]


async def test_the_periodic_repair_never_merges_rows_written_after_the_trees(
    tmp_path: Path,
) -> None:
    """Goal: the periodic repair never merges part of a transaction written while
    the verify ran.

    Only the roots are read with each side's `held` and feed head; the leaves
    and digests are answered from the store as it is by then.  So a
    transaction written in between shows up only through the rows whose
    leaves were asked about (their branch differed for another row): one
    line of an order, not the order.  Merging it showed a reader that line
    without its order (`syncmesh chaos --transport nats --seed 1 --only 1`,
    torn-transaction, once fleet sites were repaired), and no gate stops it,
    as it judges `held` and heads read with the trees.

    Method: A (a node) and B (a file) share order o0; A also holds its line
    `lost`, which B lacks (a row no feed brings).  Right after A answers the
    roots, A's application writes order o1 with three lines in one
    transaction: one line's key in the branch of `lost`, the order and the
    other lines elsewhere.  B's verify finds `lost` and that one line
    divergent (the mechanism); the periodic repair step must merge nothing
    this round, so B shows no line without its order, and a quiet round
    merges o1 whole, and `lost`.
    """
    a = two_tables(tmp_path / "a.db")
    execute(a, "INSERT INTO orders VALUES ('o0', 1)")
    with opened(a) as store:
        store.capture()
    b = tmp_path / "b.db"
    shutil.copy(a, b)
    with opened(b) as store:
        store.new_site_id()
    execute(a, "INSERT INTO lines VALUES ('lost', 'o0', 1)")
    with opened(a) as store:
        store.capture()
    keys = [f"o1-{index}" for index in range(5_000)]  # about 20 in each branch
    beside_lost = next(key for key in keys if branch_of(key) == branch_of("lost"))
    elsewhere = [key for key in keys if branch_of(key) != branch_of("lost")][:2]

    def order_with_three_lines() -> None:
        with contextlib.closing(sqlite3.connect(a)) as connection, connection:
            connection.execute("INSERT INTO orders VALUES ('o1', 3)")
            connection.executemany(
                "INSERT INTO lines VALUES (?, 'o1', 1)",
                [(key,) for key in (beside_lost, *elsewhere)],
            )

    async with serving(a) as node_a:
        with opened(b) as store:
            host: Any = types.SimpleNamespace(
                config=NodeConfig(database_path=str(b)), store=store, store_call=direct_call
            )
            writing = WritesAfterTheRoots(
                HttpVerifyExchange(url_of(node_a)), order_with_three_lines
            )
            async with VerifyClient(writing) as client:
                report = await verify(store, direct_call, client, settle_s=0.05)
                assert {
                    name: [key[0] for key in found.divergent]
                    for name, found in report.differences.items()
                } == {"lines": sorted(["lost", beside_lost])}
                checked = await repair_found(host, client, report)
            assert (checked.repaired, checked.fetched_rows) == (False, 0)
            assert lines_without_their_order(b) == []
            assert row_count(b, "lines") == 0

            async with VerifyClient(HttpVerifyExchange(url_of(node_a))) as client:
                quiet = await verify(store, direct_call, client, settle_s=0.05)
                assert quiet.divergent_rows == 5
                checked = await repair_found(host, client, quiet)
            assert (checked.repaired, checked.fetched_rows, checked.pushed_rows) == (True, 5, 0)
    assert lines_without_their_order(b) == []
    assert row_count(b, "lines") == 4


async def test_a_node_restoring_from_a_backup_still_repairs_its_own_rows(
    tmp_path: Path,
) -> None:
    """Goal: the rule on rows written after the trees judges a node's own writes by
    its feed head, so a node restoring from a backup, which claims no own write
    past its lost ones in `held` until they are back (ADR 0006), still repairs
    the own rows it wrote since.

    Method: B (a file, A's twin) writes `old`, is reopened (a new run) and is
    told a peer holds an own write past its vector: restore mode, as after a
    restore.  It then writes `new`, whose stamp is above its `held` for
    itself.  A (a node) lacks both; the periodic repair step at B must push
    both to A.
    """
    a, b = twin_files(tmp_path, rows=50)
    execute(b, "INSERT INTO items VALUES ('old', 'before the restore', 1)")
    with opened(b) as store:
        store.capture()
        own, before = store.site_id, store.vector()[store.site_id]
    async with serving(a) as node_a:
        with opened(b) as store:
            assert store.note_peer_vector({own: before + 1})  # restore mode
            execute(b, "INSERT INTO items VALUES ('new', 'while restoring', 2)")
            store.capture()
            assert store.held_claims()[own] < store.head_seq()
            host: Any = types.SimpleNamespace(
                config=NodeConfig(database_path=str(b)), store=store, store_call=direct_call
            )
            async with VerifyClient(HttpVerifyExchange(url_of(node_a))) as client:
                report = await verify(store, direct_call, client, settle_s=0.05)
                assert divergent_keys(report) == {"old", "new"}
                checked = await repair_found(host, client, report)
    assert (checked.repaired, checked.fetched_rows, checked.pushed_rows) == (True, 0, 2)
    assert name_of(a, "new") == "while restoring"


def test_a_row_past_held_is_one_with_any_write_its_holder_did_not_hold() -> None:
    """Goal: `rows_past_held` names exactly the rows with a stamp, of the causal
    length or of a cell, above the holder's `held` for that stamp's site; a
    column's default stamp and absent cells are nobody's write.

    Method: one batch of five rows over sites a, b and the default site,
    judged against held {a: 100, b: 120}.
    """
    a, b = "a" * 32, "b" * 32
    rows: list[list[object]] = [
        ["held", 1, 100, 0, "v", 100, 0, None],  # every stamp at or below held
        ["cell-past", 1, 100, 0, "v", 150, 1, None],  # b's cell at 150 > 120
        ["default", 1, 90, 0, "v", DEFAULT_CELL_STAMP.hlc, 2, None],  # a default cell
        ["deleted-past", 2, 130, 0, None, None, None, None],  # a's delete at 130 > 100
        ["absent-cell", 1, 100, 0, None, None, None, None],  # a cell not sent
    ]
    batch = ChangeBatch(
        "i",
        0,
        0,
        0,
        None,
        (a, b, DEFAULT_CELL_STAMP.site_id),
        (TableRows("t", ("c",), 1, cast(Any, rows)),),
    )
    assert rows_past_held(batch, {a: 100, b: 120}) == [
        ("t", ("cell-past",)),
        ("t", ("deleted-past",)),
    ]
    assert rows_past_held(batch, {a: 130, b: 150}) == []


def row_count(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


async def test_the_command_line_verifies_and_repairs(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path, rows=300)
    async with serving(b) as node:
        peer = url_of(node)
        same = await asyncio.to_thread(run_cli, "verify", str(a), "--peer", peer, "--json")
        assert same.returncode == 0, same.stderr
        assert json.loads(same.stdout)["round_trips"] == 1
        execute(a, "UPDATE items SET qty = 7 WHERE id = 'k-42'")
        differ = await asyncio.to_thread(
            run_cli, "verify", str(a), "--peer", peer, "--settle", "0.1"
        )
        assert differ.returncode == 1, differ.stderr
        assert "1 rows differ" in differ.stdout
        assert "'k-42'" in differ.stdout
        fixed = await asyncio.to_thread(run_cli, "repair", str(a), "--peer", peer, "--json")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert json.loads(fixed.stdout)["pushed_rows"] == 1
        await wait_until(lambda: converged(a, b), TIMEOUT_S, "both files equal")
        down = await asyncio.to_thread(run_cli, "verify", str(a), "--peer", "http://127.0.0.1:9")
    assert down.returncode == 2
    assert "cannot reach" in down.stderr


async def test_verify_refuses_a_table_it_does_not_track(tmp_path: Path) -> None:
    a, b = twin_files(tmp_path, rows=10)
    async with serving(b) as node:
        with opened(a) as store:
            async with VerifyClient(HttpVerifyExchange(url_of(node))) as client:
                with pytest.raises(StoreError, match="'orders' is not tracked"):
                    await verify(store, direct_call, client, ["orders"])


async def test_verify_over_tls_admits_peers_by_certificate_and_honours_rights(
    tmp_path: Path, cluster_pki: Pki
) -> None:
    """With TLS the verify route admits a configured peer's certificate only.

    b lets site a verify `items` and refuses it a table it may not receive
    (`receive`), and refuses a certificate that names no peer (403), all
    through the command line with the site's certificate files.
    """
    a, b = twin_files(tmp_path, rows=50)
    with contextlib.closing(sqlite3.connect(b)) as connection, connection:
        connection.execute("CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT)")
    with opened(b) as store:
        store.track(["secrets"])
    peers = (PeerConfig(name="a", receive=frozenset({"items"})),)
    served = NodeConfig(
        database_path=str(b),
        listen_port=0,
        tls=cluster_pki.files("b"),
        peers=peers,
        verify_interval_s=0.0,
    )
    async with running_node(served) as node:
        url = f"https://{node.listen}"

        def cli(site: str, peer: str, *args: str) -> subprocess.CompletedProcess[str]:
            files = cluster_pki.files(site)
            return run_cli(
                "verify",
                str(a),
                "--peer",
                peer,
                "--tls-cert",
                str(files.cert),
                "--tls-key",
                str(files.key),
                "--tls-ca",
                str(files.ca),
                *args,
            )

        same = await asyncio.to_thread(cli, "a", f"b={url}", "--table", "items", "--json")
        assert same.returncode == 0, same.stdout + same.stderr
        assert json.loads(same.stdout)["identical"] is True
        stranger = await asyncio.to_thread(cli, "stranger", f"b={url}", "--table", "items")
        assert stranger.returncode == 2
        assert "403" in stranger.stderr
        # The node must be the site named: b's certificate does not name c.
        impostor = await asyncio.to_thread(cli, "a", f"c={url}", "--table", "items")
        assert impostor.returncode == 2
        assert "is for site 'b', not for site 'c'" in impostor.stderr, impostor.stderr
        unnamed = await asyncio.to_thread(cli, "a", url, "--table", "items")
        assert unnamed.returncode == 2
        assert "--peer NAME=" in unnamed.stderr
    with opened(a) as store:
        store.connection.execute("CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT)")
        store.track(["secrets"])
    async with running_node(served) as node:
        url = f"https://{node.listen}"
        with opened(a) as store:
            context = client_context_for_site(cluster_pki.files("a"), "b")
            async with VerifyClient(HttpVerifyExchange(url, ssl=context)) as client:
                report = await verify(store, direct_call, client, settle_s=0.05)
    assert report.not_shared == ["secrets"]
    assert not report.identical
    assert report.divergent_rows == 0


def test_a_deep_tree_read_in_steps_equals_one_read_whole(tmp_path: Path) -> None:
    a, _b = twin_files(tmp_path, rows=250)
    with opened(a) as store:
        whole, after, fixed = store.deep_summary_step("items", None, 1_000)
        assert (after, fixed) == (None, 0)
        steps = 0
        tree, after, _ = store.deep_summary_step("items", None, 7)
        while after is not None:
            part, after, _ = store.deep_summary_step("items", after, 7)
            tree.merge(part)
            steps += 1
        assert steps == 250 // 7
        assert tree.leaves == whole.leaves
        assert whole.root() != 0
        assert store.deep_summary("items")[0].leaves == whole.leaves


@pytest.mark.parametrize(
    "answer",
    [
        {"site": "x", "tables": {"items": {"same": False, "branches": b"too short"}}},
        {"site": "x", "tables": {"items": {"same": False}}},
        {"site": "x", "tables": ["not", "a", "map"]},
        [1, 2, 3],
    ],
)
async def test_a_malformed_answer_is_a_named_error_not_a_crash(
    tmp_path: Path, answer: object
) -> None:
    """A node (or something at its address) that answers nonsense: the asker says so."""
    a, _b = twin_files(tmp_path, rows=20)

    async def nonsense(_request: web.Request) -> web.Response:
        return web.Response(body=msgpack.packb(answer), content_type="application/msgpack")

    async with served_route("POST", VERIFY_PATH, nonsense) as port:
        with opened(a) as store:
            async with VerifyClient(HttpVerifyExchange(f"http://127.0.0.1:{port}")) as client:
                with pytest.raises(SyncError, match=r"cannot read|not a map"):
                    await verify(store, direct_call, client, settle_s=0.01)


def test_the_periodic_verify_takes_the_fleet_sites_in_turn() -> None:
    """Goal: one fleet site per round, never-verified first, then the one verified longest
    ago (ties by site id), so that every site of a fleet of N is verified every N rounds."""
    outcome = functools.partial(
        VerifyOutcome,
        identical=True,
        divergent_rows=0,
        unsettled_rows=0,
        round_trips=1,
        bytes=10,
        seconds=0.1,
    )
    sites = ["c" * 32, "a" * 32, "b" * 32]
    assert next_fleet_site([], {}) is None
    assert next_fleet_site(sites, {}) == "a" * 32
    outcomes = {"a" * 32: outcome(at_ms=5)}
    assert next_fleet_site(sites, outcomes) == "b" * 32
    outcomes["b" * 32] = outcome(at_ms=6)
    assert next_fleet_site(sites, outcomes) == "c" * 32
    outcomes["c" * 32] = outcome(at_ms=7)
    turns = []
    for at_ms in range(8, 14):
        site = next_fleet_site(sites, outcomes)
        assert site is not None
        turns.append(site[0])
        outcomes[site] = outcome(at_ms=at_ms)
    assert turns == ["a", "b", "c", "a", "b", "c"]
    # A failed verify is an outcome too: its site waits its turn like the others.
    outcomes["a" * 32] = outcome(at_ms=20, identical=False)
    assert next_fleet_site(sites, outcomes) == "b" * 32


def test_a_relay_chain_listed_on_the_stream_is_never_a_fleet_site_to_verify() -> None:
    """The stream lists a relay chain's marker (`relay-<site>`, node.fleet) beside the
    sites' own: the periodic verify asked it as a site at its turn, and failed."""
    relayer = "a" * 32
    targets = FleetVerifyTargets(
        asker=None,  # type: ignore[arg-type]  # not asked: only the choice is tested
        ready=["b" * 32],
        behind=frozenset({"d" * 32}),
        marker_token="marker",
        not_a_site=lambda token: relayer_of(token) is not None,
    )
    listed = (relayer, f"relay-{relayer}", "c" * 32, "d" * 32)
    assert fleet_candidates(targets, listed) == [relayer, "b" * 32, "c" * 32]


async def test_no_repair_while_a_compared_row_still_changes() -> None:
    """Goal: the periodic repair never merges half of a transaction.

    A write in flight can leave one row of a transaction divergent (held
    still through the re-reads) and another unsettled (changing at every
    re-read); merging the first alone showed a reader an order's line
    without its order (`syncmesh chaos --transport nats`, torn-transaction).
    So a round with any unsettled row repairs nothing; the rows no feed will
    carry stay divergent and a quiet round merges them.

    Method: a verify report with one divergent row and one unsettled row,
    handed to the repair step with repair on: it must report and not touch
    the peer (the client fails the test if called), while the same report
    without the unsettled row goes on to the merge (which calls the client).
    """
    found = TableDifference("items", unsettled=[("k-2",)])
    found.note_divergent(("k-1",), 1, None)
    report = VerifyReport("peer", False, ["items"], {"items": found}, [], 1, 0, 0, 0.1)
    host: Any = types.SimpleNamespace(config=NodeConfig(database_path="unused.db"))

    class Untouchable:
        async def call(self, request: object) -> bytes:
            raise AssertionError(f"the repair reached the peer: {request!r}")

    checked = await repair_found(host, cast(VerifyClient, Untouchable()), report)
    assert (checked.repaired, checked.fetched_rows, checked.pushed_rows) == (False, 0, 0)
    assert checked.report is report

    quiet = dataclasses.replace(report, differences={"items": TableDifference("items")})
    quiet.differences["items"].note_divergent(("k-1",), 1, None)
    host.store, host.store_call = object(), direct_call
    with pytest.raises(AssertionError, match="the repair reached the peer"):
        await repair_found(host, cast(VerifyClient, Untouchable()), quiet)


async def test_the_periodic_verify_gives_up_on_an_answer_that_never_comes() -> None:
    """Goal: one hanging connection does not hold a pair's anti-entropy for minutes.

    A chaos schedule's periodic verify waited 92 s on a request a faulty link
    had left hanging, so its repair of a restored node's lost writes never ran
    (`syncmesh chaos --seed 800 --only 31 --topology chain`, held-write).
    The node's verify exchange now gives up once the answer sends nothing for
    `PERIODIC_VERIFY_READ_TIMEOUT_S`; the next round asks again.

    Method: a real aiohttp server on 127.0.0.1 whose verify route accepts the
    request and never answers; an exchange made as the node makes it, with
    the read timeout cut to 0.3 s, must fail as unreachable within 5 s.
    """
    never = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    async with served_route("POST", VERIFY_PATH, hang) as port:
        try:
            exchange = HttpVerifyExchange(f"http://127.0.0.1:{port}", read_timeout_s=0.3)
            started = asyncio.get_running_loop().time()
            async with exchange:
                with pytest.raises(UnreachableError):
                    await asyncio.wait_for(exchange.post(b"\x80"), 5.0)
            assert asyncio.get_running_loop().time() - started < 5.0
        finally:
            never.set()
