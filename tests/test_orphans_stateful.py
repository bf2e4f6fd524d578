"""A property: random parent/child writes at three stores, random partial deliveries.

Authors, their books and the books' pages (two foreign keys, a chain) are
written at three stores with fresh keys, as an application with foreign
keys enforced on its own connection would write them: a child is added
only to a parent alive where it is written; a parent is deleted with or
without the application deleting its children first.  Stores pull from
each other one small batch at a time (1 to 3 rows), in any order, so a
parent's delete often arrives before or after the writes that concern its
children.  After every step the hash trees each store keeps are exact.
In the end, once every store has every write, the stores hold the same
rows with the same stamps, and under `cascade` and `set-null` no row
names a missing parent (`PRAGMA foreign_key_check` is empty).

Longer runs: SYNCMESH_ORPHAN_EXAMPLES=500 SYNCMESH_ORPHAN_STEPS=60.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from syncmesh.clock import HybridClock
from syncmesh.store import OrphanPolicy
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.summary import summary_of
from tests.helpers import ManualClock, exchange, exchange_all, rows_with_types

BASE_MS = 1_700_000_000_000
TABLES = ["authors", "books", "pages"]
ROUNDS_MAX = 30
nodes = st.integers(0, 2)
picks = st.integers(0, 1_000)


def schema(on_delete: str) -> list[str]:
    action = f" ON DELETE {on_delete}" if on_delete else ""
    return [
        "CREATE TABLE authors (id TEXT PRIMARY KEY, name TEXT)",
        f"CREATE TABLE books (id TEXT PRIMARY KEY, author_id TEXT REFERENCES authors (id){action},"
        " title TEXT)",
        "CREATE INDEX books_author ON books (author_id)",
        "CREATE TABLE pages (id TEXT PRIMARY KEY, book_id TEXT REFERENCES books (id), n INTEGER)",
        "CREATE INDEX pages_book ON pages (book_id)",
    ]


class OrphanMachine(RuleBasedStateMachine):
    """Three stores; subclasses choose the schema's ON DELETE action and the policy."""

    ON_DELETE = ""
    POLICY: OrphanPolicy | None = None
    RESOLVES = True  # under this policy no orphan may be left in the end

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="syncmesh-orphans-"))
        self.clocks = [ManualClock(BASE_MS) for _ in range(3)]
        self.stores = []
        for index, clock in enumerate(self.clocks):
            store = SqliteStore.open(
                self.directory / f"{index}.db",
                clock=HybridClock(clock, drift_ms_max=3_600_000),
                orphan_policy=self.POLICY,
            )
            store.init()
            for statement in schema(self.ON_DELETE):
                store.connection.execute(statement)
            store.track(TABLES)
            self.stores.append(store)
        self.next_key = 0

    def _key(self, prefix: str) -> str:
        self.next_key += 1
        return f"{prefix}{self.next_key}"

    def _alive(self, node: int, table: str, pick: int) -> str | None:
        keys = [
            str(row[0])
            for row in self.stores[node].connection.execute(f"SELECT id FROM {table} ORDER BY id")
        ]
        return keys[pick % len(keys)] if keys else None

    def _write(self, node: int, *statements: tuple[str, tuple[object, ...]]) -> None:
        """One application transaction, then the node's capture."""
        connection = self.stores[node].connection
        connection.execute("BEGIN")
        for sql, params in statements:
            connection.execute(sql, params)
        connection.execute("COMMIT")
        self.stores[node].capture()

    # -- the application's writes --------------------------------------------------

    @rule(node=nodes)
    def add_author(self, node: int) -> None:
        self._write(node, ("INSERT INTO authors VALUES (?, 'x')", (self._key("a"),)))

    @rule(node=nodes, pick=picks)
    def add_book(self, node: int, pick: int) -> None:
        author = self._alive(node, "authors", pick)
        if author is not None:
            self._write(node, ("INSERT INTO books VALUES (?, ?, 't')", (self._key("b"), author)))

    @rule(node=nodes, pick=picks)
    def add_page(self, node: int, pick: int) -> None:
        book = self._alive(node, "books", pick)
        if book is not None:
            self._write(node, ("INSERT INTO pages VALUES (?, ?, 1)", (self._key("p"), book)))

    @rule(node=nodes, pick=picks, app_cascades=st.booleans())
    def delete_author(self, node: int, pick: int, app_cascades: bool) -> None:
        author = self._alive(node, "authors", pick)
        if author is None:
            return
        statements: list[tuple[str, tuple[object, ...]]] = []
        if app_cascades:  # as Django does in Python before it deletes the author
            statements += [
                (
                    "DELETE FROM pages WHERE book_id IN (SELECT id FROM books WHERE author_id = ?)",
                    (author,),
                ),
                ("DELETE FROM books WHERE author_id = ?", (author,)),
            ]
        statements.append(("DELETE FROM authors WHERE id = ?", (author,)))
        self._write(node, *statements)

    @rule(node=nodes, pick=picks)
    def delete_book(self, node: int, pick: int) -> None:
        book = self._alive(node, "books", pick)
        if book is not None:
            self._write(node, ("DELETE FROM books WHERE id = ?", (book,)))

    @rule(node=nodes, pick=picks, other=picks)
    def move_book(self, node: int, pick: int, other: int) -> None:
        book = self._alive(node, "books", pick)
        author = self._alive(node, "authors", other)
        if book is not None and author is not None:
            self._write(node, ("UPDATE books SET author_id = ? WHERE id = ?", (author, book)))

    @rule(node=nodes, pick=picks)
    def retitle_book(self, node: int, pick: int) -> None:
        """Moves the book to the end of the feed: later than its author's writes."""
        book = self._alive(node, "books", pick)
        if book is not None:
            self._write(node, ("UPDATE books SET title = title || '+' WHERE id = ?", (book,)))

    # -- deliveries and time ---------------------------------------------------------

    @rule(source=nodes, to=nodes, rows_max=st.integers(1, 3), pulls=st.integers(1, 3))
    def pull(self, source: int, to: int, rows_max: int, pulls: int) -> None:
        if source == to:
            return
        for _ in range(pulls):
            exchange(self.stores[source], self.stores[to], rows_max)

    @rule(node=nodes, ms=st.integers(0, 50))
    def tick_clock(self, node: int, ms: int) -> None:
        self.clocks[node].advance(ms)

    # -- invariants and the end ------------------------------------------------------

    @invariant()
    def hash_trees_are_kept_exact(self) -> None:
        for store in self.stores:
            kept = store.summaries(TABLES)
            for table in TABLES:
                assert store.deep_summary(table)[1] == 0
                pairs = store.connection.execute(f"SELECT kh, dg FROM _syncmesh_shadow_{table}")
                assert kept[table].leaves == summary_of(pairs).leaves

    def _converge(self) -> None:
        for clock in self.clocks:
            clock.advance(10_000)
        for store in self.stores:
            store.capture()
        for _round in range(ROUNDS_MAX):
            heads = [store.head_seq() for store in self.stores]
            moved = 0
            for source in self.stores:
                for target in self.stores:
                    if source is not target:
                        moved += exchange_all(source, target)
            if moved == 0 and heads == [store.head_seq() for store in self.stores]:
                return
        raise AssertionError(f"not quiet after {ROUNDS_MAX} rounds of exchange")

    def teardown(self) -> None:
        try:
            self._converge()
            dumps = [
                {table: rows_with_types(store.connection, table) for table in TABLES}
                for store in self.stores
            ]
            assert dumps[0] == dumps[1] == dumps[2]
            roots = [
                {table: tree.root() for table, tree in store.summaries(TABLES).items()}
                for store in self.stores
            ]
            assert roots[0] == roots[1] == roots[2]
            for store in self.stores:
                assert store.quarantine() == []
                if self.RESOLVES:
                    assert store.connection.execute("PRAGMA foreign_key_check").fetchall() == []
                    assert store.status().orphans == {}
                assert store.status().orphan_problems == []
        finally:
            for store in self.stores:
                store.close()
            shutil.rmtree(self.directory, ignore_errors=True)


class CascadeMachine(OrphanMachine):
    ON_DELETE = ""  # NO ACTION, as Django declares it: the default policy cascades


class SetNullMachine(OrphanMachine):
    ON_DELETE = "SET NULL"  # books: set-null; pages (NO ACTION): cascade


class KeepMachine(OrphanMachine):
    POLICY = OrphanPolicy(default="keep")
    RESOLVES = False


SETTINGS = settings(
    max_examples=int(os.environ.get("SYNCMESH_ORPHAN_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("SYNCMESH_ORPHAN_STEPS", "30")),
    deadline=None,
)
CascadeMachine.TestCase.settings = SETTINGS
SetNullMachine.TestCase.settings = SETTINGS
KeepMachine.TestCase.settings = SETTINGS
TestCascadeConverges = CascadeMachine.TestCase
TestSetNullConverges = SetNullMachine.TestCase
TestKeepConverges = KeepMachine.TestCase
