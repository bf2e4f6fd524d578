"""Capture: folding the logged local writes into the shadow tables, stamped.

Log in the trigger, stamp in the engine (docs/adr/0002-stamp-in-capture-loop.md):
`capture_pending` takes one tick and folds every table's log per key
(`capture_table`), writing the shadow rows with one `executemany` of the
table's capture upsert, or, for a long log that is not mostly inserts, with
a few set-based statements (`_capture_table_sets`); more than
`CAPTURE_ENTRIES_PER_SEQ` logged entries are folded in chunks, each under
its own tick.  Every transaction that
rewrites shadow rows captures pending writes first (apply, retry, repair):
otherwise a capture after the merge would stamp a remote value as a local
write.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from syncmesh.model import SqlValue
from syncmesh.store.sqlite import vector
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import (
    ALL_COLUMNS,
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    MASK_COLUMNS_MAX,
    OP_CHECK,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE,
    slot_mask,
)
from syncmesh.store.sqlite.execute import execute_many, execute_one
from syncmesh.store.sqlite.functions import FOLD_DIGEST_FUNCTION, KEY_HASH_FUNCTION, call_sql
from syncmesh.store.sqlite.sql_capture import CL_FLOOR_SQL
from syncmesh.store.sqlite.table import TableSql
from syncmesh.store.summary import LEAF_MASK, fields_digest, key_hash, site_code

log = logging.getLogger(__name__)

UNKNOWN = -1  # a folded key's existence, until the table is asked
# Log entries stamped under one seq.  More than this at once (offline writes,
# a giant transaction) is split into several groups: peers may then see such a
# transaction in parts while it streams.
CAPTURE_ENTRIES_PER_SEQ = 20_000
# Logs of at least this many entries fold set-based (`_capture_table_sets`),
# unless half of them or more are inserts; others fold in Python, whose fewer
# statements cost less for a handful of rows (the single-row transactions
# latency depends on).  For keys new here the set-based fold costs about as
# much as the Python one, a little more (its sort and fold table): it pays for
# updates and deletes (docs/performance.md, "Set-based capture").
SET_BASED_ENTRIES_MIN = 64


def _set_based(entries: int, inserts: int) -> bool:
    """Whether a log of `entries` entries, `inserts` of them inserts, folds set-based."""
    return entries >= SET_BASED_ENTRIES_MIN and 2 * inserts < entries


def capture(ctx: StoreContext) -> int:
    """Stamp every pending local write (one HLC, one seq); returns rows stamped."""
    ctx.require_init()
    if not has_pending(ctx):
        return 0
    with ctx.transaction():
        return capture_pending(ctx)


def has_pending(ctx: StoreContext) -> bool:
    return any(
        ctx.connection.execute(table.sql_capture.pending_sql).fetchone() is not None
        for table in ctx.tables.values()
    )


def capture_pending(
    ctx: StoreContext, keys_out: dict[str, dict[tuple[SqlValue, ...], bool]] | None = None
) -> int:
    """Capture inside the caller's transaction; returns rows stamped.

    `keys_out` (table -> key -> alive now) receives the keys stamped: the
    orphan search (orphans.py) looks at them.
    """
    pending = [
        table
        for table in ctx.tables.values()
        if ctx.connection.execute(table.sql_capture.pending_sql).fetchone() is not None
    ]
    if not pending:
        return 0
    # The stamp doubles as the seq: a seq is never reused, not even by a
    # file restored from an old copy (its clock resumes past the copy's
    # stamps), so a peer's stale cursor can never skip new changes.
    ctx.catch_up_clock()
    own = ctx.require_init().site(0)
    stamped = 0
    fingerprinted = _values_fp_readable(ctx, pending)
    counts = {
        table.spec.name: ctx.connection.execute(table.sql_capture.log_count_sql).fetchone()
        for table in pending
    }
    logged = sum(entries for entries, _inserts in counts.values())
    if logged <= CAPTURE_ENTRIES_PER_SEQ:
        # The normal case: everything logged is one seq group, so every
        # local transaction in it reaches peers whole.
        hlc = ctx.clock.tick()
        for table in pending:
            stamped += capture_table(
                ctx.connection,
                table,
                hlc,
                hlc,
                -1,
                own,
                ctx.summaries.note,
                keys_out,
                values_fp=table.spec.name in fingerprinted,
                set_based=_set_based(*counts[table.spec.name]),
            )
    else:
        # A huge backlog (writes made while the node was down, or one giant
        # transaction) is split, or it would make one batch too big to send.
        hlc = ctx.clock.last
        for table in pending:
            while True:
                hlc = ctx.clock.tick()
                count = capture_table(
                    ctx.connection,
                    table,
                    hlc,
                    hlc,
                    CAPTURE_ENTRIES_PER_SEQ,
                    own,
                    ctx.summaries.note,
                    keys_out,
                    values_fp=table.spec.name in fingerprinted,
                    set_based=_set_based(*counts[table.spec.name]),
                )
                if count == 0:
                    break
                stamped += count
    ctx.connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (hlc, hlc))
    vector.set_own(ctx, hlc)
    ctx.rows_captured_uncommitted += stamped
    return stamped


def _values_fp_readable(ctx: StoreContext, tables: list[TableSql]) -> set[str]:
    """The tables whose rows' value fingerprints this capture can read (by column name).

    All of them unless DDL ran since the last reconcile: then those whose
    columns are still the ones the store knows.  The others' captured rows
    get no fingerprint (unknown); the reconcile fills it in.
    """
    version = int(ctx.connection.execute("PRAGMA schema_version").fetchone()[0])
    if version == ctx.reconciled_version:
        return {table.spec.name for table in tables}
    return {
        table.spec.name
        for table in tables
        if [row[1] for row in ctx.connection.execute(f"PRAGMA table_info({table.table})")]
        == list(table.spec.columns)
    }


def capture_table(
    connection: sqlite3.Connection,
    table: TableSql,
    hlc: int,
    seq: int,
    entries_max: int = -1,
    own_site: str = "",
    note: Callable[[str, int, int], None] | None = None,
    keys_out: dict[str, dict[tuple[SqlValue, ...], bool]] | None = None,
    *,
    values_fp: bool = True,
    set_based: bool = True,
) -> int:
    """Fold the log (its first `entries_max` entries; -1: all) into the shadow table.

    Returns the keys stamped.  Per key, the logged writes reduce to: does
    the row exist now (the last write says), was it deleted on the way
    (then an insert began a new life), and which columns changed (the
    union of the masks).  `values_fp`: the table's columns are the ones
    the store knows, so the rows' value fingerprints can be read.  `note`
    is the store's own `Summaries.note`: the digest function the
    statements call notes into the same trees (opening.py); None leaves
    new keys without key hash and digest.

    `set_based`: fold in SQL (`_capture_table_sets`), unless the table has
    slots beyond the mask's bits; otherwise in Python, one upsert per key.
    Both leave the same rows (tests/test_capture_sets.py).
    """
    if set_based and table.sql_capture.set_based:
        return _capture_table_sets(
            connection,
            table,
            (hlc, seq, site_code(own_site)),
            entries_max,
            note is not None,
            keys_out,
            values_fp,
        )
    # Per key: [alive, deleted, mask, inserted, and the wide part of the mask:
    # bit i for slot MASK_COLUMNS_MAX + i, of a table that has such slots].
    folded: dict[tuple[SqlValue, ...], list[int]] = {}
    last_id = 0
    for entry in connection.execute(table.sql_capture.log_sql, (entries_max,)):
        last_id = entry[0]
        op, mask = entry[1], entry[2]
        key = tuple(entry[3:])
        state = folded.get(key)
        if state is None:
            state = folded[key] = [1, 0, 0, 0, 0]
        if op == OP_DELETE:
            state[0], state[1] = 0, 1
        elif op == OP_INSERT:
            state[0], state[2], state[3] = 1, ALL_COLUMNS, 1
        elif op == OP_CHECK:
            state[0] = UNKNOWN
        elif mask < ALL_COLUMNS:
            state[0] = 1
            state[4] |= 1 << (-2 - mask - MASK_COLUMNS_MAX)  # ddl.slot_mask
        else:
            state[0], state[2] = 1, state[2] | mask
    for key, state in list(folded.items()):
        if None in key:
            # SQLite lets a rowid table hold NULL in its key; such a row
            # cannot be addressed on another node.  Skipped, so it cannot
            # wedge the capture of every other write (docs/keys.md).
            del folded[key]
            log.warning("table %s: a row with a NULL key value is not synced", table.spec.name)
            continue
        if state[0] == UNKNOWN:  # a REPLACE may have deleted it: the table knows
            if execute_one(connection, table.sql_capture.exists_sql, key).fetchone() is None:
                state[0], state[1] = 0, 1
            elif state[2] == 0 and state[4] == 0 and not state[1]:
                del folded[key]  # still there, untouched: nothing to capture
            else:
                state[0] = 1
    if not folded:
        connection.execute(table.sql_capture.log_clear_sql, (last_id,))
        return 0
    if keys_out is not None:
        stamped_keys = keys_out.setdefault(table.spec.name, {})
        stamped_keys.update((key, bool(state[0])) for key, state in folded.items())
    if table.sql_capture.digests and note is not None:
        (floor,) = connection.execute(f"SELECT {CL_FLOOR_SQL}").fetchone()
        parameters = _capture_parameters(table, folded, hlc, seq, own_site, note, int(floor))
    else:
        parameters = [
            (alive, deleted, mask, hlc, seq, *key, None, None)
            for key, (alive, deleted, mask, _inserted, _wide) in folded.items()
        ]
    words = table.sql_capture.wide_words
    if words:
        parameters = [
            (*row, *_wide_parameters(state[2], state[4], words))
            for row, state in zip(parameters, folded.values(), strict=True)
        ]
    sql = table.sql_capture.capture_sql if values_fp else table.sql_capture.capture_unknown_fp_sql
    execute_many(connection, sql, parameters)
    connection.execute(table.sql_capture.log_clear_sql, (last_id,))
    return len(folded)


def _capture_table_sets(
    connection: sqlite3.Connection,
    table: TableSql,
    stamp: tuple[int, int, int],
    entries_max: int,
    hashing: bool,
    keys_out: dict[str, dict[tuple[SqlValue, ...], bool]] | None,
    values_fp: bool,
) -> int:
    """`capture_table` in a few statements, whatever the number of keys.

    Per key, the Python fold costs a tuple, a dict entry and an upsert's
    binding (docs/performance.md, "Set-based capture", issue 17).  Here the
    log folds into a temporary table with one GROUP BY (`CaptureSql.fold_sql`),
    the rows of keys the shadow holds are updated with one UPDATE ... FROM
    and the new ones inserted with one INSERT ... SELECT; SQL functions do
    the hashing.  The outcome is the Python fold's, row for row.  `stamp`:
    the HLC, the seq, and our site's code (`summary.site_code`).
    """
    sql = table.sql_capture
    connection.execute(sql.fold_create_sql)
    (last_id,) = connection.execute(sql.log_last_sql, (entries_max,)).fetchone()
    if last_id is None:
        return 0
    hashing = hashing and sql.digests
    connection.execute(sql.fold_sql, {"last": last_id, "hash": int(hashing)})
    try:
        nulls = connection.execute(sql.fold_nulls_sql).rowcount
        for _ in range(nulls):
            # SQLite lets a rowid table hold NULL in its key; such a row
            # cannot be addressed on another node.  Skipped, so it cannot
            # wedge the capture of every other write (docs/keys.md).
            log.warning("table %s: a row with a NULL key value is not synced", table.spec.name)
        if connection.execute(sql.check_sql).rowcount:
            for statement in sql.checked_sql:
                connection.execute(statement)
        count, found = connection.execute(sql.fold_count_sql).fetchone()
        if count:
            if keys_out is not None:
                stamped_keys = keys_out.setdefault(table.spec.name, {})
                stamped_keys.update(
                    (tuple(row[:-1]), bool(row[-1]))
                    for row in connection.execute(sql.fold_keys_sql)
                )
            hlc, seq, own = stamp
            parameters = {"hlc": hlc, "seq": seq, "own": own}
            if found:
                connection.execute(
                    sql.update_sql if values_fp else sql.update_unknown_fp_sql, parameters
                )
            if found < count:
                connection.execute(
                    sql.insert_sql if values_fp else sql.insert_unknown_fp_sql, parameters
                )
    finally:
        connection.execute(sql.fold_clear_sql)
    connection.execute(sql.log_clear_sql, (last_id,))
    return int(count)


def _wide_parameters(mask: int, wide: int, words: int) -> tuple[SqlValue, ...]:
    """The capture's parameters after the digest, for a table with slots beyond the mask.

    One int64 word per MASK_COLUMNS_MAX of those slots (`CaptureSql.changed`),
    then the whole mask as decimal text, for `capture_pasts`.
    """
    if mask == ALL_COLUMNS:
        return (*([ALL_COLUMNS] * words), str(ALL_COLUMNS))
    bits = (1 << MASK_COLUMNS_MAX) - 1
    split = [(wide >> (MASK_COLUMNS_MAX * word)) & bits for word in range(words)]
    return (*split, str(mask | (wide << MASK_COLUMNS_MAX)))


def _capture_parameters(
    table: TableSql,
    folded: dict[tuple[SqlValue, ...], list[int]],
    hlc: int,
    seq: int,
    own_site: str,
    note: Callable[[str, int, int], None],
    cl_floor: int = 0,
) -> list[tuple[SqlValue, ...]]:
    """Parameters of `capture_sql`, with leaf and digest for keys likely new here.

    A key whose writes include an INSERT is nearly always new to the
    shadow table: its row's leaf and digest are computed here (all its
    cells stamped `hlc` by us) and its leaf is moved at once.  Had the
    key a row after all (a delete and a re-insert), the upsert's digest
    function takes the guess back.  Other keys pass NULL: their rows
    exist and the upsert computes their digests.
    """
    name = table.spec.name
    # The fields `summary.digest` hashes, but for the key hash: the same
    # for every new row of this capture (all cells stamped hlc, by us).
    own = site_code(own_site)
    # A new key's causal length starts above the collected ones (ADR 0015).
    live = [1 + cl_floor, hlc, own, *[hlc] * len(table.values), *[own] * len(table.values)]
    born_dead = [2 + cl_floor, hlc, own]
    parameters: list[tuple[SqlValue, ...]] = []
    for key, (alive, deleted, mask, inserted, _wide) in folded.items():
        hashed = guess = None
        if inserted:
            hashed = key_hash(key)
            guess = fields_digest([hashed, *(live if alive else born_dead)])
            note(name, hashed & LEAF_MASK, guess)
        parameters.append((alive, deleted, mask, hlc, seq, *key, hashed, guess))
    return parameters


def restamp_below_lost_writes(ctx: StoreContext) -> int:
    """Stamp anew this run's own writes that a detected restore showed to be hidden.

    Inside the caller's transaction; returns the rows stamped.  When the
    writes a restored file lost were stamped ahead of this run's start,
    this run may have stamped its own writes below them before a peer told
    it of the loss (its clock follows the wall clock, which is behind the
    lost stamps).  Every peer's vector entry for us covers the lost stamps,
    so it would leave those writes out for good (ADR 0006, residual risk 3;
    found by `syncmesh chaos` with `skew` and `restore`).  `vector._detect`
    moved the clock past the claim and noted the window
    (`ctx.restamp_window`); here every own stamp in it is replaced by a
    fresh one: a row's causal-length stamp in place (with its digest), and
    its own cells through the log, as a local write of just those columns
    (cells other sites wrote keep their stamps).  Each stamp is renewed
    once: the next window starts above this one.
    """
    window, ctx.restamp_window = ctx.restamp_window, None
    if window is None:
        return 0
    low, high = max(window[0], ctx.restamped_through + 1), window[1]
    if low > high:
        return 0
    ctx.restamped_through = high
    connection = ctx.connection
    hlc = ctx.clock.tick()
    rows = 0
    for table in ctx.tables.values():
        rows += _restamp_life_stamps(ctx, table, low, high, hlc)
        cells = ", ".join(f"s{slot}, h{slot}" for slot in table.slots) or "NULL"
        own_in_window = " OR ".join(
            f"(s{slot} = 0 AND h{slot} BETWEEN :low AND :high)" for slot in table.slots
        )
        if not own_in_window:
            continue
        logged = []
        for found in connection.execute(
            f"SELECT {table.names.shadow_keys}, {cells} FROM {table.shadow}"
            f" WHERE cl % 2 = 1 AND ({own_in_window})",
            {"low": low, "high": high},
        ):
            key, stamps = found[: table.key_count], found[table.key_count :]
            mask = 0
            for index, slot in enumerate(table.slots):
                site, stamp = stamps[2 * index], stamps[2 * index + 1]
                if site == 0 and stamp is not None and low <= stamp <= high:
                    if slot >= MASK_COLUMNS_MAX:  # beyond the bits: an entry of its own
                        logged.append((OP_UPDATE, slot_mask(slot), *key))
                    else:
                        mask |= 1 << slot
            if mask:
                logged.append((OP_UPDATE, mask, *key))
        connection.executemany(table.sql_verify.log_insert_sql, logged)
        rows += len(logged)
    connection.execute(
        "UPDATE _syncmesh_state SET seq = max(seq, ?), hlc = max(hlc, ?)", (hlc, hlc)
    )
    capture_pending(ctx)
    if rows:
        log.warning(
            "stamped anew %d own stamps of rows written since this file was restored: they lay"
            " below writes the file lost, which peers hold",
            rows,
        )
    return rows


def _restamp_life_stamps(ctx: StoreContext, table: TableSql, low: int, high: int, hlc: int) -> int:
    """Causal-length stamps of ours in [low, high] become `hlc` (seq too), digests kept exact.

    Equal causal lengths merge to the greater stamp, so peers holding the
    old one converge on this one.
    """
    fields = ["cl", ":hlc", "cl_site"]
    fields += [column for slot in table.slots for column in (f"h{slot}", f"s{slot}")]
    sets = ["cl_hlc = :hlc", "seq = :hlc"]
    if table.sql_capture.digests:
        keys_hashed = f"coalesce({KEY_HASH_COLUMN}, {KEY_HASH_FUNCTION}({table.names.shadow_keys}))"
        folded = call_sql(
            FOLD_DIGEST_FUNCTION, [":name", DIGEST_COLUMN, "NULL", "NULL", keys_hashed], fields
        )
        sets.append(f"{DIGEST_COLUMN} = {folded}")
    cursor = ctx.connection.execute(
        f"UPDATE {table.shadow} SET {', '.join(sets)}"
        " WHERE cl_site = 0 AND cl_hlc BETWEEN :low AND :high",
        {"hlc": hlc, "low": low, "high": high, "name": table.spec.name},
    )
    return cursor.rowcount
