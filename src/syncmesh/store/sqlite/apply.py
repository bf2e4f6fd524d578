"""Applying a peer's batch: the merge of its rows into the tables.

Owns the join of incoming rows with the rows on disk (the fast path for
keys new here, one user-table write per key), noticing the conflicts the
join resolves (recorded in the ledger) and what the node learns from them,
the refusal of stamps from the future, and sending rows that cannot be
applied to quarantine.  `peers.apply_batch`, `retry.retry` and
`verify.merge_rows` call `merge_rows` inside their transaction.

One table's merge (`merge_table`) goes in named steps: `_merge_keys`
joins every incoming row with what is held, in memory (a key new here on
the fast path, inline; any other through `_join_held`), `_write_user_rows`
writes the user table (a constraint's refusal sends the key's rows to
quarantine), `_write_shadow_rows` writes the shadow rows and moves the
hash tree, and the conflicts go to the ledger last.
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from syncmesh.clock import HybridClock
from syncmesh.errors import ClockDriftError
from syncmesh.merge import CellConflict, Knowledge, join_rows, resolve_cells, value_order_key
from syncmesh.model import (
    CELL_FIELDS,
    INT64_MAX,
    ChangeBatch,
    RowChange,
    RowState,
    SqlValue,
    TableRows,
    state_of_row,
)
from syncmesh.store.records import ApplyResult
from syncmesh.store.sqlite import conflicts, quarantine, vector, waitlist
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import DEFAULT_CELL_HLC, DEFAULT_CELL_SITE, quote_identifier
from syncmesh.store.sqlite.execute import (
    execute_checked,
    execute_many,
    execute_one,
    require_transaction,
)
from syncmesh.store.sqlite.introspect import column_defaults
from syncmesh.store.sqlite.quarantine import stamps
from syncmesh.store.sqlite.sites import SiteMap
from syncmesh.store.sqlite.table import TableSql, pasts_problem, row_problem
from syncmesh.store.summary import (
    LEAF_MASK,
    NO_SITE,
    NO_STAMP,
    fields_digest,
    key_hash,
    site_code,
    trim_default_cells,
)

Key = tuple[SqlValue, ...]
# Rows of keys new here are written in sets through SQL (`_write_staged`);
# tests turn this off to hold the set path to the row-by-row one.
STAGING = True
log = logging.getLogger(__name__)


class TableApplied(NamedTuple):
    """What the merge of one table's rows did."""

    applied: int  # rows whose merged state differed from ours (shadow rows written)
    quarantined: int  # rows a constraint refused, sent to quarantine
    drift_refused: int  # rows stamped beyond the drift limit, sent to quarantine
    conflicts: int  # conflicts resolved and new to the ledger


@dataclass(frozen=True, slots=True)
class _Incoming:
    """What every table of one batch shares: where it comes from, and how it is stamped."""

    origin: str  # the site the rows came from (quarantine entries name it)
    batch_sites: tuple[str, ...]  # the batch's site ids, by site index
    ordinals: list[int]  # the batch's site indexes as our ordinals
    seq: int  # the seq the merged rows take
    sites: SiteMap
    bound: int  # the greatest stamp not refused for drift


def merge_rows(ctx: StoreContext, origin: str, batch: ChangeBatch, sites: SiteMap) -> ApplyResult:
    """Merge the rows of `batch` into the tables (inside the caller's transaction)."""
    ctx.connection.execute("UPDATE _syncmesh_state SET applying = 1")
    ctx.catch_up_clock()
    seq = ctx.clock.tick()  # a fresh seq for the merged rows (see capture.capture_pending)
    batch_sites = batch.sites
    if DEFAULT_CELL_SITE not in batch_sites and _other_columns(ctx, batch):
        # A column the sender lacks reads as the default stamp (`_to_local_columns`).
        batch_sites = (*batch_sites, DEFAULT_CELL_SITE)
    ordinals = [sites.ordinal(site) for site in batch_sites]
    # One reading of the clock judges the whole batch: rows of one local
    # transaction share a stamp and must all pass or all wait (a reading per
    # table let an order through while its lines waited; syncmesh chaos).
    bound = vector.drift_bound(ctx)
    shared = _Incoming(origin, batch_sites, ordinals, seq, sites, bound)
    applied = quarantined = refused = resolved = 0
    by_table: dict[str, int] = {}
    for incoming in batch.tables:
        table = local_table(ctx, incoming.table)
        problem = None
        if table is None:
            problem = f"table {incoming.table!r} is not tracked here"
        elif incoming.key_count != table.key_count:
            problem = (
                f"table {incoming.table!r}: the peer's primary key has {incoming.key_count}"
                f" columns, ours {list(table.spec.pk)}"
            )
        if problem is not None:
            for row in incoming.rows:
                quarantine.add(ctx, _change_of(incoming, row, batch.sites), origin, problem)
            quarantined += len(incoming.rows)
            continue
        assert table is not None
        lacking: frozenset[str] = frozenset()
        sent = incoming
        if incoming.columns != table.values or incoming.generations or _has_stale_cells(table):
            # Another schema version: map its columns to ours, keep the cells
            # of columns not here as waiting cells (ADR 0013).
            incoming, lacking = _to_local_columns(ctx, table, incoming, shared)
        done = merge_table(ctx, table, incoming, shared, lacking, sent)
        applied += done.applied
        if done.applied:
            by_table[incoming.table] = by_table.get(incoming.table, 0) + done.applied
        quarantined += done.quarantined
        refused += done.drift_refused
        resolved += done.conflicts
    ctx.connection.execute("UPDATE _syncmesh_state SET applying = 0")
    if applied:
        # V[self] does not move here: it speaks of our own writes only.
        ctx.connection.execute("UPDATE _syncmesh_state SET seq = ?", (seq,))
    return ApplyResult(applied, quarantined, refused, ctx.state()["seq"], resolved, by_table)


def _other_columns(ctx: StoreContext, batch: ChangeBatch) -> bool:
    """Whether a table of `batch` has other columns than ours (another schema version)."""
    for incoming in batch.tables:
        table = local_table(ctx, incoming.table)
        if table is not None and (
            incoming.columns != table.values or incoming.generations or _has_stale_cells(table)
        ):
            return True
    return False


def local_table(ctx: StoreContext, name: str) -> TableSql | None:
    """Our tracked table that a peer calls `name`: by our name, then by our former names.

    (The sender's former names of a table need not be looked at: a sender
    names each table as its receiver does, `feed.read_batch(tables=...)`.)
    """
    table = ctx.tables.get(name)
    if table is not None:
        return table
    for candidate in ctx.tables.values():
        if name in candidate.spec.former_names:
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """How a sender's columns of one table map to ours (ADR 0013, "Mixed schema versions")."""

    # Per local value column (in `TableSql.values` order): the index of the
    # incoming column that is it, or None if the sender lacks it.
    sources: tuple[int | None, ...]
    waiting: tuple[int, ...]  # incoming columns not here (yet): their cells wait
    dropped: tuple[int, ...]  # incoming columns dropped here: their cells are discarded


def map_columns(table: TableSql, incoming: TableRows) -> ColumnMap:
    """Map each incoming column to one of ours: by name, the sender's former names, ours.

    Each of our columns takes at most one incoming column; a name match
    goes first, so a name re-used after a rename keeps its own column.
    """
    spec, values, columns = table.spec, table.values, incoming.columns
    former = incoming.former or ((),) * len(columns)
    assigned: list[str | None] = [name if name in values else None for name in columns]
    taken = {name for name in assigned if name is not None}
    for index, name in enumerate(columns):
        if assigned[index] is not None:
            continue
        # The sender renamed it (its former names), or we did (ours).
        found = next((old for old in former[index] if old in values and old not in taken), None)
        if found is None:
            found = next(
                (ours for ours in values if ours not in taken and name in spec.former_of(ours)),
                None,
            )
        if found is not None:
            assigned[index] = found
            taken.add(found)
    position = {name: index for index, name in enumerate(assigned) if name is not None}
    unmapped = [index for index, name in enumerate(assigned) if name is None]
    dropped = tuple(
        index for index in unmapped if dropped_here(table, (columns[index], *former[index]))
    )
    return ColumnMap(
        tuple(position.get(name) for name in values),
        tuple(index for index in unmapped if index not in dropped),
        dropped,
    )


def dropped_here(table: TableSql, names: tuple[str, ...]) -> bool:
    """Whether a column a sender calls by one of `names` was dropped from this table here.

    Its cells are then discarded (and counted), never kept waiting: the
    column will not come back under that identity (ADR 0013).  Only those
    stamped after the drop here are parked (`_to_local_columns`): they may
    be of a column added again under the name elsewhere.
    """
    dropped = table.layout.dropped_names()
    return any(name in dropped for name in names)


def cells_at_or_below(incoming: TableRows, index: int, dropped_at: int, drops_here: int) -> int:
    """Cells of incoming column `index` stamped at or below this are of a column dropped here.

    `dropped_at` is the stamp of the last drop here of the column's name (0:
    never dropped), `drops_here` how many times it was dropped here.  The
    sender's column decides for all its cells, by the first of:

    - its generation (the drops of the name at the sender when the column
      got its slot), when not 0: at least ours, it is the column added
      again (every cell is its own), below, an older one (none is).  No
      clock is compared, so it holds under any skew;
    - its creation stamp: after our drop, the column added again; before,
      the old one.  A sender that never dropped the name (generation 0) is
      a site that has not dropped it yet, or one that tracked the table
      after the drop: only the clocks tell them apart;
    - otherwise (a peer from before both) the cells' own stamps, which a
      write made late to the old column at a site that had not dropped it
      yet gets wrong.
    """
    if not dropped_at:
        return dropped_at
    if incoming.generations and incoming.generations[index]:
        return 0 if incoming.generations[index] >= drops_here else INT64_MAX
    if not incoming.created:
        return dropped_at
    return 0 if incoming.created[index] > dropped_at else INT64_MAX


def last_drop_here(table: TableSql, names: tuple[str, ...]) -> int:
    """The stamp of the last drop here of a column a sender calls by one of `names`."""
    return max(
        (entry.dropped_hlc for entry in table.layout.dropped if entry.name in names), default=0
    )


def newer_than_ours(
    table: TableSql, mapping: ColumnMap, index: int, generation: int, created: int | None
) -> bool:
    """Whether incoming column `index`, of `generation`, is a later column of its name than ours.

    Its sender dropped the name more often than we did (we have not dropped
    it yet, or not as often): our column of that name is an older one, and
    its cells must not land in it.  They are parked until our column is of
    that generation too (ADR 0013).  Unless we never dropped the name and
    created our column after the sender created its own (`created`; None:
    not said): then we tracked the table after the drops (a late joiner,
    whose fresh track knows no history), and our column is the new one.
    """
    if not generation or index not in mapping.sources:
        return False
    ours = table.values[mapping.sources.index(index)]
    drops = table.layout.generation_of(ours)
    if generation <= drops:
        return False
    ours_created = table.layout.created[table.values.index(ours)]
    return drops > 0 or created is None or not ours_created or ours_created < created


def drops_here(table: TableSql, names: tuple[str, ...]) -> int:
    """How many times a column a sender calls by one of `names` was dropped here."""
    return max((table.layout.generation_of(name) for name in names), default=0)


def _has_stale_cells(table: TableSql) -> bool:
    """Whether some column of `table` refuses old cells (`stale_at_or_below`): rarely."""
    return any(stale_at_or_below(table, column) for column in table.values)


def stale_at_or_below(table: TableSql, column: str) -> int:
    """Cells of our `column` stamped at or below this are discarded: 0 for nearly every column.

    A column re-added under the name of one dropped here is a new column:
    cells of the old one (stamped before its last drop here) must not
    resurrect old values in it (ADR 0013; the reconcile records it as the
    column's `born` stamp).  A column added for the first time takes every
    cell, also those written before it was added here.
    """
    return table.layout.born_of(column)


def merge_table(
    ctx: StoreContext,
    table: TableSql,
    incoming: TableRows,
    shared: _Incoming,
    lacking: frozenset[str] = frozenset(),
    sent: TableRows | None = None,
) -> TableApplied:
    """Merge one table's rows: join them, write the user rows, the shadow rows, the conflicts.

    `incoming` has our columns (`_to_local_columns`); `lacking` are those
    the sender does not have, which the user rows do not write; `sent` is
    the table as the sender sent it (rows aligned with `incoming`'s).
    Rows with a stamp above `shared.bound` (the drift limit) are refused
    into the quarantine, to be retried once the clock has caught up.
    """
    pks = [tuple(row[: table.key_count]) for row in incoming.rows]
    on_disk = table.load(ctx.connection, pks)
    horizon = collected_horizon(ctx, table.spec.name)
    if horizon:
        incoming, sent, pks = _without_collected(
            ctx, table, incoming, sent, shared, pks, on_disk, horizon
        )
    refusals = _Refusals(table, incoming, sent or incoming, shared)
    incoming, held_back = _without_corrupt_keys(ctx, table, incoming, shared, on_disk, refusals)
    if held_back:
        pks = [tuple(row[: table.key_count]) for row in incoming.rows]
    # Keys new here go through SQL in sets (`_write_staged`), unless the table
    # needs the row-by-row path: a column the sender lacks (a partial write),
    # a UNIQUE ... ON CONFLICT REPLACE (each row's guard), or a stage too wide.
    staging = (
        STAGING
        and table.sql_apply.stage.fits
        and not lacking
        and not table.replace_guards(ctx.connection)
    )
    merge = _merge_keys(ctx, table, incoming, shared, pks, on_disk, refusals, staging=staging)
    failed, quarantined = _write_user_rows(ctx, table, shared, merge, on_disk, lacking, refusals)
    quarantined += held_back
    applied = _write_shadow_rows(ctx, table, shared, merge, on_disk, failed)
    # A refused key's merge did not happen: it is resolved again on retry.
    recorded = conflicts.record(
        ctx,
        table.spec.name,
        [
            (pk, conflict)
            for pk, listed in merge.found.items()
            if pk not in failed
            for conflict in listed
        ],
    )
    return TableApplied(applied, quarantined, merge.drift_refused, recorded)


OnDisk = dict[Key, tuple[list[SqlValue], str | None, int | None]]


def collected_horizon(ctx: StoreContext, table: str) -> dict[str, int]:
    """Per origin: tombstones of `table` stamped at or below this were collected here."""
    return dict(
        ctx.connection.execute(
            "SELECT site_id, hlc FROM _syncmesh_horizon WHERE table_name = ?", (table,)
        )
    )


def _without_collected(
    ctx: StoreContext,
    table: TableSql,
    incoming: TableRows,
    sent: TableRows | None,
    shared: _Incoming,
    pks: list[Key],
    on_disk: OnDisk,
    horizon: dict[str, int],
) -> tuple[TableRows, TableRows | None, list[Key]]:
    """Leave out rows of keys whose tombstone was collected here (ADR 0015, rule 1).

    A row for a key we hold no shadow row of, whose causal-length stamp is
    at or below the table's horizon for its site, is a state we held (our
    vector covered it) and that lost to a delete whose tombstone we have
    since collected: a peer's batch read before it saw the delete, or a
    repair.  Merging it would bring the deleted row back.  `sent` (the
    rows as sent, aligned with `incoming`'s) loses the same rows.
    """
    at = table.key_count + 1  # cl_hlc, then cl_site (a batch site index)
    kept: list[int] = []
    for index, (pk, row) in enumerate(zip(pks, incoming.rows, strict=True)):
        hlc, site = row[at], row[at + 1]
        if (
            pk not in on_disk
            and isinstance(hlc, int)
            and isinstance(site, int)
            and 0 <= site < len(shared.batch_sites)
            and hlc <= horizon.get(shared.batch_sites[site], 0)
        ):
            continue
        kept.append(index)
    dropped = len(pks) - len(kept)
    if not dropped:
        return incoming, sent, pks
    ctx.connection.execute(
        "UPDATE _syncmesh_lifecycle SET stale_dropped = stale_dropped + ?", (dropped,)
    )
    log.info(
        "%s: dropped %d arriving rows of keys whose delete was collected here",
        table.spec.name,
        dropped,
    )
    kept_incoming = replace(incoming, rows=[incoming.rows[index] for index in kept])
    kept_sent = sent
    if sent is incoming:
        kept_sent = kept_incoming
    elif sent is not None:
        kept_sent = replace(sent, rows=[sent.rows[index] for index in kept])
    return kept_incoming, kept_sent, [pks[index] for index in kept]


class _Refusals:
    """Puts refused rows in the quarantine with the cells their sender wrote, in our names.

    A row mapped to our columns (`_to_local_columns`) holds a default
    cell, with no value, for each column the sender lacks (and for a
    stale cell of a column re-added here); kept like that, its retry would
    write NULL into a column that a new row must take at its DEFAULT.  So
    the entry holds the row as sent, less the cells the mapping already
    dealt with (waiting, discarded), each other cell under our name for its
    column: the retry maps that to the schema of its moment.
    """

    def __init__(
        self, table: TableSql, incoming: TableRows, sent: TableRows, shared: _Incoming
    ) -> None:
        self.table, self.incoming, self.sent, self.shared = table, incoming, sent, shared
        self.as_sent: dict[int, list[SqlValue]] | None = None  # mapped row -> row as sent

    def add(self, ctx: StoreContext, row: list[SqlValue], reason: str | None = None) -> None:
        """Quarantine `row` (of the mapped rows) for `reason`, or for its drift by default."""
        change = self._as_sent(row)
        if reason is None:
            reason = _drift_reason(change, ctx.clock)
        quarantine.add(ctx, change, self.shared.origin, reason, self._created(change))

    def _created(self, change: RowChange) -> dict[str, int] | None:
        """The creation stamp here of each column the entry's cells are of (None: unknown).

        The retry may meet another schema: a column dropped here since, or
        dropped and added again.  Our own stamps of when each column was
        created tell it the old column from the new one, where the cells'
        stamps (another site's clock) could not (`cells_at_or_below`).
        """
        layout = self.table.layout
        if not any(layout.created):
            return None  # a layout from before creation stamps
        created = dict(zip(self.table.values, layout.created, strict=True))
        return {column: created[column] for column in change.state.cells}

    def _as_sent(self, row: list[SqlValue]) -> RowChange:
        if self.sent is self.incoming:
            return _change_of(self.incoming, row, self.shared.batch_sites)
        if self.as_sent is None:
            self.as_sent = {
                id(mapped): original
                for mapped, original in zip(self.incoming.rows, self.sent.rows, strict=True)
            }
        change = _change_of(self.sent, self.as_sent[id(row)], self.shared.batch_sites)
        ours = {
            self.sent.columns[source]: column
            for column, source in zip(
                self.table.values, map_columns(self.table, self.sent).sources, strict=True
            )
            if source is not None
        }
        # Less the cells the mapping found stale (of a column dropped here
        # and added again since they were written): they were discarded.
        head = self.table.key_count + 3
        hlc_here = {
            column: row[head + CELL_FIELDS * index + 1]
            for index, column in enumerate(self.table.values)
        }
        cells = {
            ours[name]: cell
            for name, cell in change.state.cells.items()
            if name in ours and hlc_here[ours[name]] == cell.stamp.hlc
        }
        return RowChange(change.table, change.pk, replace(change.state, cells=cells))


def _without_corrupt_keys(
    ctx: StoreContext,
    table: TableSql,
    incoming: TableRows,
    shared: _Incoming,
    on_disk: OnDisk,
    refusals: _Refusals,
) -> tuple[TableRows, int]:
    """`incoming` without the rows of keys whose shadow row here is corrupt, and how many.

    Another program may have written anything into a shadow row; merging
    with it would fail the whole batch, and every batch after it (issue
    12: one bad row never stops a node).  The peer's rows for such a key
    are quarantined with the reason (which caps the vector below them) and
    retried until a new local write has stamped the row afresh.
    """
    sites_count = len(shared.sites.all_sites())
    corrupt: dict[Key, str] = {}
    for pk, (row, pasts, _digest) in on_disk.items():
        problem = row_problem(row, table.key_count, sites_count) or pasts_problem(
            pasts, sites_count
        )
        if problem is not None:
            corrupt[pk] = (
                f"our shadow row of this key {problem}: write the row again here (delete and"
                " re-insert it, or set every column) so that the capture stamps it afresh"
            )
    if not corrupt:
        return incoming, 0
    kept = []
    for row in incoming.rows:
        reason = corrupt.get(tuple(row[: table.key_count]))
        if reason is None:
            kept.append(row)
        else:
            refusals.add(ctx, row, reason)
    return replace(incoming, rows=kept), len(incoming.rows) - len(kept)


@dataclass(slots=True)
class _KeyMerge:
    """The in-memory result of joining one table's incoming rows with what is held."""

    # Per key: the merged result (a state, or the rows of a new key) and
    # the incoming rows that made it.
    merged: dict[Key, _Merged] = field(default_factory=dict)
    # Keys whose state stays as it is, but whose knowledge grew: an incoming
    # write lost a conflict here.  Their shadow rows keep their seq.
    learned: dict[Key, tuple[RowState, dict[str, Knowledge]]] = field(default_factory=dict)
    found: dict[Key, list[CellConflict]] = field(default_factory=dict)
    drift_refused: int = 0
    # Leaf -> XOR of the digests of the staged rows in it (`_staged_rows`).
    staged_moves: dict[int, int] = field(default_factory=dict)


def _merge_keys(
    ctx: StoreContext,
    table: TableSql,
    incoming: TableRows,
    shared: _Incoming,
    pks: list[Key],
    on_disk: OnDisk,
    refusals: _Refusals,
    *,
    staging: bool = False,
) -> _KeyMerge:
    """Join each incoming row with the key's state so far (on disk, or earlier in the batch).

    With `staging`, a row of a key new here whose cells are all stamped and
    carry no past is left for `_write_staged` (SQL, in sets); other rows of
    new keys are copied out by `TableSql.fast_rows`.
    """
    keys = table.key_count
    batch_sites, ordinals, seq, bound = (
        shared.batch_sites,
        shared.ordinals,
        shared.seq,
        shared.bound,
    )
    # A batch's site indexes as row digests see their sites.
    batch_codes: dict[SqlValue, int] = {None: NO_SITE}
    batch_codes.update((index, site_code(site)) for index, site in enumerate(batch_sites))
    local_sites = shared.sites.all_sites()
    result = _KeyMerge()
    merged_by_key = result.merged
    refused = 0
    observed = 0
    pasts_at = keys + 6  # a cell's past; its stamp two fields before
    cells = len(table.values)
    for pk, row in zip(pks, incoming.rows, strict=True):
        hlcs = row[keys + 4 :: CELL_FIELDS]
        stamps = [row[keys + 1], *hlcs]
        if None in stamps:
            top = max((int(hlc) for hlc in stamps if hlc is not None), default=0)
        else:
            top = int(max(stamps))  # type: ignore[type-var, arg-type]  # the codec's ints
        if top > bound:
            refusals.add(ctx, row)
            refused += 1
            continue
        earlier = merged_by_key.get(pk)
        if earlier is None:
            held = on_disk.get(pk)
            if held is None:
                # Fast path, the common case of a backlog: joined with nothing,
                # the incoming row is the result, written as it came.
                observed = max(observed, top)
                if (
                    staging
                    and row[pasts_at::CELL_FIELDS].count(None) == cells
                    and (row[keys] % 2 == 0 or None not in hlcs)  # type: ignore[operator]
                ):
                    merged_by_key[pk] = _Merged(None, None, None, [row], staged=True)
                    continue
                shadow, user = table.fast_rows(row, ordinals, seq, batch_codes)
                merged_by_key[pk] = _Merged(None, shadow, user, [row])
                continue
            if held_again(row, held[0], keys, ordinals):
                continue  # a duplicate delivery (a relay, a retry): nothing to join
        if _join_held(result, table, incoming, batch_sites, local_sites, on_disk, pk, row):
            observed = max(observed, top)
    if observed:
        # Every row observed passed `bound`: no second reading of the clock.
        ctx.clock.absorb(int(observed))
    result.drift_refused = refused
    return result


def held_again(row: list[SqlValue], held: list[SqlValue], keys: int, ordinals: list[int]) -> bool:
    """Whether incoming `row` is exactly what `held` (our row of its key) already holds.

    A mesh or a chain delivers many rows twice (from their origin and
    through a relay; `bench e2e` counts them), and a retry redelivers a
    whole batch.  Such a row has our causal length and its stamp, and each
    of its cells is ours with the same stamp, the same value (storage
    class and bytes) and no past of its own.  Joining it would change
    nothing and resolve nothing: equal stamps are no conflict and teach
    nothing (`merge.resolve_cells`), and the join keeps our cell (our past,
    if any, is at least the empty one).  So it is passed over without
    building either state.  Anything else, down to a REAL against an
    INTEGER or a cell with a past, takes the full join (`_join_held`).
    `row` names sites by batch index (`ordinals` maps them), `held` by
    ordinal.
    """
    if row[keys] != held[keys] or row[keys + 1] != held[keys + 1]:
        return False
    site = row[keys + 2]
    if (None if site is None else ordinals[site]) != held[keys + 2]:  # type: ignore[index]
        return False
    for at in range(keys + 3, len(row), CELL_FIELDS):
        hlc = row[at + 1]
        if hlc is None:
            continue  # the row carries no cell of this column
        site = row[at + 2]
        if (
            hlc != held[at + 1]
            or site is None
            or ordinals[site] != held[at + 2]  # type: ignore[index]
            or row[at + 3] is not None
            or not _same_value(row[at], held[at])
        ):
            return False
    return True


def _same_value(left: SqlValue, right: SqlValue) -> bool:
    """The same SQLite value: same storage class and equal, -0.0 apart from 0.0."""
    if type(left) is not type(right) or left != right:
        return False
    return not isinstance(left, float) or math.copysign(1.0, left) == math.copysign(1.0, right)  # type: ignore[arg-type]


def _join_held(
    result: _KeyMerge,
    table: TableSql,
    incoming: TableRows,
    batch_sites: tuple[str, ...],
    local_sites: tuple[str, ...],
    on_disk: OnDisk,
    pk: Key,
    row: list[SqlValue],
) -> bool:
    """Join `row` with the state its key has so far (on disk, or earlier in the batch).

    Records the conflicts the join resolves and what it teaches this node
    in `result`; True if the key's state changed.
    """
    merged_by_key, learned, found = result.merged, result.learned, result.found
    earlier = merged_by_key.get(pk)
    if earlier is not None:
        before = earlier.state_or(incoming, batch_sites)
        known = earlier.known
    else:
        disk_row, disk_pasts, _digest = on_disk[pk]
        before = state_of_row(table.shape, disk_row, local_sites)
        known = learned[pk][1] if pk in learned else table.knowledge_of(disk_pasts, local_sites)
    theirs = state_of_row(incoming, row, batch_sites)
    resolved, changed = resolve_cells(before, theirs, known)
    if resolved:
        found.setdefault(pk, []).extend(resolved)
    merged = join_rows(before, theirs)
    # A new life knows nothing of the old one's writes.
    if merged.cl != before.cl:
        known_after: dict[str, Knowledge] = {}
    else:
        # Only non-empty entries: an empty `known` means "nothing to write".
        known_after = (
            {column: k for column, k in {**known, **changed}.items() if k} if changed else known
        )
    if identical_states(merged, before):
        # Already held, or superseded (idempotent redelivery); or a
        # concurrent write that lost here, which we now know of.
        if earlier is not None and known_after != earlier.known:
            # (As a state: a fast-path result has no knowledge columns to set.)
            merged_by_key[pk] = _Merged(before, None, None, earlier.rows, known_after)
        elif earlier is None and changed:
            learned[pk] = (before, known_after)
        return False
    contributors = [*earlier.rows, row] if earlier is not None else [row]
    merged_by_key[pk] = _Merged(merged, None, None, contributors, known_after)
    learned.pop(pk, None)
    return True


def identical_states(left: RowState, right: RowState) -> bool:
    """Equal states whose values also have the same storage class and bytes.

    Python calls 1 and 1.0, or 0.0 and -0.0, equal; SQLite stores them
    apart, and the merge orders them apart, so a winner "equal" to the held
    value must still be written (issue 12, defect 5).
    """
    if left != right:
        return False
    return all(
        value_order_key(cell.value) == value_order_key(right.cells[column].value)
        for column, cell in left.cells.items()
    )


def _write_user_rows(
    ctx: StoreContext,
    table: TableSql,
    shared: _Incoming,
    merge: _KeyMerge,
    on_disk: OnDisk,
    lacking: frozenset[str],
    refusals: _Refusals,
) -> tuple[set[Key], int]:
    """One user-table write per key, from its final state; (keys refused, rows quarantined).

    A key that came twice (deleted, then re-inserted) must not be upserted
    and then deleted.  A key a constraint refuses sends all its incoming
    rows to quarantine.  Only the columns `_written` names are written: a
    column never written in the row's life, or one the sender lacks,
    holds its DEFAULT in a new row and keeps its value in a held one.
    """
    keys = table.key_count
    upserts: list[tuple[Key, list[SqlValue], tuple[str, ...] | None, bool]] = []
    deletes: list[tuple[Key, list[SqlValue]]] = []
    recorded: dict[str, SqlValue] | None = None  # read once, when a new row leaves a column out
    for pk, result in merge.merged.items():
        if result.staged:
            continue  # written in a set, last (`_write_staged`)
        user = result.user_row(table, pk)
        held = on_disk.get(pk)
        held_alive = held is not None and held[0][keys] % 2 == 1  # type: ignore[operator]
        if user is not None:
            stamped = _written(table, result, lacking)
            new_life = held_alive and _new_life(result, held[0][keys])  # type: ignore[index]
            if stamped is not None and new_life:
                # A new life: its unwritten columns start at their DEFAULT.
                deletes.append((pk, list(pk)))
            if stamped is not None and (new_life or not held_alive):
                if recorded is None:
                    recorded = _recorded_defaults(ctx.connection, table)
                stamped = _with_recorded_defaults(table, user, stamped, recorded)
            # Some columns of a row that is there: an UPDATE of them.  (An
            # upsert would not do: SQLite checks NOT NULL on the row it
            # would insert before it sees the conflict, so a partial upsert
            # of a held row with a NOT NULL column it leaves out fails.)
            in_place = stamped is not None and held_alive and not new_life
            if in_place and not stamped:
                continue  # nothing of the held row to write
            upserts.append((pk, user, stamped, in_place))
        elif held_alive:
            deletes.append((pk, list(pk)))
    failed: set[Key] = set()
    quarantined = 0
    # Deletes first: a key change (or a delete and an insert in one
    # transaction) may hand a UNIQUE value from the old row to the new one.
    # Every write is checked (execute.execute_checked): one that SQLite
    # skipped or refused is undone and quarantined, never recorded as done.
    sql = table.sql_apply
    connection = ctx.connection

    def gone(row: Sequence[SqlValue]) -> bool:
        # A delete that changed nothing is done if the row is not there.
        return execute_one(connection, table.sql_capture.exists_sql, row).fetchone() is None

    writes: list[tuple[list[Key], list[tuple[int, str]]]] = [
        (
            [pk for pk, _row in deletes],
            execute_checked(connection, sql.delete_sql, [row for _pk, row in deletes], gone),
        )
    ]
    guards = table.replace_guards(connection)
    by_columns: dict[tuple[tuple[str, ...] | None, bool], list[tuple[Key, list[SqlValue]]]] = {}
    for pk, user, stamped, in_place in upserts:
        by_columns.setdefault((stamped, in_place), []).append((pk, user))
    for (stamped, in_place), group in by_columns.items():
        full_rows = [row for _pk, row in group]
        upsert_sql, rows, keys_only = sql.upsert_sql, full_rows, not table.values
        if stamped is not None:
            values_at = [keys + table.values.index(column) for column in stamped]
            if in_place:
                upsert_sql = _partial_update_sql(table.table, table.spec.pk, stamped)
                positions = [*values_at, *range(keys)]
            else:
                upsert_sql = _partial_upsert_sql(table.table, table.spec.pk, stamped)
                positions = [*range(keys), *values_at]
            rows = [[row[at] for at in positions] for row in full_rows]
            keys_only = not stamped
        writes.append(
            (
                [pk for pk, _row in group],
                _upsert_guarded(connection, upsert_sql, rows, guards, full_rows)
                if guards
                else execute_checked(
                    connection,
                    upsert_sql,
                    rows,
                    _exists_check(table, connection) if keys_only else None,
                ),
            )
        )
    if not _write_staged(ctx, table, shared, merge):
        # A constraint refused one of them, or a write did not take effect:
        # they take the row-by-row path, which finds and quarantines those.
        seq, ordinals = shared.seq, shared.ordinals
        codes: dict[SqlValue, int] = {None: NO_SITE}
        codes.update((index, site_code(site)) for index, site in enumerate(shared.batch_sites))
        group = []
        for pk, result in merge.merged.items():
            if result.staged:
                shadow, user = table.fast_rows(result.rows[0], ordinals, seq, codes)
                merge.merged[pk] = _Merged(None, shadow, user, result.rows)
                if user is not None:
                    group.append((pk, user))
        if group:
            writes.append(
                (
                    [pk for pk, _row in group],
                    execute_checked(connection, sql.upsert_sql, [row for _pk, row in group]),
                )
            )
    for group_keys, failures in writes:
        for index, reason in failures:
            pk = group_keys[index]
            failed.add(pk)
            for row in merge.merged[pk].rows:
                refusals.add(ctx, row, reason)
                quarantined += 1
    return failed, quarantined


def _write_staged(ctx: StoreContext, table: TableSql, shared: _Incoming, merge: _KeyMerge) -> bool:
    """Write the user rows of the staged keys (new here) in one statement; False if undone.

    The rows go to the stage table (sql_apply.StageSql) with one
    `executemany`, then to the user table with one `INSERT ... SELECT`.
    Every write must take effect, as `execute_checked` demands of each:
    the statement's count of rows written must be the count of live rows
    staged.  A constraint's refusal, a trigger's RAISE(IGNORE) or an
    ON CONFLICT IGNORE undoes the statement, and the caller writes the rows
    one by one instead, to find the ones at fault.  The stage keeps the
    rows for `_write_shadow_rows`.
    """
    staged = [result.rows[0] for result in merge.merged.values() if result.staged]
    if not staged:
        return True
    stage = table.sql_apply.stage
    connection = ctx.connection
    connection.execute(stage.create_sql)
    connection.execute(stage.clear_sql)
    execute_many(connection, stage.insert_sql, _staged_rows(table, shared, merge, staged))
    (alive,) = connection.execute(stage.alive_sql).fetchone()
    connection.execute("SAVEPOINT syncmesh_staged")
    try:
        written = connection.execute(stage.user_sql).rowcount
    except sqlite3.IntegrityError as exc:
        require_transaction(connection, exc)
        written = -1
    if written == alive:
        connection.execute("RELEASE syncmesh_staged")
        return True
    connection.execute("ROLLBACK TO syncmesh_staged")
    connection.execute("RELEASE syncmesh_staged")
    connection.execute(stage.clear_sql)
    return False


def _recorded_defaults(connection: sqlite3.Connection, table: TableSql) -> dict[str, SqlValue]:
    """Value columns whose DEFAULT changed since they got their slot, with the old DEFAULT's value.

    A cell never written in a row's life holds the DEFAULT its column was
    added with at every site that had the row then (`TableLayout.defaults`).
    A rebuild since (one that copies columns by name and leaves a DEFAULT
    out, or changes it) would give a row new here another value, unseen by
    digests, which leave default-stamped cells out (found by the long
    convergence state machine: NULL at one site, 0 at two).  A DEFAULT that
    cannot be evaluated alone (it should not happen: ADD COLUMN takes only
    constants) is left to the table.
    """
    known = table.layout.recorded_defaults()
    if known is None:
        return {}
    now = column_defaults(connection, table.spec.name)
    values: dict[str, SqlValue] = {}
    for column, default in known.items():
        if default == now.get(column):
            continue
        if default is None:
            values[column] = None
            continue
        try:
            (values[column],) = connection.execute(f"SELECT {default}").fetchone()
        except sqlite3.Error:
            log.warning(
                "table %r: column %r was added with DEFAULT %s, which does not evaluate alone;"
                " a row new here takes the table's DEFAULT instead",
                table.spec.name,
                column,
                default,
            )
    return values


def _with_recorded_defaults(
    table: TableSql, user: list[SqlValue], stamped: tuple[str, ...], recorded: dict[str, SqlValue]
) -> tuple[str, ...]:
    """`stamped` with the left-out columns whose DEFAULT changed, their values set in `user`."""
    if not recorded:
        return stamped
    keys = table.key_count
    added = []
    for index, column in enumerate(table.values):
        if column in recorded and column not in stamped:
            user[keys + index] = recorded[column]
            added.append(column)
    if not added:
        return stamped
    return tuple(column for column in table.values if column in stamped or column in added)


def _written(table: TableSql, result: _Merged, lacking: frozenset[str]) -> tuple[str, ...] | None:
    """The columns of an alive merged row to write; None when all are (nearly always).

    Left out: a cell without a stamp, never written in this life of the row
    (its column was added after: its DEFAULT), and a column the sender
    lacks (`lacking`, read as the default cell): its value is not the
    sender's to set.  A default cell a sender sent with its value is
    written like any cell (sites may differ in a column's DEFAULT).
    """
    if result.state is None:
        row = result.rows[-1]  # a key new here: the incoming row is the result
        hlcs = row[table.key_count + 4 :: CELL_FIELDS]
        if None not in hlcs and not lacking:
            return None
        return tuple(
            column
            for column, hlc in zip(table.values, hlcs, strict=True)
            if hlc is not None and column not in lacking
        )
    cells = result.state.cells
    if len(cells) == len(table.values) and not lacking:
        return None
    return tuple(column for column in table.values if column in cells and column not in lacking)


def _exists_check(
    table: TableSql, connection: sqlite3.Connection
) -> Callable[[Sequence[SqlValue]], bool]:
    """An upsert of keys only is DO NOTHING: a key already there is written."""
    keys = table.key_count
    return lambda row: (
        execute_one(connection, table.sql_capture.exists_sql, row[:keys]).fetchone() is not None
    )


def _new_life(result: _Merged, held_cl: SqlValue) -> bool:
    """Whether the merged key is in another life of the row than the one held."""
    return result.state is not None and result.state.cl != held_cl


@functools.lru_cache(maxsize=256)
def _partial_upsert_sql(quoted_table: str, pk: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """The upsert of a user row with only `columns` of its values (the others hold no write).

    A new row takes the other columns' DEFAULT; a held row keeps them.
    """
    names = [quote_identifier(column) for column in (*pk, *columns)]
    update = ", ".join(
        f"{quote_identifier(column)} = excluded.{quote_identifier(column)}" for column in columns
    )
    conflict = f"DO UPDATE SET {update}" if update else "DO NOTHING"
    return (
        f"INSERT INTO {quoted_table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT ({', '.join(quote_identifier(column) for column in pk)}) {conflict}"
    )


@functools.lru_cache(maxsize=256)
def _partial_update_sql(quoted_table: str, pk: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """The UPDATE of `columns` of a held user row: its other columns keep their values.

    Parameters: the values of `columns`, then the key.
    """
    assigned = ", ".join(f"{quote_identifier(column)} = ?" for column in columns)
    where = " AND ".join(f"{quote_identifier(column)} IS ?" for column in pk)
    return f"UPDATE {quoted_table} SET {assigned} WHERE {where}"


def _upsert_guarded(
    connection: sqlite3.Connection,
    sql: str,
    rows: list[list[SqlValue]],
    guards: list[tuple[str, tuple[int, ...]]],
    full_rows: list[list[SqlValue]],
) -> list[tuple[int, str]]:
    """Upsert row by row, refusing a row whose UNIQUE value another key holds.

    For a table whose UNIQUE constraint says ON CONFLICT REPLACE: the write
    would delete the other key's row without an error, and `changes()`
    does not count that delete, so the holder is looked for first.
    `full_rows` are `rows` with every value column (the guards' positions).
    """
    failures: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        holder = None
        for query, positions in guards:
            full = full_rows[index]
            holder = execute_one(connection, query, [full[at] for at in positions]).fetchone()
            if holder is not None:
                break
        if holder is not None:
            failures.append(
                (
                    index,
                    "a UNIQUE ... ON CONFLICT REPLACE value is held here by the row"
                    f" {tuple(holder)!r}: writing it would delete that row",
                )
            )
            continue
        failures.extend((index, reason) for _, reason in execute_checked(connection, sql, [row]))
    return failures


def _staged_rows(
    table: TableSql, shared: _Incoming, merge: _KeyMerge, staged: list[list[SqlValue]]
) -> list[list[SqlValue]]:
    """The stage's rows: key hash and digest, then the row as it came; leaves to move.

    The digest is `summary.digest` of the row as its shadow row will hold
    it (`TableSql.fast_rows` computes the same), here in one tight loop:
    hashing is the one per-row step SQL cannot do.  The leaves' moves are
    kept in `merge.staged_moves` until the shadow rows are written.
    """
    keys = table.key_count
    codes: dict[SqlValue, int] = {None: NO_SITE}
    codes.update((index, site_code(site)) for index, site in enumerate(shared.batch_sites))
    code = codes.__getitem__
    moves = merge.staged_moves
    out: list[list[SqlValue]] = []
    for row in staged:
        hashed = key_hash(row[:keys])
        cl, cl_hlc = row[keys], row[keys + 1]
        fields = [hashed, cl, NO_STAMP if cl_hlc is None else cl_hlc, code(row[keys + 2])]
        if cl % 2 == 1:  # type: ignore[operator]
            hlcs, sites = row[keys + 4 :: CELL_FIELDS], row[keys + 5 :: CELL_FIELDS]
            if hlcs and hlcs[-1] == DEFAULT_CELL_HLC:
                hlcs, sites = trim_default_cells(hlcs, sites)  # type: ignore[assignment]
            fields += hlcs
            fields += map(code, sites)
        digest = fields_digest(fields)  # type: ignore[arg-type]
        leaf = hashed & LEAF_MASK
        moves[leaf] = moves.get(leaf, 0) ^ digest
        out.append([hashed, digest, *row])
    return out


def _write_shadow_rows(
    ctx: StoreContext,
    table: TableSql,
    shared: _Incoming,
    merge: _KeyMerge,
    on_disk: OnDisk,
    failed: set[Key],
) -> int:
    """Write the merged keys' shadow rows (and the knowledge learned); returns rows written.

    Each written row moves its leaf of the hash tree by old ^ new digest.
    """
    shadow_rows = []
    hash_at = table.key_count + 4  # the shadow row's key hash, then its digest (shadow_columns)
    moved: dict[int, int] = {}  # leaf -> XOR of its rows' old ^ new digests
    staged = 0
    for pk, result in merge.merged.items():
        if pk in failed:
            continue
        if result.staged:
            staged += 1
            continue
        shadow = result.shadow_row(table, pk, shared.seq, shared.sites)
        shadow_rows.append(shadow)
        old = on_disk[pk][2] if pk in on_disk else None
        leaf = shadow[hash_at] & LEAF_MASK  # type: ignore[operator]
        moved[leaf] = moved.get(leaf, 0) ^ (old or 0) ^ shadow[hash_at + 1]  # type: ignore[operator]
    for leaf, delta in moved.items():
        ctx.summaries.note(table.spec.name, leaf, delta)
    table.write_shadow(ctx.connection, shadow_rows)
    if staged:
        # The staged keys' rows, from the stage `_write_staged` filled; their
        # leaves of the hash tree move by the digests `_staged_rows` computed.
        ctx.connection.execute(
            table.sql_apply.stage.shadow_sql(tuple(shared.ordinals)), {"seq": shared.seq}
        )
        for leaf, delta in merge.staged_moves.items():
            ctx.summaries.note(table.spec.name, leaf, delta)
        ctx.connection.execute(table.sql_apply.stage.clear_sql)
    execute_many(
        ctx.connection,
        table.sql_apply.knowledge_sql,
        [
            table.knowledge_row(pk, state, known, shared.sites)
            for pk, (state, known) in merge.learned.items()
        ],
    )
    return len(shadow_rows) + staged


@dataclass(slots=True)
class _Merged:
    """The merge result for one key of a batch: a state, or the rows of a new key."""

    state: RowState | None  # None: a key new here, merged on the fast path
    shadow: list[SqlValue] | None
    user: list[SqlValue] | None
    rows: list[list[SqlValue]]  # the incoming rows that made it
    known: dict[str, Knowledge] = field(default_factory=dict)  # beyond the cells' pasts
    staged: bool = False  # a key new here, left to `_write_staged` (rows[0] is it)

    def state_or(self, incoming: TableRows, sites: tuple[str, ...]) -> RowState:
        if self.state is not None:
            return self.state
        return state_of_row(incoming, self.rows[-1], sites)

    def user_row(self, table: TableSql, pk: tuple[SqlValue, ...]) -> list[SqlValue] | None:
        if self.state is None:
            return self.user
        return table.user_row(pk, self.state) if self.state.alive else None

    def shadow_row(
        self, table: TableSql, pk: tuple[SqlValue, ...], seq: int, sites: SiteMap
    ) -> list[SqlValue]:
        if self.state is None:
            assert self.shadow is not None
            return self.shadow
        return table.shadow_row(pk, self.state, seq, sites, self.known)


def _to_local_columns(
    ctx: StoreContext, table: TableSql, incoming: TableRows, shared: _Incoming
) -> tuple[TableRows, frozenset[str]]:
    """`incoming` in our columns, and those of ours the sender lacks (default cells).

    Cells of columns not here are kept as waiting cells (`waitlist`);
    cells of columns dropped here, and cells of a re-added column stamped
    before it was created here, are discarded and counted.
    """
    spec, values, keys = table.spec, table.values, table.key_count
    mapping = map_columns(table, incoming)
    generations = incoming.generations or (0,) * len(incoming.columns)
    newer = [
        index
        for index in range(len(incoming.columns))
        if newer_than_ours(
            table,
            mapping,
            index,
            generations[index],
            incoming.created[index] if incoming.created else None,
        )
    ]
    if newer:
        # A later column of a name than ours: parked, and ours reads as lacking it.
        mapping = replace(
            mapping,
            sources=tuple(None if source in newer else source for source in mapping.sources),
        )
    head = keys + 3
    former = incoming.former or ((),) * len(incoming.columns)
    waiting: list[waitlist.WaitingCell] = []
    parked: list[waitlist.WaitingCell] = []
    for index in (*mapping.waiting, *mapping.dropped, *newer):
        at = head + CELL_FIELDS * index
        names = (incoming.columns[index], *former[index])
        # A name dropped here: cells stamped after the drop may be of the
        # column added again at their sender, and are parked; older ones
        # are of the dropped column, and discarded.
        dropped_at = (
            cells_at_or_below(
                incoming, index, last_drop_here(table, names), drops_here(table, names)
            )
            if index in mapping.dropped
            else 0
            if index in newer
            else None
        )
        one = TableRows(incoming.table, (incoming.columns[index],), keys, [])
        discarded = 0
        for row in incoming.rows:
            hlc = row[at + 1]
            if hlc is None or hlc == DEFAULT_CELL_HLC:
                continue  # nothing written: the column's default, here too once added
            if dropped_at is not None and hlc <= dropped_at:  # type: ignore[operator]
                discarded += 1
                continue
            state = state_of_row(
                one, [*row[:head], *row[at : at + CELL_FIELDS]], shared.batch_sites
            )
            cell = waitlist.WaitingCell(
                spec.name,
                incoming.columns[index],
                former[index],
                RowChange(spec.name, tuple(row[:keys]), state),
                shared.origin,
                generations[index] if dropped_at is not None else 0,
            )
            (waiting if dropped_at is None else parked).append(cell)
        waitlist.discard(ctx, spec.name, incoming.columns[index], discarded)
    waitlist.add(ctx, waiting)
    waitlist.add(ctx, parked, parked=True)
    # A column the sender lacks was never written there: the cell a site
    # that adds the column gives every row (ddl.DEFAULT_CELL_SITE).  It
    # loses to any write, ties with the same cell held here, and is not
    # written to the user row (`_stamped`): a new row takes the DEFAULT.
    absent: list[SqlValue] = [
        None,
        DEFAULT_CELL_HLC,
        shared.batch_sites.index(DEFAULT_CELL_SITE),
        None,
    ]
    sources = [
        (None, 0)
        if source is None
        else (
            head + CELL_FIELDS * source,
            cells_at_or_below(
                incoming,
                source,
                stale_at_or_below(table, column),
                table.layout.generation_of(column),
            ),
        )
        for column, source in zip(values, mapping.sources, strict=True)
    ]
    stale_cells = dict.fromkeys(values, 0)
    rows: list[list[SqlValue]] = []
    for row in incoming.rows:
        local = row[:head]
        for (start, stale), column in zip(sources, values, strict=True):
            if start is None:
                local.extend(absent)
                continue
            hlc = row[start + 1]
            if stale and hlc is not None and hlc <= stale:  # type: ignore[operator]
                stale_cells[column] += 1
                local.extend(absent)
            else:
                local.extend(row[start : start + CELL_FIELDS])
        rows.append(local)
    for column, cells in stale_cells.items():
        waitlist.discard(ctx, spec.name, column, cells)
    lacking = frozenset(
        column for column, source in zip(values, mapping.sources, strict=True) if source is None
    )
    return TableRows(spec.name, values, keys, rows), lacking


def _change_of(table: TableRows, row: list[SqlValue], sites: tuple[str, ...]) -> RowChange:
    return RowChange(table.table, tuple(row[: table.key_count]), state_of_row(table, row, sites))


def _drift_reason(change: RowChange, clock: HybridClock) -> str:
    for stamp in stamps(change.state):
        try:
            clock.check(stamp.hlc, stamp.site_id)
        except ClockDriftError as exc:
            return str(exc)
    return "a stamp lies beyond the allowed clock drift"
