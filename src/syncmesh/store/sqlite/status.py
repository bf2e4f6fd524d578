"""The store's status: one snapshot of its identity, feed, tables, peers and problems."""

from __future__ import annotations

from syncmesh.store.records import StoreStatus
from syncmesh.store.sqlite import conflicts, integer_keys, orphans, peers, tracking
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.introspect import fingerprint


def status(ctx: StoreContext) -> StoreStatus:
    """All of `StoreStatus` from one read snapshot (BEGIN DEFERRED)."""
    ctx.require_init()
    with ctx.transaction("DEFERRED"):
        state = ctx.state()
        tables = {
            name: int(ctx.connection.execute(f"SELECT count(*) FROM {table.table}").fetchone()[0])
            for name, table in ctx.tables.items()
        }
        quarantined = int(
            ctx.connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[0]
        )
        return StoreStatus(
            ctx.site_id(),
            ctx.incarnation(),
            state["seq"],
            state["hlc"],
            fingerprint(ctx.specs()),
            tables,
            ctx.vector(),
            peers.peer_cursors(ctx),
            quarantined,
            state["restore_floor"],
            ctx.path,
            tracking.schema_problems(ctx),
            conflicts.totals(ctx),
            [
                f"table {table!r}, key ({key}): {reason}"
                for (table, key), reason in sorted(ctx.row_problems.items())
            ],
            warnings=integer_keys.warnings(ctx),
            orphans=orphans.orphan_counts(ctx),
            orphan_problems=orphans.problems(ctx),
        )
