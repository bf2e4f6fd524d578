"""The convergence machine with deletes made common, so that collection happens often.

`SyncMachine` (tests/test_convergence_stateful.py) has the collection steps
and the checks that no deleted row comes back; with its many rules, a
tombstone is stable in few runs.  Here a delete picks a row that exists,
there are no schema steps, and two keys only: most runs delete, collect,
and then go on writing, re-inserting collected keys and delivering batches
read before a collection (issue 16, docs/adr/0015-membership-and-tombstone-gc.md).
"""

from __future__ import annotations

import os

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from syncmesh.model import ChangeBatch, SqlValue
from tests.test_convergence_stateful import SyncMachine, nodes, pairs


class CollectingMachine(SyncMachine):
    schema_steps_max = 0
    first_inserts = 0  # keys made by first_insert_overtaken_by_an_ack

    def schema_change(self, node: int, kind: str, place: int, fresh: SqlValue) -> None:
        del node, kind, place, fresh

    def catch_up_schema(self, node: int, fresh: SqlValue) -> None:
        del node, fresh

    @rule(node=nodes, pick=st.integers(0, 1_000), capture=st.booleans())
    def delete_a_row(self, node: int, pick: int, capture: bool) -> None:
        """Delete a row this store has (the base machine's delete often finds none)."""
        ids = [row[0] for row in self.stores[node].connection.execute("SELECT id FROM notes")]
        if ids:
            self.delete(node, sorted(ids)[pick % len(ids)], capture)

    @rule(node=nodes, pick=st.integers(0, 1_000), capture=st.booleans())
    def insert_a_deleted_key(self, node: int, pick: int, capture: bool) -> None:
        """Insert again a key held dead anywhere (key reuse, maybe of a collected key)."""
        if self.dead:
            keys = sorted(str(key) for key in self.dead)
            self.insert_without_body(node, keys[pick % len(keys)], 1, capture)

    @precondition(lambda self: not any(self.pending))
    @rule(target=SyncMachine.in_flight, pair=pairs, spread=st.booleans())
    def first_insert_overtaken_by_an_ack(
        self, pair: tuple[int, int], spread: bool
    ) -> tuple[int, int, ChangeBatch]:
        """A concurrent first insert whose batch its sender's ACK overtakes (ADR 0015).

        `target` inserts and deletes a new key; `source`, which never held
        it, inserts it too (a first insert, ended by the delete), reads its
        next batch for `target` (its send loop), then takes `target`'s
        tombstone (its receive loop, whose ACK tells `target` it holds it:
        a later `collect` at `target` learns that vector).  With `spread`,
        the third store takes the tombstone too.  The batch is delivered
        later (`deliver_late`), maybe after a collection.
        """
        source, target = pair
        self.first_inserts += 1
        key = f"first{self.first_inserts}"
        self.insert_without_body(target, key, 1, True)
        self.delete(target, key, True)
        self.insert_without_body(source, key, 2, True)
        sender, receiver = self.stores[source], self.stores[target]
        cursor = receiver.peer_cursor(sender.site_id)
        if cursor is None:
            receiver.reset_peer_cursor(sender.site_id, sender.incarnation, sender.head_seq(), "")
        read = sender.read_batch(0 if cursor is None else cursor.cursor, receiver.vector(), 1_000)
        batch = (source, target, read)
        self.undelivered[id(read)] = batch
        self.full_exchange((target, source))
        if spread:
            (third,) = set(range(len(self.stores))) - {source, target}
            self.full_exchange((target, third))
        event("a first insert's batch overtaken by its sender's ACK")
        return batch


CollectingMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SYNCMESH_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("SYNCMESH_STATEFUL_STEPS", "30")),
    deadline=None,
)
TestCollecting = CollectingMachine.TestCase
