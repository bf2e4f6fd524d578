"""Reconciling the store with DDL that any tool ran on tracked tables (ADR 0013).

SQLite has no DDL hook, so the engine notices DDL after it committed, by
`PRAGMA schema_version`, and brings its bookkeeping in line in one
transaction (`reconcile_schema`, called by the node's capture loop):

- the pending log is captured with the old definition first, so writes
  made before the DDL keep their stamps;
- RENAME TABLE: the capture triggers moved with the table (SQLite moves
  them), so their `tbl_name` names the new table; the shadow and log tables
  are renamed with it and the old name is kept as a former name;
- a value column's identity is its *slot* (layout.py).  Its `AFTER UPDATE
  OF c` trigger is named after the slot, and RENAME COLUMN rewrites the
  column in the trigger's header: so the header says what the slot's
  column is called now (a rename), or names a column that is gone (a
  drop).  Without the trigger (a rebuild dropped it) columns are matched
  by name;
- ADD COLUMN gets a new slot.  Existing rows hold the column's default,
  which nobody wrote: their cells read the default stamp (ddl.DEFAULT_CELL_HLC,
  the same at every site; the shadow column's DEFAULT, so no row is
  rewritten) and are not sent again; rows whose value differs
  from the default (written before the column's trigger existed) are
  stamped as local writes;
- a table rebuild (create, copy, drop, rename: Django, Alembic batch mode,
  sqlite-utils `transform`) drops the triggers: they are put back, and a
  catch-up compare of the table's keys with its shadow rows captures rows
  inserted or deleted meanwhile.  Rows updated meanwhile (by another
  connection, between the rebuild's commit and the reinstall) keep their
  key, so the keys cannot show them: each shadow row keeps a fingerprint
  per cell of the values as the engine last stamped or applied them
  (`vf`, functions.values_fingerprint), and a cell whose value no longer
  matches was written meanwhile: it is logged as an update of that cell.
  A row the rebuild copied matches, also when the rebuild dropped another
  of its columns.  A rebuild matches columns by name, so a column it
  renamed reads as dropped and added: `recognise_renames` tells it by its
  values (they match the dropped column's fingerprints row by row);
- CREATE/DROP INDEX: the REPLACE checks follow the UNIQUE indexes.

A table that cannot be reconciled (gone, key changed, unreadable) leaves
the synced set (`StoreContext.unsynced`) with its problem and fix in
`schema_problems`, and comes back once it reads right again.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass, field, replace

from syncmesh.errors import SchemaError
from syncmesh.model import SqlValue, TableSpec
from syncmesh.store.sqlite import capture, waiting
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import (
    ALL_COLUMNS,
    DEFAULT_CELL_SITE,
    ESSENTIAL_TRIGGER_KINDS,
    EXISTING_TRIGGERS_SQL,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE,
    VALUES_FP_COLUMN,
    capture_triggers,
    drop_trigger_sql,
    log_name,
    quote_identifier,
    shadow_name,
    shadow_seq_index_ddl,
    shadow_seq_index_name,
    shadow_slot_ddl,
    slot_mask,
    trigger_name,
    update_trigger_kind,
    width_problem,
)
from syncmesh.store.sqlite.execute import execute_many
from syncmesh.store.sqlite.functions import (
    CELL_FP_BYTES,
    CELL_FP_FUNCTION,
    VALUES_FP_CHANGES_FUNCTION,
    cell_segment_sql,
    cells_text_sql,
    values_fp_sql,
    whole_row_text_sql,
)
from syncmesh.store.sqlite.introspect import column_defaults, read_table_spec, unique_column_sets
from syncmesh.store.sqlite.layout import DroppedColumn, TableLayout
from syncmesh.store.sqlite.table import TableSql

log = logging.getLogger(__name__)

_UPDATE_OF = re.compile(r'\bUPDATE\s+OF\s+("(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|[^\s,]+)\s+ON\s', re.I)


def _unquoted(token: str) -> str:
    if token[:1] == '"':
        return token[1:-1].replace('""', '"')
    if token[:1] in "`[":
        return token[1:-1]
    return token


@dataclass(slots=True)
class TablePlan:
    """What happened to one tracked table since the store last looked, and what to do."""

    layout: TableLayout  # as stored
    now_name: str | None = None  # where the table is now (None: gone)
    spec: TableSpec | None = None  # its definition now
    problem: str | None = None  # why it cannot be reconciled (then nothing else is set)
    triggers: dict[str, str] = field(default_factory=dict)  # its capture triggers now
    triggers_lost: bool = False  # an insert, key or delete trigger is gone: catch up
    slot_columns: dict[int, str] = field(default_factory=dict)  # slot -> its column now
    added: list[str] = field(default_factory=list)  # value columns with no slot yet
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (old, new) columns
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (name, slot)
    # New names of columns a rebuild renamed, recognised by their values (recognise_renames)
    recognised: list[str] = field(default_factory=list)
    defaults: dict[str, str | None] = field(default_factory=dict)  # each column's DEFAULT now

    @property
    def table_renamed(self) -> bool:
        return self.now_name is not None and self.now_name != self.layout.name

    @property
    def renamed_layout(self) -> TableLayout:
        """The stored layout under the table's name now (RENAME TABLE), columns as they were."""
        if self.now_name is None or self.now_name == self.layout.name:
            return self.layout
        return self.layout.renamed(self.now_name)

    @property
    def columns_changed(self) -> bool:
        return bool(self.added or self.renamed or self.dropped)

    def changes(self) -> list[str]:
        """The changes, in words, one per line (for the log and `schema_problems`)."""
        name = self.layout.name
        lines = []
        if self.table_renamed:
            lines.append(f"table {name!r} renamed to {self.now_name!r}")
        shown = self.now_name or name
        lines += [f"table {shown!r}: column {c!r} added" for c in self.added]
        lines += [
            f"table {shown!r}: column {a!r} renamed to {b!r}"
            + (" (in a table rebuild: recognised by its values)" if b in self.recognised else "")
            for a, b in self.renamed
        ]
        lines += [f"table {shown!r}: column {c!r} dropped" for c, _slot in self.dropped]
        if self.triggers_lost:
            lines.append(
                f"table {shown!r}: capture triggers were gone (a table rebuild, or dropped):"
                " put back, rows inserted, updated or deleted meanwhile caught up"
            )
        return lines


def current_name(connection: sqlite3.Connection, layout: TableLayout) -> str | None:
    """Where the tracked table is now: its name, a new name (RENAME TABLE), or None (gone).

    SQLite moves a table's triggers with it on RENAME TABLE, so the table
    our insert trigger (or any other capture trigger) sits on is the table.
    """
    for kind in (*ESSENTIAL_TRIGGER_KINDS, *(update_trigger_kind(s) for s in layout.slots)):
        row = connection.execute(
            "SELECT tbl_name FROM sqlite_schema WHERE type = 'trigger' AND name = ?",
            (trigger_name(layout.name, kind),),
        ).fetchone()
        if row is not None:
            return str(row[0])
    row = connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (layout.name,)
    ).fetchone()
    if row is None:
        return None
    # A table of this name that carries another tracked table's insert trigger is
    # that table, renamed over this one's name (DROP TABLE u; ALTER TABLE t RENAME
    # TO u): this one is gone.
    others = connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?"
        " AND name LIKE '\\_syncmesh\\_insert\\_%' ESCAPE '\\'",
        (layout.name,),
    ).fetchone()
    return None if others is not None else layout.name


def tracked_elsewhere(connection: sqlite3.Connection, name: str) -> bool:
    """Whether `name` is the name of a tracked table (its bookkeeping row exists)."""
    row = connection.execute("SELECT 1 FROM _syncmesh_tables WHERE name = ?", (name,)).fetchone()
    return row is not None


def plan_table(connection: sqlite3.Connection, layout: TableLayout) -> TablePlan:
    """Read what became of `layout`'s table (read-only)."""
    plan = TablePlan(layout)
    name = layout.name
    now = current_name(connection, layout)
    if now is None:
        plan.problem = (
            f"table {name!r} is tracked but no longer exists, so nothing of it is synced;"
            f" create it again (or rename it back), or `syncmesh untrack DB {name}`"
        )
        return plan
    plan.now_name = now
    try:
        spec = read_table_spec(connection, now)
    except SchemaError as exc:
        plan.problem = f"table {name!r} can no longer be synced: {exc}"
        return plan
    if spec.pk != layout.spec.pk:
        plan.problem = (
            f"table {now!r}: its primary key changed from {list(layout.spec.pk)} to"
            f" {list(spec.pk)}; syncmesh merges rows by key, so it cannot carry the table's"
            f" history over.  `syncmesh untrack DB {now}`, then `syncmesh track DB {now}`"
            " (its rows are synced again under the new key)"
        )
        return plan
    plan.spec = spec
    plan.defaults = column_defaults(connection, now)
    if now != name and tracked_elsewhere(connection, now):
        plan.problem = (
            f"table {name!r} was renamed to {now!r}, the name of another tracked table"
            f" that is gone; `syncmesh untrack DB {now}` (the old one), then the rename"
            " is followed"
        )
        return plan
    plan.triggers = dict(connection.execute(EXISTING_TRIGGERS_SQL, (now,)).fetchall())
    plan.triggers_lost = any(
        trigger_name(name, kind) not in plan.triggers for kind in ESSENTIAL_TRIGGER_KINDS
    )
    _match_columns(plan, layout, spec)
    if plan.added:
        (width,) = connection.execute(
            "SELECT count(*) FROM pragma_table_info(?)", (shadow_name(name),)
        ).fetchone()
        values = len(spec.value_columns)
        plan.problem = width_problem(
            connection, now, values, len(spec.pk), int(width) + 2 * len(plan.added)
        )
    return plan


def _match_columns(plan: TablePlan, layout: TableLayout, spec: TableSpec) -> None:
    """Each slot's column now: by its trigger's `UPDATE OF` header, else by name."""
    values = [column for column in spec.columns if column not in spec.pk]
    claimed: dict[int, str] = {}
    by_name = []
    for column, slot in zip(layout.spec.value_columns, layout.slots, strict=True):
        sql = plan.triggers.get(trigger_name(layout.name, update_trigger_kind(slot)))
        found = _UPDATE_OF.search(sql or "")
        if found is None:
            by_name.append((column, slot))
            continue
        header = _unquoted(found.group(1))
        if header in values and header not in claimed.values():
            claimed[slot] = header
        else:
            plan.dropped.append((column, slot))
    for column, slot in by_name:
        if column in values and column not in claimed.values():
            claimed[slot] = column
        else:
            plan.dropped.append((column, slot))
    old = dict(zip(layout.slots, layout.spec.value_columns, strict=True))
    plan.slot_columns = claimed
    plan.renamed = [(old[slot], new) for slot, new in claimed.items() if old[slot] != new]
    plan.added = [column for column in values if column not in claimed.values()]


# Pairs of a dropped and an added column compared, at most, per rebuild (one pass each).
RENAME_PAIRS_MAX = 16


def recognise_renames(connection: sqlite3.Connection, plan: TablePlan, table: TableSql) -> None:
    """Take a column a rebuild dropped and one it added for a rename, when their values match.

    A rebuild matches columns by name, so one that renames a column
    (Alembic's `batch_alter_table` with `alter_column(new_column_name=)`,
    `sqlite-utils transform --rename`) reads as a drop and an add: the
    added column's values would be stamped as written here, over writes of
    the other sites, and the other sites' writes under the old name
    discarded, during a rolling deploy (lost writes both ways).  The cells'
    fingerprints (`vf`) tell a rename apart: the added column holds, row by
    row, the values the dropped one held.  A pair is a rename when, over
    the live rows whose dropped cell has a fingerprint, more than half
    match and at least two distinct values do (a column of one constant,
    NULL or a default, matches any other such column and is not taken),
    and neither column of the pair matches another.  Rows that do not
    match were updated meanwhile; `_log_updated_meanwhile` logs them.
    """
    if not (plan.triggers_lost and plan.dropped and plan.added):
        return
    if len(plan.dropped) * len(plan.added) > RENAME_PAIRS_MAX:
        return
    names = table.names
    candidates: list[tuple[tuple[str, int], str]] = []
    for dropped in plan.dropped:
        slot = dropped[1]
        entry = f"substr(s.{VALUES_FP_COLUMN}, {CELL_FP_BYTES * slot + 1}, {CELL_FP_BYTES})"
        for added in plan.added:
            value = cell_segment_sql(f"t.{quote_identifier(added)}")
            compared, hits, distinct = connection.execute(
                "SELECT count(*), count(CASE WHEN hit THEN 1 END),"
                " count(DISTINCT CASE WHEN hit THEN entry END) FROM"
                f" (SELECT {entry} AS entry, {CELL_FP_FUNCTION}({value}) = {entry} AS hit"
                f" FROM {names.shadow} s JOIN {names.table} t ON {names.join}"
                f" WHERE s.cl % 2 = 1 AND typeof(s.{VALUES_FP_COLUMN}) = 'blob'"
                f" AND length(s.{VALUES_FP_COLUMN}) >= {CELL_FP_BYTES * (slot + 1)}"
                f" AND {entry} != zeroblob({CELL_FP_BYTES}))"
            ).fetchone()
            if distinct >= 2 and 2 * hits > compared:
                candidates.append((dropped, added))
    for dropped, added in candidates:
        if sum(1 for d, a in candidates if d == dropped or a == added) != 1:
            continue  # one of them matches another column too: not told
        column, slot = dropped
        plan.dropped.remove(dropped)
        plan.added.remove(added)
        plan.slot_columns[slot] = added
        plan.renamed.append((column, added))
        plan.recognised.append(added)


def new_layout(plan: TablePlan, hlc: int) -> TableLayout:
    """The layout after `plan`: slots kept, moved to new names, retired, or new."""
    layout, spec = plan.layout, plan.spec
    assert spec is not None
    layout = plan.renamed_layout
    old_former = {column: layout.spec.former_of(column) for column in layout.spec.columns}
    former_of = {column: old_former[column] for column in spec.pk}
    for slot, column in plan.slot_columns.items():
        was = layout.spec.value_columns[layout.slots.index(slot)]
        former_of[column] = (was, *old_former[was]) if was != column else old_former[was]
    # A dropped column is dropped under its former names too: a peer that has
    # not renamed it yet sends its cells by an old name, and they must be
    # discarded as the dropped column's, not wait for a column of that name
    # (found by the long state-machine run: rename, then drop, at one site).
    dropped = [
        *layout.dropped,
        *(
            DroppedColumn(name, slot, hlc)
            for column, slot in plan.dropped
            for name in (column, *old_former.get(column, ()))
        ),
    ]
    slot_of = {column: slot for slot, column in plan.slot_columns.items()}
    born_of = {
        column: layout.born[layout.slots.index(slot)] for slot, column in plan.slot_columns.items()
    }
    created_of = {
        column: layout.created[layout.slots.index(slot)]
        for slot, column in plan.slot_columns.items()
    }
    # A kept column keeps the DEFAULT it was added with (a rebuild that
    # changed it changes no row's default cell); one not known takes today's.
    recorded = layout.recorded_defaults()
    default_of = {
        column: plan.defaults.get(column)
        if recorded is None
        else recorded[layout.spec.value_columns[layout.slots.index(slot)]]
        for slot, column in plan.slot_columns.items()
    }
    next_slot = layout.next_slot
    for column in plan.added:
        slot_of[column] = next_slot
        next_slot += 1
        # A name dropped here before comes back as a new column: cells stamped
        # before its last drop here belong to the old one and must not
        # resurrect.  A name never dropped here takes every cell.
        born_of[column] = max((d.dropped_hlc for d in dropped if d.name == column), default=0)
        created_of[column] = hlc
        default_of[column] = plan.defaults.get(column)
    values = [column for column in spec.columns if column not in spec.pk]
    formers = tuple(former_of.get(column, ()) for column in spec.columns)
    new_spec = replace(
        spec,
        former=formers if any(formers) else (),
        former_names=layout.spec.former_names,
    )
    return TableLayout(
        new_spec,
        tuple(slot_of[column] for column in values),
        tuple(born_of[column] for column in values),
        tuple(dropped),
        next_slot,
        layout.others_json,  # fields other modules keep in the spec (integer_keys.py)
        tuple(created_of[column] for column in values),
        tuple(default_of[column] for column in values),
    )


def sync_triggers(
    connection: sqlite3.Connection, layout: TableLayout, existing: dict[str, str]
) -> bool:
    """Make the table's capture triggers exactly those of `layout`; True if any changed.

    `existing` maps the table's `_syncmesh_*` trigger names to their SQL.
    A trigger whose text differs (renamed table or column, changed UNIQUE
    indexes) is dropped and created again.
    """
    wanted = capture_triggers(layout, unique_column_sets(connection, layout.name))
    changed = False
    for name, sql in existing.items():
        if wanted.get(name) != sql:
            connection.execute(drop_trigger_sql(name))
            changed = True
    for name, sql in wanted.items():
        if existing.get(name) != sql:
            connection.execute(sql)
            changed = True
    return changed


def existing_triggers(connection: sqlite3.Connection, table: str) -> dict[str, str]:
    return dict(connection.execute(EXISTING_TRIGGERS_SQL, (table,)).fetchall())


def schema_version(ctx: StoreContext) -> int:
    return int(ctx.connection.execute("PRAGMA schema_version").fetchone()[0])


def merge_ready_waiting_cells(ctx: StoreContext) -> None:
    """Merge the waiting cells whose column exists now (`waiting.merge_ready`).

    Called at the end of every reconcile that changed a table, inside its
    transaction, with `ctx.tables` as the reconcile left them.  Cells a peer
    sent for a column this store did not have yet wait (ADR 0013); once the
    column appears (ADD COLUMN, or a rename that maps it) they are merged.
    """
    waiting.merge_ready(ctx)


def reconcile_schema(ctx: StoreContext, *, force: bool = False) -> list[str]:
    """`SqliteStore.reconcile_schema`: see there."""
    ctx.require_init()
    version = schema_version(ctx)
    if not force and version == ctx.reconciled_version:
        return []
    if not force and not _needs_work(ctx):
        # DDL elsewhere (another table, an index): nothing to write, no capture.
        ctx.reconciled_version = version
        return []
    tables, unsynced = ctx.tables, ctx.unsynced
    try:
        with ctx.transaction():
            lines, changed = reconcile_in_transaction(ctx)
            version = schema_version(ctx)
    except BaseException:
        ctx.tables, ctx.unsynced = tables, unsynced  # as the rolled-back file has them
        raise
    if changed:
        ctx.load()
    ctx.reconciled_version = version
    ctx.schema_version = -1  # schema_problems works them out again
    for line in lines:
        log.info("%s: %s", ctx.path, line)
    return lines


def _needs_work(ctx: StoreContext) -> bool:
    """Whether any tracked table changed, lost or needs triggers, or can sync again (read-only)."""
    connection = ctx.connection
    for table in ctx.tables.values():
        plan = plan_table(connection, table.layout)
        if plan.problem is not None or plan.changes():
            return True
        wanted = capture_triggers(table.layout, unique_column_sets(connection, table.spec.name))
        if wanted != plan.triggers:
            return True
    return any(plan_table(connection, layout).problem is None for layout in ctx.unsynced.values())


def reconcile_in_transaction(ctx: StoreContext) -> tuple[list[str], bool]:
    """Handle the DDL since the last reconcile; (lines for the log, whether tables changed)."""
    connection = ctx.connection
    layouts = [table.layout for table in ctx.tables.values()] + list(ctx.unsynced.values())
    plans = [plan_table(connection, layout) for layout in layouts]
    lines: list[str] = []
    changed = False
    # Where each table is now, under its old definition: the pending log is
    # captured with that first, so writes made before the DDL keep their stamps.
    old_tables: dict[str, TableSql] = {}
    unsynced: dict[str, TableLayout] = {}
    for plan in plans:
        if plan.problem is not None:
            unsynced[plan.layout.name] = plan.layout
            if plan.layout.name not in ctx.unsynced:
                lines.append(plan.problem)
                changed = True
            continue
        if plan.layout.name in ctx.unsynced:
            changed = True
        if plan.table_renamed:
            _rename_bookkeeping(ctx, plan)
            changed = True
        layout = plan.renamed_layout
        # (Its capture may name columns the table lost: no fingerprints.)
        old_tables[layout.name] = TableSql(layout, digests=ctx.digests, values_fp=False)
    ctx.tables, ctx.unsynced = old_tables, unsynced
    # (Keys stamped here get no value fingerprint: filled in below.)
    stamped_before: dict[str, dict[tuple[SqlValue, ...], bool]] = {}
    capture.capture_pending(ctx, stamped_before)
    for plan in plans:
        if plan.problem is None:
            recognise_renames(connection, plan, old_tables[plan.renamed_layout.name])
    hlc = ctx.clock.tick()
    new_tables: dict[str, TableSql] = {}
    fingerprints_stale: set[str] = set()  # tables whose rows' fingerprints hold a dropped slot
    for plan in plans:
        if plan.problem is not None:
            continue
        layout = new_layout(plan, hlc)
        table_lines = plan.changes()
        lines += table_lines
        if plan.columns_changed or plan.table_renamed:
            store_layout(connection, layout.name, layout)
            changed = True
        new_slots = [slot for slot in layout.slots if slot >= plan.layout.next_slot]
        default_site = ctx.require_init().ordinal(DEFAULT_CELL_SITE) if new_slots else 0
        for slot in new_slots:
            # Existing rows read the default stamp: nobody wrote their value.
            for statement in shadow_slot_ddl(layout.name, slot, default_site):
                connection.execute(statement)
        table = TableSql(layout, digests=ctx.digests)
        triggers = existing_triggers(connection, layout.name)
        if sync_triggers(connection, layout, triggers) and not table_lines:
            lines.append(f"table {layout.name!r}: capture triggers updated (indexes changed)")
        if plan.triggers_lost:
            _log_catch_up(connection, table)
            untold = _log_updated_meanwhile(connection, table, plan)
            if untold:
                lines.append(
                    f"table {layout.name!r}: {untold} rows last written by a syncmesh from"
                    " before per-cell fingerprints: an update of one of them meanwhile cannot"
                    " be told (a column was dropped with the rebuild)"
                )
        if plan.dropped:
            fingerprints_stale.add(layout.name)
        if plan.added:
            _log_written_before_trigger(connection, table, plan.added)
        if _digests_change(plan, layout) and ctx.digests:
            connection.execute(table.sql_verify.refresh_digests_sql)
        new_tables[layout.name] = table
    ctx.tables = new_tables
    capture.capture_pending(ctx)
    for name, table in new_tables.items():
        # Rows whose fingerprints hold a dropped column's slot (written anew
        # without it, and without the whole-row hashes of files from before),
        # and rows the first capture stamped with the old definition, get
        # them from the table.
        if name in fingerprints_stale:
            fill_values_fp(connection, table)
        elif stamped_before.get(name):
            fill_values_fp(connection, table, list(stamped_before[name]))
    if changed:
        merge_ready_waiting_cells(ctx)
    if changed or lines:
        # A new head: every process's kept hash trees are rebuilt (store/DESIGN.md).
        head = ctx.clock.tick()
        connection.execute("UPDATE _syncmesh_state SET seq = ?, hlc = ?", (head, head))
        ctx.summaries.invalidate()
    if changed:
        connection.execute("UPDATE _syncmesh_state SET tables_version = tables_version + 1")
    return lines, changed


def store_layout(connection: sqlite3.Connection, stored_as: str, layout: TableLayout) -> None:
    """Write `layout` as the spec of the table stored as `stored_as` (renamed: moved).

    Read-modify-write: the fields other modules keep in the spec (the
    integer-key opt-in, integer_keys.py) are taken from the row as it is
    now, which another process may have changed since this one loaded it.
    """
    row = connection.execute(
        "SELECT spec FROM _syncmesh_tables WHERE name = ?", (stored_as,)
    ).fetchone()
    others = (
        layout.others_json if row is None else TableLayout.from_json(stored_as, row[0]).others_json
    )
    connection.execute("DELETE FROM _syncmesh_tables WHERE name = ?", (stored_as,))
    connection.execute(
        "INSERT OR REPLACE INTO _syncmesh_tables (name, spec) VALUES (?, ?)",
        (layout.name, replace(layout, others_json=others).to_json()),
    )


def _digests_change(plan: TablePlan, layout: TableLayout) -> bool:
    """Whether the rows' digests change: a column dropped, or one added other than at the end.

    A digest hashes the cells' stamps in table order, leaving out trailing
    cells with the default stamp (store.summary): columns added at the end,
    as ADD COLUMN does, change nothing, and 1M rows need no pass.
    """
    if plan.dropped:
        return True
    kept = [plan.slot_columns[slot] for slot in plan.layout.slots if slot in plan.slot_columns]
    return list(layout.spec.value_columns) != kept + plan.added


def _rename_bookkeeping(ctx: StoreContext, plan: TablePlan) -> None:
    """Give the shadow and log tables the table's new name (RENAME TABLE)."""
    old, new = plan.layout.name, plan.now_name
    assert new is not None
    connection = ctx.connection
    for name in (shadow_name, log_name):
        connection.execute(
            f"ALTER TABLE {quote_identifier(name(old))} RENAME TO {quote_identifier(name(new))}"
        )
    connection.execute(f"DROP INDEX IF EXISTS {quote_identifier(shadow_seq_index_name(old))}")
    connection.execute(shadow_seq_index_ddl(new))
    store_layout(connection, old, plan.renamed_layout)


def _log_catch_up(connection: sqlite3.Connection, table: TableSql) -> None:
    """Log rows inserted or deleted while the triggers were gone, as the triggers would have.

    A key in the table without a live shadow row was inserted; a live
    shadow row without its key in the table was deleted.  Rows copied by a
    rebuild have their shadow rows already, and are not sent again.
    """
    names = table.names
    keys = ", ".join(f"k{index}" for index in range(names.key_count))
    user_keys = ", ".join(f"t.{quote_identifier(column)}" for column in table.spec.pk)
    connection.execute(
        f"INSERT INTO {names.log} (op, mask, {keys}) SELECT {OP_INSERT}, {ALL_COLUMNS},"
        f" {user_keys} FROM {names.table} t WHERE NOT EXISTS"
        f" (SELECT 1 FROM {names.shadow} s WHERE {names.join} AND s.cl % 2 = 1)"
    )
    shadow_keys = ", ".join(f"s.k{index}" for index in range(names.key_count))
    connection.execute(
        f"INSERT INTO {names.log} (op, mask, {keys}) SELECT {OP_DELETE}, 0, {shadow_keys}"
        f" FROM {names.shadow} s WHERE s.cl % 2 = 1 AND NOT EXISTS"
        f" (SELECT 1 FROM {names.table} t WHERE {names.join})"
    )


def _log_updated_meanwhile(connection: sqlite3.Connection, table: TableSql, plan: TablePlan) -> int:
    """Log, as updates of the cells that changed, live rows that no longer match their fingerprints.

    The fingerprints (`vf`, one per cell) are of the values the engine
    last stamped or applied; a rebuild copies them unchanged (matched by
    name), so a cell that differs was written while the triggers were gone.
    Only the table's live slots are compared: a column the rebuild dropped
    has nothing to compare with, and one it added is
    `_log_written_before_trigger`'s.  A row without a fingerprint
    (unknown) is left alone.  Returns how many live rows kept a whole-row
    fingerprint from before per-cell ones while a column was dropped: their
    updates meanwhile cannot be told (functions.fingerprint_changes).
    """
    columns = plan.slot_columns  # slot -> its column now: the slots that are left
    names = table.names
    if not columns:
        return 0
    cells = [
        (slot, f"s.h{slot}", f"t.{quote_identifier(column)}") for slot, column in columns.items()
    ]
    keys = ", ".join(f"k{index}" for index in range(names.key_count))
    shadow_keys = ", ".join(f"s.k{index}" for index in range(names.key_count))
    # Rows with a whole-row hash from before compare whole, unless a slot is gone.
    whole = "NULL" if plan.dropped else whole_row_text_sql(cells)
    connection.execute(
        f"INSERT INTO {names.log} (op, mask, {keys}) SELECT {OP_UPDATE}, changed, {keys} FROM"
        f" (SELECT {VALUES_FP_CHANGES_FUNCTION}(s.{VALUES_FP_COLUMN},"
        f" CASE WHEN typeof(s.{VALUES_FP_COLUMN}) = 'integer' THEN NULL"
        f" ELSE {cells_text_sql(cells)} END,"
        f" CASE WHEN typeof(s.{VALUES_FP_COLUMN}) = 'integer' THEN {whole} END) AS changed,"
        f" {shadow_keys}"
        f" FROM {names.shadow} s JOIN {names.table} t ON {names.join}"
        f" WHERE s.cl % 2 = 1 AND s.{VALUES_FP_COLUMN} IS NOT NULL)"
        " WHERE changed != 0"
    )
    if not plan.dropped:
        return 0
    row = connection.execute(
        f"SELECT count(*) FROM {names.shadow}"
        f" WHERE cl % 2 = 1 AND typeof({VALUES_FP_COLUMN}) = 'integer'"
    ).fetchone()
    return int(row[0])


def fill_values_fp(
    connection: sqlite3.Connection,
    table: TableSql,
    keys: list[tuple[SqlValue, ...]] | None = None,
) -> None:
    """Set the value fingerprints of the live rows of `keys` (None: all) from the table.

    Run where the rows are as the engine last stamped them (after a
    capture), so the fingerprints hold what the reconcile after a later
    rebuild must compare with.
    """
    names = table.names
    shadow = names.shadow
    cells = [
        (slot, f"{shadow}.h{slot}", f"u.{quote_identifier(column)}")
        for column, slot in zip(names.values, names.slots, strict=True)
    ]
    where = " AND ".join(
        f"u.{quote_identifier(column)} = {shadow}.k{index}"
        for index, column in enumerate(names.spec.pk)
    )
    sql = (
        f"UPDATE {shadow} SET {VALUES_FP_COLUMN} ="
        f" (SELECT {values_fp_sql(cells)} FROM {names.table} u WHERE {where})"
        " WHERE cl % 2 = 1"
    )
    if keys is None:
        connection.execute(sql)
    else:
        execute_many(connection, f"{sql} AND {names.keys_where}", keys)


def _log_written_before_trigger(
    connection: sqlite3.Connection, table: TableSql, added: list[str]
) -> None:
    """Log, as local writes, added columns' values that differ from the column's default.

    Rows that hold the default were never written (ADD COLUMN fills it in,
    every site alike) and are not sent.  A row holding something else got
    it before the column's trigger existed: an INSERT or UPDATE between the
    DDL and now, or a rebuild that filled the column.
    """
    defaults = column_defaults(connection, table.spec.name)
    keys = ", ".join(f"k{index}" for index in range(table.key_count))
    user_keys = ", ".join(quote_identifier(column) for column in table.spec.pk)
    for column in added:
        default = defaults.get(column) or "NULL"
        connection.execute(
            f"INSERT INTO {table.log} (op, mask, {keys}) SELECT {OP_UPDATE},"
            f" {slot_mask(table.layout.slot_of(column))}, {user_keys} FROM {table.table}"
            f" WHERE {quote_identifier(column)} IS NOT ({default})"
        )
