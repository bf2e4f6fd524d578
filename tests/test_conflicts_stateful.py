"""A conflict is recorded iff two writes to one cell were concurrent, whatever the interleaving.

Three real stores take random writes, deletes, re-inserts, clock moves and
partial pulls.  Beside them the test keeps its own causal history, with
plain sets and none of the store's machinery: for every write, the set of
writes to the same cell (in the same life of the row) that its node knew
when it wrote, and for every node, the set of writes it knows.  A node
knows a write once it wrote it, or applied a batch that carried it, or that
carried a write that knew it.  Two writes are concurrent when neither knows
the other.

At each pull the test looks at what the merge is about to compare (the
receiver's cell against each incoming cell of the same life) and expects a
ledger entry exactly for the concurrent pairs whose values differ, with the
merge's winner.  After every pull the receiver's ledger must equal that
expectation, without duplicates; at the end all stores still converge.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from syncmesh.clock import HybridClock
from syncmesh.merge import value_order_key
from syncmesh.model import Cell, SqlValue, Stamp
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock

BASE_MS = 1_700_000_000_000
NODES = 3
KEYS = ["k0", "k1"]
COLUMNS = ["v", "w"]
VALUES: list[SqlValue] = [None, 0, 1, 1.0, "a", "b", b"a"]
ROUNDS_MAX = 10

nodes = st.integers(0, NODES - 1)
pairs = st.permutations(range(NODES)).map(lambda order: (order[0], order[1]))
keys = st.sampled_from(KEYS)
columns = st.sampled_from(COLUMNS)
values = st.sampled_from(VALUES)

Write = tuple[int, str]  # a write to a cell is known by its stamp: (hlc, site id)
CellLife = tuple[str, str, int]  # (key, column, causal length): a cell in one life of its row
Entry = tuple[str, str, Write, Write, tuple[object, str], tuple[object, str]]


def _typed(value: SqlValue) -> tuple[object, str]:
    return (value, type(value).__name__)


class ConflictMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="syncmesh-conflicts-"))
        self.clocks = [ManualClock(BASE_MS) for _ in range(NODES)]
        self.stores: list[SqliteStore] = []
        for index, clock in enumerate(self.clocks):
            store = SqliteStore.open(
                self.directory / f"node{index}.db", clock=HybridClock(clock, drift_ms_max=60_000)
            )
            self.stores.append(store)
            store.init()
            store.connection.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v, w)")
            store.track(["t"])
        # The oracle: what each write knew, what each node knows, what each must record.
        # A write is its stamp within its cell: one capture stamps many cells alike.
        self.past: dict[tuple[CellLife, Write], frozenset[Write]] = {}
        self.known: list[dict[CellLife, set[Write]]] = [{} for _ in range(NODES)]
        self.expected: list[set[Entry]] = [set() for _ in range(NODES)]

    # -- reading a store's state ----------------------------------------------------

    def _state(self, node: int) -> dict[str, tuple[int, dict[str, tuple[Write, SqlValue]]]]:
        """Per key: causal length and, for a live row, each column's (stamp, value)."""
        batch = self.stores[node].read_batch(0, {}, 1_000_000)
        state = {}
        for change in batch.rows:
            cells = {}
            if change.state.alive:
                cells = {
                    column: ((cell.stamp.hlc, cell.stamp.site_id), cell.value)
                    for column, cell in change.state.cells.items()
                }
            state[str(change.pk[0])] = (change.state.cl, cells)
        return state

    # -- local writes -------------------------------------------------------------------

    def _write(self, node: int, sql: str, params: tuple[SqlValue, ...]) -> None:
        store = self.stores[node]
        before = self._state(node)
        store.connection.execute(sql, params)
        store.capture()
        after = self._state(node)
        for key, (cl, cells) in after.items():
            old_cells = before.get(key, (0, {}))[1]
            for column, (stamp, _value) in cells.items():
                old = old_cells.get(column)
                if old is not None and old[0] == stamp and before[key][0] == cl:
                    continue
                assert stamp[1] == store.site_id, "a local capture stamps with our site"
                known = self.known[node].setdefault((key, column, cl), set())
                self.past[(key, column, cl), stamp] = frozenset(known)
                known.add(stamp)

    @rule(node=nodes, key=keys, column=columns, value=values)
    def update(self, node: int, key: str, column: str, value: SqlValue) -> None:
        self._write(
            node,
            f"INSERT INTO t (id, {column}) VALUES (?, ?)"
            f" ON CONFLICT (id) DO UPDATE SET {column} = excluded.{column}",
            (key, value),
        )

    @rule(node=nodes, key=keys, v=values, w=values)
    def replace(self, node: int, key: str, v: SqlValue, w: SqlValue) -> None:
        self._write(node, "INSERT OR REPLACE INTO t (id, v, w) VALUES (?, ?, ?)", (key, v, w))

    @rule(node=nodes, key=keys)
    def delete(self, node: int, key: str) -> None:
        self._write(node, "DELETE FROM t WHERE id = ?", (key,))

    @rule(node=nodes, delta_ms=st.integers(0, 3))
    def tick_clock(self, node: int, delta_ms: int) -> None:
        self.clocks[node].advance(delta_ms)

    # -- sync ---------------------------------------------------------------------------

    def _pull(self, source: int, target: int, rows_max: int) -> int:
        """One batch of `source`'s feed applied at `target`, the oracle run beside it."""
        src, dst = self.stores[source], self.stores[target]
        cursor = dst.peer_cursor(src.site_id)
        if cursor is None:
            dst.reset_peer_cursor(src.site_id, src.incarnation, src.head_seq(), "")
        batch = src.read_batch(0 if cursor is None else cursor.cursor, dst.vector(), rows_max)
        before = self._state(target)
        for change in batch.rows:
            self._expect(target, str(change.pk[0]), change.state.cl, change.state.cells, before)
        result = dst.apply_batch(src.site_id, batch)
        if result.conflicts:
            event("a pull recorded conflicts")
        self._check_ledger(target)
        return result.applied_rows

    def _expect(
        self,
        target: int,
        key: str,
        cl: int,
        cells: dict[str, Cell],
        before: dict[str, tuple[int, dict[str, tuple[Write, SqlValue]]]],
    ) -> None:
        local_cl, local_cells = before.get(key, (0, {}))
        if cl < local_cl:
            return  # an older life loses whole; nothing of it is learned
        for column, cell in cells.items():
            stamp: Write = (cell.stamp.hlc, cell.stamp.site_id)
            value = cell.value
            cell_life = (key, column, cl)
            known = self.known[target].setdefault(cell_life, set())
            past = self.past[cell_life, stamp]
            ours = local_cells.get(column) if cl == local_cl else None
            if ours is not None and ours[0] != stamp:
                concurrent = ours[0] not in past and stamp not in self.past[cell_life, ours[0]]
                different = value_order_key(ours[1]) != value_order_key(value)
                if concurrent and different:
                    theirs = (stamp, value)
                    winner, loser = (
                        (theirs, ours) if Stamp(*stamp) > Stamp(*ours[0]) else (ours, theirs)
                    )
                    self.expected[target].add(
                        (key, column, winner[0], loser[0], _typed(winner[1]), _typed(loser[1]))
                    )
                    event("concurrent writes of different values met")
                elif concurrent:
                    event("concurrent writes of the same value met")
                else:
                    event("a causal overwrite or an old value met")
            known.add(stamp)
            known.update(past)

    def _check_ledger(self, node: int) -> None:
        records = self.stores[node].conflicts(limit=1_000_000)
        got = [
            (
                str(record.pk[0]),
                record.column,
                (record.winner.hlc, record.winner.site_id),
                (record.loser.hlc, record.loser.site_id),
                _typed(record.winner.value),
                _typed(record.loser.value),
            )
            for record in records
        ]
        assert len(got) == len(set(got)), "a conflict was recorded twice"
        assert set(got) == self.expected[node], (set(got), self.expected[node])

    @rule(pair=pairs, rows_max=st.integers(1, 3))
    def pull(self, pair: tuple[int, int], rows_max: int) -> None:
        self._pull(pair[0], pair[1], rows_max)

    @rule(pair=pairs)
    def pull_to_head(self, pair: tuple[int, int]) -> None:
        self._pull(pair[0], pair[1], 1_000_000)

    @invariant()
    def totals_count_the_ledger(self) -> None:
        for node, store in enumerate(self.stores):
            assert store.status().conflicts == {"t": len(self.expected[node])}

    # -- the end ----------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            for _round in range(ROUNDS_MAX):
                moved = 0
                for source in range(NODES):
                    for target in range(NODES):
                        if source != target:
                            moved += self._pull(source, target, 1_000_000)
                if moved == 0:
                    break
            else:
                raise AssertionError(f"not quiet after {ROUNDS_MAX} rounds")
            query = "SELECT id, v, typeof(v), w, typeof(w) FROM t ORDER BY id"
            dumps = [store.connection.execute(query).fetchall() for store in self.stores]
            assert dumps[0] == dumps[1] == dumps[2]
            for node in range(NODES):
                self._check_ledger(node)
        finally:
            for store in self.stores:
                store.close()
            shutil.rmtree(self.directory, ignore_errors=True)


# Longer: SYNCMESH_CONFLICT_EXAMPLES=1000 SYNCMESH_CONFLICT_STEPS=60 pytest --timeout 0 ...
ConflictMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SYNCMESH_CONFLICT_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("SYNCMESH_CONFLICT_STEPS", "40")),
    deadline=None,
)
TestConflicts = ConflictMachine.TestCase
