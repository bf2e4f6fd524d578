"""The store's side of verify and repair: hash trees, digests by leaf and key, repair rows.

`Store` delegates here (like `feed` and `apply`); each function is one
transaction.  The trees are explained in `store.summary`; the exchange
that uses them in `syncmesh.node.verify`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch, SqlValue, TableRows
from syncmesh.schema import ALL_COLUMNS, OP_UPDATE
from syncmesh.store.records import ApplyResult
from syncmesh.store.rows import KEYS_PER_QUERY, TableSql
from syncmesh.store.summary import (
    TableSummary,
    deep_digest,
    key_hash,
    leaf_of,
    shadow_digest,
    summary_of,
)

if TYPE_CHECKING:
    from syncmesh.store.sqlite import Store

log = logging.getLogger(__name__)

DEEP_ROWS_PER_STEP = 20_000  # rows per step of a deep tree (about half a second here)

Key = tuple[SqlValue, ...]


def _table(store: Store, name: str) -> TableSql:
    table = store._tables.get(name)
    if table is None:
        raise StoreError(f"table {name!r} is not tracked here")
    return table


def summaries(store: Store, names: Sequence[str]) -> dict[str, TableSummary]:
    """The trees of `names`, as of one moment; rebuilt by a scan if not to be trusted."""
    store._require_init()
    for name in names:
        _table(store, name)
    # Committed writes not yet captured (no node serves the file) count too.
    store.capture()
    kept = store._summaries
    with store._transaction("DEFERRED"):
        head = store._head()
        if kept.valid_at(head) and set(kept.tables) == set(store._tables):
            return {name: TableSummary(list(kept.tables[name].leaves)) for name in names}
    _fill_missing_digests(store)
    with store._transaction("DEFERRED"):
        head = store._head()
        trees = {
            name: summary_of(store._connection.execute(table.tree_pairs_sql))
            for name, table in store._tables.items()
        }
    kept.tables = trees
    kept.as_of = head
    log.info("rebuilt the hash trees of %d tables (seq %d)", len(trees), head)
    return {name: TableSummary(list(trees[name].leaves)) for name in names}


def _fill_missing_digests(store: Store) -> None:
    """Compute the digest of any row without one (a file written by another path)."""
    missing = [
        table
        for table in store._tables.values()
        if store._connection.execute(
            f"SELECT 1 FROM {table.shadow} WHERE kh IS NULL OR dg IS NULL LIMIT 1"
        ).fetchone()
        is not None
    ]
    if missing:
        with store._transaction():
            for table in missing:
                store._connection.execute(table.fill_digests_sql)
        store._summaries.invalidate()


def _tree_rows(
    store: Store,
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
    sql = (table._tree_deep_rows if deep else table._tree_rows) + where
    codes = store._require_init().codes
    for row in store._connection.execute(sql, params):
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
    store: Store, table: TableSql, fixes: list[tuple[SqlValue, ...]] | None
) -> int:
    if fixes:
        with store._transaction():
            store._connection.executemany(table.set_digest_sql, fixes)
        store._summaries.invalidate()
        log.warning(
            "table %s: %d rows had digests that do not match their stamps (the shadow"
            " table was written behind syncmesh's back); corrected",
            table.spec.name,
            len(fixes),
        )
    return len(fixes or ())


def deep_summary_step(
    store: Store, name: str, after: Key | None, rows_max: int
) -> tuple[TableSummary, Key | None, int]:
    """Part of the table's deep tree: the rows after key `after`, at most `rows_max`.

    Returns the tree of those rows (XOR the parts together), the last key
    read (None once the table is done) and how many stored digests were
    corrected.  A deep tree is read in steps so that a node answering a
    deep verify keeps capturing and applying between them.
    """
    table = _table(store, name)
    assert rows_max > 0
    if after is None:
        store.capture()
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
    with store._transaction("DEFERRED"):
        for key, leaf, value in _tree_rows(store, table, corrected, where, params):
            tree.add(leaf, value)
            last = key
            count += 1
    fixed = _write_corrections(store, table, corrected)
    return tree, (last if count == rows_max else None), fixed


def deep_summary(store: Store, name: str) -> tuple[TableSummary, int]:
    """The table's whole deep tree, in steps; and how many stored digests were corrected."""
    tree, after, fixed = deep_summary_step(store, name, None, DEEP_ROWS_PER_STEP)
    while after is not None:
        part, after, more = deep_summary_step(store, name, after, DEEP_ROWS_PER_STEP)
        tree.merge(part)
        fixed += more
    return tree, fixed


def leaf_digests(store: Store, name: str, leaves: Sequence[int], deep: bool) -> dict[Key, int]:
    """Every row in `leaves`: key -> digest (deep: with values)."""
    table = _table(store, name)
    if not leaves:
        return {}
    where = table.leaf_match
    corrected: list[tuple[SqlValue, ...]] | None = [] if deep else None
    with store._transaction("DEFERRED"):
        found = {
            key: value
            for key, _leaf, value in _tree_rows(
                store, table, corrected, where, (json.dumps(list(leaves)),)
            )
        }
    _write_corrections(store, table, corrected)
    return found


def key_digests(store: Store, name: str, keys: Sequence[Key], deep: bool) -> list[int | None]:
    """The digest of each key (None: no row), in the order of `keys`."""
    table = _table(store, name)
    store.capture()
    found: dict[Key, int] = {}
    corrected: list[tuple[SqlValue, ...]] | None = [] if deep else None
    with store._transaction("DEFERRED"):
        for where, params in _key_chunks(table, keys):
            for key, _leaf, value in _tree_rows(store, table, corrected, where, params):
                found[key] = value
    _write_corrections(store, table, corrected)
    return [found.get(tuple(key)) for key in keys]


def _key_chunks(table: TableSql, keys: Sequence[Key]) -> Iterator[tuple[str, list[SqlValue]]]:
    step = max(1, KEYS_PER_QUERY // max(1, table.key_count))
    columns = ", ".join(f"s.k{index}" for index in range(table.key_count))
    tuple_marks = "(" + ", ".join("?" * table.key_count) + ")"
    for start in range(0, len(keys), step):
        chunk = keys[start : start + step]
        marks = ", ".join([tuple_marks] * len(chunk))
        yield f" WHERE ({columns}) IN (VALUES {marks})", [value for key in chunk for value in key]


def rows_of(store: Store, name: str, keys: Sequence[Key]) -> ChangeBatch:
    """The whole state of each of `keys` held here, as a batch (for repair)."""
    table = _table(store, name)
    sites = store._require_init()
    with store._transaction("DEFERRED"):
        rows: list[list[SqlValue]] = []
        for where, params in _key_chunks(table, keys):
            rows.extend(
                list(row) for row in store._connection.execute(table._select + where, params)
            )
        all_sites = sites.all_sites()
        head = store._head()
        incarnation = store.incarnation
    shape = table.shape
    tables = (TableRows(shape.table, shape.columns, shape.key_count, rows),) if rows else ()
    # Not a slice of the feed: from_seq = to_seq, and no vector is claimed.
    return ChangeBatch(incarnation, head, head, head, None, all_sites, tables)


def merge_rows(store: Store, origin: str, batch: ChangeBatch) -> ApplyResult:
    """Merge rows a peer sent for repair: the normal merge, no cursor, no vector."""
    sites = store._require_init()
    with store._transaction():
        store._capture_pending()
        result = store._merge_rows(origin, batch, sites)
        store._connection.execute(
            "UPDATE _syncmesh_state SET hlc = max(hlc, ?)", (store._clock.last,)
        )
    return result


def restamp(store: Store, name: str, keys: Sequence[Key]) -> int:
    """Stamp every cell of these live rows anew, as local writes; returns rows stamped.

    For rows whose values differ from a peer's under the same stamps: a
    write the capture never saw (made while the triggers were dropped, or
    by hand).  The new stamps make this side's values win everywhere.
    """
    table = _table(store, name)
    store._require_init()
    with store._transaction():
        live = [
            key
            for key in keys
            if store._connection.execute(table.exists_sql, key).fetchone() is not None
        ]
        columns = ", ".join(["op", "mask", *(f"k{index}" for index in range(table.key_count))])
        marks = ", ".join("?" * (2 + table.key_count))
        store._connection.executemany(
            f"INSERT INTO {table.log} ({columns}) VALUES ({marks})",
            [(OP_UPDATE, ALL_COLUMNS, *key) for key in live],
        )
        store._capture_pending()
    return len(live)
