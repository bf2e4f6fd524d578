"""Which tables are synced: starting to track a table, and noticing it was altered.

Owns `track` (the shadow table, log table and triggers of a new tracked
table, and the backfill that puts its existing rows in the feed) and
`schema_problems` (tracked tables changed by ALTER TABLE since).
`SqliteStore.track` and `SqliteStore.schema_problems` delegate here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection

from syncmesh.errors import SchemaError
from syncmesh.model import SqlValue, TableSpec
from syncmesh.store.base import TrackProgress
from syncmesh.store.sqlite import integer_keys, vector
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import capture_triggers, log_ddl, shadow_ddl
from syncmesh.store.sqlite.introspect import (
    allocated_key,
    apply_warnings,
    read_table_spec,
    refuse_allocated_keys,
    refuse_key_collations,
    table_warnings,
    unique_column_sets,
)
from syncmesh.store.sqlite.table import TableSql

log = logging.getLogger(__name__)

BACKFILL_ROWS_PER_SEQ = 1_000  # existing rows join the feed in groups of this size
BACKFILL_ROWS_PER_STEP = 50 * BACKFILL_ROWS_PER_SEQ  # rows per statement: a progress report each


def schema_problems(ctx: StoreContext) -> list[str]:
    """`SqliteStore.schema_problems`: see there."""
    ctx.require_init()
    version = int(ctx.connection.execute("PRAGMA schema_version").fetchone()[0])
    if version == ctx.schema_version:
        return list(ctx.schema_problems)
    problems = []
    for name, table in ctx.tables.items():
        try:
            now = read_table_spec(ctx.connection, name)
        except SchemaError as exc:
            problems.append(f"table {name!r} can no longer be synced: {exc}")
            continue
        if now.columns != table.spec.columns or now.pk != table.spec.pk:
            added = [c for c in now.columns if c not in table.spec.columns]
            gone = [c for c in table.spec.columns if c not in now.columns]
            problems.append(
                f"table {name!r} was altered after it was tracked (columns added: {added},"
                f" removed or renamed: {gone}); only the tracked columns are synced, and"
                " changing a tracked table's columns is not supported yet"
            )
        missing = _missing_triggers(ctx, name)
        if missing:
            problems.append(
                f"table {name!r} has lost its capture triggers ({', '.join(missing)}):"
                " writes to it are not captured or synced; `syncmesh track` the table"
                " again to restore them (rows written meanwhile sync once written again)"
            )
    ctx.schema_version, ctx.schema_problems = version, problems
    return list(problems)


CAPTURE_TRIGGER_KINDS = ("insert", "update", "delete")  # every tracked table has these three


def _missing_triggers(ctx: StoreContext, table: str) -> list[str]:
    """Which of `table`'s capture triggers are gone (DROP TRIGGER, a tool that rebuilt it)."""
    present = {
        row[0]
        for row in ctx.connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        )
    }
    return [
        f"_syncmesh_{kind}_{table}"
        for kind in CAPTURE_TRIGGER_KINDS
        if f"_syncmesh_{kind}_{table}" not in present
    ]


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
    with ctx.transaction():
        for name in names:
            spec = read_table_spec(ctx.connection, name)
            existing = ctx.tables.get(name)
            if existing is not None:
                if existing.spec != spec:
                    raise SchemaError(
                        f"table {name!r} changed since it was tracked; changing a tracked"
                        " table's columns is not supported yet"
                    )
                # Unchanged: put back capture triggers that were dropped (IF NOT EXISTS).
                unique = unique_column_sets(ctx.connection, name)
                for statement in capture_triggers(spec, unique):
                    ctx.connection.execute(statement)
                _record_integer_key_opt_in(ctx, spec, allow_integer_keys)
                continue
            refuse_key_collations(ctx.connection, spec)
            refuse_allocated_keys(ctx.connection, spec, allow_integer_keys, ctx.path)
            warnings.extend(table_warnings(ctx.connection, spec))
            create_tracking(ctx, spec, progress)
            _record_integer_key_opt_in(ctx, spec, allow_integer_keys)
        ctx.connection.execute("UPDATE _syncmesh_state SET tables_version = tables_version + 1")
    ctx.load()
    return warnings


def _record_integer_key_opt_in(
    ctx: StoreContext, spec: TableSpec, allowed: Collection[str]
) -> None:
    """Keep the user's opt-in for a table whose keys SQLite allocates (integer_keys.py)."""
    if spec.name in allowed and allocated_key(ctx.connection, spec) is not None:
        integer_keys.record_allowed(ctx.connection, spec.name)


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
    unique = unique_column_sets(ctx.connection, spec.name)
    for statement in [*shadow_ddl(spec), log_ddl(spec), *capture_triggers(spec, unique)]:
        ctx.connection.execute(statement)
    table = TableSql(spec)
    # Seqs are HLC values (see capture.capture_pending); the backfill takes one per chunk.
    ctx.catch_up_clock()
    hlc = ctx.clock.tick()
    rows = _backfill(ctx, table, hlc, progress)
    top = ctx.connection.execute(f"SELECT max(seq) FROM {table.shadow}").fetchone()[0]
    head = max(hlc, int(top or 0))
    ctx.clock.restore(head)
    ctx.connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (head, head))
    vector.set_own(ctx, hlc)
    ctx.connection.execute(
        "INSERT INTO _syncmesh_tables (name, spec) VALUES (?, ?)",
        (
            spec.name,
            json.dumps({"columns": spec.columns, "types": spec.declared_types, "pk": spec.pk}),
        ),
    )
    log.info("tracking table %s (%d existing rows)", spec.name, rows)


def check_tracked_tables(ctx: StoreContext) -> None:
    """Log what `track` would warn about the tracked tables today (at open).

    Tables tracked before these checks existed (issue 12) get them too;
    a table that is gone or altered is `schema_problems`' to report.
    """
    for table in ctx.tables.values():
        try:
            warnings = apply_warnings(ctx.connection, table.spec)
        except sqlite3.Error:
            continue
        for warning in warnings:
            log.warning("tracked %s", warning)
    for warning in integer_keys.warnings(ctx):
        log.warning("tracked %s", warning)
