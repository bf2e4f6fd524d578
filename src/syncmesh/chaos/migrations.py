"""The rolling schema changes of the `migrate` fault (issue 14, ADR 0013).

A `migrate` fault changes the workload's `kv` table at every node, one node
at a time, while the other faults run and every client keeps writing.  It
runs a *plan*: one or two *steps*, each rolled over every node before the
next one starts (two rolling deploys in a row).  The steps:

- `add`: `ALTER TABLE kv ADD COLUMN c TEXT` (nullable) and `ADD COLUMN d
  TEXT NOT NULL DEFAULT 'd-default'` (rows inserted at nodes that have not
  migrated arrive without `d`: only the database's default can fill it);
- `rebuild`: what Django does on SQLite to add a column: create
  `new__kv` with the columns `kv` has then and the new column `c`, copy
  the rows, drop `kv`, rename `new__kv` to `kv`;
- `rename`: `ALTER TABLE kv RENAME COLUMN b TO bee`;
- `drop`: `ALTER TABLE kv DROP COLUMN b`, a column every client writes:
  its values are gone once every node dropped it;
- `readd`: `ALTER TABLE kv ADD COLUMN b TEXT` after `drop`, in the next
  rolling deploy: a new column under the old name, which must not bring
  the dropped column's values back;
- `rename-table`: `ALTER TABLE kv RENAME TO kv_items`: clients of migrated
  nodes write `kv_items`, the others `kv`;
- `index`: `CREATE UNIQUE INDEX` on `n` (whose values are unique: each
  names its write) and a plain `CREATE INDEX` on `a`;
- `unindex`: `DROP INDEX` of the UNIQUE one.

The plans are listed at the end (`PLANS`); `drop+readd` is opt-in (see there).

Each migration runs as an application's migration does: by the client
process of that node (the application), inside one transaction, and the
client writes again only once the node has reconciled the table (its
stored column list is the table's), as docs/schema.md's rollout says (stop
the site's writers while it migrates).  That is what keeps the known limit
of ADR 0013 out of the run: an UPDATE of an existing row by another
connection between a rebuild's commit and the node's reconcile is not
captured.  The fault does not exercise that window.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from syncmesh.model import SqlValue

WORKLOAD_TABLE = "kv"  # the table every plan changes, by its name before the first step
COLUMN_TYPES = {"n": "INTEGER"}  # the workload's value columns are TEXT, but for these
UNIQUE_INDEX = "kv_n_unique"
PLAIN_INDEX = "kv_a"


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a plan: its SQL, and what it does to the table's name and columns."""

    name: str
    # Run in one transaction, in order; `{table}` is the table's name when the step
    # runs, `{columns}` its value columns then, `{columns_ddl}` with their types.
    statements: tuple[str, ...]
    renames: Mapping[str, str] = field(default_factory=dict)  # old column name -> new
    # Columns the step adds, with the value rows nobody wrote hold (their default).
    added: Mapping[str, SqlValue] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()  # value columns the step drops
    new_table_name: str | None = None  # RENAME TABLE: the table's name after the step
    indexes_created: tuple[str, ...] = ()
    indexes_dropped: tuple[str, ...] = ()

    def columns_after(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        """The table's value columns once the step ran, given those before."""
        kept = tuple(self.renames.get(c, c) for c in columns if c not in self.dropped)
        return kept + tuple(self.added)

    def table_after(self, table: str) -> str:
        return self.new_table_name or table

    def sql(self, table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
        """The statements for the table as it is (named, its columns) when the step runs.

        `{old_kept}` names the columns the step keeps, as they are called
        before it, and `{new_kept}` / `{new_kept_ddl}` as they are called
        after it (a rebuild that renames or drops columns copies the one
        into the other).
        """
        kept = tuple(column for column in columns if column not in self.dropped)
        renamed = tuple(self.renames.get(column, column) for column in kept)
        return tuple(
            statement.format(
                table=table,
                columns=", ".join(columns),
                columns_ddl=_ddl(columns),
                old_kept=", ".join(kept),
                new_kept=", ".join(renamed),
                new_kept_ddl=_ddl(renamed),
            )
            for statement in self.statements
        )


def _ddl(columns: tuple[str, ...]) -> str:
    return ", ".join(f"{column} {COLUMN_TYPES.get(column, 'TEXT')}" for column in columns)


# A table rebuild that copies the kept columns under their names after the step
# (Alembic batch mode's `alter_column(new_column_name=)` or `drop_column`,
# `sqlite-utils transform --rename/--drop`).
_REBUILD_KEPT = (
    "CREATE TABLE new__{table} (k INTEGER PRIMARY KEY, {new_kept_ddl})",
    "INSERT INTO new__{table} (k, {new_kept}) SELECT k, {old_kept} FROM {table}",
    "DROP TABLE {table}",
    "ALTER TABLE new__{table} RENAME TO {table}",
)


STEPS: dict[str, Migration] = {
    step.name: step
    for step in (
        Migration(
            "add",
            (
                "ALTER TABLE {table} ADD COLUMN c TEXT",
                "ALTER TABLE {table} ADD COLUMN d TEXT NOT NULL DEFAULT 'd-default'",
            ),
            added={"c": None, "d": "d-default"},
        ),
        Migration(
            "rebuild",
            (
                "CREATE TABLE new__{table} (k INTEGER PRIMARY KEY, {columns_ddl}, c TEXT)",
                "INSERT INTO new__{table} (k, {columns}, c) SELECT k, {columns}, NULL FROM {table}",
                "DROP TABLE {table}",
                "ALTER TABLE new__{table} RENAME TO {table}",
            ),
            added={"c": None},
        ),
        Migration("rename", ("ALTER TABLE {table} RENAME COLUMN b TO bee",), renames={"b": "bee"}),
        Migration("rebuild-rename", _REBUILD_KEPT, renames={"b": "bee"}),
        Migration("rebuild-drop", _REBUILD_KEPT, dropped=("b",)),
        Migration("drop", ("ALTER TABLE {table} DROP COLUMN b",), dropped=("b",)),
        Migration("readd", ("ALTER TABLE {table} ADD COLUMN b TEXT",), added={"b": None}),
        Migration(
            "rename-table", ("ALTER TABLE {table} RENAME TO kv_items",), new_table_name="kv_items"
        ),
        Migration(
            "index",
            (
                f"CREATE UNIQUE INDEX {UNIQUE_INDEX} ON {{table}} (n)",
                f"CREATE INDEX {PLAIN_INDEX} ON {{table}} (a)",
            ),
            indexes_created=(UNIQUE_INDEX, PLAIN_INDEX),
        ),
        Migration("unindex", (f"DROP INDEX {UNIQUE_INDEX}",), indexes_dropped=(UNIQUE_INDEX,)),
    )
}


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """The steps of one `migrate` fault, each rolled over every node before the next."""

    steps: tuple[Migration, ...]

    @property
    def name(self) -> str:
        return "+".join(step.name for step in self.steps)

    def tables(self) -> tuple[str, ...]:
        """The table's name before each step, and after the last (len(steps) + 1 names)."""
        names = [WORKLOAD_TABLE]
        for step in self.steps:
            names.append(step.table_after(names[-1]))
        return tuple(names)

    def columns(self, before: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """The value columns before each step, and after the last."""
        shapes = [before]
        for step in self.steps:
            shapes.append(step.columns_after(shapes[-1]))
        return tuple(shapes)

    @property
    def final_table(self) -> str:
        return self.tables()[-1]

    def final_indexes(self) -> frozenset[str]:
        """The indexes on the table after the plan (it starts with none; no step here
        rebuilds a table that has one)."""
        indexes: set[str] = set()
        for step in self.steps:
            indexes = (indexes | set(step.indexes_created)) - set(step.indexes_dropped)
        return frozenset(indexes)

    def final_defaults(self) -> dict[str, SqlValue]:
        """Columns that exist after the plan because a step added them, with their defaults."""
        added: dict[str, SqlValue] = {}
        for step in self.steps:
            added = {
                step.renames.get(column, column): value
                for column, value in added.items()
                if column not in step.dropped
            }
            added.update(step.added)
        return added


def _plan(*names: str) -> MigrationPlan:
    return MigrationPlan(tuple(STEPS[name] for name in names))


# Two-step plans first: between them they run every step of the default deck,
# each in a sequence of two.
TWO_STEP_PLANS = (
    _plan("add", "rename"),
    _plan("drop", "rebuild"),
    _plan("rename-table", "rebuild"),
    _plan("index", "unindex"),
)
ONE_STEP_PLANS = (_plan("add"), _plan("rebuild"), _plan("rename"), _plan("drop"))
# Plans dealt only when named (`syncmesh chaos --migrations`): `drop+readd` passes since
# column generations (docs/chaos.md); it stays out of the default deck until the deck
# deals it after the one-step plans, so that what every seed deals so far is kept.
# `rebuild-rename` and `rebuild-drop` (a rebuild that renames or drops a column, told
# by the cells' fingerprints since they are per cell) are opt-in for the same reason.
OPT_IN_PLANS = (_plan("drop", "readd"), _plan("rebuild-rename"), _plan("rebuild-drop"))
PLANS: dict[str, MigrationPlan] = {
    plan.name: plan for plan in TWO_STEP_PLANS + ONE_STEP_PLANS + OPT_IN_PLANS
}
MIGRATION_PLANS = tuple(PLANS)  # a schedule's fault names its plan by index here
DEFAULT_PLANS = tuple(plan.name for plan in TWO_STEP_PLANS + ONE_STEP_PLANS)


def plan_for_schedule(seed: int, index: int, plans: tuple[str, ...] = DEFAULT_PLANS) -> int:
    """The index (in MIGRATION_PLANS) of schedule `index`'s plan, one of `plans`.

    Plans are dealt from a deck shuffled by the seed, two-step plans first:
    in a run of the default plans whose every schedule migrates (the CI
    subset), schedules 0 to 3 run every step between them.
    """
    rng = random.Random(f"{seed}:migration plans")
    two = [name for name in plans if len(PLANS[name].steps) > 1]
    one = [name for name in plans if len(PLANS[name].steps) == 1]
    rng.shuffle(two)
    rng.shuffle(one)
    deck = two + one
    return MIGRATION_PLANS.index(deck[index % len(deck)])


def parse_plans(text: str) -> tuple[str, ...]:
    """`--migrations`: comma-separated plan names, `default` or `all`; ValueError names the bad."""
    if text.strip() == "default":
        return DEFAULT_PLANS
    if text.strip() == "all":
        return MIGRATION_PLANS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PLANS]
    if unknown or not names:
        raise ValueError(
            f"unknown migration plan(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(MIGRATION_PLANS)}, default or all"
        )
    return tuple(dict.fromkeys(names))
