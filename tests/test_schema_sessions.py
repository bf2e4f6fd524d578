"""Sessions between nodes whose tracked tables differ (ADR 0013): no refusal, per-table exchange.

`node.mismatch.compare` is pure: from two HELLOs it decides which tables
the peer is sent, whether its vector claims are adopted, and what differs
in words.  The node tests at the end run two real nodes in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from syncmesh.api import running_node
from syncmesh.model import TableSpec
from syncmesh.node.mismatch import compare, table_schema
from syncmesh.protocol import PROTOCOL_VERSION, Hello, TableSchema
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import wait_until
from tests.test_node import TIMEOUT_S, config, execute, peer_of

ITEMS = TableSchema((), ("id", "name", "qty"), ((), (), ()))


def hello(site: str, schema: dict[str, TableSchema], fingerprint: str = "") -> Hello:
    return Hello(
        PROTOCOL_VERSION,
        site,
        "inc",
        fingerprint or repr(sorted(schema.items())),
        tuple(schema),
        0,
        {},
        schema=schema,
    )


def test_the_same_tables_are_all_sent_and_the_vector_adopted() -> None:
    result = compare(hello("a", {"items": ITEMS}), hello("b", {"items": ITEMS}))
    assert result.peer_tables == {"items"}
    assert result.adopt_vector
    assert result.differences == ()


def test_a_peer_without_one_of_our_columns_does_not_cover_us() -> None:
    theirs = TableSchema((), ("id", "name"), ((), ()))
    result = compare(hello("a", {"items": ITEMS}), hello("b", {"items": theirs}))
    assert not result.adopt_vector
    assert result.differences == ("table 'items': column 'qty' only here",)
    # The other way round: B is covered by A, and hears of A's extra column.
    back = compare(hello("b", {"items": theirs}), hello("a", {"items": ITEMS}))
    assert back.adopt_vector
    assert back.differences == ("table 'items': column 'qty' only at site a",)


def test_columns_match_by_former_names_either_way_round() -> None:
    renamed = TableSchema((), ("id", "name", "quantity"), ((), (), ("qty",)))
    ours, theirs = hello("a", {"items": ITEMS}), hello("b", {"items": renamed})
    assert compare(ours, theirs).adopt_vector
    assert compare(ours, theirs).differences == ()
    assert compare(theirs, ours).adopt_vector
    assert compare(theirs, ours).differences == ()


def test_a_renamed_table_is_still_sent_under_its_old_name() -> None:
    goods = TableSchema(("items",), ITEMS.columns, ITEMS.former)
    result = compare(hello("a", {"items": ITEMS}), hello("b", {"goods": goods}))
    # Our `items` is the peer's `goods`: read_batch matches it by the former name.
    assert result.peer_tables == {"goods", "items"}
    assert result.adopt_vector
    assert result.differences == ()
    back = compare(hello("b", {"goods": goods}), hello("a", {"items": ITEMS}))
    assert back.adopt_vector
    assert back.peer_tables == {"items"}  # and `goods` matches our former name there


def test_a_table_tracked_at_one_site_only_is_named_and_not_sent() -> None:
    notes = TableSchema((), ("id", "body"), ((), ()))
    ours = hello("a", {"items": ITEMS, "notes": notes})
    theirs = hello("b", {"items": ITEMS})
    result = compare(ours, theirs)
    assert result.peer_tables == {"items"}
    assert not result.adopt_vector
    assert result.differences == ("table 'notes' is tracked here, not at site b",)
    back = compare(theirs, ours)
    assert back.adopt_vector
    assert back.peer_tables == {"items", "notes"}
    assert back.differences == ("table 'notes' is tracked at site a, not here",)


def test_a_peer_from_before_issue_14_is_judged_by_its_fingerprint() -> None:
    ours = hello("a", {"items": ITEMS}, fingerprint="f1")
    same = Hello(PROTOCOL_VERSION, "b", "inc", "f1", ("items",), 0, {})
    assert compare(ours, same).adopt_vector
    assert compare(ours, same).differences == ()
    other = Hello(PROTOCOL_VERSION, "b", "inc", "f2", ("items",), 0, {})
    result = compare(ours, other)
    assert result.peer_tables == {"items"}
    assert not result.adopt_vector
    [difference] = result.differences
    assert "fingerprint f1" in difference
    assert "f2" in difference


def test_table_schema_aligns_former_names_with_every_column() -> None:
    spec = TableSpec("items", ("id", "name"), ("TEXT", "TEXT"), ("id",))
    assert table_schema(spec) == TableSchema((), ("id", "name"), ((), ()))
    renamed = TableSpec("goods", ("id", "title"), ("", ""), ("id",), ((), ("name",)), ("items",))
    assert table_schema(renamed) == TableSchema(("items",), ("id", "title"), ((), ("name",)))


# -- two nodes --------------------------------------------------------------------------


def make_db(path: Path, *schemas: str, track: tuple[str, ...]) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for schema in schemas:
            connection.execute(schema)
        connection.commit()
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(list(track))
    finally:
        store.close()
    return path


ITEMS_SQL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT)"
NOTES_SQL = "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


async def test_a_table_tracked_at_one_site_only_is_not_sent_and_the_rest_syncs(
    tmp_path: Path,
) -> None:
    """Goal: A tracks `notes` too, B does not (yet): items sync both ways, notes are
    not sent to B at all (before, every session was refused; a table B does not
    track would have been quarantined there), and both name the table."""
    a = make_db(tmp_path / "a.db", ITEMS_SQL, NOTES_SQL, track=("items", "notes"))
    b = make_db(tmp_path / "b.db", ITEMS_SQL, NOTES_SQL, track=("items",))
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)) as node_b:
        execute(a, "INSERT INTO notes VALUES ('n', 'only at a')")
        execute(a, "INSERT INTO items VALUES ('from-a', 'a')")
        execute(b, "INSERT INTO items VALUES ('from-b', 'b')")

        async def items_synced() -> bool:
            rows_a = await asyncio.to_thread(_rows, a, "items")
            rows_b = await asyncio.to_thread(_rows, b, "items")
            return rows_a == rows_b == [("from-a", "a"), ("from-b", "b")]

        await wait_until(items_synced, TIMEOUT_S, "items at both sites")
        at_b = await peer_of(node_b, dialed=True)
        assert at_b.schema_differences == (
            f"table 'notes' is tracked at site {node_a.store.site_id}, not here",
        )
        assert at_b.adopts_vector
        at_a = await peer_of(node_a, state="streaming")
        assert at_a.schema_differences == (
            f"table 'notes' is tracked here, not at site {node_b.store.site_id}",
        )
        assert not at_a.adopts_vector
        assert at_a.last_error == at_b.last_error == ""
        assert (await node_b.statistics()).store.quarantined_rows == 0
        assert await asyncio.to_thread(_rows, b, "notes") == []


async def test_a_table_syncs_once_both_sites_track_it(tmp_path: Path) -> None:
    """Goal: rows written to `notes` at A before B tracked it reach B once it does
    (B forgets its claims about the table and reads A's feed again)."""
    a = make_db(tmp_path / "a.db", ITEMS_SQL, NOTES_SQL, track=("items", "notes"))
    b = make_db(tmp_path / "b.db", ITEMS_SQL, NOTES_SQL, track=("items",))
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)) as node_b:
        execute(a, "INSERT INTO notes VALUES ('early', 'before b tracked notes')")
        execute(a, "INSERT INTO items VALUES ('x', 'a')")

        async def items_at_b() -> bool:
            return await asyncio.to_thread(_rows, b, "items") == [("x", "a")]

        await wait_until(items_at_b, TIMEOUT_S, "items at B")

        def track_notes() -> None:
            store = SqliteStore.open(b)
            try:
                store.track(["notes"])
            finally:
                store.close()

        await asyncio.to_thread(track_notes)
        execute(a, "INSERT INTO notes VALUES ('late', 'after')")

        async def notes_at_b() -> bool:
            return await asyncio.to_thread(_rows, b, "notes") == [
                ("early", "before b tracked notes"),
                ("late", "after"),
            ]

        await wait_until(notes_at_b, TIMEOUT_S, "notes at B")
        assert (await peer_of(node_b, dialed=True)).schema_differences == ()
