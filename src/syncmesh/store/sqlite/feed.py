"""The change feed: reading a batch for a peer, and splitting a seq group.

Owns how a batch is cut (whole seq groups only, `batch_upper`), what it
leaves out (cells the receiver holds by its vector, rows with uncaptured
writes), when it carries our vector, and moving half of an oversized seq
group to a new seq.  `SqliteStore.read_batch` and `SqliteStore.split_seq_group`
delegate here; each is one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from syncmesh.merge import missing_rows
from syncmesh.model import CELL_FIELDS, ChangeBatch, SqlValue, TableRows
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.execute import execute_one
from syncmesh.store.sqlite.table import TableSql, clear_unstamped_values, row_problem

log = logging.getLogger(__name__)


def read_batch(
    ctx: StoreContext,
    from_seq: int,
    receiver_vector: dict[str, int],
    rows_max: int,
    tables: Collection[str] | None = None,
) -> ChangeBatch:
    """`SqliteStore.read_batch`: see there."""
    sites = ctx.require_init()
    assert rows_max > 0
    shipped = shipped_tables(ctx, tables)
    # A shared lock only: the application's writers never wait for a read.
    # A row with logged, uncaptured writes has a new value under old stamps,
    # so it must not ship now; and the batch must not pass it either: a
    # cursor beyond a row the receiver never got, followed by any vector
    # (ours or a relay's) covering its older cells, would lose those cells
    # for good (tests/test_convergence_stateful.py found it).  So the batch
    # ends before the first such row; after its capture the row moves to a
    # new seq and the feed flows on.
    with ctx.transaction("DEFERRED"):
        head = ctx.state()["seq"]
        incarnation = ctx.incarnation()
        if from_seq >= head:
            vector = ctx.vector() if from_seq == head else None
            return ChangeBatch(incarnation, from_seq, from_seq, head, vector, (), ())
        upper = batch_upper(ctx, from_seq, head, rows_max, [table for table, _ in shipped])
        for table, _name in shipped:
            (held,) = ctx.connection.execute(
                table.sql_feed.first_pending_seq_sql, (from_seq, upper)
            ).fetchone()
            if held is not None:
                upper = min(upper, held - 1)  # whole seq groups: `held` starts one
        if upper <= from_seq:
            return ChangeBatch(incarnation, from_seq, from_seq, head, None, (), ())
        all_sites = sites.all_sites()
        bounds = {
            ordinal: receiver_vector[site]
            for ordinal, site in enumerate(all_sites)
            if site in receiver_vector
        }
        found: list[TableRows] = []
        for table, name in shipped:
            shape = table.shape
            sql, params = table.sql_feed.feed_uncovered_sql(bounds)
            read = [list(row) for row in ctx.connection.execute(sql, (from_seq, upper, *params))]
            read = sound_rows(ctx, table, read, len(all_sites))
            read = _faithful_rows(ctx, table, read)
            clear_unstamped_values(read, table.key_count)
            kept = missing_rows(
                TableRows(shape.table, shape.columns, shape.key_count, read),
                all_sites,
                receiver_vector,
            )
            if kept:
                former = tuple(table.spec.former_of(column) for column in shape.columns)
                generations = tuple(table.layout.generation_of(c) for c in shape.columns)
                found.append(
                    TableRows(
                        name,
                        shape.columns,
                        shape.key_count,
                        kept,
                        former if any(former) else (),
                        table.layout.created if any(table.layout.created) else (),
                        generations if any(generations) else (),
                    )
                )
        # A row held back (now, or in a batch before and not sound again yet)
        # keeps the vector out: a peer adopting it would claim that row's
        # writes, and once the row is fixed it could never get them.
        vector = ctx.vector() if upper == head and not ctx.row_problems else None
    # Site "indexes" in the rows are our ordinals, and all_sites is by ordinal.
    return ChangeBatch(incarnation, from_seq, upper, head, vector, all_sites, tuple(found))


def shipped_tables(ctx: StoreContext, tables: Collection[str] | None) -> list[tuple[TableSql, str]]:
    """Our tables a receiver tracking `tables` gets, each with the name the receiver knows.

    None: all, under our names.  A table the receiver does not track is
    left out (ADR 0013: it is not exchanged until both sides have it).  A
    table renamed here matches by a former name; its rows then carry the
    receiver's name, so a receiver that has not renamed it yet maps them.
    """
    if tables is None:
        return [(table, name) for name, table in ctx.tables.items()]
    wanted = set(tables)
    shipped = []
    for name, table in ctx.tables.items():
        if name in wanted:
            shipped.append((table, name))
            continue
        known = next((old for old in table.spec.former_names if old in wanted), None)
        if known is not None:
            shipped.append((table, known))
    return shipped


REPAIR_BY_WRITING = (
    "it is held back from the feed, and everything else keeps flowing; write the row again"
    " (delete and re-insert it, or set every column) so that the capture stamps it afresh"
)


def sound_rows(
    ctx: StoreContext, table: TableSql, rows: list[list[SqlValue]], sites_count: int
) -> list[list[SqlValue]]:
    """`rows` without any whose shadow fields are not what the store writes (reported).

    Another program can write anything into a shadow table (a stamp that
    is text, a site ordinal we never gave out).  Shipped, such a row makes
    every peer refuse the whole batch, and the merge cannot even filter
    it: one row would stop the feed for good (issue 12).  It is held back
    with its table, key and reason (ERROR log, status, metrics) and keeps
    the vector out of batches (`read_batch`); it ships once a new write
    has stamped it afresh.  The common case costs a few type checks per cell.
    """
    keys = table.key_count
    sound: list[list[SqlValue]] = []
    for row in rows:
        problem = row_problem(row, keys, sites_count)
        if problem is None and not ctx.row_problems:
            sound.append(row)  # the common case: no key text is built for it
            continue
        problem_key = (table.spec.name, ", ".join(repr(value) for value in row[:keys]))
        if problem is None:
            if problem_key in ctx.row_problems:
                ctx.row_problems.pop(problem_key)
                log.warning("row of table %r, key (%s) is sound again: shipped", *problem_key)
            sound.append(row)
            continue
        reason = f"shadow row {problem}: {REPAIR_BY_WRITING}"
        if ctx.row_problems.get(problem_key) != reason:
            log.error("row held back from the feed: table %r, key (%s): %s", *problem_key, reason)
        ctx.row_problems[problem_key] = reason
    return sound


# A row whose user row is absent reads as all NULL values: only rows that
# read so are looked at again, so the check costs nothing for other rows.
ANOMALY_ABSENT = (
    "alive in the shadow table but absent from the table: the feed will not ship"
    " values it did not read (run `syncmesh verify --deep`, then `repair`)"
)


def _faithful_rows(
    ctx: StoreContext, table: TableSql, rows: list[list[SqlValue]]
) -> list[list[SqlValue]]:
    """`rows` without any alive row whose user row is absent (reported as an anomaly).

    The apply never leaves such a row (every write is checked); a file
    made by an older version, or edited by hand, may hold one, and shipping
    it would invent a row of NULLs at every peer (issue 12, defect 1).
    """
    keys, width = table.key_count, len(table.values)
    # One pass in C per row: only rows that read as all NULL are looked at.
    suspects = [
        index
        for index, row in enumerate(rows)
        if row[keys + 3 :: CELL_FIELDS].count(None) == width and row[keys] % 2 == 1  # type: ignore[operator]
    ]
    absent: set[int] = set()
    for index in suspects:
        row = rows[index]
        problem_key = (table.spec.name, ", ".join(repr(value) for value in row[:keys]))
        found = execute_one(ctx.connection, table.sql_capture.exists_sql, row[:keys])
        if found.fetchone() is not None:
            ctx.row_problems.pop(problem_key, None)
            continue
        if problem_key not in ctx.row_problems:
            log.error(
                "row held back from the feed: table %r, key (%s): %s", *problem_key, ANOMALY_ABSENT
            )
        ctx.row_problems[problem_key] = ANOMALY_ABSENT
        absent.add(index)
    if not absent:
        return rows
    return [row for index, row in enumerate(rows) if index not in absent]


def split_seq_group(ctx: StoreContext, seq: int) -> bool:
    """`SqliteStore.split_seq_group`: see there."""
    ctx.require_init()
    with ctx.transaction():
        keyed: list[tuple[TableSql, tuple[SqlValue, ...]]] = []
        for table in ctx.tables.values():
            keyed.extend(
                (table, tuple(row))
                for row in ctx.connection.execute(table.sql_feed.group_keys_sql, (seq,))
            )
        if len(keyed) <= 1:
            return False
        # Another process on the file (a second node, `syncmesh track`) may
        # have stamped past our clock: catch up first, so the new seq is the
        # head and no moved row lands below a peer's cursor (issue 12).
        ctx.catch_up_clock()
        new_seq = max(ctx.clock.tick(), ctx.head() + 1)
        ctx.clock.restore(new_seq)
        for table, key in keyed[len(keyed) // 2 :]:
            ctx.connection.execute(table.sql_feed.move_sql, (new_seq, *key))
        ctx.connection.execute(
            "UPDATE _syncmesh_state SET seq = max(seq, ?), hlc = max(hlc, ?)", (new_seq, new_seq)
        )
    log.info("split seq group %d (%d rows) for the frame limit", seq, len(keyed))
    return True


def batch_upper(
    ctx: StoreContext, from_seq: int, head: int, rows_max: int, tables: list[TableSql]
) -> int:
    seqs: list[int] = []
    for table in tables:
        seqs.extend(
            seq for (seq,) in ctx.connection.execute(table.sql_feed.seqs_sql, (from_seq, rows_max))
        )
    if len(seqs) < rows_max:
        return head
    seqs.sort()
    # Whole seq groups only: a group is one local transaction (or one applied batch).
    return seqs[rows_max - 1]


def feed_rows_after(ctx: StoreContext, seqs: list[int], rows_max: int) -> list[int]:
    """`SqliteStore.feed_rows_after`: see there."""
    ctx.require_init()
    assert rows_max > 0
    with ctx.transaction("DEFERRED"):
        counts = []
        for seq in seqs:
            total = 0
            for table in ctx.tables.values():
                if total < rows_max:
                    (count,) = ctx.connection.execute(
                        table.sql_feed.rows_after_sql, (seq, rows_max - total)
                    ).fetchone()
                    total += int(count)
            counts.append(total)
    return counts
