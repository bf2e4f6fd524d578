"""Which tables are synced: starting and stopping to track a table, and its problems.

Owns `track` (the shadow table, log table and triggers of a new tracked
table, and the backfill that puts its existing rows in the feed; a tracked
table again: reconcile it), `untrack`, and `schema_problems` (tracked
tables that cannot be synced, or whose DDL is not reconciled yet; the
reconcile itself is reconcile.py).  `SqliteStore.track`, `untrack` and
`schema_problems` delegate here.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from dataclasses import replace

from syncmesh.errors import SchemaError
from syncmesh.model import SqlValue, TableSpec
from syncmesh.store.base import TrackProgress
from syncmesh.store.sqlite import integer_keys, reconcile, vector
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import (
    ESSENTIAL_TRIGGER_KINDS,
    LEGACY_UPDATE_TRIGGER_KIND,
    capture_triggers,
    drop_trigger_sql,
    log_ddl,
    log_name,
    quote_identifier,
    shadow_columns,
    shadow_ddl,
    shadow_name,
    trigger_name,
    update_trigger_kind,
    width_problem,
)
from syncmesh.store.sqlite.introspect import (
    allocated_key,
    apply_warnings,
    column_defaults,
    read_table_spec,
    refuse_allocated_keys,
    refuse_key_collations,
    refuse_untyped_keys,
    table_warnings,
)
from syncmesh.store.sqlite.layout import TableLayout
from syncmesh.store.sqlite.table import TableSql

log = logging.getLogger(__name__)

BACKFILL_ROWS_PER_SEQ = 1_000  # existing rows join the feed in groups of this size
BACKFILL_ROWS_PER_STEP = 50 * BACKFILL_ROWS_PER_SEQ  # rows per statement: a progress report each


def schema_problems(ctx: StoreContext) -> list[str]:
    """`SqliteStore.schema_problems`: see there."""
    ctx.require_init()
    version = reconcile.schema_version(ctx)
    if version == ctx.schema_version:
        return list(ctx.schema_problems)
    problems = []
    layouts = [table.layout for table in ctx.tables.values()] + list(ctx.unsynced.values())
    for layout in layouts:
        plan = reconcile.plan_table(ctx.connection, layout)
        if plan.problem is not None:
            problems.append(plan.problem)
            continue
        shown = plan.now_name or layout.name
        fix = (
            f"a running node catches up within a moment; otherwise run `syncmesh track DB {shown}`"
        )
        missing = sorted(set(capture_triggers(layout)) - set(plan.triggers))
        if missing and not plan.table_renamed:
            problems.append(
                f"table {shown!r} has lost its capture triggers ({', '.join(missing)}):"
                f" writes to it are not captured until they are back ({fix}; rows"
                " inserted or deleted meanwhile are caught up then)"
            )
        altered = [line for line in plan.changes() if "capture triggers" not in line]
        if altered:
            problems.append(
                f"table {shown!r} was altered after it was tracked ({'; '.join(altered)})"
                f" and syncmesh has not caught up with it yet: {fix}"
            )
    ctx.schema_version, ctx.schema_problems = version, problems
    return list(problems)


def track(
    ctx: StoreContext,
    names: list[str],
    progress: TrackProgress | None = None,
    *,
    allow_integer_keys: Collection[str] = (),
) -> list[str]:
    """`SqliteStore.track`: see there."""
    ctx.require_init()
    warnings: list[str] = []
    try:
        _track_in_transaction(ctx, names, warnings, progress, allow_integer_keys)
    finally:
        ctx.load()  # what the file holds now, committed or rolled back
    ctx.reconciled_version = -1  # the next reconcile looks again
    return warnings


def _track_in_transaction(
    ctx: StoreContext,
    names: list[str],
    warnings: list[str],
    progress: TrackProgress | None,
    allow_integer_keys: Collection[str],
) -> None:
    with ctx.transaction():
        if ctx.tables or ctx.unsynced:
            # DDL first: a tracked table again is brought in line with it, and a
            # renamed one is tracked under its new name (not tracked twice).
            reconcile.reconcile_in_transaction(ctx)
        for name in names:
            layout = ctx.unsynced.get(name)
            if layout is not None:
                problem = reconcile.plan_table(ctx.connection, layout).problem
                raise SchemaError(problem or f"table {name!r} cannot be synced")
        tracked = {*ctx.tables, *ctx.unsynced}
        # Every table is checked before any is backfilled: one that cannot be
        # synced refuses the whole command before a progress line says that
        # another one's rows joined the feed (they would not have: the
        # transaction rolls back).
        new_specs = []
        for name in dict.fromkeys(names):
            if name in tracked:
                continue
            spec = read_table_spec(ctx.connection, name)
            refuse_key_collations(ctx.connection, spec)
            refuse_untyped_keys(spec)
            refuse_allocated_keys(ctx.connection, spec, allow_integer_keys, ctx.path)
            width = len(shadow_columns(TableLayout.fresh(spec)))
            too_wide = width_problem(
                ctx.connection, name, len(spec.value_columns), len(spec.pk), width
            )
            if too_wide is not None:
                raise SchemaError(too_wide)
            new_specs.append(spec)
        for name in names:
            if name in tracked:
                _record_integer_key_opt_in(ctx, ctx.tables[name].spec, allow_integer_keys)
        for spec in new_specs:
            warnings.extend(table_warnings(ctx.connection, spec))
            create_tracking(ctx, spec, progress)
            _record_integer_key_opt_in(ctx, spec, allow_integer_keys)
        if new_specs:
            forget_peer_claims(ctx)
        ctx.connection.execute("UPDATE _syncmesh_state SET tables_version = tables_version + 1")


def _record_integer_key_opt_in(
    ctx: StoreContext, spec: TableSpec, allowed: Collection[str]
) -> None:
    """Keep the user's opt-in for a table whose keys SQLite allocates (integer_keys.py)."""
    if spec.name in allowed and allocated_key(ctx.connection, spec) is not None:
        integer_keys.record_allowed(ctx.connection, spec.name)


def forget_peer_claims(ctx: StoreContext) -> None:
    """Sync everything once more: a node that gains a table cannot trust its claims.

    Its vector entries for other sites say which of their writes it holds,
    but it held none of the new table's rows (ADR 0013): a peer filtering by
    them would never send those rows.  So the entries of other sites go,
    and every peer's feed is read again from the start (the merge is
    idempotent: what is held already changes nothing).
    """
    ctx.connection.execute("UPDATE _syncmesh_peers SET cursor = 0")
    ctx.connection.execute("DELETE FROM _syncmesh_vector WHERE site_id <> ?", (ctx.site_id(),))


def untrack(ctx: StoreContext, names: list[str]) -> None:
    """`SqliteStore.untrack`: see there."""
    ctx.require_init()
    known = {**{name: t.layout for name, t in ctx.tables.items()}, **ctx.unsynced}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SchemaError(f"not tracked, so not untracked: {', '.join(map(repr, unknown))}")
    connection = ctx.connection
    with ctx.transaction():
        for name in names:
            layout = known[name]
            # By name, wherever they are: a table renamed over this one's name
            # carries its own triggers, which stay.
            kinds = [
                *ESSENTIAL_TRIGGER_KINDS,
                LEGACY_UPDATE_TRIGGER_KIND,
                "replace_insert",
                "replace_update",
                *(update_trigger_kind(slot) for slot in range(layout.next_slot)),
            ]
            for kind in kinds:
                connection.execute(drop_trigger_sql(trigger_name(name, kind)))
            for table in (shadow_name(name), log_name(name)):
                connection.execute(f"DROP TABLE IF EXISTS {quote_identifier(table)}")
            connection.execute("DELETE FROM _syncmesh_tables WHERE name = ?", (name,))
            # Its shadow rows are gone: nothing of it was collected (ADR 0015, rule 1).
            connection.execute("DELETE FROM _syncmesh_horizon WHERE table_name = ?", (name,))
            ctx.unsynced.pop(name, None)
            log.info("untracked table %s", name)
        connection.execute("UPDATE _syncmesh_state SET tables_version = tables_version + 1")
    ctx.load()
    ctx.schema_version = -1


def _backfill(ctx: StoreContext, table: TableSql, hlc: int, progress: TrackProgress | None) -> int:
    """Put the table's existing rows in the feed, in key order; returns how many.

    One statement per `BACKFILL_ROWS_PER_STEP` rows, all in the caller's
    transaction (tracking stays all or nothing), reporting progress after
    each step.  Rows with a NULL key value are left out: no other node
    could address them (docs/keys.md).
    """
    connection = ctx.connection
    name = table.spec.name
    total = int(connection.execute(f"SELECT count(*) FROM {table.table}").fetchone()[0])
    if progress is not None:
        progress(name, 0, total)
    done = 0
    lower: dict[str, SqlValue] = {}
    while True:
        params: dict[str, SqlValue] = {
            "hlc": hlc,
            "base": hlc + done // BACKFILL_ROWS_PER_SEQ,
            "chunk": BACKFILL_ROWS_PER_SEQ,
            **lower,
        }
        boundary = connection.execute(
            table.sql_capture.backfill_boundary_sql(lower=bool(lower)),
            {**lower, "step": BACKFILL_ROWS_PER_STEP},
        ).fetchone()
        upper = {} if boundary is None else {f"u{i}": v for i, v in enumerate(boundary)}
        sql = table.sql_capture.backfill_step_sql(lower=bool(lower), upper=bool(upper))
        done += max(connection.execute(sql, {**params, **upper}).rowcount, 0)
        if boundary is None:
            break
        if progress is not None:
            progress(name, done, total)
        lower = {f"l{i}": v for i, v in enumerate(boundary)}
    if progress is not None:
        progress(name, done, done)  # the last call: done (rows already shadowed are skipped)
    return done


def create_tracking(ctx: StoreContext, spec: TableSpec, progress: TrackProgress | None) -> None:
    layout = TableLayout.fresh(spec)
    for statement in [*shadow_ddl(layout), log_ddl(spec)]:
        ctx.connection.execute(statement)
    reconcile.sync_triggers(
        ctx.connection, layout, reconcile.existing_triggers(ctx.connection, spec.name)
    )
    table = TableSql(layout)
    # Seqs are HLC values (see capture.capture_pending); the backfill takes one per chunk.
    ctx.catch_up_clock()
    hlc = ctx.clock.tick()
    rows = _backfill(ctx, table, hlc, progress)
    top = ctx.connection.execute(f"SELECT max(seq) FROM {table.shadow}").fetchone()[0]
    head = max(hlc, int(top or 0))
    ctx.clock.restore(head)
    ctx.connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (head, head))
    vector.set_own(ctx, hlc)
    # Its columns are created now (`TableLayout.created`), with today's DEFAULTs.
    defaults = column_defaults(ctx.connection, spec.name)
    layout = replace(
        layout,
        created=(hlc,) * len(layout.slots),
        defaults=tuple(defaults.get(column) for column in spec.value_columns),
    )
    ctx.connection.execute(
        "INSERT INTO _syncmesh_tables (name, spec) VALUES (?, ?)", (spec.name, layout.to_json())
    )
    log.info("tracking table %s (%d existing rows)", spec.name, rows)


def tracked_table_warnings(ctx: StoreContext) -> list[str]:
    """What `track` would warn about the tracked tables today, each once, "tracked table ...".

    Tables tracked before these checks existed (issue 12) get them too;
    a table that is gone or altered is `schema_problems`' to report.  Not
    logged at open: every read-only command (`status`, `verify`) opened the
    store and repeated them (new-user report); `serve` logs them at start.
    """
    found: list[str] = []
    for table in ctx.tables.values():
        try:
            found.extend(apply_warnings(ctx.connection, table.spec))
        except sqlite3.Error:
            continue
    found.extend(integer_keys.warnings(ctx))
    return [f"tracked {warning}" for warning in dict.fromkeys(found)]
