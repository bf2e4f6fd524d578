"""Three real stores under random writes, captures, partial pulls, replays and clock jumps.

Whatever happens in between, once every store has exchanged with every other
until nothing moves, all three hold the same rows, with the same storage
classes, and the same merge state (DESIGN.md section 2; PROPERTIES.md P1, P3, P8, P9).

Mixed schema versions (issue 14): each store applies the schema changes of
one shared list (`SCHEMA_CHANGES`) at its own moment, while writes and syncs
go on; before the final exchange every store has applied them all.  Then
they converge too, and no write any store ever held is lost: each cell of
the final state is the greatest write of its row's final life
(`no_held_write_is_lost`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from syncmesh.clock import HybridClock
from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch, SqlValue, Stamp
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.summary import summary_of
from tests.helpers import ManualClock, exchange, exchange_all, rows_with_types
from tests.schema_steps import add_column, rename_column

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 60_000
CLOCK_SPREAD_MS = 100_000  # physical clocks wander within BASE +- this: drift refusals happen
NODES = 3
KEYS = ["k0", "k1", "k2", "k3"]
BODIES: list[SqlValue] = [None, "x", "y", "1", 1, 1.0, b"b", b""]
NUMBERS: list[SqlValue] = [None, 0, 1, 2.5, -(2**63), 2**63 - 1, "2"]
ROUNDS_MAX = 10
# The schema changes every store makes, in this order, each at its own time
# (issue 14): (kind, canonical column, SQL detail).  Columns are named in the
# machine by their canonical name (the first name they had).
SCHEMA_CHANGES: list[tuple[str, str, str]] = [
    ("add", "extra", "extra TEXT DEFAULT 'd'"),
    ("rename", "n", "num"),
    ("rename", "extra", "tag"),
]
EXTRAS: list[SqlValue] = [None, "e", "f", 3]

nodes = st.integers(0, NODES - 1)
pairs = st.permutations(range(NODES)).map(lambda order: (order[0], order[1]))
keys = st.sampled_from(KEYS)
MergeView = dict[tuple[SqlValue, ...], tuple[object, ...]]


class SyncMachine(RuleBasedStateMachine):
    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="syncmesh-stateful-"))
        self.clocks = [ManualClock(BASE_MS) for _ in range(NODES)]
        self.stores: list[SqliteStore] = []
        for index, clock in enumerate(self.clocks):
            store = SqliteStore.open(
                self.directory / f"node{index}.db",
                clock=HybridClock(clock, drift_ms_max=DRIFT_MS_MAX),
            )
            self.stores.append(store)
            store.init()
            store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body, n)")
            store.track(["notes"])
            store.summaries(["notes"])  # built now, then kept up to date by every write
        self.last_stamps = [store.clock.last for store in self.stores]
        self.last_heads = [store.head_seq() for store in self.stores]
        # Per store: how many of SCHEMA_CHANGES it has made, and each
        # canonical column's name there (absent: not added there yet).
        self.versions = [0] * NODES
        self.names: list[dict[str, str]] = [{"body": "body", "n": "n"} for _ in range(NODES)]
        # Per (key, canonical column): the greatest (cl, stamp) any store held.
        self.held: dict[tuple[SqlValue, str], tuple[int, Stamp]] = {}

    # -- local writes -------------------------------------------------------------

    def _write(self, node: int, sql: str, params: tuple[SqlValue, ...], capture: bool) -> None:
        self.stores[node].connection.execute(sql, params)
        if capture:
            self.stores[node].capture()

    @rule(
        node=nodes,
        key=keys,
        body=st.sampled_from(BODIES),
        n=st.sampled_from(NUMBERS),
        capture=st.booleans(),
    )
    def insert_or_replace(
        self, node: int, key: str, body: SqlValue, n: SqlValue, capture: bool
    ) -> None:
        self._write(
            node,
            f"INSERT OR REPLACE INTO notes (id, body, {self.names[node]['n']}) VALUES (?, ?, ?)",
            (key, body, n),
            capture,
        )

    @rule(node=nodes, key=keys, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def insert_without_body(self, node: int, key: str, n: SqlValue, capture: bool) -> None:
        """A (re-)insert that leaves `body` NULL: no old body may show through."""
        n_name = self.names[node]["n"]
        self._write(
            node, f"INSERT OR IGNORE INTO notes (id, {n_name}) VALUES (?, ?)", (key, n), capture
        )

    @rule(node=nodes, key=keys, body=st.sampled_from(BODIES), capture=st.booleans())
    def update_body(self, node: int, key: str, body: SqlValue, capture: bool) -> None:
        self._write(node, "UPDATE notes SET body = ? WHERE id = ?", (body, key), capture)

    @rule(node=nodes, key=keys, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def update_n(self, node: int, key: str, n: SqlValue, capture: bool) -> None:
        n_name = self.names[node]["n"]
        self._write(node, f"UPDATE notes SET {n_name} = ? WHERE id = ?", (n, key), capture)

    @rule(node=nodes, key=keys, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def upsert(self, node: int, key: str, n: SqlValue, capture: bool) -> None:
        n_name = self.names[node]["n"]
        self._write(
            node,
            f"INSERT INTO notes (id, {n_name}) VALUES (?, ?)"
            f" ON CONFLICT (id) DO UPDATE SET {n_name} = excluded.{n_name}",
            (key, n),
            capture,
        )

    @rule(node=nodes, key=keys, capture=st.booleans())
    def delete(self, node: int, key: str, capture: bool) -> None:
        self._write(node, "DELETE FROM notes WHERE id = ?", (key,), capture)

    @rule(node=nodes, old=keys, new=keys, capture=st.booleans())
    def change_key(self, node: int, old: str, new: str, capture: bool) -> None:
        self._write(node, "UPDATE OR IGNORE notes SET id = ? WHERE id = ?", (new, old), capture)

    @rule(node=nodes, key=keys, extra=st.sampled_from(EXTRAS), capture=st.booleans())
    def update_extra(self, node: int, key: str, extra: SqlValue, capture: bool) -> None:
        """A write to the added column, at a store that has it."""
        name = self.names[node].get("extra")
        if name is None:
            return
        self._write(node, f"UPDATE notes SET {name} = ? WHERE id = ?", (extra, key), capture)

    @rule(
        node=nodes,
        key=keys,
        extra=st.sampled_from(EXTRAS),
        n=st.sampled_from(NUMBERS),
        capture=st.booleans(),
    )
    def insert_with_extra(
        self, node: int, key: str, extra: SqlValue, n: SqlValue, capture: bool
    ) -> None:
        names = self.names[node]
        if "extra" not in names:
            return
        self._write(
            node,
            f"INSERT OR REPLACE INTO notes (id, {names['n']}, {names['extra']}) VALUES (?, ?, ?)",
            (key, n, extra),
            capture,
        )

    @rule(node=nodes)
    def capture(self, node: int) -> None:
        self.stores[node].capture()

    # -- schema changes -------------------------------------------------------------

    @rule(node=nodes)
    def migrate(self, node: int) -> None:
        """The store makes the next change of SCHEMA_CHANGES (if any): the others have not yet."""
        self._migrate(node)
        if len(set(self.versions)) > 1:
            event("migrate: stores on different schema versions")

    def _migrate(self, node: int) -> None:
        version = self.versions[node]
        if version == len(SCHEMA_CHANGES):
            return
        kind, column, detail = SCHEMA_CHANGES[version]
        store, names = self.stores[node], self.names[node]
        if kind == "add":
            add_column(store, "notes", detail, shell=False)
            names[column] = column
        else:
            rename_column(store, "notes", names[column], detail, shell=False)
            names[column] = detail
        self.versions[node] += 1

    # -- sync ---------------------------------------------------------------------

    @rule(target=batches, pair=pairs, rows_max=st.integers(1, 3))
    def partial_pull(self, pair: tuple[int, int], rows_max: int) -> tuple[int, int, ChangeBatch]:
        source, target = self.stores[pair[0]], self.stores[pair[1]]
        cursor = target.peer_cursor(source.site_id)
        if cursor is None:
            target.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")
        from_seq = 0 if cursor is None else cursor.cursor
        batch = source.read_batch(from_seq, target.vector(), rows_max)
        result = target.apply_batch(source.site_id, batch)
        if result.drift_refused_rows:
            event("partial pull: rows refused for clock drift")
        if batch.vector is None:
            event("partial pull: cut short of the head")
        return (pair[0], pair[1], batch)

    @rule(delivered=consumes(batches))
    def duplicate_delivery(self, delivered: tuple[int, int, ChangeBatch]) -> None:
        source_index, target_index, batch = delivered
        if batch.to_seq == batch.from_seq:
            return  # an empty slice at the head: re-reading it is a no-op, not a replay
        source, target = self.stores[source_index], self.stores[target_index]
        before = self._snapshot(target)
        try:
            target.apply_batch(source.site_id, batch)
        except StoreError:
            pass
        else:
            raise AssertionError("a replayed batch was applied")
        assert self._snapshot(target) == before

    @rule(pair=pairs)
    def full_exchange(self, pair: tuple[int, int]) -> None:
        target = self.stores[pair[1]]
        quarantined = len(target.quarantine())
        exchange_all(self.stores[pair[0]], target, rows_max=2)
        if len(target.quarantine()) > quarantined:
            event("full exchange: rows quarantined")

    @rule(node=nodes)
    def retry_quarantine(self, node: int) -> None:
        self.stores[node].retry_quarantine()

    # -- clocks -------------------------------------------------------------------

    @rule(
        node=nodes,
        delta_ms=st.sampled_from([-CLOCK_SPREAD_MS, -70_000, 70_000, CLOCK_SPREAD_MS])
        | st.integers(-CLOCK_SPREAD_MS, CLOCK_SPREAD_MS),
    )
    def move_clock(self, node: int, delta_ms: int) -> None:
        """Jump a physical clock, backwards too, within a window around BASE_MS."""
        clock = self.clocks[node]
        clock.set(
            min(
                BASE_MS + CLOCK_SPREAD_MS, max(BASE_MS - CLOCK_SPREAD_MS, clock.now_ms() + delta_ms)
            )
        )

    @rule(node=nodes, ms=st.integers(0, 5))
    def tick_clock(self, node: int, ms: int) -> None:
        self.clocks[node].advance(ms)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def clocks_and_feeds_never_go_back(self) -> None:
        for index, store in enumerate(self.stores):
            assert store.clock.last >= self.last_stamps[index]
            assert store.head_seq() >= self.last_heads[index]
            self.last_stamps[index] = store.clock.last
            self.last_heads[index] = store.head_seq()

    @invariant()
    def hash_trees_are_kept_exact(self) -> None:
        """The tree each write keeps up to date equals one rebuilt from the rows' stamps."""
        for store in self.stores:
            assert store.context.summaries.valid_at(store.head_seq()), "the tree fell out of step"
            kept = store.summaries(["notes"])["notes"]
            # Every stored digest matches its row's stamps (0 corrected) ...
            assert store.deep_summary("notes")[1] == 0
            # ... and the kept tree is the XOR of those digests, leaf by leaf.
            pairs = store.connection.execute("SELECT kh, dg FROM _syncmesh_shadow_notes")
            assert kept.leaves == summary_of(pairs).leaves

    @invariant()
    def record_held_cells(self) -> None:
        """Remember the greatest (cl, stamp) of each cell that any store holds."""
        for index, store in enumerate(self.stores):
            if store.status().waiting_cells:
                event("cells waiting for a column")
            canonical = {name: column for column, name in self.names[index].items()}
            for change in store.read_batch(0, {}, 1_000_000).rows:
                (key,) = change.pk
                state = change.state
                if not state.alive:
                    continue
                for name, cell in state.cells.items():
                    seen = (key, canonical[name])
                    if seen not in self.held or self.held[seen] < (state.cl, cell.stamp):
                        self.held[seen] = (state.cl, cell.stamp)

    # -- the end ------------------------------------------------------------------

    def _snapshot(self, store: SqliteStore) -> tuple[object, ...]:
        shadow = store.connection.execute(
            "SELECT * FROM _syncmesh_shadow_notes ORDER BY k0"
        ).fetchall()
        peers = store.connection.execute("SELECT * FROM _syncmesh_peers ORDER BY site_id")
        return (
            rows_with_types(store.connection, "notes"),
            shadow,
            store.head_seq(),
            store.vector(),
            peers.fetchall(),
            store.quarantine(),
        )

    def _merge_view(self, store: SqliteStore) -> MergeView:
        """Per key: causal length and its stamp, and for a live row each cell."""
        view: MergeView = {}
        for change in store.read_batch(0, {}, 1_000_000).rows:
            state = change.state
            cells: dict[str, tuple[SqlValue, str, Stamp]] = {}
            if state.alive:
                cells = {
                    column: (cell.value, type(cell.value).__name__, cell.stamp)
                    for column, cell in state.cells.items()
                }
            view[change.pk] = (state.cl, state.cl_stamp, cells)
        return view

    def _converge(self) -> None:
        if any(self.versions):  # the rolling schema change ends: every store makes them all
            for node in range(NODES):
                while self.versions[node] < len(SCHEMA_CHANGES):
                    self._migrate(node)
        if any(store.quarantine() for store in self.stores):
            event("quarantine not empty before the final exchange")
        for clock in self.clocks:  # every stamp issued so far is now in the past
            clock.set(BASE_MS + 10 * CLOCK_SPREAD_MS)
        for store in self.stores:
            store.capture()
        for _round in range(ROUNDS_MAX):
            moved = sum(store.retry_quarantine() for store in self.stores)
            for source in self.stores:
                for target in self.stores:
                    if source is not target:
                        moved += exchange_all(source, target)
            quarantined = sum(len(store.quarantine()) for store in self.stores)
            if moved == 0 and quarantined == 0:
                break
        else:
            raise AssertionError(f"not quiet after {ROUNDS_MAX} rounds of exchange")

    def no_held_write_is_lost(self, view: MergeView) -> None:
        """Each cell any store held is in the final state, or lost to a greater write.

        A cell of the row's final life must be there with a stamp at least
        its own; a cell of an earlier life may be gone with that life.
        """
        canonical = {name: column for column, name in self.names[0].items()}
        final: dict[tuple[SqlValue, str], tuple[int, Stamp | None]] = {}
        lives: dict[SqlValue, int] = {}
        for (key,), (cl, _cl_stamp, cells) in view.items():
            lives[key] = cl  # type: ignore[assignment]
            for name, (_value, _kind, stamp) in cells.items():  # type: ignore[attr-defined]
                final[(key, canonical[name])] = (cl, stamp)  # type: ignore[assignment]
        for (key, column), (cl, stamp) in self.held.items():
            assert lives.get(key, 0) >= cl, f"row {key!r} went back to an earlier life"
            if lives[key] == cl:
                kept = final.get((key, column))
                assert kept is not None, f"{key!r}.{column}: a held write is lost"
                assert kept[1] is not None
                assert kept[1] >= stamp, f"{key!r}.{column}: an older write won over {stamp}"

    def teardown(self) -> None:
        try:
            self._converge()
            columns = ", ".join(
                f"{name}, typeof({name})" for name in ("body", *self.names[0].values())
            )
            query = f"SELECT id, {columns} FROM notes ORDER BY id"
            dumps = [store.connection.execute(query).fetchall() for store in self.stores]
            assert dumps[0] == dumps[1] == dumps[2]
            assert all(store.status().waiting_cells == {} for store in self.stores)
            views = [self._merge_view(store) for store in self.stores]
            assert views[0] == views[1] == views[2]
            self.no_held_write_is_lost(views[0])
            # Converged replicas have the same hash trees, with stamps and with values.
            roots = [store.summaries(["notes"])["notes"].root() for store in self.stores]
            assert roots[0] == roots[1] == roots[2]
            deep = [store.deep_summary("notes")[0].root() for store in self.stores]
            assert deep[0] == deep[1] == deep[2]
            for store in self.stores:
                assert store.capture() == 0
                # Quiet means quiet: with everyone's vector, nobody has anything to send.
                for other in self.stores:
                    if other is not store:
                        cursor = other.peer_cursor(store.site_id)
                        assert cursor is not None
                        assert store.read_batch(cursor.cursor, other.vector(), 100).rows == []
        finally:
            for store in self.stores:
                store.close()
            shutil.rmtree(self.directory, ignore_errors=True)


# A soak run: SYNCMESH_STATEFUL_EXAMPLES=2000 SYNCMESH_STATEFUL_STEPS=60 pytest --timeout 0 ...
SyncMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SYNCMESH_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("SYNCMESH_STATEFUL_STEPS", "30")),
    deadline=None,
)
TestConvergence = SyncMachine.TestCase


def test_exchange_helper_reaches_quiet_state(tmp_path: Path) -> None:
    """A smoke test of the helpers the machine relies on."""
    left, right = SqliteStore.open(tmp_path / "l.db"), SqliteStore.open(tmp_path / "r.db")
    try:
        for store in (left, right):
            store.init()
            store.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body, n)")
            store.track(["notes"])
        left.connection.execute("INSERT INTO notes VALUES ('a', 1, 2)")
        left.capture()
        assert exchange(left, right).applied_rows == 1
        assert exchange(left, right).applied_rows == 0
        assert rows_with_types(left.connection, "notes") == rows_with_types(
            right.connection, "notes"
        )
    finally:
        left.close()
        right.close()
