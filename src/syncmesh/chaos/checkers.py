"""The checkers of a chaos run: pure functions from observations to violations.

Each takes what the harness observed (the clients' acknowledged writes with
their stamps, the replicas' canonical dumps, samples taken while faults ran)
and returns the violations it finds, each naming the property, the table
and key, and what was expected.  They know nothing of processes or sockets,
so each is unit-tested on hand-made histories (tests/test_chaos_checkers.py).

The properties are those of PROPERTIES.md: P1 convergence, P4/P5 no lost
acknowledged write, P13 no torn transaction, P6 no resurrection, bounded
echo, and P8 clock health.
"""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from syncmesh.chaos.history import Key, QuarantinedRow, Replica, RowDump, Stamp, Write
from syncmesh.chaos.migrations import MigrationPlan
from syncmesh.clock import wall_ms_of
from syncmesh.merge import value_order_key
from syncmesh.model import SqlValue

CLOCK_SLACK_MS = 250  # sampling is not instantaneous: a reading may trail the stamp
# The site of the stamp every node gives a cell that holds its column's default
# because ADD COLUMN (or a rebuild that added the column) filled it in: nobody
# wrote it (the store's DEFAULT_CELL_SITE, docs/adr/0013-schema-evolution.md).
DEFAULT_CELL_SITE = "0" * 32
# How the store's apply words a peer's row that a constraint of the table
# turned away (store/sqlite/execute.py: a constraint error, an ON CONFLICT
# IGNORE or RAISE(IGNORE) that wrote nothing, an ON CONFLICT REPLACE that
# deleted another row).  Such a row waits in the quarantine for an operator
# (docs/keys.md): the designed outcome, not a loss.  The other reasons (a
# stamp from the future, a table or column not here yet) resolve by
# themselves and are never accepted as an end state.
CONSTRAINT_REFUSALS = (
    "constraint failed:",
    "SQLite did not write the row",
    "SQLite changed ",
)


# Cells written into a column that a later step dropped: (table, key, column, exact value),
# the table under its final name and the column under its name when dropped.
DroppedCells = set[tuple[str, Key, str, object]]


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    message: str


@dataclass(slots=True)
class WriteTally:
    """How many writes the lost-write checker could verify, and how."""

    exact: int = 0  # its stamp was read back: checked against the final cell exactly
    superseded_life: int = 0  # a later delete or re-insert ended its row's life
    unverified: int = 0  # replaced before its stamp could be read: not checkable
    orders: int = 0
    # Not in the final state at a replica, but held in its quarantine because a
    # constraint turned it away there (counted once per replica that did).
    quarantined: int = 0
    # Its key's last life ended in a delete whose tombstone the replica collected.
    collected: int = 0


def is_constraint_refusal(reason: str) -> bool:
    """True if a quarantine entry's reason says a constraint of the table turned the row away."""
    return reason.startswith(CONSTRAINT_REFUSALS)


def refused_by_constraint(replicas: Iterable[Replica]) -> set[tuple[str, Key]]:
    """The rows some replica holds in its quarantine because a constraint turned them away.

    Replicas rightly differ in them: each site keeps the row it had and
    quarantines the other's, until an operator decides (docs/keys.md).
    """
    return {
        where
        for replica in replicas
        for where, rows in replica.quarantined.items()
        if any(is_constraint_refusal(row.reason) for row in rows)
    }


def dead_everywhere(replicas: Iterable[Replica]) -> set[tuple[str, Key]]:
    """Rows no replica holds alive: deleted, with or without their tombstone.

    Where one node collected a tombstone that another still holds, `verify`
    between them reports the row (ADR 0015); both say it is absent.
    """
    replicas = list(replicas)
    keys = {
        (table, key)
        for replica in replicas
        for table, rows in replica.tables.items()
        for key in rows
    }
    return {
        (table, key)
        for table, key in keys
        if all(
            (row := replica.row(table, key)) is None or row.values is None for replica in replicas
        )
    }


def waiting_in_quarantine(replicas: Iterable[Replica]) -> list[str]:
    """Quarantine entries no constraint explains: they must resolve before the run is quiet."""
    return [
        f"{replica.node}: {table} key {list(key)}: {row.reason}"
        for replica in replicas
        for (table, key), rows in sorted(replica.quarantined.items(), key=repr)
        for row in rows
        if not is_constraint_refusal(row.reason)
    ]


# -- P1: convergence -------------------------------------------------------------------


def check_convergence(
    replicas: list[Replica], without: Collection[tuple[str, Key]] = (), *, tombstones: bool = True
) -> list[Violation]:
    """Every replica holds the same state: rows, storage classes, causal lengths, stamps.

    `without`: rows left out of the comparison, those a constraint turned
    away at some site (`refused_by_constraint`); `check_writes` judges them.
    `tombstones=False`: deleted rows are left out too (tombstone collection
    runs at each node at its own pace; `check_no_resurrection` judges them).
    """
    if len(replicas) < 2:
        return []
    first = replicas[0]
    violations = []
    for other in replicas[1:]:
        if other.digest(without, tombstones=tombstones) == first.digest(
            without, tombstones=tombstones
        ):
            continue
        violations.append(
            Violation(
                "convergence",
                f"{other.node} differs from {first.node}:"
                f" {_first_difference(first, other, without)}",
            )
        )
    return violations


def _first_difference(
    one: Replica, other: Replica, without: Collection[tuple[str, Key]] = ()
) -> str:
    for table in sorted(set(one.tables) | set(other.tables)):
        rows_one, rows_other = one.tables.get(table, {}), other.tables.get(table, {})
        for key in sorted(set(rows_one) | set(rows_other), key=repr):
            if (table, key) in without:
                continue
            # repr, not ==: 0.0 == -0.0 and 1 == 1.0 in Python, not in SQLite.
            if repr(rows_one.get(key)) != repr(rows_other.get(key)):
                return (
                    f"table {table} key {list(key)}: {rows_one.get(key)} != {rows_other.get(key)}"
                )
    return "same rows, different clock floors, sites or tombstones"


# -- P4/P5/P6: no lost acknowledged write, no resurrection -----------------------------------


def check_writes(
    writes: list[Write],
    replica: Replica,
    may_be_lost: Callable[[Write], bool] | None = None,
    held_back: Mapping[tuple[str, Key], list[QuarantinedRow]] | None = None,
    cascades: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[list[Violation], WriteTally]:
    """Every acknowledged write is in the final state or lost to a greater write.

    `cascades`: per child table, its foreign key column and parent table
    (`ON DELETE CASCADE`): a child row may be deleted by its parent's delete
    with no client write saying so, and once its tombstone is collected only
    the parent's absence tells (`_collected`).

    `may_be_lost(write)` names writes whose loss is allowed (a `restore`
    took them back before any other node held them): they are not judged,
    but still count as evidence that someone inserted a row.

    Under the merge rule a cell's final value is that of the write with the
    greatest (hlc, site) among the writes of the row's final life; writes of
    an earlier life lost to the delete or re-insert that ended it.  Writes
    at one node in one capture share a stamp: the later one (by client
    order) is the one that counts.
    """
    violations: list[Violation] = []
    tally = WriteTally()
    by_key: dict[tuple[str, Key], list[Write]] = defaultdict(list)
    for write in writes:
        if write.op == "order":
            tally.orders += 1
            continue
        by_key[(write.table, tuple(write.key))].append(write)
    for (table, key), key_writes in sorted(by_key.items(), key=repr):
        row = replica.row(table, key)
        judged = WriteTally()
        found = list(
            _check_key(table, key, key_writes, replica, row, judged, may_be_lost, cascades)
        )
        refused = _refused_rows(replica, (table, key), held_back)
        if found and refused:
            # A constraint turned the row away here: every write must then be
            # in the final state or in the row the quarantine holds back.
            # Judged against both merged, a write in neither is still lost.
            merged = _with_quarantined(row, refused, replica.columns.get(table, ()))
            again = WriteTally()
            found = list(
                _check_key(table, key, key_writes, replica, merged, again, may_be_lost, cascades)
            )
            if not found:
                tally.quarantined += again.exact + again.superseded_life + again.unverified
                continue
        violations.extend(found)
        tally.exact += judged.exact
        tally.superseded_life += judged.superseded_life
        tally.unverified += judged.unverified
        tally.collected += judged.collected
    return violations, tally


def constraint_quarantines(
    replicas: Iterable[Replica],
) -> dict[tuple[str, Key], list[QuarantinedRow]]:
    """Every replica's rows held back for a constraint, by table and key."""
    held: dict[tuple[str, Key], list[QuarantinedRow]] = {}
    for replica in replicas:
        for where, rows in replica.quarantined.items():
            refused = [row for row in rows if is_constraint_refusal(row.reason)]
            if refused:
                held.setdefault(where, []).extend(refused)
    return held


def _refused_rows(
    replica: Replica,
    where: tuple[str, Key],
    held_back: Mapping[tuple[str, Key], list[QuarantinedRow]] | None,
) -> list[QuarantinedRow]:
    """The rows of `where` that a constraint's quarantine holds back: the replica's own, or,
    given `held_back` (every replica's), also those a node on the way holds.

    In a star or a chain, a row the hub turned away never reaches the
    leaves beyond it: they neither hold it nor quarantine it, and that is
    the designed outcome too (it waits at the hub for an operator).
    """
    own = [row for row in replica.quarantined.get(where, []) if is_constraint_refusal(row.reason)]
    if held_back is None:
        return own
    return own + [row for row in held_back.get(where, []) if row not in own]


def _with_quarantined(
    row: RowDump | None, refused: list[QuarantinedRow], columns: tuple[str, ...]
) -> RowDump:
    """`row` merged with the rows its site's quarantine holds back, by the merge's order."""
    cl = 0 if row is None else row.cl
    stamps = {} if row is None else dict(row.stamps)
    values: dict[str, SqlValue] = {}
    if row is not None and row.values is not None:
        values = {column: row.values[index][0] for index, column in enumerate(columns)}
    for held in sorted(refused, key=lambda held: held.cl):
        if held.cl > cl:
            cl, stamps, values = held.cl, {}, {}
        if held.cl < cl:
            continue
        for column, stamp in held.stamps.items():
            if column not in stamps or stamps[column] < stamp:
                stamps[column], values[column] = stamp, held.values[column]
    if cl % 2 == 0:
        return RowDump(cl, None, None, {})
    typed = tuple((values.get(column), "") for column in columns)
    return RowDump(cl, None, typed, stamps)


def _check_key(
    table: str,
    key: Key,
    writes: list[Write],
    replica: Replica,
    row: RowDump | None,
    tally: WriteTally,
    may_be_lost: Callable[[Write], bool] | None = None,
    cascades: Mapping[str, tuple[str, str]] | None = None,
) -> Iterable[Violation]:
    where = f"{replica.node}: {table} key {list(key)}"
    exempt = may_be_lost or (lambda _write: False)
    if row is None and all(exempt(write) for write in writes):
        return
    if row is None and replica.collected and _collected(writes, replica, cascades or {}):
        # Its tombstone was collected (ADR 0015): every write is of a life
        # that a delete ended, and the delete is the last word.
        tally.collected += 1
        tally.unverified += sum(1 for write in writes if write.cl is None)
        return
    if row is None:
        uncaptured = key in replica.uncaptured.get(table, ())
        yield Violation(
            "lost-write",
            f"{where}: written, but unknown to the replica"
            f"{' (its row is in the table, never captured)' if uncaptured else ''};"
            f" {describe_writes(writes)}{_describe_parents(writes, replica, cascades or {})}",
        )
        return
    alive = row.cl % 2 == 1
    if alive != (row.values is not None):
        yield Violation(
            "resurrection" if row.values is not None else "lost-write",
            f"{where}: causal length {row.cl}, but the row is"
            f" {'present' if row.values else 'absent'}",
        )
    for write in writes:
        if exempt(write):
            continue  # counted by the caller (writes_restore_exempt)
        if write.cl is None or write.stamp is None:
            tally.unverified += 1
            continue
        if write.cl > row.cl:
            yield Violation(
                "lost-write",
                f"{where}: {write.op} #{write.index} at {write.node} left causal length"
                f" {write.cl}, the replica has {row.cl}",
            )
            continue
        if write.cl < row.cl:
            tally.superseded_life += 1
            continue
        tally.exact += 1
        if write.op == "delete":
            continue  # its life is the final one: the row must be absent (checked above)
        yield from _check_cells(where, write, writes, row.stamps, row.values, replica)
    if alive and not any(
        write.op == "upsert" and (write.cl is None or write.cl == row.cl) for write in writes
    ):
        yield Violation(
            "resurrection",
            f"{where}: alive in causal length {row.cl}, but no write inserted it in that life",
        )


WRITES_DESCRIBED_MAX = 8  # a lost write's report lists the key's last writes


def describe_writes(writes: list[Write]) -> str:
    """The key's last writes, in words: what a lost-write report needs to be read."""
    shown = writes[-WRITES_DESCRIBED_MAX:]
    words = [
        f"{write.op} #{write.index} at {write.node} (schema step {write.schema},"
        f" clock {write.lo}..{write.hi}, "
        + ("stamp not read" if write.stamp is None else f"stamp {write.stamp} cl {write.cl}")
        + ("" if write.parent_cl is None else f", parent's causal length {write.parent_cl}")
        + ")"
        for write in shown
    ]
    more = f"{len(writes) - len(shown)} earlier, then " if len(writes) > len(shown) else ""
    return f"writes: {more}{'; '.join(words)}"


def _describe_parents(
    writes: list[Write], replica: Replica, cascades: Mapping[str, tuple[str, str]]
) -> str:
    """A child's parents as the replica holds them: whether a cascade can explain its loss."""
    cascade = cascades.get(writes[0].table) if writes else None
    if cascade is None:
        return ""
    column, parent_table = cascade
    words = []
    for parent in dict.fromkeys(write.cells.get(column) for write in writes):
        if parent is None:
            continue
        row = replica.row(parent_table, (parent,))
        state = (
            "unknown"
            if row is None
            else f"{'alive' if row.values is not None else 'deleted'} at causal length {row.cl}"
            f" (stamp {row.cl_stamp})"
        )
        words.append(f"{parent_table} {parent!r} {state}")
    return f"; parent {', '.join(words)}" if words else ""


def check_captured(replicas: list[Replica]) -> list[Violation]:
    """Every row in a tracked table has its shadow row once the nodes are quiet.

    A row without one was written but never captured (or its bookkeeping
    went while the row stayed): no peer can ever learn it, and no other
    checker sees it, since the replicas are read through their shadow rows.
    """
    violations = []
    for replica in replicas:
        for table, keys in sorted(replica.uncaptured.items()):
            shown = ", ".join(repr(list(key)) for key in keys[:5])
            violations.append(
                Violation(
                    "uncaptured",
                    f"{replica.node}: {table}: {len(keys)} rows in the table were never"
                    f" captured (no shadow row), first {shown}",
                )
            )
    return violations


def _collected(
    writes: list[Write], replica: Replica, cascades: Mapping[str, tuple[str, str]]
) -> bool:
    """Whether a key with no shadow row at `replica` (which collected tombstones) was
    deleted: its writes end in a delete, or the life of a parent it was written under
    ended (a cascade deleted it, with no client write): the parent is gone, or its
    final life is above the one the child's write saw (`parent_cl`: it was deleted
    and inserted again).

    Without `parent_cl`, a parent's final life that began (by its stamp) after
    the child's write ended it.  That guess misjudges under a skewed clock: a
    child written at a node running ahead, concurrently with the parent's
    delete, is rightly cascaded, yet its stamp is above that of a re-insert
    made after the delete elsewhere (issue 12).  So with `parent_cl` only the
    lives decide."""
    if _ends_in_delete(writes):
        return True
    cascade = cascades.get(writes[0].table) if writes else None
    if cascade is None:
        return False
    column, parent_table = cascade
    for write in writes:
        parent = write.cells.get(column)
        if parent is None:
            continue
        row = replica.row(parent_table, (parent,))
        if row is None or row.values is None:
            return True
        if write.parent_cl is not None:
            if row.cl > write.parent_cl:
                return True
            continue
        written = write.stamp if write.stamp is not None else write.lo
        if row.cl > 1 and row.cl_stamp is not None and row.cl_stamp[0] > written:
            return True
    return False


def _ends_in_delete(writes: list[Write]) -> bool:
    """The key's writes whose life is known end in a delete: the greatest causal length
    left by any of them is even, and a delete left it."""
    known = [write for write in writes if write.cl is not None]
    if not known:
        return any(write.op == "delete" for write in writes)
    top = max(write.cl for write in known if write.cl is not None)
    return top % 2 == 0 and any(write.op == "delete" and write.cl == top for write in known)


def check_no_resurrection(
    writes: list[Write], replica: Replica, may_be_lost: Callable[[Write], bool] | None = None
) -> list[Violation]:
    """No row deleted at any node (acknowledged there) is alive at the end, unless a later
    insert revived it: a write that left a greater causal length, at the row's final one.

    With tombstone collection on, this is what a collected delete must
    never lose to: a stale copy of the row arriving after its tombstone went
    (ADR 0015's three rules).  `may_be_lost(write)`: deletes a restore or a
    re-join took back before any other node held them (as in `check_writes`).
    """
    deleted: dict[tuple[str, Key], int] = {}
    inserted: dict[tuple[str, Key], set[int | None]] = defaultdict(set)
    for write in writes:
        where = (write.table, tuple(write.key))
        if write.op == "delete" and write.cl is not None:
            if may_be_lost is not None and may_be_lost(write):
                continue
            deleted[where] = max(deleted.get(where, 0), write.cl)
        elif write.op == "upsert":
            inserted[where].add(write.cl)
    violations = []
    for (table, key), delete_cl in sorted(deleted.items(), key=repr):
        row = replica.row(table, key)
        if row is None or row.values is None:
            continue
        revived = row.cl > delete_cl and (
            row.cl in inserted[(table, key)] or None in inserted[(table, key)]
        )
        if not revived:
            violations.append(
                Violation(
                    "resurrection",
                    f"{replica.node}: {table} key {list(key)} was deleted (causal length"
                    f" {delete_cl}, acknowledged) but is alive at causal length {row.cl},"
                    " which no later insert left",
                )
            )
    return violations


def _check_cells(
    where: str,
    write: Write,
    writes: list[Write],
    stamps: dict[str, tuple[int, str]],
    values: tuple[tuple[object, str], ...] | None,
    replica: Replica,
) -> Iterable[Violation]:
    assert write.stamp is not None
    columns = replica.columns.get(write.table, ())
    mine = (write.stamp, write.site)
    for column, value in write.cells.items():
        final = stamps.get(column)
        final_value = None if values is None else values[columns.index(column)][0]
        if final is None or mine > final:
            yield Violation(
                "lost-write",
                f"{where}.{column}: {write.op} #{write.index} at {write.node} stamped {mine}"
                f" lost to a smaller stamp {final} (value {final_value!r})",
            )
        elif mine == final and final_value != value:
            later = [
                other
                for other in writes
                if other.node == write.node
                and other.index > write.index
                and other.cells.get(column) == final_value
            ]
            if not later:
                yield Violation(
                    "lost-write",
                    f"{where}.{column}: holds {final_value!r} under the stamp of"
                    f" {write.op} #{write.index} at {write.node}, which wrote {value!r}",
                )


def _exact(value: SqlValue) -> object:
    """A value's identity: storage class and exact bytes (1 and 1.0, 0.0 and -0.0 differ)."""
    return value_order_key(value)


def check_phantoms(
    writes: list[Write],
    replica: Replica,
    table: str = "kv",
    defaults: Mapping[str, SqlValue] | None = None,
    dropped: DroppedCells | None = None,
) -> list[Violation]:
    """Every value in the final state was written by a client at the site its stamp names.

    `defaults`: columns a migration added, with their default.  A cell of
    one that holds its default under the default stamp was written by nobody,
    and rightly so (the rows that existed, or came from a node without the
    column).  `dropped`: the cells written into columns a migration dropped
    (`in_final_shape`); one of those values in a column re-added under the
    dropped name is a resurrection.
    """
    added = defaults or {}
    gone = dropped or set()
    written: dict[tuple[Key, str, object], set[str]] = defaultdict(set)
    for write in writes:
        if write.table == table:
            for column, value in write.cells.items():
                written[(tuple(write.key), column, _exact(value))].add(write.site)
    violations = []
    columns = replica.columns.get(table, ())
    for key, row in replica.tables.get(table, {}).items():
        if row.values is None:
            continue
        for index, column in enumerate(columns):
            value = row.values[index][0]
            site = row.stamps[column][1] if column in row.stamps else None
            if (
                column in added
                and site in (DEFAULT_CELL_SITE, None)
                and _exact(value) == _exact(added[column])
            ):
                continue
            if site in written.get((key, column, _exact(value)), set()):
                continue
            if (table, key, column, _exact(value)) in gone:
                violations.append(
                    Violation(
                        "resurrection",
                        f"{replica.node}: {table} key {list(key)}.{column} = {value!r} (stamped"
                        f" by {site}) was written into the column {column} that a migration"
                        " dropped: a dropped value came back in the column re-added under its name",
                    )
                )
            else:
                violations.append(
                    Violation(
                        "phantom-write",
                        f"{replica.node}: {table} key {list(key)}.{column} = {value!r}"
                        f" stamped by {site}, which never wrote it",
                    )
                )
    return violations


def in_final_shape(writes: list[Write], plan: MigrationPlan) -> tuple[list[Write], DroppedCells]:
    """`writes` as the final shape of `plan`'s table names them, and the cells it dropped.

    A write names the table and columns of the shape its node had when it
    wrote (`Write.schema`: the steps its client had run).  The final state
    is judged in the last shape, by each column's and the table's identity,
    not its name at the time:

    - a cell of a column renamed later counts under the new name (writes
      made under the old name at nodes that had not renamed yet land in the
      renamed column);
    - a write to a table renamed later counts under the new table name;
    - a cell of a column dropped later is judged nowhere: its value is gone
      everywhere once every node dropped the column.  It is returned apart,
      so that `check_phantoms` can tell it if it comes back in a column
      re-added under the same name.
    """
    names = plan.tables()
    shaped: list[Write] = []
    dropped: DroppedCells = set()
    for write in writes:
        if write.schema >= len(plan.steps) or write.table != names[write.schema]:
            shaped.append(write)
            continue
        cells, table, gone = dict(write.cells), write.table, {}
        for step in plan.steps[write.schema :]:
            gone.update({column: cells.pop(column) for column in step.dropped if column in cells})
            cells = {step.renames.get(column, column): value for column, value in cells.items()}
            table = step.table_after(table)
        key = tuple(write.key)
        dropped.update((table, key, column, _exact(value)) for column, value in gone.items())
        shaped.append(replace(write, table=table, cells=cells))
    return shaped, dropped


def check_schema(replicas: list[Replica], table: str, columns: tuple[str, ...]) -> list[Violation]:
    """Every replica tracks `table` with these value columns: every node migrated, and
    its node reconciled the change (the columns the node syncs are the table's, under
    the table's name now)."""
    return [
        Violation(
            "migrate",
            f"{replica.node}: {table} is synced with columns"
            f" {list(replica.columns.get(table, ()))}, expected {list(columns)}",
        )
        for replica in replicas
        if replica.columns.get(table, ()) != columns
    ]


def check_indexes(
    found: Mapping[str, frozenset[str]], expected: frozenset[str], table: str
) -> list[Violation]:
    """Every node's file has exactly the `expected` indexes on `table` (CREATE/DROP INDEX ran)."""
    return [
        Violation(
            "migrate",
            f"{node}: {table} has the indexes {sorted(names)}, expected {sorted(expected)}",
        )
        for node, names in sorted(found.items())
        if names != expected
    ]


def check_waiting(waiting: Mapping[str, Mapping[tuple[str, str], int]]) -> list[Violation]:
    """No node still holds waiting cells once every node ran every step of the plan.

    `waiting`: per node, (table, column as sent) -> how many cells wait.
    A cell waits at a node that lacks its column (ADR 0013, "Mixed schema
    versions"); once every node has the final shape, each one has landed
    or was discarded, so one left waiting was neither merged nor sent on
    (and caps that node's version vector).
    """
    return [
        Violation(
            "migrate",
            f"{node}: {count} cells of {table}.{column} still wait for their column"
            " although every node has the final shape",
        )
        for node, cells in sorted(waiting.items())
        for (table, column), count in sorted(cells.items())
    ]


def check_phantom_rows(writes: list[Write], replica: Replica, tables: list[str]) -> list[Violation]:
    """Every live row of `tables` was written by someone: some client wrote its key.

    (`check_phantoms` judges its values.)  A row nobody wrote appears when an
    apply is silently undone by SQLite (an ON CONFLICT clause, a trigger's
    RAISE(IGNORE)) and the feed then ships the shadow row alone (issue 12).
    """
    written = {(write.table, tuple(write.key)) for write in writes if write.op != "delete"}
    violations = []
    for table in tables:
        for key, row in replica.tables.get(table, {}).items():
            if row.values is not None and (table, key) not in written:
                violations.append(
                    Violation(
                        "phantom-row",
                        f"{replica.node}: {table} key {list(key)} = {row.values} is alive,"
                        " but no client ever wrote that key",
                    )
                )
    return violations


# What a node held at one moment: per table and key, the causal length and
# each cell's stamp (the merge state, without values).
Held = dict[tuple[str, Key], tuple[int, dict[str, Stamp]]]


def held_by(replica: Replica) -> Held:
    """The merge state `replica` holds, for `check_held`."""
    return {
        (table, key): (row.cl, dict(row.stamps))
        for table, rows in replica.tables.items()
        for key, row in rows.items()
    }


def check_held(
    held: Held,
    replica: Replica,
    *,
    what: str,
    held_back: Mapping[tuple[str, Key], list[QuarantinedRow]] | None = None,
) -> list[Violation]:
    """Nothing in `held` is missing from `replica`: each row and cell is there or superseded.

    Superseded in the merge's order: a greater causal length, or the same
    one with a cell stamp at least as great.  `held` is what another node
    held when a `restore` replaced a node's file: its writes had been
    acknowledged beyond that node, so none may be lost (issue 12).  A row
    that a constraint turned away at `replica` counts with what its
    quarantine holds back, as in `check_writes`.
    """
    violations = []
    for (table, key), (cl, stamps) in sorted(held.items(), key=repr):
        row = replica.row(table, key)
        refused = _refused_rows(replica, (table, key), held_back)
        if refused:
            row = _with_quarantined(row, refused, replica.columns.get(table, ()))
        if row is None and replica.collected:
            continue  # deleted since, and its tombstone collected: nothing to hold
        final_cl, final_stamps = (0, {}) if row is None else (row.cl, row.stamps)
        where = f"{replica.node}: {table} key {list(key)}"
        if final_cl < cl:
            violations.append(
                Violation(
                    "held-write",
                    f"{where}: causal length {final_cl}, but {what} held {cl}",
                )
            )
            continue
        if final_cl > cl or cl % 2 == 0:
            continue
        for column, stamp in sorted(stamps.items()):
            have = final_stamps.get(column)
            if have is None or have < stamp:
                violations.append(
                    Violation(
                        "held-write",
                        f"{where}.{column}: stamp {have}, but {what} held {stamp}",
                    )
                )
    return violations


# -- P5/P13: orders are whole and present ---------------------------------------------------


def check_orders(writes: list[Write], replica: Replica) -> list[Violation]:
    """Every acknowledged order is on the replica with all of its lines, and nothing else."""
    orders = replica.tables.get("orders", {})
    lines: dict[object, int] = defaultdict(int)
    for key, row in replica.tables.get("order_lines", {}).items():
        if row.values is not None:
            lines[key[0]] += 1
    violations = []
    for write in writes:
        if write.op != "order":
            continue
        order_id = write.key[0]
        order = orders.get((order_id,))
        if order is None or order.values is None:
            violations.append(
                Violation("lost-write", f"{replica.node}: order {order_id!r} is missing")
            )
        elif lines[order_id] != write.lines:
            violations.append(
                Violation(
                    "torn-transaction",
                    f"{replica.node}: order {order_id!r} has {lines[order_id]} of its"
                    f" {write.lines} lines",
                )
            )
    return violations


def torn_orders(path: Path) -> list[str]:
    """Orders visible without all their lines (or lines without their order), read now.

    One read transaction: what an application reading the file would see.
    """
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        connection.execute("BEGIN")
        problems = torn_orders_in(connection)
        connection.execute("COMMIT")
        return problems
    finally:
        connection.close()


def torn_orders_in(connection: sqlite3.Connection) -> list[str]:
    """`torn_orders` inside the caller's read transaction."""
    problems = [
        f"order {order_id} shows {count} of {lines} lines"
        for order_id, lines, count in connection.execute(
            "SELECT o.id, o.lines, (SELECT count(*) FROM order_lines AS l"
            " WHERE l.order_id = o.id) AS c FROM orders AS o WHERE c != o.lines"
        )
    ]
    problems.extend(
        f"lines of order {order_id} without the order"
        for (order_id,) in connection.execute(
            "SELECT DISTINCT order_id FROM order_lines"
            " WHERE order_id NOT IN (SELECT id FROM orders)"
        )
    )
    return problems


# -- bounded echo -------------------------------------------------------------------------------


def check_echo(
    bytes_on_wire: int, changes_applied: int, bytes_per_change_max: int
) -> list[Violation]:
    """Bytes shipped per applied change stay under the bound (no echo storm)."""
    if changes_applied == 0:
        return []
    per_change = bytes_on_wire / changes_applied
    if per_change <= bytes_per_change_max:
        return []
    return [
        Violation(
            "echo",
            f"{bytes_on_wire} bytes on the wire for {changes_applied} applied changes:"
            f" {per_change:.0f} per change, bound {bytes_per_change_max}",
        )
    ]


# -- internal errors --------------------------------------------------------------------------

INTERNAL_ERROR_MARKERS = ("Traceback (most recent call last)", "failed unexpectedly")


def check_logs(logs: dict[str, str]) -> list[Violation]:
    """No node logged an internal error: the engine logs a traceback only for a bug.

    Faults make nodes log plenty (refused frames, resets, drift refusals),
    each as one line naming the problem; a traceback means an error that no
    code path expected.
    """
    violations = []
    for node, text in sorted(logs.items()):
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if any(marker in line for marker in INTERNAL_ERROR_MARKERS):
                context = " | ".join(lines[max(0, number - 1) : number + 12])
                violations.append(Violation("internal-error", f"{node}: {context}"))
                break
    return violations


# A node's periodic verify logs what it found and merged (node.verify_server).
REPAIRED_BY_VERIFY = re.compile(
    r"verify against .*?: \d+ rows differed \(.*?\); repaired: (\d+) of the peer's rows"
    r" merged here, (\d+) of ours there"
)


def rows_repaired_by_verify(logs: dict[str, str]) -> int:
    """Rows the nodes' periodic verify found divergent and merged (`sync.verify_repair`).

    Rows merged, each side's count: a divergent row the merge turns away
    again (a constraint's quarantine) is found at every round and counts 0.

    Not a violation: the anti-entropy is part of the product, and the
    replicas are judged after it.  But each such row is one a feed missed
    (or a fault changed behind the engine's back), so the report lists
    the schedules where it happened, to be read.
    """
    return sum(
        int(found.group(1)) + int(found.group(2))
        for text in logs.values()
        for found in REPAIRED_BY_VERIFY.finditer(text)
    )


FLEET_GAP_MARKER = "fleet stream gap"


def check_no_fleet_gap(logs: dict[str, str]) -> list[Violation]:
    """Over NATS: no node found a gap in the fleet stream.

    The chaos stream has no limits (no `max_age`, no `max_bytes`), so it
    drops nothing: a gap there is a node that skipped messages the stream
    held, or took a message out of order for a gap (issue 15), never a
    reason the stream gave.  Its bootstrap converges the replicas anyway,
    so only this checker sees it.
    """
    violations = []
    for node, text in sorted(logs.items()):
        for line in text.splitlines():
            if FLEET_GAP_MARKER in line:
                violations.append(Violation("fleet-gap", f"{node}: {line}"))
                break
    return violations


# -- P8: clock health ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockSample:
    node: str
    wall_ms: int  # the harness's wall clock when it read the file
    offset_ms: int  # the node's injected clock offset then
    hlc: int  # the node's clock floor on disk


@dataclass(slots=True)
class ClockCheck:
    drift_ms_max: int
    exempt: set[str] = field(default_factory=set)  # nodes whose own clock ran beyond drift
    # Nodes whose file a `restore` replaced: their floor goes back to the copy's.
    restored: set[str] = field(default_factory=set)


def check_clocks(samples: list[ClockSample], check: ClockCheck) -> list[Violation]:
    """Clock floors never go back (P8a) and never run ahead of physical time + drift (P8c).

    A node given a clock beyond the drift limit keeps its far stamps (they
    are its own), so it is exempt from the bound; every other node must have
    refused those stamps, or its floor would show them.  A node's bound is
    its physical clock at its most advanced so far: one whose clock ran
    ahead within the limit (a skew) rightly adopted stamps that far ahead,
    and keeps them after its clock is set right.
    """
    violations = []
    last: dict[str, int] = {}
    highest_offset: dict[str, int] = {}
    for sample in samples:
        offset = max(highest_offset.get(sample.node, 0), sample.offset_ms)
        highest_offset[sample.node] = offset
        previous = last.get(sample.node, 0)
        if sample.hlc < previous and sample.node not in check.restored:
            violations.append(
                Violation(
                    "clock", f"{sample.node}: clock floor went back {previous} -> {sample.hlc}"
                )
            )
        last[sample.node] = max(previous, sample.hlc)
        if sample.node in check.exempt:
            continue
        ahead_ms = wall_ms_of(sample.hlc) - (sample.wall_ms + offset)
        if ahead_ms > check.drift_ms_max + CLOCK_SLACK_MS:
            violations.append(
                Violation(
                    "clock",
                    f"{sample.node}: clock floor {ahead_ms} ms ahead of its physical clock,"
                    f" more than the drift limit {check.drift_ms_max} ms: a far stamp was adopted",
                )
            )
    return violations
