"""A column dropped at every site, then added again, on real `syncmesh serve` processes.

The user-visible side of the defect tests/test_schema_readd.py pins at the
store (found by the chaos `migrate` fault's `drop+readd` plan,
docs/chaos.md): two rolling deploys with the `sqlite3` shell, the first
drops `qty` at both sites, the second adds it again.  A value written into
the new `qty` at the site that re-added it first used to never reach the
other site, which discarded it while `qty` was a dropped name there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.nodeproc import Cluster, NodeProcess, query, wait_converged, wait_for
from tests.test_multiprocess import shell
from tests.test_multiprocess_schema import CONVERGE_S, started_pair

pytestmark = pytest.mark.multiprocess


def synced_columns(node: NodeProcess) -> list[str]:
    """The columns `node` syncs for `items`, as its stored spec lists them."""
    rows = query(node.db, "SELECT spec FROM _syncmesh_tables WHERE name = 'items'")
    spec = json.loads(rows[0][0])
    return [str(column) for column in spec["columns"]]


def migrate(node: NodeProcess, sql: str, columns: list[str], cluster: Cluster) -> None:
    """Run `sql` with the sqlite3 shell; wait until the node has reconciled it."""
    shell(node.db, sql)
    wait_for(
        lambda: synced_columns(node) == columns,
        CONVERGE_S,
        f"{node.name} to sync the columns {columns}",
        describe=cluster.logs,
    )


def ids(node: NodeProcess) -> set[str]:
    return {str(row[0]) for row in query(node.db, "SELECT id FROM items")}


def test_a_column_dropped_everywhere_then_added_again_converges(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = started_pair(cluster, tmp_path)
    shell(a.db, "INSERT INTO items VALUES ('r1', 'one', 1)")
    wait_for(lambda: "r1" in ids(b), CONVERGE_S, "r1 at b", describe=cluster.logs)
    # The first rolling deploy: both sites drop qty.
    migrate(a, "ALTER TABLE items DROP COLUMN qty", ["id", "name"], cluster)
    migrate(b, "ALTER TABLE items DROP COLUMN qty", ["id", "name"], cluster)
    # The second one: a adds qty again and writes it; b receives the write first.
    migrate(a, "ALTER TABLE items ADD COLUMN qty INTEGER", ["id", "name", "qty"], cluster)
    shell(a.db, "UPDATE items SET qty = 5 WHERE id = 'r1'")
    shell(a.db, "INSERT INTO items (id, name) VALUES ('marker', 'after the update')")
    wait_for(lambda: "marker" in ids(b), CONVERGE_S, "a's marker at b", describe=cluster.logs)
    migrate(b, "ALTER TABLE items ADD COLUMN qty INTEGER", ["id", "name", "qty"], cluster)
    dump = wait_converged([a.db, b.db], "items", CONVERGE_S, describe=cluster.logs)
    # Not resurrected: the new qty holds what was written into it, or its default.
    assert {row[0][0]: row[2][0] for row in dump} == {"marker": None, "r1": 5}
