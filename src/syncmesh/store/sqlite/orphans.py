"""Foreign-key orphans after a merge: found among the rows just written, resolved by policy.

The engine's connection does not enforce foreign keys (docs/keys.md), so
a parent deleted at one site while another adds a child to it leaves the
child pointing at nothing, at every site, once both writes have synced.
`PRAGMA foreign_key_check` then reports it, and Django's `migrate` on
SQLite fails on every site.  This module resolves such orphans as the
table's policy says (`OrphanPolicy`, `[tables.orphans]` in syncmesh.toml):

- `cascade`: delete the child, as `ON DELETE CASCADE` would;
- `set-null`: set its referencing columns to NULL (nullable columns only);
- `keep`: leave it; status counts it;
- `declared` (the default): the key's own `ON DELETE CASCADE` or `SET
  NULL`, and `cascade` for every other action (the parent is gone at some
  site already, so `RESTRICT` can no longer be honoured, and a kept orphan
  blocks Django's migrations everywhere).

The resolution is an ordinary local write: it runs with
`_syncmesh_state.applying = 0`, so the capture triggers log it, and it is
captured (stamped) in the same transaction, after the merge or the capture
that revealed the orphan.  Deleting a child may orphan its own children:
the search goes on, round by round, until a round deletes nothing.

**Which site resolves.** Only an orphan whose parent is *known* dead here
(its shadow row has an even causal length) is touched; a child whose
parent this node has never seen may simply have arrived first.  Even a
known-dead parent can mislead: the feed moves a row to the seq of its
latest write, so a batch may bring a parent's delete before an earlier
write that moved the child to another parent, or a child written under a
parent's *new* life (deleted, then inserted again with the same key)
before that re-insert (issue 12: the re-insert's row moved behind the
child's, and a node holding only the delete cascaded an acknowledged
child of a live parent).  Neither the stamps nor the deleter can tell
those apart from a child written concurrently with the delete.  So a
node resolves an orphan only when it wrote the child's reference itself
(the latest of the child's insert and referencing-column stamps is its
own): it wrote the child under a life of the parent that it then held,
and causal lengths only grow, so the parent dead here means that very
life ended.  Every other node waits for that site's resolution, which
reaches it like any write.  Concurrent identical deletes (or NULL
writes) merge.

Candidates come from the keys a merge or a capture just wrote: alive rows
are checked as children, deleted rows as parents.  The first capture of a
run looks at whole tables once (orphans made before this module, or while
the node was down).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from syncmesh.errors import StoreError
from syncmesh.model import ChangeBatch, SqlValue
from syncmesh.store.sqlite import capture
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import quote_identifier
from syncmesh.store.sqlite.execute import execute_checked, execute_one
from syncmesh.store.sqlite.table import KEYS_PER_QUERY, TableSql

log = logging.getLogger(__name__)

Key = tuple[SqlValue, ...]
# Per table: keys just written alive (maybe children) and keys just deleted
# (maybe parents).
Keys = dict[str, set[Key]]

CASCADE, SET_NULL, KEEP, DECLARED = "cascade", "set-null", "keep", "declared"
SEARCH = "*"  # the table of a problem of the whole search (orphan_problems)
# Rounds of cascading deletes at most (a chain deeper than this is resolved
# further by the whole-table look of the node's next start): a bound, so
# that no data makes the loop endless.
CASCADE_ROUNDS_MAX = 1000


@dataclass(frozen=True, slots=True)
class Declared:
    """One FOREIGN KEY clause of a table, as `PRAGMA foreign_key_list` reads it."""

    child: str
    parent: str
    columns: tuple[str, ...]  # the child's referencing columns
    referenced: tuple[str, ...]  # the parent's columns, aligned; () = its primary key
    on_delete: str  # "CASCADE", "SET NULL", "NO ACTION", "RESTRICT", "SET DEFAULT"


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """A foreign key between two tracked tables that references the parent's primary key."""

    child: TableSql
    parent: TableSql
    columns: tuple[str, ...]  # the child's columns, aligned with the parent's key columns
    policy: str  # cascade, set-null or keep, for this key
    # Why the policy cannot act (set-null on a NOT NULL column); the orphan is kept.
    blocked: str | None
    # Orphans of this key: the child's key, then its reference's stamps, each with its site.
    select: str
    child_match: str  # "(c.k1, ...)": the child's key, to match IN (VALUES ...)
    parent_match: str  # "(c.f1, ...)": its reference, in the parent key's order
    resolve: str  # the DELETE or UPDATE of one child, by its key


@dataclass(slots=True)
class Resolved:
    """What one resolution did."""

    deleted: int = 0
    nulled: int = 0
    kept: int = 0  # orphans the policy keeps (keep, or it cannot act)
    waiting: int = 0  # orphans left to the site that wrote the child's reference
    failed: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.deleted + self.nulled


def declared_keys(connection: sqlite3.Connection, table: str) -> list[Declared]:
    """The FOREIGN KEY clauses of `table` (composite ones as one)."""
    by_id: dict[int, list[tuple[str, str, str | None, str]]] = {}
    quoted = quote_identifier(table)
    for row in connection.execute(f"PRAGMA foreign_key_list({quoted})"):
        # id, seq, table, from, to, on_update, on_delete, match
        by_id.setdefault(int(row[0]), []).append((str(row[2]), str(row[3]), row[4], str(row[6])))
    keys = []
    for _id, parts in sorted(by_id.items()):
        referenced = tuple(str(to) for _p, _c, to, _a in parts if to is not None)
        keys.append(
            Declared(
                table,
                parts[0][0],
                tuple(column for _p, column, _to, _a in parts),
                referenced if len(referenced) == len(parts) else (),
                parts[0][3].upper(),
            )
        )
    return keys


def policy_of(policy: str, on_delete: str) -> str:
    """The action a table's policy takes for a key declared with `on_delete`."""
    if policy != DECLARED:
        return policy
    if on_delete == "SET NULL":
        return SET_NULL
    return CASCADE


def foreign_keys(ctx: StoreContext) -> list[ForeignKey]:
    """The foreign keys the resolution handles: tracked child, tracked parent, its key.

    A key that references a table not tracked here, or other columns than
    the parent's primary key, cannot be judged by its shadow rows: its
    orphans are only counted (`orphan_counts`).  Worked out again when the
    schema or the tracked tables change (the capture calls this each time).
    """
    version = (_schema_version(ctx), id(ctx.tables), ctx.tables_version, id(ctx.orphan_policy))
    if ctx.orphan_keys is not None and ctx.orphan_keys[0] == version:
        return list(ctx.orphan_keys[1])
    keys = _foreign_keys(ctx)
    ctx.orphan_keys = (version, keys)
    return list(keys)


def _schema_version(ctx: StoreContext) -> int:
    return int(ctx.connection.execute("PRAGMA schema_version").fetchone()[0])


def _foreign_keys(ctx: StoreContext) -> list[ForeignKey]:
    # SQLite's names are case-insensitive: a clause may spell them otherwise.
    tables = {name.lower(): table for name, table in ctx.tables.items()}
    keys = []
    for child in ctx.tables.values():
        spelled = {column.lower(): column for column in (*child.spec.pk, *child.values)}
        for declared in declared_keys(ctx.connection, child.spec.name):
            parent = tables.get(declared.parent.lower())
            if parent is None:
                continue
            pk = [column.lower() for column in parent.spec.pk]
            referenced = [column.lower() for column in declared.referenced or parent.spec.pk]
            if sorted(referenced) != sorted(pk) or len(referenced) != len(declared.columns):
                continue
            # The child's columns in the order of the parent's key, spelled as the child does.
            by_key = dict(zip(referenced, declared.columns, strict=True))
            columns = tuple(spelled.get(by_key[key].lower(), by_key[key]) for key in pk)
            policy = policy_of(ctx.orphan_policy.for_table(child.spec.name), declared.on_delete)
            keys.append(_foreign_key(ctx.connection, child, parent, columns, policy))
    return keys


def _foreign_key(
    connection: sqlite3.Connection,
    child: TableSql,
    parent: TableSql,
    columns: tuple[str, ...],
    policy: str,
) -> ForeignKey:
    quoted = [quote_identifier(column) for column in columns]
    child_keys = [quote_identifier(column) for column in child.spec.pk]
    # A referencing column's stamp: its cell's, or the row's insert for a key column.
    # (A value column's stamp is in the shadow column of its slot: store/sqlite/layout.py.)
    # Each stamp with its site's ordinal (0: this node), the insert's first.
    stamps = ["cs.cl_hlc, cs.cl_site"] + [
        f"cs.h{slot}, cs.s{slot}"
        for slot in (child.layout.slot_of(column) for column in columns if column in child.values)
    ]
    select = (
        f"SELECT {', '.join(f'c.{column}' for column in child_keys)}, {', '.join(stamps)}"
        f" FROM {child.table} AS c"
        f" JOIN {child.shadow} AS cs ON "
        + " AND ".join(f"cs.k{index} = c.{column}" for index, column in enumerate(child_keys))
        + f" JOIN {parent.shadow} AS ps ON ps.cl % 2 = 0 AND "
        + " AND ".join(f"ps.k{index} = c.{column}" for index, column in enumerate(quoted))
        + f" WHERE NOT EXISTS (SELECT 1 FROM {parent.table} AS p WHERE "
        + " AND ".join(
            f"p.{quote_identifier(key)} = c.{column}"
            for key, column in zip(parent.spec.pk, quoted, strict=True)
        )
        + ")"
    )
    child_match = "(" + ", ".join(f"c.{column}" for column in child_keys) + ")"
    parent_match = "(" + ", ".join(f"c.{column}" for column in quoted) + ")"
    where_key = " AND ".join(f"{column} = ?" for column in child_keys)
    blocked = None
    if policy == SET_NULL:
        not_null = _not_null_columns(connection, child.spec.name)
        refused = [column for column in columns if column in not_null or column in child.spec.pk]
        if refused:
            blocked = (
                f"orphan policy set-null, but {', '.join(map(repr, refused))} cannot be NULL"
                " (NOT NULL or part of the primary key): the orphan is kept; choose"
                f' `{child.spec.name} = "cascade"` in [tables.orphans]'
            )
        resolve = (
            f"UPDATE {child.table} SET {', '.join(f'{column} = NULL' for column in quoted)}"
            f" WHERE {where_key}"
        )
    else:
        resolve = f"DELETE FROM {child.table} WHERE {where_key}"
    return ForeignKey(
        child, parent, columns, policy, blocked, select, child_match, parent_match, resolve
    )


def _not_null_columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {
        str(row[1])
        for row in connection.execute(f"PRAGMA table_info({quote_identifier(table)})")
        if row[3]
    }


# -- candidates -----------------------------------------------------------------


def batch_keys(ctx: StoreContext, batch: ChangeBatch) -> tuple[Keys, Keys]:
    """The keys a batch brings, alive (maybe children) and deleted (maybe parents).

    Taken from the incoming rows, whether or not they won the merge: the
    search looks at the tables as they are after it.
    """
    written: Keys = {}
    gone: Keys = {}
    involved = involved_tables(ctx)
    for incoming in batch.tables:
        if incoming.table not in involved:
            continue
        count = incoming.key_count
        for row in incoming.rows:
            cl = row[count]
            alive = isinstance(cl, int) and cl % 2 == 1
            (written if alive else gone).setdefault(incoming.table, set()).add(tuple(row[:count]))
    return written, gone


def involved_tables(ctx: StoreContext) -> set[str]:
    """The tracked tables on either side of a foreign key the resolution handles."""
    return {
        name for key in foreign_keys(ctx) for name in (key.child.spec.name, key.parent.spec.name)
    }


def keys_out(ctx: StoreContext) -> dict[str, dict[Key, bool]] | None:
    """Where a capture should put the keys it stamps; None (not kept) without foreign keys."""
    return {} if foreign_keys(ctx) else None


def captured_keys(folded: Mapping[str, Mapping[Key, bool]] | None) -> tuple[Keys, Keys]:
    """The keys a capture stamped (`capture_pending(..., keys_out=)`), alive and deleted."""
    written: Keys = {}
    gone: Keys = {}
    for table, keys in (folded or {}).items():
        for key, alive in keys.items():
            (written if alive else gone).setdefault(table, set()).add(key)
    return written, gone


def merged(*pairs: tuple[Keys, Keys]) -> tuple[Keys, Keys]:
    written: Keys = {}
    gone: Keys = {}
    for pair_written, pair_gone in pairs:
        for target, source in ((written, pair_written), (gone, pair_gone)):
            for table, keys in source.items():
                target.setdefault(table, set()).update(keys)
    return written, gone


# -- resolution -----------------------------------------------------------------


def resolve(ctx: StoreContext, written: Keys, gone: Keys, *, everything: bool = False) -> Resolved:
    """Resolve the orphans among these keys (all of them: `everything`), captured.

    Inside the caller's transaction, after its merge (`applying` is 0
    again); each round's writes are captured (stamped as ours) at once.
    A failure of the whole search (a statement SQLite refuses) is undone
    and reported: it never fails the caller's transaction.
    """
    done = Resolved()
    keys = foreign_keys(ctx)
    if not keys or not (written or gone or everything):
        return done
    if ctx.orphans_off:
        return Resolved(failed=[ctx.orphans_off])
    connection = ctx.connection
    # What a capture inside changes outside the file, to undo with it.
    captured, run_recorded = ctx.rows_captured_uncommitted, ctx.run_recorded
    connection.execute("SAVEPOINT syncmesh_orphans")
    try:
        _resolve_rounds(ctx, keys, written, gone, everything, done)
    except sqlite3.Error as exc:
        connection.execute("ROLLBACK TO syncmesh_orphans")
        connection.execute("RELEASE syncmesh_orphans")
        ctx.rows_captured_uncommitted, ctx.run_recorded = captured, run_recorded
        # A capture inside may have moved the hash trees: rebuilt on next use.
        ctx.summaries.invalidate()
        message = f"the search for foreign-key orphans failed, nothing resolved: {exc}"
        log.error("%s", message)
        ctx.orphan_problems[(SEARCH, ())] = message
        return Resolved(failed=[message])
    except StoreError as exc:
        # An application trigger's RAISE(ROLLBACK) (or ON CONFLICT ROLLBACK)
        # ended the caller's whole transaction: it fails, and would fail
        # again on every retry of the batch.  No more resolutions this run,
        # so that the retry goes through (the orphans stay, reported).
        ctx.orphans_off = (
            f"foreign-key orphans are not resolved until the node restarts: a resolution"
            f" rolled back the whole transaction ({exc}); find the trigger or constraint"
            " with ROLLBACK on the child table, or set its policy to keep"
        )
        ctx.orphan_problems[(SEARCH, ())] = ctx.orphans_off
        log.error("%s", ctx.orphans_off)
        raise
    connection.execute("RELEASE syncmesh_orphans")
    ctx.orphan_problems.pop((SEARCH, ()), None)
    if everything and done.kept:
        log.warning(
            "%d rows reference a deleted parent and are kept by the orphan policy:"
            " PRAGMA foreign_key_check reports them, and Django's migrate on SQLite fails"
            " until they are gone (syncmesh status; docs/keys.md, Foreign keys)",
            done.kept,
        )
    if done.written:
        log.info(
            "foreign-key orphans resolved: %d deleted, %d set to NULL", done.deleted, done.nulled
        )
    return done


def _resolve_rounds(
    ctx: StoreContext,
    keys: list[ForeignKey],
    written: Keys,
    gone: Keys,
    everything: bool,
    done: Resolved,
) -> None:
    for _round in range(CASCADE_ROUNDS_MAX):
        found = _orphans(ctx, keys, written, gone, everything, done)
        if not found:
            return
        everything = False
        written, gone = {}, {}
        before = done.written
        for key, children in found:
            deleted = _act(ctx, key, children, done)
            if deleted:
                gone.setdefault(key.child.spec.name, set()).update(deleted)
        if done.written > before:
            # Stamped as our own writes now: a deleted child is then a parent
            # this node deleted, whose own children the next round resolves.
            capture.capture_pending(ctx)
        if not gone:
            return
    log.warning(
        "foreign-key orphans: a cascade deeper than %d levels; the rest at the next start",
        CASCADE_ROUNDS_MAX,
    )


def _orphans(
    ctx: StoreContext,
    keys: list[ForeignKey],
    written: Keys,
    gone: Keys,
    everything: bool,
    done: Resolved,
) -> list[tuple[ForeignKey, list[Key]]]:
    """Per foreign key: the orphans among the candidates that this node resolves now."""
    found = []
    connection = ctx.connection
    for key in keys:
        rows: list[Iterable[SqlValue]] = []
        if everything:
            rows.extend(connection.execute(key.select))
        else:
            rows.extend(_matching(connection, key, key.child_match, written, key.child))
            rows.extend(_matching(connection, key, key.parent_match, gone, key.parent))
        children: dict[Key, None] = {}
        count = key.child.key_count
        # A policy that writes nothing (keep, or one that cannot act) is safe to apply
        # to every orphan; a delete or a NULL only to the ones this node referenced.
        writes = key.policy != KEEP and key.blocked is None
        for row in rows:
            values = list(row)
            child_key = tuple(values[:count])
            if not writes or _written_here(values[count:]):
                children[child_key] = None
            else:
                done.waiting += 1
        if not children:
            continue
        if not writes:
            done.kept += len(children)
            if key.blocked is not None:
                for child_key in children:
                    _problem(ctx, key, child_key, key.blocked, done)
            continue
        found.append((key, list(children)))
    return found


def _written_here(stamps: list[SqlValue]) -> bool:
    """Whether the latest of a child's reference stamps, (hlc, site ordinal) pairs, is ours.

    Ordinal 0 is this node.  Ordinals are this file's own, so a tie (two
    sites, one HLC) counts as ours at each of them: both resolve, and their
    identical writes merge, rather than both waiting for ever.
    """
    pairs = [
        (int(hlc), int(site or 0) == 0)
        for hlc, site in zip(stamps[::2], stamps[1::2], strict=True)
        if hlc is not None
    ]
    return bool(pairs) and max(pairs)[1]


def _matching(
    connection: sqlite3.Connection,
    key: ForeignKey,
    match: str,
    candidates: Keys,
    table: TableSql,
) -> Iterable[Iterable[SqlValue]]:
    """The orphans of `key` whose `match` columns hold one of `table`'s candidate keys."""
    wanted = list(candidates.get(table.spec.name, ()))
    width = table.key_count
    step = KEYS_PER_QUERY // max(1, width)
    marks = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(wanted), step):
        chunk = wanted[start : start + step]
        sql = f"{key.select} AND {match} IN (VALUES {', '.join([marks] * len(chunk))})"
        yield from execute_one(connection, sql, [value for each in chunk for value in each])


def _act(ctx: StoreContext, key: ForeignKey, children: list[Key], done: Resolved) -> list[Key]:
    """Delete or set NULL, row by row where SQLite refuses; returns the keys deleted."""
    connection = ctx.connection

    def settled(row: Iterable[SqlValue]) -> bool:
        # Already deleted this round (two keys of one child): nothing to do.
        return (
            execute_one(connection, key.child.sql_capture.exists_sql, tuple(row)).fetchone() is None
        )

    failures = dict(execute_checked(connection, key.resolve, children, settled))
    for index, reason in failures.items():
        _problem(ctx, key, children[index], reason, done)
    resolved = [child for index, child in enumerate(children) if index not in failures]
    for child in resolved:
        ctx.orphan_problems.pop((key.child.spec.name, child), None)
    if key.policy == SET_NULL:
        done.nulled += len(resolved)
        return []
    done.deleted += len(resolved)
    return resolved


def _problem(ctx: StoreContext, key: ForeignKey, child: Key, reason: str, done: Resolved) -> None:
    message = (
        f"table {key.child.spec.name!r}, key {child!r}: its parent in"
        f" {key.parent.spec.name!r} is deleted; {reason}"
    )
    if (key.child.spec.name, child) not in ctx.orphan_problems:
        log.warning("foreign-key orphan not resolved: %s", message)
    ctx.orphan_problems[(key.child.spec.name, child)] = reason
    done.failed.append(message)


def problems(ctx: StoreContext) -> list[str]:
    """The orphans the policy could not resolve, in words; a row fixed since drops out.

    Fixed: deleted, given another parent or NULL by hand, or its parent
    is back.  One lookup per listed row.
    """
    keys = foreign_keys(ctx)
    for table, child in list(ctx.orphan_problems):
        if table == SEARCH:
            continue
        candidates = {table: {child}}
        still = any(
            next(iter(_matching(ctx.connection, key, key.child_match, candidates, key.child)), None)
            is not None
            for key in keys
            if key.child.spec.name == table
        )
        if not still:
            del ctx.orphan_problems[(table, child)]
    listed = sorted(ctx.orphan_problems.items(), key=lambda item: (item[0][0], repr(item[0][1])))
    return [
        reason if table == SEARCH else f"table {table!r}, key {child!r}: {reason}"
        for (table, child), reason in listed
    ]


# -- the operations that reveal orphans -------------------------------------------


def capture_and_resolve(ctx: StoreContext) -> int:
    """`capture.capture`, then the orphans among the keys it stamped; returns rows stamped.

    The first call of a run also looks at whole tables once.
    """
    ctx.require_init()
    scan = not ctx.orphans_scanned
    if scan and not foreign_keys(ctx):
        scan, ctx.orphans_scanned = False, True
    if not scan and not capture.has_pending(ctx):
        return 0
    with ctx.transaction():
        folded = keys_out(ctx)
        stamped = capture.capture_pending(ctx, keys_out=folded)
        before = ctx.rows_captured_uncommitted
        written, gone = captured_keys(folded)
        resolve(ctx, written, gone, everything=scan)
        stamped += ctx.rows_captured_uncommitted - before
    ctx.orphans_scanned = True
    return stamped


def orphan_counts(ctx: StoreContext) -> dict[str, int]:
    """Per tracked table, its rows whose foreign key names a parent row that is not there.

    What `PRAGMA foreign_key_check` would report (and Django's `migrate`
    refuse), for every foreign key of a tracked table, whatever its parent.
    One scan of each table that declares a foreign key, again only when the
    file changed (another connection's commit, our head, the schema).
    """
    version = (
        int(ctx.connection.execute("PRAGMA data_version").fetchone()[0]),
        ctx.head(),
        _schema_version(ctx),
        id(ctx.tables),
        ctx.tables_version,
    )
    if ctx.orphan_counts is not None and ctx.orphan_counts[0] == version:
        return dict(ctx.orphan_counts[1])
    counts = _counts(ctx)
    ctx.orphan_counts = (version, counts)
    return dict(counts)


def _counts(ctx: StoreContext) -> dict[str, int]:
    counts: dict[str, int] = {}
    connection = ctx.connection
    for child in ctx.tables.values():
        missing = []
        for declared in declared_keys(connection, child.spec.name):
            referenced = declared.referenced or _primary_key(connection, declared.parent)
            quoted = [quote_identifier(column) for column in declared.columns]
            present = " AND ".join(f"c.{column} IS NOT NULL" for column in quoted)
            if not _exists(connection, declared.parent):
                missing.append(f"({present})")  # every reference is to nothing
                continue
            if len(referenced) != len(quoted):
                continue  # a "foreign key mismatch" to SQLite: not a row's fault
            match = " AND ".join(
                f"p.{quote_identifier(parent_column)} = c.{column}"
                for parent_column, column in zip(referenced, quoted, strict=True)
            )
            missing.append(
                f"({present} AND NOT EXISTS (SELECT 1 FROM"
                f" {quote_identifier(declared.parent)} AS p WHERE {match}))"
            )
        if not missing:
            continue
        count = int(
            connection.execute(
                f"SELECT count(*) FROM {child.table} AS c WHERE {' OR '.join(missing)}"
            ).fetchone()[0]
        )
        if count:
            counts[child.spec.name] = count
    return counts


def _primary_key(connection: sqlite3.Connection, table: str) -> tuple[str, ...]:
    columns = [
        (int(row[5]), str(row[1]))
        for row in connection.execute(f"PRAGMA table_info({quote_identifier(table)})")
        if row[5]
    ]
    return tuple(name for _order, name in sorted(columns))


def _exists(connection: sqlite3.Connection, table: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None
