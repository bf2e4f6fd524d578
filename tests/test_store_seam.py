"""The store seam (ADR 0011): the node and the API use a store only through its Protocols.

A backend is pluggable if a node runs on any object that has the
`Store` protocol's members and nothing else.  `ProtocolOnlyStore` is such
an object: it forwards exactly those members to a `SqliteStore`, so a
node reaching past the interface (`store.connection`, a private
attribute, a method the Protocol lacks) fails here with AttributeError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from syncmesh.api import running_node
from syncmesh.node import node as node_module
from syncmesh.node.admission import Admitted
from syncmesh.node.verify import VerifyClient, repair
from syncmesh.node.verify_server import VerifyServer
from syncmesh.store import ChangeNotifier, Store, VerifyStore
from syncmesh.store.open import open_store
from syncmesh.store.sqlite import SqliteStore
from syncmesh.transport import Channel, PeerIdentity, Refusal, RefusalReason
from syncmesh.transport.memory import MemoryNetwork
from tests.helpers import wait_until
from tests.test_node import TIMEOUT_S, config, converged, execute, make_db


def protocol_members(protocols: tuple[type, ...] = (VerifyStore, Store)) -> dict[str, bool]:
    """Name -> is a property, for every public member of `protocols` (`Store` by default)."""
    members: dict[str, bool] = {}
    for protocol in protocols:
        for name, value in vars(protocol).items():
            if not name.startswith("_"):
                members[name] = isinstance(value, property)
    return members


class ProtocolOnlyStore:
    """A store backend that is not a `SqliteStore`: the Protocol's members, forwarded."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.calls: set[str] = set()


def _forward(name: str, is_property: bool) -> Any:
    if is_property:

        def read(self: ProtocolOnlyStore) -> object:
            self.calls.add(name)
            return getattr(self.inner, name)

        return property(read)

    def call(self: ProtocolOnlyStore, *args: object, **kwargs: object) -> object:
        self.calls.add(name)
        method: Callable[..., object] = getattr(self.inner, name)
        return method(*args, **kwargs)

    return call


for _name, _is_property in protocol_members().items():
    setattr(ProtocolOnlyStore, _name, _forward(_name, _is_property))


class VerifyOnlyStore(ProtocolOnlyStore):
    """Only `VerifyStore`'s members: what the verify client and server may use."""


for _name in protocol_members().keys() - protocol_members((VerifyStore,)).keys():
    setattr(VerifyOnlyStore, _name, None)  # present, so not inherited; calling it fails


def test_the_protocols_name_what_node_and_api_use() -> None:
    members = protocol_members()
    # Guards the test below: an empty or property-blind member list would
    # make the forwarding store trivially short.
    assert {"apply_batch", "read_batch", "change_notifier", "summaries"} <= set(members)
    assert [name for name, is_property in members.items() if is_property] == [
        "site_id",
        "incarnation",
        "rows_captured_total",
    ]
    assert not hasattr(ProtocolOnlyStore, "connection")
    assert VerifyOnlyStore.apply_batch is None  # type: ignore[attr-defined]
    assert callable(VerifyOnlyStore.rows_of)  # type: ignore[attr-defined]


def test_open_store_gives_a_sqlite_store_that_keeps_the_protocol(tmp_path: Path) -> None:
    store: Store = open_store(tmp_path / "a.db")
    try:
        assert isinstance(store, SqliteStore)
        site = store.init()
        assert store.site_id == site
        assert store.head_seq() == 0
        notifier: ChangeNotifier = store.change_notifier()
        try:
            assert notifier.changed()  # the first look always reports a change
            assert not notifier.changed()
        finally:
            notifier.close()
    finally:
        store.close()


async def test_three_nodes_converge_and_verify_on_a_store_that_is_only_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal: node, sessions, API and verify run on any object with the Store protocol.

    Method: every node's default store (`open_store`) is replaced by a
    `ProtocolOnlyStore` around a SqliteStore; three nodes in a chain
    replicate writes from both ends, answer the JSON routes, and verify
    each other.  Any use of a member outside the Protocol raises.
    """
    stores: list[ProtocolOnlyStore] = []

    def open_protocol_only(path: str | Path, **options: Any) -> Store:
        store = ProtocolOnlyStore(SqliteStore.open(path, **options))
        stores.append(store)
        return cast(Store, store)

    monkeypatch.setattr(node_module, "open_store", open_protocol_only)
    a, b, c = (make_db(tmp_path / f"{name}.db") for name in "abc")
    quick = {"verify_interval_s": 0.2}
    async with (
        running_node(config(a, **quick)) as node_a,
        running_node(config(b, node_a, **quick)) as node_b,
        running_node(config(c, node_b, **quick)) as node_c,
    ):
        assert all(isinstance(node.store, ProtocolOnlyStore) for node in (node_a, node_b, node_c))
        await asyncio.to_thread(execute, a, "INSERT INTO items VALUES ('from-a', 'a', 1)")
        await asyncio.to_thread(execute, c, "INSERT INTO items VALUES ('from-c', 'c', 2)")
        await wait_until(lambda: converged(a, b, c, rows=2), TIMEOUT_S, "the chain to converge")

        async def verified() -> bool:
            return any(outcome.identical for outcome in node_c.verify_outcomes.values())

        await wait_until(verified, TIMEOUT_S, "c's periodic verify against b")
        async with aiohttp.ClientSession() as http:
            for route in ("status", "quarantine", "conflicts"):
                async with http.get(f"http://{node_b.api_listen}/v1/{route}") as response:
                    assert response.status == 200, route
            async with http.get(f"http://{node_b.api_listen}/v1/status") as response:
                status = await response.json()
        assert status["store"]["site_id"] == node_b.store.site_id
    assert len(stores) == 3
    used = set().union(*(store.calls for store in stores))
    # The nodes went through capture, the feed, apply and verify.
    assert {"capture", "read_batch", "apply_batch", "change_notifier", "summaries"} <= used


async def test_verify_and_repair_run_on_a_store_that_is_only_the_verify_protocol(
    tmp_path: Path,
) -> None:
    """Goal: the verify client and server need only `VerifyStore`, not the whole `Store`.

    Method: two real SQLite files that each hold a row the other lacks; both
    wrapped in `VerifyOnlyStore` (any other member is None, so using it
    raises), one answering through a `VerifyServer` on the in-memory
    transport, the other repairing against it.  Both end with both rows.
    """
    paths = [make_db(tmp_path / f"{name}.db") for name in "ab"]
    stores = []
    for path, key in zip(paths, ("from-a", "from-b"), strict=True):
        store = SqliteStore.open(path)
        store.init()
        store.track(["items"])
        store.connection.execute("INSERT INTO items VALUES (?, 'x', 1)", (key,))
        store.capture()
        stores.append(store)

    async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    asking, answering = (VerifyOnlyStore(store) for store in stores)
    server = VerifyServer(
        cast(VerifyStore, answering), call, 1 << 20, admit=lambda _peer: Admitted(None)
    )
    network = MemoryNetwork()
    network.listener("memory://b").serve(RefusingChannels(), server)
    try:
        exchange = network.connector().verify_exchange("memory://b", None)
        async with VerifyClient(exchange) as client:
            report = await repair(cast(VerifyStore, asking), call, client, ["items"], settle_s=0.01)
        assert (report.fetched_rows, report.pushed_rows) == (1, 1)
        assert report.after.identical, report.after.as_json()
        for store in stores:
            keys = store.connection.execute("SELECT id FROM items ORDER BY id").fetchall()
            assert keys == [("from-a",), ("from-b",)]
        assert {"rows_of", "merge_repair_rows"} <= asking.calls & answering.calls
    finally:
        for store in stores:
            store.close()


class RefusingChannels:
    """A channel host for a listener that takes verify requests only."""

    async def serve_channel(
        self, peer: PeerIdentity, open_channel: Callable[[], Awaitable[Channel]]
    ) -> Refusal | None:
        return Refusal(RefusalReason.NOT_A_PEER)
