"""The convergence state machine, plus "restore a node from an old copy of its file".

`RestoreMachine` runs every rule of tests/test_convergence_stateful.py and
adds: keep a copy of node 0's file (`back_up`), and replace node 0's file by
that copy while it is stopped (`restore`; a restart with a new clock
instance, as a new process).  Sessions are modelled as real ones run them:
`hello` is what both ends do with each other's HELLO (restore detection,
and a cursor reset for a peer whose incarnation changed), and every pull
first does that reset too.  Relays through third nodes happen because any
pair may exchange.

The oracle (issue 12): whatever node 0 held that another node also held
when its file was replaced had been acknowledged, and may not be lost.
At each restore the merge states of nodes 1 and 2 are recorded; at the
end, after convergence, every node's state must be at or above each of
them in the merge's order (a greater causal length, or the same one with
every recorded cell at an equal or greater stamp).  Only node 0 is ever
restored, so what nodes 1 and 2 held is never lost for another reason.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import cast

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import consumes, rule

from syncmesh.clock import HybridClock
from syncmesh.clock.hlc import wall_ms_of
from syncmesh.errors import ClockDriftError
from syncmesh.model import ChangeBatch, SqlValue, Stamp
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import exchange_all
from tests.test_convergence_stateful import (
    DRIFT_MS_MAX,
    NODES,
    ROUNDS_MAX,
    SyncMachine,
    nodes,
    pairs,
)

RESTORED = 0  # the one node whose file is ever replaced by an old copy
# Per key: causal length, and each cell's stamp in that life.
Held = dict[tuple[SqlValue, ...], tuple[int, dict[str, Stamp]]]


def held_by(store: SqliteStore) -> Held:
    held: Held = {}
    for change in store.read_batch(0, {}, 1_000_000).rows:
        cells = {column: cell.stamp for column, cell in change.state.cells.items()}
        held[change.pk] = (change.state.cl, cells)
    return held


def missing(recorded: Held, final: Held) -> list[str]:
    """What of `recorded` `final` neither holds nor has superseded (the merge's order)."""
    lost = []
    for key, (cl, cells) in recorded.items():
        final_cl, final_cells = final.get(key, (0, {}))
        if final_cl > cl:
            continue
        if final_cl < cl:
            lost.append(f"{key}: causal length {final_cl} < {cl}")
            continue
        for column, stamp in cells.items():
            have = final_cells.get(column)
            if have is None or have < stamp:
                lost.append(f"{key}.{column}: {have} < acknowledged {stamp}")
    return lost


class RestoreMachine(SyncMachine):
    # No schema steps (issue 14) here: a file restored from a copy taken before
    # one would go back to the old schema, which this oracle does not model.
    schema_steps_max = 0

    def __init__(self) -> None:
        super().__init__()
        self.backup_path: Path | None = None
        self.acknowledged: list[Held] = []
        self.restores = 0

    # -- the base machine's schema steps are left out -----------------------------
    # (Issue 14.)  A restore brings an old schema back with the old rows, which
    # is another scenario; and what a restore legitimately forgets is checked
    # here by `acknowledged`, not by the base machine's held cells.  Each
    # override (a plain method, not a rule or an invariant) removes one.

    def schema_change(self, node: int, kind: str, place: int, fresh: SqlValue) -> None:
        del node, kind, place, fresh

    def catch_up_schema(self, node: int, fresh: SqlValue) -> None:
        del node, fresh

    def record_held_cells(self) -> None:
        pass

    # Tombstone collection (issue 16) is left out too: a restored file's vector
    # goes back, and a node refuses it at HELLO once it collected past it
    # (ADR 0015, rule 3), which this machine's sessions do not model.

    def collect(self, node: int, informed: list[int], rows_max: int) -> None:
        del node, informed, rows_max

    def settle_and_collect(self, node: int) -> None:
        del node

    # -- sessions as real ones start ----------------------------------------------

    def _meet(self, source: SqliteStore, target: SqliteStore) -> None:
        """What `target` does with `source`'s HELLO: the restore check (of its vector and
        its `held` claims), then cursor upkeep."""
        try:
            if target.note_peer_vector(source.vector(), source.held_claims()):
                event("restore detected")
        except ClockDriftError:
            event("hello refused: a claim from the future")  # the session would end here
            return
        self._follow_incarnation(source, target)

    @rule(pair=pairs)
    def hello(self, pair: tuple[int, int]) -> None:
        left, right = self.stores[pair[0]], self.stores[pair[1]]
        self._meet(left, right)
        self._meet(right, left)

    def _follow_incarnation(self, source: SqliteStore, target: SqliteStore) -> None:
        """Read `source`'s feed from 0 if it is another incarnation or its seq went back.

        As node/session.py does on HELLO and on PULL.
        """
        cursor = target.peer_cursor(source.site_id)
        if cursor is not None and (
            cursor.incarnation != source.incarnation or cursor.cursor > source.head_seq()
        ):
            target.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")

    @rule(target=SyncMachine.batches, pair=pairs, rows_max=st.integers(1, 3))
    def partial_pull(self, pair: tuple[int, int], rows_max: int) -> tuple[int, int, ChangeBatch]:
        self._follow_incarnation(self.stores[pair[0]], self.stores[pair[1]])
        # (The parent's rule decorator hides its return type from mypy.)
        return cast(tuple[int, int, ChangeBatch], super().partial_pull(pair, rows_max))

    @rule(pair=pairs)
    def full_exchange(self, pair: tuple[int, int]) -> None:
        self._follow_incarnation(self.stores[pair[0]], self.stores[pair[1]])
        super().full_exchange(pair)

    @rule(delivered=consumes(SyncMachine.batches))
    def duplicate_delivery(self, delivered: tuple[int, int, ChangeBatch]) -> None:
        """As in SyncMachine, except for batches to or from a node restored since.

        A restored node may legitimately apply an old batch again (its cursor
        went back with its file), which the parent's rule calls a replay.
        """
        if self.restores and RESTORED in delivered[:2]:
            return
        super().duplicate_delivery(delivered)

    # -- backups and restores ----------------------------------------------------

    @rule()
    def back_up(self) -> None:
        path = self.directory / "backup.db"
        path.unlink(missing_ok=True)
        copy = sqlite3.connect(path)
        try:
            self.stores[RESTORED].connection.backup(copy)
        finally:
            copy.close()
        self.backup_path = path

    def _reopen(self, node: int, replacement: Path | None) -> None:
        """Stop `node`, put `replacement` in place of its file if given, start it again."""
        path = self.directory / f"node{node}.db"
        self.stores[node].close()
        if replacement is not None:
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            shutil.copy(replacement, path)
        store = SqliteStore.open(
            path, clock=HybridClock(self.clocks[node], drift_ms_max=DRIFT_MS_MAX)
        )
        store.summaries(["notes"])
        self.stores[node] = store
        # A restored file's feed and clock start where the copy left them.
        self.last_stamps[node] = store.clock.last
        self.last_heads[node] = store.head_seq()

    @rule()
    def restore(self, clock_behind: bool = False) -> None:
        """Replace node 0's file by the backup while it is stopped.

        A restore takes time: stopping the node, copying the file and
        starting it again put the wall clock past every stamp the lost run
        issued, so the rule moves node 0's physical clock 1 ms past its last
        stamp (at least).  `clock_behind=True` leaves the clock where it was:
        a wall clock behind the lost stamps, ADR 0006's residual risk 3.
        """
        if self.backup_path is None:
            return
        self.acknowledged.extend(
            held_by(store) for index, store in enumerate(self.stores) if index != RESTORED
        )
        if not clock_behind:
            issued_ms = wall_ms_of(self.stores[RESTORED].clock.last)
            clock = self.clocks[RESTORED]
            clock.set(max(clock.now_ms(), issued_ms + 1))
        self._reopen(RESTORED, self.backup_path)
        self.restores += 1
        event("node restored from an old copy")

    @rule(node=nodes)
    def restart(self, node: int) -> None:
        """A stop and start of the process: what a run remembers (`_run_start`) is gone."""
        self._reopen(node, None)

    # -- the end -------------------------------------------------------------------

    def _converge(self) -> None:
        for clock in self.clocks:
            clock.set(clock.now_ms() + 20 * DRIFT_MS_MAX)
        for _round in range(ROUNDS_MAX):
            for source in self.stores:
                for target in self.stores:
                    if source is not target:
                        self._meet(source, target)
            moved = sum(store.retry_quarantine() for store in self.stores)
            for source in self.stores:
                for target in self.stores:
                    if source is not target:
                        self._follow_incarnation(source, target)
                        moved += exchange_all(source, target)
            quiet = not any(store.quarantine() for store in self.stores)
            if moved == 0 and quiet:
                break
        else:
            raise AssertionError(f"not quiet after {ROUNDS_MAX} rounds of exchange")

    def teardown(self) -> None:
        try:
            self._converge()
            finals = [held_by(store) for store in self.stores]
            for index, final in enumerate(finals):
                for recorded in self.acknowledged:
                    lost = missing(recorded, final)
                    assert not lost, f"node {index} lost acknowledged writes: {lost}"
        except BaseException:
            for store in self.stores:
                store.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        super().teardown()


RestoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SYNCMESH_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("SYNCMESH_STATEFUL_STEPS", "30")),
    deadline=None,
)
TestRestoreConvergence = RestoreMachine.TestCase
assert NODES == 3  # the oracle's reasoning: nodes 1 and 2 are never restored


@pytest.mark.xfail(
    strict=True,
    reason="ADR 0006 residual risk 3, found by RestoreMachine: with the wall clock behind the"
    " lost writes (restore(clock_behind=True)), the restored node's clock"
    " issues the same HLC (hlc, site) again for new"
    " writes, so its vector entry equals the peers' claim, the restore check sees nothing, and"
    " the lost writes (k0 deleted, k1 inserted) stay 'covered' by its own vector forever",
)
@settings(max_examples=1, database=None, deadline=None)
@given(st.just(None))  # the machine's rules record hypothesis events: run inside a test
def test_restore_machine_counterexample_key_change_acknowledged_before_the_restore(
    nothing: None,
) -> None:
    """The shrunk example the machine found (1500 examples x 50 steps), as a fixed test."""
    assert nothing is None
    state = RestoreMachine()

    def invariants() -> None:
        # (They capture: the machine runs them after every step.)
        state.clocks_and_feeds_never_go_back()
        state.hash_trees_are_kept_exact()

    invariants()
    state.insert_without_body(capture=False, key="k0", n=None, node=0)
    invariants()
    state.back_up()
    invariants()
    state.change_key(capture=False, new="k1", node=0, old="k0")
    invariants()
    state.partial_pull(pair=(0, 1), rows_max=1)
    invariants()
    state.restore(clock_behind=True)
    invariants()
    state.update_n(capture=False, key="k0", n=0, node=0)
    invariants()
    state.teardown()
