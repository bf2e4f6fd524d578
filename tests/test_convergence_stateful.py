"""Three real stores under random writes, captures, partial pulls, replays and clock jumps.

Whatever happens in between, once every store has exchanged with every other
until nothing moves, all three hold the same rows, with the same storage
classes, and the same merge state (DESIGN.md section 2; PROPERTIES.md P1, P3, P8, P9).

Schema steps (issue 14, docs/adr/0013-schema-evolution.md): add, rename and
drop a column, and a Django-style table rebuild, run by one store at a
time; every store runs the same steps in the same order.  Writes of every
kind go on between a store's DDL and its reconcile (a rebuild excepted:
an UPDATE there is the one write the catch-up cannot recover, so a rebuild
is reconciled at once, with a fresh insert in between).  Stores on
different schema versions sync throughout (mixed schema versions: columns
map by name and former names, cells of a column not here yet wait for it),
only not between a store's DDL and its reconcile.  No acknowledged write
is lost: each schema step inserts a fresh row before the reconcile, and
every store holds it at the end; and every cell any store ever held is in
the final state, or lost to a greater write of the row's final life
(`no_held_write_is_lost`; a dropped column's cells excepted).

Tombstone collection (issue 16, docs/adr/0015-membership-and-tombstone-gc.md):
a store collects its stable tombstones at any moment, knowing the vectors
of some of the others as they are then (gossip), and every store knows
every site as a member (they said HELLO).  No deleted row comes back in any
delivery order: a key any store held dead with causal length `cl` is, at
the end, dead (collected, or a tombstone) or alive in a later life.  At the
end every store learns every vector and collects: no tombstone is left, and
the replicas still agree.
"""

from __future__ import annotations

import contextlib
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
    precondition,
    rule,
)

from syncmesh.clock import HybridClock
from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch, SqlValue, Stamp
from syncmesh.schema import quote_identifier
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.summary import summary_of
from tests.helpers import ManualClock, exchange, exchange_all, rows_with_types

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 60_000
CLOCK_SPREAD_MS = 100_000  # physical clocks wander within BASE +- this: drift refusals happen
NODES = 3
KEYS = ["k0", "k1", "k2", "k3"]
BODIES: list[SqlValue] = [None, "x", "y", "1", 1, 1.0, b"b", b""]
BODIES_STRATEGY = st.sampled_from(BODIES)
NUMBERS: list[SqlValue] = [None, 0, 1, 2.5, -(2**63), 2**63 - 1, "2"]
ROUNDS_MAX = 10
# Schema changes per run (each run by every store, at its own moment).
SCHEMA_STEPS_MAX = 3
VALUE_COLUMNS_MAX = 4
SCHEMA_KINDS = ["add", "rename", "drop", "rebuild"]

nodes = st.integers(0, NODES - 1)
pairs = st.permutations(range(NODES)).map(lambda order: (order[0], order[1]))
keys = st.sampled_from(KEYS)
# A value column of a store, by its place among the store's value columns now.
places = st.integers(0, VALUE_COLUMNS_MAX - 1)
MergeView = dict[tuple[SqlValue, ...], tuple[object, ...]]


class SyncMachine(RuleBasedStateMachine):
    batches = Bundle("batches")
    in_flight = Bundle("in_flight")
    schema_steps_max = SCHEMA_STEPS_MAX  # a subclass without schema steps sets 0

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
        # Schema steps: (DDL, value columns after it, reconcile at once), in order;
        # each store has run the first `levels[i]`, and reconciled unless `pending[i]`.
        self.steps: list[tuple[str, list[str], bool]] = []
        self.levels = [0] * NODES
        self.pending = [False] * NODES
        self.columns = [["body", "n"] for _ in range(NODES)]
        self.fresh: list[str] = []  # keys inserted between a DDL and its reconcile
        # Per node: fresh keys not checked yet -> (column, value) written to them.
        self.unchecked: list[dict[str, tuple[str, SqlValue]]] = [{} for _ in range(NODES)]
        self.names_made = 0
        # Per store: each value column's identity (its first name), through renames.
        self.identities: list[dict[str, str]] = [{"body": "body", "n": "n"} for _ in range(NODES)]
        # Per (key, column identity): the greatest (cl, stamp) any store held.
        self.held: dict[tuple[SqlValue, str], tuple[int, Stamp]] = {}
        # Per key: the greatest causal length with which any store held it dead.
        self.dead: dict[SqlValue, int] = {}
        self.collected = 0
        # Batches read for a later delivery and not delivered yet, by id.
        self.undelivered: dict[int, tuple[int, int, ChangeBatch]] = {}
        # Every store knows every site as a member (they said HELLO), vectors unknown.
        for store in self.stores:
            store.learn_vectors({other.site_id: {} for other in self.stores if other is not store})

    def _column(self, node: int, place: int) -> str:
        columns = self.columns[node]
        return quote_identifier(columns[place % len(columns)])

    def _schemas_equal(self) -> bool:
        return len(set(self.levels)) == 1 and not any(self.pending)

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
        """Every value column: the first gets `body`, the others `n`."""
        columns = self.columns[node]
        names = ", ".join(quote_identifier(column) for column in columns)
        marks = ", ".join("?" * len(columns))
        self._write(
            node,
            f"INSERT OR REPLACE INTO notes (id, {names}) VALUES (?, {marks})",
            (key, body, *[n] * (len(columns) - 1)),
            capture,
        )

    @rule(node=nodes, key=keys, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def insert_without_body(self, node: int, key: str, n: SqlValue, capture: bool) -> None:
        """A (re-)insert that leaves the first column NULL: no old value may show through."""
        column = self._column(node, -1)
        self._write(
            node, f"INSERT OR IGNORE INTO notes (id, {column}) VALUES (?, ?)", (key, n), capture
        )

    @rule(node=nodes, key=keys, body=st.sampled_from(BODIES), capture=st.booleans())
    def update_body(self, node: int, key: str, body: SqlValue, capture: bool) -> None:
        column = self._column(node, 0)
        self._write(node, f"UPDATE notes SET {column} = ? WHERE id = ?", (body, key), capture)

    @rule(node=nodes, key=keys, place=places, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def update_n(self, node: int, key: str, place: int, n: SqlValue, capture: bool) -> None:
        column = self._column(node, place)
        self._write(node, f"UPDATE notes SET {column} = ? WHERE id = ?", (n, key), capture)

    @rule(node=nodes, key=keys, place=places, n=st.sampled_from(NUMBERS), capture=st.booleans())
    def upsert(self, node: int, key: str, place: int, n: SqlValue, capture: bool) -> None:
        column = self._column(node, place)
        self._write(
            node,
            f"INSERT INTO notes (id, {column}) VALUES (?, ?)"
            f" ON CONFLICT (id) DO UPDATE SET {column} = excluded.{column}",
            (key, n),
            capture,
        )

    @rule(node=nodes, key=keys, capture=st.booleans())
    def delete(self, node: int, key: str, capture: bool) -> None:
        self._write(node, "DELETE FROM notes WHERE id = ?", (key,), capture)

    @rule(node=nodes, old=keys, new=keys, capture=st.booleans())
    def change_key(self, node: int, old: str, new: str, capture: bool) -> None:
        self._write(node, "UPDATE OR IGNORE notes SET id = ? WHERE id = ?", (new, old), capture)

    @rule(node=nodes)
    def capture(self, node: int) -> None:
        self.stores[node].capture()

    # -- schema steps ---------------------------------------------------------------

    def _new_step(self, node: int, kind: str, place: int) -> tuple[str, list[str], bool]:
        """A new schema change, made up by `node` (the first store to run it)."""
        columns = list(self.columns[node])
        self.names_made += 1
        name = f"c{self.names_made}"
        if kind == "drop" and len(columns) > 1:
            dropped = columns.pop(place % len(columns))
            return f"ALTER TABLE notes DROP COLUMN {quote_identifier(dropped)}", columns, False
        if kind == "rename":
            old = columns[place % len(columns)]
            columns[place % len(columns)] = name
            ddl = f"ALTER TABLE notes RENAME COLUMN {quote_identifier(old)} TO {name}"
            return ddl, columns, False
        if kind == "rebuild":
            # Django's AddField with a default: create, copy, drop, rename.
            kept = ", ".join(quote_identifier(column) for column in columns)
            if len(columns) < VALUE_COLUMNS_MAX:
                columns.append(name)
                new_column, copied = f", {name} DEFAULT 'd'", f"{kept}, 'd'"
            else:
                new_column, copied = "", kept
            ddl = (
                f"CREATE TABLE new__notes (id TEXT PRIMARY KEY, {kept}{new_column});"
                f" INSERT INTO new__notes SELECT id, {copied} FROM notes;"
                " DROP TABLE notes; ALTER TABLE new__notes RENAME TO notes;"
            )
            return ddl, columns, True
        if len(columns) >= VALUE_COLUMNS_MAX:
            return self._new_step(node, "rename", place)
        columns.append(name)
        default = ["", " DEFAULT 'd'", " DEFAULT 0"][place % 3]
        return f"ALTER TABLE notes ADD COLUMN {name}{default}", columns, False

    # Also while rows wait in a quarantine: retried after the schema changed, such a
    # row meets the new schema as the mixed-version apply does (its entry holds the
    # cells its sender wrote, in our column names at the time).
    @precondition(lambda self: len(self.steps) < self.schema_steps_max or len(set(self.levels)) > 1)
    @rule(node=nodes, kind=st.sampled_from(SCHEMA_KINDS), place=places, fresh=BODIES_STRATEGY)
    def schema_change(self, node: int, kind: str, place: int, fresh: SqlValue) -> None:
        """Run the next schema step at `node`: one another store ran first, or a new one.

        A fresh row is inserted between the DDL and the reconcile; the
        reconcile runs now for a rebuild, otherwise in its own step, with
        any writes in between.
        """
        if self.pending[node]:
            self.reconcile(node)
        if self.levels[node] == len(self.steps):
            if len(self.steps) >= self.schema_steps_max or not self._schemas_equal():
                return  # one step at a time: the others catch up first
            self.steps.append(self._new_step(node, kind, place))
        ddl, columns, at_once = self.steps[self.levels[node]]
        store = self.stores[node]
        store.connection.executescript(ddl)
        self.levels[node] += 1
        self._follow_identities(node, self.columns[node], list(columns))
        self.columns[node] = list(columns)
        if len(set(self.levels)) > 1:
            event("schema step: stores on different schema versions")
        key = f"fresh-{self.levels[node]}-{node}"
        self.fresh.append(key)
        # After ADD COLUMN the new (last) column is written, before its trigger exists;
        # after a rebuild the first, so that only the catch-up compare can find the row.
        place = 0 if at_once else -1
        self.unchecked[node][key] = (self.columns[node][place], fresh)
        self._write(node, "INSERT INTO notes (id) VALUES (?)", (key,), False)
        self._write(
            node,
            f"UPDATE notes SET {self._column(node, place)} = ? WHERE id = ?",
            (fresh, key),
            False,
        )
        self.pending[node] = True
        event(f"schema step: {'rebuild' if at_once else ddl.split()[3]}")
        if at_once:
            self.reconcile(node)

    def _follow_identities(self, node: int, before: list[str], after: list[str]) -> None:
        """A rename keeps the column's identity; an added column is a new one."""
        identities = self.identities[node]
        gone = [column for column in before if column not in after]
        followed = {}
        for column in after:
            if column in identities:
                followed[column] = identities[column]
            elif len(after) == len(before) and gone:
                followed[column] = identities[gone[0]]  # RENAME COLUMN
            else:
                followed[column] = column  # ADD COLUMN (or a rebuild adding one)
        self.identities[node] = followed

    @precondition(lambda self: len(set(self.levels)) > 1)
    @rule(node=nodes, fresh=BODIES_STRATEGY)
    def catch_up_schema(self, node: int, fresh: SqlValue) -> None:
        """A store behind runs the next step."""
        if self.levels[node] < len(self.steps):
            self.schema_change(node, "add", 0, fresh)

    @precondition(lambda self: any(self.pending))
    @rule(node=nodes)
    def reconcile(self, node: int) -> None:
        if not self.pending[node]:
            return
        store = self.stores[node]
        store.reconcile_schema()
        self.pending[node] = False
        assert store.schema_problems() == []
        assert [spec.value_columns for spec in store.specs()] == [tuple(self.columns[node])]
        store.summaries(["notes"])  # the reconcile took a new head: rebuilt, then kept again
        store.capture()
        # The writes made between the DDL and the reconcile are in the feed, values and all.
        held = {change.pk: change.state for change in store.read_batch(0, {}, 1_000_000).rows}
        for key, (column, value) in self.unchecked[node].items():
            cell = held[(key,)].cells[column]
            assert (cell.value, type(cell.value)) == (value, type(value))
        self.unchecked[node].clear()

    # -- sync ---------------------------------------------------------------------

    @precondition(lambda self: not any(self.pending))
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

    @precondition(lambda self: not any(self.pending))
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

    @precondition(lambda self: not any(self.pending))
    @rule(pair=pairs)
    def full_exchange(self, pair: tuple[int, int]) -> None:
        target = self.stores[pair[1]]
        quarantined = len(target.quarantine())
        exchange_all(self.stores[pair[0]], target, rows_max=2)
        if len(target.quarantine()) > quarantined:
            event("full exchange: rows quarantined")

    @rule(node=nodes)
    def retry_quarantine(self, node: int) -> None:
        # The store follows pending DDL before it applies (SqliteStore._follow_ddl):
        # the model's reconcile step does the same and its checks.
        self.reconcile(node)
        self.stores[node].retry_quarantine()

    # -- tombstone collection (ADR 0015) -----------------------------------------

    @precondition(lambda self: not any(self.pending))
    @rule(
        node=nodes,
        # Mostly all the others (else a tombstone is rarely stable mid-run).
        informed=st.just(list(range(NODES))) | st.lists(nodes, max_size=NODES, unique=True),
        rows_max=st.integers(1, 3),
    )
    def collect(self, node: int, informed: list[int], rows_max: int) -> None:
        """Collect stable tombstones, knowing the current vectors of `informed` (gossip).

        Also of a store with a batch for `node` still on its way: a peer's
        ACK or HAVE, with a vector read after that batch, can reach the node
        before it (ADR 0015, "A session's vector can overtake its batch").
        """
        store = self.stores[node]
        if any(
            target == node and source in informed for source, target, _ in self.undelivered.values()
        ):
            event("a vector learned before a batch read earlier")
        store.learn_vectors(
            {self.stores[other].site_id: self.stores[other].vector() for other in informed}
        )
        collected = store.collect_all(rows_max)
        self.collected += collected
        if collected:
            event("tombstones collected")

    @precondition(lambda self: not any(self.pending))
    @rule(node=nodes)
    def settle_and_collect(self, node: int) -> None:
        """Everyone exchanges with everyone, then `node` collects knowing every vector.

        Deletes made before are then stable: without this step a tombstone
        rarely is, mid-run (a delete needs a live row, and every store must
        have pulled it).
        """
        for source_index, target_index, batch in list(self.undelivered.values()):
            del self.undelivered[id(batch)]
            with contextlib.suppress(StoreError):  # the cursor moved on: dropped
                self.stores[target_index].apply_batch(self.stores[source_index].site_id, batch)
        for source in range(NODES):
            for target in range(NODES):
                if source != target:
                    self.full_exchange((source, target))
        self.collect(node, list(range(NODES)), 2)

    @precondition(lambda self: not any(self.pending))
    @rule(target=in_flight, pair=pairs, rows_max=st.integers(1, 3))
    def send_for_later(self, pair: tuple[int, int], rows_max: int) -> tuple[int, int, ChangeBatch]:
        """A batch read now and delivered later: in flight while the receiver collects."""
        source, target = self.stores[pair[0]], self.stores[pair[1]]
        cursor = target.peer_cursor(source.site_id)
        if cursor is None:
            target.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")
        from_seq = 0 if cursor is None else cursor.cursor
        batch = source.read_batch(from_seq, target.vector(), rows_max)
        self.undelivered[id(batch)] = (pair[0], pair[1], batch)
        return (pair[0], pair[1], batch)

    @precondition(lambda self: not any(self.pending))
    @rule(delivered=consumes(in_flight))
    def deliver_late(self, delivered: tuple[int, int, ChangeBatch]) -> None:
        source_index, target_index, batch = delivered
        if self.undelivered.pop(id(batch), None) is None:
            return  # delivered already (settle_and_collect)
        source, target = self.stores[source_index], self.stores[target_index]
        try:
            target.apply_batch(source.site_id, batch)
        except StoreError:
            return  # the cursor moved on meanwhile: the node would drop it too
        if self.collected:
            event("a batch read before a collection delivered after it")

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
        for node, store in enumerate(self.stores):
            assert store.context.summaries.valid_at(store.head_seq()), "the tree fell out of step"
            kept = store.summaries(["notes"])["notes"]
            # Every stored digest matches its row's stamps (0 corrected) ... (a store
            # between its DDL and its reconcile cannot read the table's values yet)
            assert self.pending[node] or store.deep_summary("notes")[1] == 0
            # ... and the kept tree is the XOR of those digests, leaf by leaf.
            pairs = store.connection.execute("SELECT kh, dg FROM _syncmesh_shadow_notes")
            assert kept.leaves == summary_of(pairs).leaves

    @invariant()
    def record_held_cells(self) -> None:
        """Remember the greatest (cl, stamp) of each cell that any store holds."""
        for index, store in enumerate(self.stores):
            if self.pending[index]:
                continue  # DDL not reconciled yet: its feed reads the old definition
            if store.status().waiting_cells:
                event("cells waiting for a column")
            identities = self.identities[index]
            for change in store.read_batch(0, {}, 1_000_000).rows:
                (key,) = change.pk
                state = change.state
                if not state.alive:
                    self.dead[key] = max(self.dead.get(key, 0), state.cl)
                    continue
                for name, cell in state.cells.items():
                    seen = (key, identities[name])
                    if seen not in self.held or self.held[seen] < (state.cl, cell.stamp):
                        self.held[seen] = (state.cl, cell.stamp)

    def no_held_write_is_lost(self, view: MergeView) -> None:
        """Each cell any store held is in the final state, or lost to a greater write.

        A cell of the row's final life must be there with a stamp at least
        its own; a cell of an earlier life may be gone with that life, and a
        dropped column's cells are gone with it.
        """
        identities = self.identities[0]
        final: dict[tuple[SqlValue, str], Stamp] = {}
        lives: dict[SqlValue, int] = {}
        for (key,), (cl, _cl_stamp, cells) in view.items():
            lives[key] = cl  # type: ignore[assignment]
            for name, (_value, _kind, stamp) in cells.items():  # type: ignore[attr-defined]
                final[(key, identities[name])] = stamp
        present = set(identities.values())
        for key, cl in self.dead.items():
            # No deleted row comes back: dead still (a tombstone, or collected), or reborn.
            if key in lives:
                assert lives[key] >= cl, f"row {key!r} came back from its deletion"
        for (key, column), (cl, stamp) in self.held.items():
            if key not in lives:
                # Collected: it must have been held dead in this life or a later one.
                assert self.dead.get(key, 0) > cl, f"row {key!r} vanished without a delete"
                continue
            assert lives[key] >= cl, f"row {key!r} went back to an earlier life"
            if lives[key] == cl and column in present:
                kept = final.get((key, column))
                assert kept is not None, f"{key!r}.{column}: a held write is lost"
                assert kept >= stamp, f"{key!r}.{column}: an older write won over {stamp}"

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
        if any(store.quarantine() for store in self.stores):
            event("quarantine not empty before the final exchange")
        for node in range(NODES):  # every store runs every schema step
            while self.levels[node] < len(self.steps):
                self.schema_change(node, "add", 0, None)
            self.reconcile(node)
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
        # Everyone holds everything now: every tombstone is stable, at every store.
        self.record_held_cells()
        for store in self.stores:
            store.learn_vectors({other.site_id: other.vector() for other in self.stores})
            self.collected += store.collect_all()
        for store in self.stores:
            tombstones = store.connection.execute(
                "SELECT count(*) FROM _syncmesh_shadow_notes WHERE cl % 2 = 0"
            ).fetchone()
            assert tombstones == (0,), "a stable tombstone was left"

    def teardown(self) -> None:
        try:
            self._converge()
            dumps = [rows_with_types(store.connection, "notes") for store in self.stores]
            assert dumps[0] == dumps[1] == dumps[2]
            # No acknowledged write lost: every row inserted around a schema step is there.
            for store in self.stores:
                ids = {row[0] for row in store.connection.execute("SELECT id FROM notes")}
                assert set(self.fresh) <= ids
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
