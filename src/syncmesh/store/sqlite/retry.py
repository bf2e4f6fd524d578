"""Retrying quarantined rows: every entry goes through the merge again.

Above `apply`, `capture` and `orphans` (it runs them), so that `quarantine`, which
`apply` records refused rows in, stays below them.
"""

from __future__ import annotations

import msgpack

from syncmesh.model import TEXT_ERRORS, ChangeBatch, RowChange, row_from_plain
from syncmesh.store.sqlite import apply, capture, orphans
from syncmesh.store.sqlite.context import StoreContext


def retry(ctx: StoreContext) -> int:
    """Try every quarantined row again through the merge; returns rows resolved."""
    sites = ctx.require_init()
    entries = ctx.connection.execute(
        "SELECT id, change, origin FROM _syncmesh_quarantine ORDER BY id"
    ).fetchall()
    if not entries:
        return 0
    with ctx.transaction():
        capture.capture_pending(ctx)
        by_origin: dict[str, list[RowChange]] = {}
        for entry_id, blob, origin in entries:
            change = row_from_plain(msgpack.unpackb(blob, unicode_errors=TEXT_ERRORS))
            table = ctx.tables.get(change.table)
            if table is None or not set(change.state.cells) <= set(table.values):
                continue  # still unknown here: kept as it is, never applied in part
            ctx.connection.execute("DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,))
            by_origin.setdefault(origin, []).append(change)
        columns = {name: table.values for name, table in ctx.tables.items()}
        for origin, changes in by_origin.items():
            batch = ChangeBatch.of_rows("", 0, 0, 0, None, changes, columns)
            apply.merge_rows(ctx, origin, batch, sites)
            orphans.resolve(ctx, *orphans.batch_keys(ctx, batch))
        remaining = ctx.connection.execute("SELECT count(*) FROM _syncmesh_quarantine").fetchone()[
            0
        ]
        ctx.connection.execute("UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (ctx.clock.last,))
    return max(0, len(entries) - int(remaining))
