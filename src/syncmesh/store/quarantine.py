"""Quarantine: rows of a peer's batch that could not be applied here.

Owns recording such a row with the reason (an untracked table, other
columns, a constraint, a stamp from the future), retrying every entry
through the merge, and listing the entries.  While a change waits here,
the vector merge keeps our vector below its stamps (see `vector.merge`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgpack

from syncmesh.model import ChangeBatch, RowChange, RowState, Stamp, row_from_plain, row_to_plain
from syncmesh.store.records import now_ms

if TYPE_CHECKING:
    from syncmesh.store.sqlite import Store

log = logging.getLogger(__name__)


def add(store: Store, change: RowChange, origin: str, reason: str) -> None:
    min_stamps: dict[str, int] = {}
    for stamp in stamps(change.state):
        min_stamps[stamp.site_id] = min(min_stamps.get(stamp.site_id, stamp.hlc), stamp.hlc)
    pk_text = ", ".join(repr(value) for value in change.pk)
    store._connection.execute(
        "INSERT INTO _syncmesh_quarantine (table_name, pk, change, origin, reason,"
        " min_stamps, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            change.table,
            pk_text,
            msgpack.packb(row_to_plain(change)),
            origin,
            reason,
            json.dumps(min_stamps),
            now_ms(),
        ),
    )
    log.warning("quarantined a row of %s (%s) from %s: %s", change.table, pk_text, origin, reason)


def retry(store: Store) -> int:
    """Try every quarantined row again through the merge; returns rows resolved."""
    sites = store._require_init()
    entries = store._connection.execute(
        "SELECT id, change, origin FROM _syncmesh_quarantine ORDER BY id"
    ).fetchall()
    if not entries:
        return 0
    with store._transaction():
        store._capture_pending()
        by_origin: dict[str, list[RowChange]] = {}
        for entry_id, blob, origin in entries:
            change = row_from_plain(msgpack.unpackb(blob))
            table = store._tables.get(change.table)
            if table is None or not set(change.state.cells) <= set(table.values):
                continue  # still unknown here: kept as it is, never applied in part
            store._connection.execute("DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,))
            by_origin.setdefault(origin, []).append(change)
        columns = {name: table.values for name, table in store._tables.items()}
        for origin, changes in by_origin.items():
            batch = ChangeBatch.of_rows("", 0, 0, 0, None, changes, columns)
            store._merge_rows(origin, batch, sites)
        remaining = store._connection.execute(
            "SELECT count(*) FROM _syncmesh_quarantine"
        ).fetchone()[0]
        store._connection.execute(
            "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (store._clock.last,)
        )
    return max(0, len(entries) - int(remaining))


def listing(store: Store) -> list[dict[str, object]]:
    return [
        {
            "id": row[0],
            "table": row[1],
            "pk": row[2],
            "origin": row[3],
            "reason": row[4],
            "created_ms": row[5],
        }
        for row in store._connection.execute(
            "SELECT id, table_name, pk, origin, reason, created_ms"
            " FROM _syncmesh_quarantine ORDER BY id"
        )
    ]


def drop(store: Store, ids: list[int]) -> int:
    """Delete quarantined rows for good (an operator's decision); returns rows dropped.

    Dropping lifts the cap they put on the version vector at the next
    complete batch: the node then claims to hold what it threw away, which
    is what dropping means.
    """
    with store._transaction():
        dropped = 0
        for entry_id in ids:
            cursor = store.connection.execute(
                "DELETE FROM _syncmesh_quarantine WHERE id = ?", (entry_id,)
            )
            dropped += max(cursor.rowcount, 0)
    return dropped


def stamps(state: RowState) -> Iterator[Stamp]:
    if state.cl_stamp is not None:
        yield state.cl_stamp
    for cell in state.cells.values():
        yield cell.stamp
