"""The conflict ledger: the conflicts this node's merges resolved.

Owns recording a conflict (`record`, inside the apply transaction), keeping
the ledger within `StoreContext.conflict_ledger_rows_max` rows (oldest dropped
first), the running count per table, and reading the ledger back.  What
counts as a conflict is decided by `merge.resolve_cells`; this module only
stores it.  A conflict is keyed by table, key, column and the two stamps,
so a write that reaches this node twice (redelivery, or by two relay paths)
is recorded once.
"""

from __future__ import annotations

import json

from syncmesh.merge import CellConflict
from syncmesh.model import SqlValue, from_json_safe, json_safe
from syncmesh.store.records import ConflictRecord, Version
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.execute import execute_many

_INSERT = (
    "INSERT OR IGNORE INTO _syncmesh_conflicts (table_name, pk, column_name, winner_value,"
    " winner_hlc, winner_site, loser_value, loser_hlc, loser_site, resolved_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def key_text(pk: tuple[SqlValue, ...]) -> str:
    """A key as the ledger stores it: JSON, with blobs as {"$blob": hex}."""
    return json.dumps([json_safe(value) for value in pk], separators=(",", ":"))


def record(
    ctx: StoreContext, table: str, found: list[tuple[tuple[SqlValue, ...], CellConflict]]
) -> int:
    """Add the conflicts of one apply (in its transaction); returns how many were new."""
    if not found:
        return 0
    resolved_ms = ctx.clock.physical_ms()
    added = execute_many(
        ctx.connection,
        _INSERT,
        [
            (
                table,
                key_text(pk),
                conflict.column,
                conflict.winner.value,
                conflict.winner.stamp.hlc,
                conflict.winner.stamp.site_id,
                conflict.loser.value,
                conflict.loser.stamp.hlc,
                conflict.loser.stamp.site_id,
                resolved_ms,
            )
            for pk, conflict in found
        ],
    )
    added = max(added, 0)
    if added:
        ctx.connection.execute(
            "INSERT INTO _syncmesh_conflict_totals (table_name, total) VALUES (?, ?)"
            " ON CONFLICT (table_name) DO UPDATE SET total = total + excluded.total",
            (table, added),
        )
        # Ids only grow (the oldest are the ones deleted), so this keeps the newest.
        ctx.connection.execute(
            "DELETE FROM _syncmesh_conflicts"
            " WHERE id <= (SELECT max(id) FROM _syncmesh_conflicts) - ?",
            (ctx.conflict_ledger_rows_max,),
        )
    return added


def totals(ctx: StoreContext) -> dict[str, int]:
    """Conflicts recorded per tracked table, since the file was made (0 for none)."""
    counted = dict(
        ctx.connection.execute("SELECT table_name, total FROM _syncmesh_conflict_totals")
    )
    return {name: int(counted.get(name, 0)) for name in ctx.tables}


def listing(
    ctx: StoreContext, *, table: str | None, since_ms: int | None, limit: int
) -> list[ConflictRecord]:
    """The newest `limit` conflicts, newest first, of `table` (all: None) since `since_ms`."""
    where = ["1"]
    params: list[object] = []
    if table is not None:
        where.append("table_name = ?")
        params.append(table)
    if since_ms is not None:
        where.append("resolved_ms >= ?")
        params.append(since_ms)
    rows = ctx.connection.execute(
        "SELECT id, table_name, pk, column_name, winner_value, winner_hlc, winner_site,"
        " loser_value, loser_hlc, loser_site, resolved_ms FROM _syncmesh_conflicts"
        f" WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return [
        ConflictRecord(
            id=row[0],
            table=row[1],
            pk=tuple(from_json_safe(value) for value in json.loads(row[2])),
            column=row[3],
            winner=Version(row[4], row[5], row[6]),
            loser=Version(row[7], row[8], row[9]),
            resolved_ms=row[10],
        )
        for row in rows
    ]
