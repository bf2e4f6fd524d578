"""Quarantine: rows of a peer's batch that could not be applied here.

Owns recording such a row with the reason (an untracked table, other
columns, a constraint, a stamp from the future), listing the entries and
dropping them; retrying them through the merge is `retry`'s.  While a change waits here,
the vector merge keeps our vector below its stamps (see `vector.merge`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import msgpack

from syncmesh.model import TEXT_ERRORS, RowChange, RowState, Stamp, row_to_plain
from syncmesh.store.sqlite.context import StoreContext

log = logging.getLogger(__name__)


def add(
    ctx: StoreContext,
    change: RowChange,
    origin: str,
    reason: str,
    created: dict[str, int] | None = None,
) -> None:
    """Keep `change` from `origin`, refused for `reason`, to retry later.

    `created`: for a row in our column names, each column's creation stamp
    here, so that the retry tells the column from one dropped and added
    again in between (`retry`); None for a row as its sender named it.
    """
    encoded = msgpack.packb(row_to_plain(change), unicode_errors=TEXT_ERRORS)
    pk_text = ", ".join(repr(value) for value in change.pk)
    # The same row state refused again (the periodic verify's repair fetches a
    # row a constraint keeps out at every round; a batch read twice): one
    # entry is enough, and the retry of it settles both.
    if ctx.connection.execute(
        "SELECT 1 FROM _syncmesh_quarantine WHERE table_name = ? AND pk = ? AND change = ?",
        (change.table, pk_text, encoded),
    ).fetchone():
        return
    min_stamps: dict[str, int] = {}
    for stamp in stamps(change.state):
        min_stamps[stamp.site_id] = min(min_stamps.get(stamp.site_id, stamp.hlc), stamp.hlc)
    ctx.connection.execute(
        "INSERT INTO _syncmesh_quarantine (table_name, pk, change, origin, reason,"
        " min_stamps, created_ms, column_created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            change.table,
            pk_text,
            encoded,
            origin,
            reason,
            json.dumps(min_stamps),
            ctx.clock.physical_ms(),
            None if created is None else json.dumps(created, sort_keys=True),
        ),
    )
    if (change.table, pk_text, reason) in ctx.retrying:
        # The retry took it out and it was refused again, for the same reason:
        # warned of when it first came (status and metrics count it meanwhile).
        log.debug("still quarantined: a row of %s (%s): %s", change.table, pk_text, reason)
        return
    log.warning("quarantined a row of %s (%s) from %s: %s", change.table, pk_text, origin, reason)


def listing(ctx: StoreContext) -> list[dict[str, object]]:
    return [
        {
            "id": row[0],
            "table": row[1],
            "pk": row[2],
            "origin": row[3],
            "reason": row[4],
            "created_ms": row[5],
        }
        for row in ctx.connection.execute(
            "SELECT id, table_name, pk, origin, reason, created_ms"
            " FROM _syncmesh_quarantine ORDER BY id"
        )
    ]


def drop(ctx: StoreContext, ids: list[int]) -> int:
    """Delete quarantined rows for good (an operator's decision); returns rows dropped.

    Dropping lifts the cap they put on the version vector at the next
    complete batch: the node then claims to hold what it threw away, which
    is what dropping means.
    """
    with ctx.transaction():
        dropped = 0
        for entry_id in ids:
            cursor = ctx.connection.execute(
                "DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,)
            )
            dropped += max(cursor.rowcount, 0)
    return dropped


def stamps(state: RowState) -> Iterator[Stamp]:
    if state.cl_stamp is not None:
        yield state.cl_stamp
    for cell in state.cells.values():
        yield cell.stamp
