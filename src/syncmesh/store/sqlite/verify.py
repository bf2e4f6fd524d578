"""The store's side of verify and repair: hash trees, digests by leaf and key, repair rows.

`SqliteStore` delegates here (like `feed` and `apply`); each function is one
transaction.  The trees are explained in `store.summary`; the exchange
that uses them in `syncmesh.node.verify`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence

from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch, SqlValue, TableRows
from syncmesh.store.base import DEEP_ROWS_PER_STEP
from syncmesh.store.records import ApplyResult
from syncmesh.store.sqlite import apply, capture, orphans
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import ALL_COLUMNS, OP_UPDATE
from syncmesh.store.sqlite.execute import execute_one
from syncmesh.store.sqlite.table import KEYS_PER_QUERY, TableSql, clear_unstamped_values
from syncmesh.store.summary import (
    TableSummary,
    deep_digest,
    key_hash,
    leaf_of,
    shadow_digest,
    summary_of,
)

log = logging.getLogger(__name__)

Key = tuple[SqlValue, ...]


def _table(ctx: StoreContext, name: str) -> TableSql:
    table = ctx.tables.get(name)
    if table is None:
        raise StoreError(f"table {name!r} is not tracked here")
    return table


def summaries(ctx: StoreContext, names: Sequence[str]) -> dict[str, TableSummary]:
    """The trees of `names`, as of one moment; rebuilt by a scan if not to be trusted."""
    ctx.require_init()
    for name in names:
        _table(ctx, name)
    # Committed writes not yet captured (no node serves the file) count too.
    capture.capture(ctx)
    kept = ctx.summaries
    with ctx.transaction("DEFERRED"):
        head = ctx.head()
        if kept.valid_at(head) and set(kept.tables) == set(ctx.tables):
            return {name: TableSummary(list(kept.tables[name].leaves)) for name in names}
    _fill_missing_digests(ctx)
    with ctx.transaction("DEFERRED"):
        head = ctx.head()
        trees = {
            name: summary_of(ctx.connection.execute(table.sql_verify.tree_pairs_sql))
            for name, table in ctx.tables.items()
        }
    kept.tables = trees
    kept.as_of = head
    log.info("rebuilt the hash trees of %d tables (seq %d)", len(trees), head)
    return {name: TableSummary(list(trees[name].leaves)) for name in names}


def _fill_missing_digests(ctx: StoreContext) -> None:
    """Compute the digest of any row without one (a file written by another path)."""
    missing = [
        table
        for table in ctx.tables.values()
        if ctx.connection.execute(
            f"SELECT 1 FROM {table.shadow} WHERE kh IS NULL OR dg IS NULL LIMIT 1"
        ).fetchone()
        is not None
    ]
    if missing:
        with ctx.transaction():
            for table in missing:
                ctx.connection.execute(table.sql_verify.fill_digests_sql)
        ctx.summaries.invalidate()


def _tree_rows(
    ctx: StoreContext,
    table: TableSql,
    corrected: list[tuple[SqlValue, ...]] | None,
    where: str = "",
    params: Sequence[SqlValue] = (),
) -> Iterator[tuple[Key, int, int]]:
    """(key, leaf, digest) of the rows matching `where`.

    With a `corrected` list the read is deep: digests are recomputed from
    the stamps, with the values, and every row whose stored leaf or digest
    does not match its stamps (a shadow table edited by hand) is appended
    to it as (leaf, digest, *key), to be written back.
    """
    deep = corrected is not None
    keys = table.key_count
    stamps_end = keys + 5 + 2 * len(table.values)
    sql = (table.sql_verify.tree_deep_rows if deep else table.sql_verify.tree_rows) + where
    codes = ctx.require_init().codes
    for row in ctx.connection.execute(sql, params):
        key = tuple(row[:keys])
        hashed, stored = row[keys + 3], row[keys + 4]
        if not deep:
            yield key, leaf_of(hashed), stored
            continue
        cl = row[keys]
        fresh_hash = key_hash(key)
        fresh = shadow_digest(
            fresh_hash, cl, row[keys + 1], row[keys + 2], row[keys + 5 : stamps_end], codes
        )
        if (fresh_hash, fresh) != (hashed, stored):
            corrected.append((fresh_hash, fresh, *key))  # type: ignore[union-attr]
        yield key, leaf_of(fresh_hash), deep_digest(fresh, cl % 2 == 1, row[stamps_end:])


def _write_corrections(
    ctx: StoreContext, table: TableSql, fixes: list[tuple[SqlValue, ...]] | None
) -> int:
    if fixes:
        with ctx.transaction():
            ctx.connection.executemany(table.sql_verify.set_digest_sql, fixes)
        ctx.summaries.invalidate()
        log.warning(
            "table %s: %d rows had digests that do not match their stamps (the shadow"
            " table was written behind syncmesh's back); corrected",
            table.spec.name,
            len(fixes),
        )
    return len(fixes or ())


def deep_summary_step(
    ctx: StoreContext, name: str, after: Key | None, rows_max: int
) -> tuple[TableSummary, Key | None, int]:
    """Part of the table's deep tree: the rows after key `after`, at most `rows_max`.

    Returns the tree of those rows (XOR the parts together), the last key
    read (None once the table is done) and how many stored digests were
    corrected.  A deep tree is read in steps so that a node answering a
    deep verify keeps capturing and applying between them.
    """
    table = _table(ctx, name)
    assert rows_max > 0
    if after is None:
        capture.capture(ctx)
    columns = ", ".join(f"s.k{index}" for index in range(table.key_count))
    where = f" ORDER BY {columns} LIMIT ?"
    params: list[SqlValue] = [rows_max]
    if after is not None:
        marks = ", ".join("?" * table.key_count)
        where = f" WHERE ({columns}) > ({marks})" + where
        params = [*after, rows_max]
    corrected: list[tuple[SqlValue, ...]] = []
    tree = TableSummary()
    last: Key | None = None
    count = 0
    with ctx.transaction("DEFERRED"):
        for key, leaf, value in _tree_rows(ctx, table, corrected, where, params):
            tree.add(leaf, value)
            last = key
            count += 1
    fixed = _write_corrections(ctx, table, corrected)
    return tree, (last if count == rows_max else None), fixed


def deep_summary(ctx: StoreContext, name: str) -> tuple[TableSummary, int]:
    """The table's whole deep tree, in steps; and how many stored digests were corrected."""
    tree, after, fixed = deep_summary_step(ctx, name, None, DEEP_ROWS_PER_STEP)
    while after is not None:
        part, after, more = deep_summary_step(ctx, name, after, DEEP_ROWS_PER_STEP)
        tree.merge(part)
        fixed += more
    return tree, fixed


def leaf_digests(ctx: StoreContext, name: str, leaves: Sequence[int], deep: bool) -> dict[Key, int]:
    """Every row in `leaves`: key -> digest (deep: with values)."""
    table = _table(ctx, name)
    if not leaves:
        return {}
    where = table.sql_verify.leaf_match
    corrected: list[tuple[SqlValue, ...]] | None = [] if deep else None
    with ctx.transaction("DEFERRED"):
        found = {
            key: value
            for key, _leaf, value in _tree_rows(
                ctx, table, corrected, where, (json.dumps(list(leaves)),)
            )
        }
    _write_corrections(ctx, table, corrected)
    return found


def key_digests(ctx: StoreContext, name: str, keys: Sequence[Key], deep: bool) -> list[int | None]:
    """The digest of each key (None: no row), in the order of `keys`."""
    table = _table(ctx, name)
    capture.capture(ctx)
    found: dict[Key, int] = {}
    corrected: list[tuple[SqlValue, ...]] | None = [] if deep else None
    with ctx.transaction("DEFERRED"):
        for where, params in _key_chunks(table, keys):
            for key, _leaf, value in _tree_rows(ctx, table, corrected, where, params):
                found[key] = value
    _write_corrections(ctx, table, corrected)
    return [found.get(tuple(key)) for key in keys]


def _key_chunks(table: TableSql, keys: Sequence[Key]) -> Iterator[tuple[str, list[SqlValue]]]:
    step = max(1, KEYS_PER_QUERY // max(1, table.key_count))
    columns = ", ".join(f"s.k{index}" for index in range(table.key_count))
    tuple_marks = "(" + ", ".join("?" * table.key_count) + ")"
    for start in range(0, len(keys), step):
        chunk = keys[start : start + step]
        marks = ", ".join([tuple_marks] * len(chunk))
        yield f" WHERE ({columns}) IN (VALUES {marks})", [value for key in chunk for value in key]


def rows_of(ctx: StoreContext, name: str, keys: Sequence[Key]) -> ChangeBatch:
    """The whole state of each of `keys` held here, as a batch (for repair).

    Pending local writes are captured first (a write transaction): a value
    written but not yet captured would otherwise ship under the stamp of
    the write it replaced (issue 12, "also look at").
    """
    table = _table(ctx, name)
    sites = ctx.require_init()
    with ctx.transaction():
        capture.capture_pending(ctx)
        rows: list[list[SqlValue]] = []
        for where, params in _key_chunks(table, keys):
            rows.extend(
                list(row)
                for row in execute_one(ctx.connection, table.sql_verify.select + where, params)
            )
        all_sites = sites.all_sites()
        head = ctx.head()
        incarnation = ctx.incarnation()
    clear_unstamped_values(rows, table.key_count)  # a column added after: its DEFAULT, unsent
    shape = table.shape
    tables = (TableRows(shape.table, shape.columns, shape.key_count, rows),) if rows else ()
    # Not a slice of the feed: from_seq = to_seq, and no vector is claimed.
    return ChangeBatch(incarnation, head, head, head, None, all_sites, tables)


def merge_rows(ctx: StoreContext, origin: str, batch: ChangeBatch) -> ApplyResult:
    """Merge rows a peer sent for repair: the normal merge, no cursor, no vector.

    Rows of keys waiting in our quarantine are left to its retry
    (`_without_quarantined_keys`).
    """
    sites = ctx.require_init()
    with ctx.transaction():
        capture.capture_pending(ctx)
        batch = _without_quarantined_keys(ctx, batch)
        result = apply.merge_rows(ctx, origin, batch, sites)
        orphans.resolve(ctx, *orphans.batch_keys(ctx, batch))
        ctx.connection.execute("UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (ctx.clock.last,))
    return result


def _without_quarantined_keys(ctx: StoreContext, batch: ChangeBatch) -> ChangeBatch:
    """`batch` without the rows of keys that wait in our quarantine.

    A key waiting there is the retry's to settle: it merges each sender's
    rows as the one batch they came in, so a transaction passes or waits
    whole.  The repair sends only the keys a verify found divergent, which
    can be some rows of a transaction and not the others: merged here, the
    lines of an order that waited in the drift quarantine showed without
    their order until the next retry, and went into our feed as a group of
    their own, so peers that relayed them showed them too (`syncmesh chaos`,
    `beyond`: torn-transaction).  Nothing is lost by leaving them: the
    retry applies the waiting rows, and the next verify repairs what still
    differs then.
    """
    waiting = set(ctx.connection.execute("SELECT table_name, pk FROM _syncmesh_quarantine"))
    if not waiting:
        return batch
    kept = []
    for table in batch.tables:
        rows = [
            row
            for row in table.rows
            if (table.table, ", ".join(repr(value) for value in row[: table.key_count]))
            not in waiting
        ]
        if rows:
            kept.append(dataclasses.replace(table, rows=rows))
    return dataclasses.replace(batch, tables=tuple(kept))


def restamp(ctx: StoreContext, name: str, keys: Sequence[Key]) -> int:
    """Stamp every cell of these live rows anew, as local writes; returns rows stamped.

    For rows whose values differ from a peer's under the same stamps: a
    write the capture never saw (made while the triggers were dropped, or
    by hand).  The new stamps make this side's values win everywhere.
    """
    table = _table(ctx, name)
    ctx.require_init()
    with ctx.transaction():
        live = [
            key
            for key in keys
            if ctx.connection.execute(table.sql_capture.exists_sql, key).fetchone() is not None
        ]
        ctx.connection.executemany(
            table.sql_verify.log_insert_sql,
            [(OP_UPDATE, ALL_COLUMNS, *key) for key in live],
        )
        capture.capture_pending(ctx)
    return len(live)
