"""Waiting cells: what this node holds of columns it does not have (yet).

While sites run different schema versions, a batch may carry a column of
a tracked table that this node does not have: added at the sender and not
here yet, or renamed in a way neither side's former names map.  Its cells
are kept here, with their stamps and pasts, and merged through the normal
merge once the column appears (`waiting.merge_ready`; ADR 0013, "Mixed
schema versions").  Cells of a column dropped here are discarded instead,
and counted, unless their sender's column is one added again under the
name (`apply.cells_at_or_below`: by its generation, else its creation
stamp): those are *parked* (the same shape, another table), and land if
the name is added again here.
Both cap the vector: this node holds them but cannot relay them, and a
peer with our columns adopts our vector's claims.

This module is the storage only (below `apply`, which adds to it, and
`vector`, which caps the vector below it); merging is `waiting`'s.  One
entry per table, key and column: the greatest (cl, hlc, site) wins, the
order the merge itself uses (a cell of a later life of the row supersedes
any cell of an earlier life, whatever its stamp), so a cell of a past life
of the row never comes back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import msgpack

from syncmesh.model import TEXT_ERRORS, RowChange, SqlValue, row_from_plain, row_to_plain
from syncmesh.store.sqlite.context import StoreContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WaitingCell:
    """One cell of a column not here: the row change of that one cell, as received."""

    table: str  # the local table
    column: str  # as the sender named it
    former: tuple[str, ...]  # the sender's former names of the column, newest first
    change: RowChange  # the row's key, cl and cl stamp, and the one cell
    origin: str
    # Parked cells: the sender's generation of the column (ADR 0013; 0: unsaid).
    generation: int = 0


def key_blob(pk: tuple[SqlValue, ...]) -> bytes:
    """The key as stored: exact (storage classes kept), and equal for equal keys."""
    return bytes(msgpack.packb(list(pk), unicode_errors=TEXT_ERRORS))


def add(ctx: StoreContext, cells: list[WaitingCell], *, parked: bool = False) -> None:
    """Keep `cells`; for each table, key and column the greatest (cl, hlc, site) stays.

    `parked`: cells of a name dropped here (see the module's docstring).
    """
    if not cells:
        return
    table = "_syncmesh_parked" if parked else "_syncmesh_waiting"
    rows = []
    floors: dict[str, int] = {}
    for waiting in cells:
        state = waiting.change.state
        ((column, cell),) = state.cells.items()
        assert column == waiting.column
        rows.append(
            (
                waiting.table,
                key_blob(waiting.change.pk),
                column,
                json.dumps(list(waiting.former)),
                state.cl,
                cell.stamp.hlc,
                cell.stamp.site_id,
                msgpack.packb(row_to_plain(waiting.change), unicode_errors=TEXT_ERRORS),
                waiting.origin,
                *((waiting.generation,) if parked else ()),
            )
        )
        site, hlc = cell.stamp.site_id, cell.stamp.hlc
        floors[site] = min(floors.get(site, hlc), hlc)
    generation = (", generation", ", ?", ", generation = excluded.generation")
    extra = generation if parked else ("", "", "")
    ctx.connection.executemany(
        f"INSERT INTO {table} (table_name, pk, column_name, former, cl, hlc, site_id,"
        f" change, origin{extra[0]}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?{extra[1]})"
        " ON CONFLICT (table_name, pk, column_name) DO UPDATE SET former = excluded.former,"
        " cl = excluded.cl, hlc = excluded.hlc, site_id = excluded.site_id,"
        f" change = excluded.change, origin = excluded.origin{extra[2]}"
        " WHERE (excluded.cl, excluded.hlc, excluded.site_id) > (cl, hlc, site_id)",
        rows,
    )
    # The floors only go down here (a replaced cell's stamp may stay the
    # floor: a lower cap than needed, which is safe); `remove` makes them exact.
    ctx.connection.executemany(
        "INSERT INTO _syncmesh_waiting_floor (site_id, hlc) VALUES (?, ?)"
        " ON CONFLICT (site_id) DO UPDATE SET hlc = min(hlc, excluded.hlc)",
        list(floors.items()),
    )


def groups(
    ctx: StoreContext, *, parked: bool = False
) -> list[tuple[str, str, tuple[str, ...], int]]:
    """The (table, column as sent, sender's former names, generation) cells wait for: few.

    The generation is a parked cell's (0 for waiting cells).
    """
    table = "_syncmesh_parked" if parked else "_syncmesh_waiting"
    generation = "generation" if parked else "0"
    return [
        (name, column, tuple(json.loads(former)), int(count))
        for name, column, former, count in ctx.connection.execute(
            f"SELECT DISTINCT table_name, column_name, former, {generation} FROM {table}"
        )
    ]


def take(
    ctx: StoreContext,
    table: str,
    column: str,
    former: tuple[str, ...],
    generation: int = 0,
    *,
    parked: bool = False,
) -> list[WaitingCell]:
    """Remove and return the cells waiting (or parked) for one group of `groups`."""
    kept_in = "_syncmesh_parked" if parked else "_syncmesh_waiting"
    where = "table_name = ? AND column_name = ? AND former = ?"
    key: tuple[str | int, ...] = (table, column, json.dumps(list(former)))
    if parked:
        where += " AND generation = ?"
        key = (*key, generation)
    found = []
    for origin, blob in ctx.connection.execute(
        f"SELECT origin, change FROM {kept_in} WHERE {where} ORDER BY rowid", key
    ):
        change = row_from_plain(msgpack.unpackb(blob, unicode_errors=TEXT_ERRORS))
        found.append(WaitingCell(table, column, former, change, origin, generation))
    ctx.connection.execute(f"DELETE FROM {kept_in} WHERE {where}", key)
    return found


def forget_table(ctx: StoreContext, table: str) -> int:
    """Drop the cells waiting or parked in `table` (no longer tracked here); returns how many."""
    forgotten = 0
    for kept_in in ("_syncmesh_waiting", "_syncmesh_parked"):
        cursor = ctx.connection.execute(f"DELETE FROM {kept_in} WHERE table_name = ?", (table,))
        forgotten += max(cursor.rowcount, 0)
    return forgotten


def refresh_floors(ctx: StoreContext) -> None:
    """Make the vector caps exact again after cells left (`take`, `forget_table`)."""
    ctx.connection.execute("DELETE FROM _syncmesh_waiting_floor")
    ctx.connection.execute(
        "INSERT INTO _syncmesh_waiting_floor (site_id, hlc)"
        " SELECT site_id, min(hlc) FROM (SELECT site_id, hlc FROM _syncmesh_waiting"
        " UNION ALL SELECT site_id, hlc FROM _syncmesh_parked) GROUP BY site_id"
    )


def caps(ctx: StoreContext) -> dict[str, int]:
    """Per site: one below its lowest waiting (or parked) stamp.

    This node holds those writes but cannot relay them (its feed has no
    such column), so its vector must not claim them (`vector.merge`).
    """
    return {
        site: int(lowest) - 1
        for site, lowest in ctx.connection.execute(
            "SELECT site_id, hlc FROM _syncmesh_waiting_floor"
        )
    }


def discard(ctx: StoreContext, table: str, column: str, cells: int) -> None:
    """Count `cells` cells of `column` (dropped here) that arrived and were thrown away."""
    if cells <= 0:
        return
    ctx.connection.execute(
        "INSERT INTO _syncmesh_discarded (table_name, column_name, cells) VALUES (?, ?, ?)"
        " ON CONFLICT (table_name, column_name) DO UPDATE SET cells = cells + excluded.cells",
        (table, column, cells),
    )
    log.info("discarded %d cells of %s.%s: a column dropped here", cells, table, column)


def waiting_counts(ctx: StoreContext, *, parked: bool = False) -> dict[str, dict[str, int]]:
    """Per table, per column (as the senders named it): cells waiting (or parked) for it."""
    kept_in = "_syncmesh_parked" if parked else "_syncmesh_waiting"
    counts: dict[str, dict[str, int]] = {}
    for table, column, cells in ctx.connection.execute(
        f"SELECT table_name, column_name, count(*) FROM {kept_in}"
        " GROUP BY table_name, column_name ORDER BY table_name, column_name"
    ):
        counts.setdefault(table, {})[column] = int(cells)
    return counts


def discarded_counts(ctx: StoreContext) -> dict[str, dict[str, int]]:
    """Per table, per column: cells of a column dropped here that arrived and were discarded."""
    counts: dict[str, dict[str, int]] = {}
    for table, column, cells in ctx.connection.execute(
        "SELECT table_name, column_name, cells FROM _syncmesh_discarded"
        " ORDER BY table_name, column_name"
    ):
        counts.setdefault(table, {})[column] = int(cells)
    return counts
