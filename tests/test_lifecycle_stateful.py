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

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from syncmesh.model import SqlValue
from tests.test_convergence_stateful import SyncMachine, nodes


class CollectingMachine(SyncMachine):
    schema_steps_max = 0

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


CollectingMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SYNCMESH_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("SYNCMESH_STATEFUL_STEPS", "30")),
    deadline=None,
)
TestCollecting = CollectingMachine.TestCase
