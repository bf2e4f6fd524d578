"""What a user table looks like in SQLite, and whether it can be replicated safely.

Refusals (raise SchemaError): no such table, no primary key, a name that
clashes with syncmesh's own tables, a key column with a collation other
than BINARY (`refuse_key_collations`, at `track`), a key column declared
without a type (`refuse_untyped_keys`, at `track`), a key that SQLite
allocates itself (`refuse_allocated_keys`, at `track`, unless the user
opts in: docs/keys.md).  Warnings (returned as text): integer keys the
application allocates, secondary UNIQUE indexes and foreign keys, which a
multi-master merge can violate (see docs/keys.md), and the
application's own triggers that would run again when a peer's row is
applied (docs/keys.md, "Application triggers").
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sqlite3
from collections.abc import Collection, Iterable
from pathlib import Path

from syncmesh.errors import SchemaError
from syncmesh.model import TableSpec
from syncmesh.schema import quote_identifier

RESERVED_PREFIX = "_syncmesh"
# What an application trigger's WHEN adds to run only for local writes: the
# apply sets `applying` inside its transaction (ddl.py), as for capture.
APPLY_GUARD = "(SELECT applying FROM _syncmesh_state) = 0"


def table_problems(
    path: str | Path, tables: list[str], allow_integer_keys: Collection[str] = ()
) -> list[str]:
    """`syncmesh.store.open.table_problems`: each table `track` would refuse, read-only."""
    try:
        connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"cannot open {path}: {exc}"]
    problems = []
    try:
        for table in tables:
            try:
                spec = read_table_spec(connection, table)
                if not _is_tracked(connection, table):  # as `track`: tracked ones keep syncing
                    refuse_key_collations(connection, spec)
                    refuse_untyped_keys(spec)
                    refuse_allocated_keys(connection, spec, allow_integer_keys, str(path))
            except SchemaError as exc:
                problems.append(str(exc))
            except sqlite3.Error as exc:
                return [*problems, f"cannot read {path}: {exc}"]
    finally:
        connection.close()
    return problems


def application_tables(connection: sqlite3.Connection) -> list[str]:
    """The database's own tables, by name: not syncmesh's (`_syncmesh*`), not SQLite's."""
    rows = connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows if not name.startswith(RESERVED_PREFIX)]


def _is_tracked(connection: sqlite3.Connection, table: str) -> bool:
    """Whether `table` is tracked in this file already (read-only; False before `init`)."""
    try:
        row = connection.execute("SELECT 1 FROM _syncmesh_tables WHERE name = ?", (table,))
        return row.fetchone() is not None
    except sqlite3.OperationalError:  # no such table: not initialised
        return False


GENERATED_HIDDEN_FLAGS = (2, 3)  # PRAGMA table_xinfo's `hidden`: VIRTUAL, STORED


def read_table_spec(connection: sqlite3.Connection, table: str) -> TableSpec:
    """The columns and primary key of `table`; SchemaError if it cannot be synced."""
    if table.startswith((RESERVED_PREFIX, "sqlite_")):
        raise SchemaError(
            f"table {table!r}: names starting with {RESERVED_PREFIX!r} or 'sqlite_' are reserved"
        )
    row = connection.execute(
        "SELECT type FROM sqlite_schema WHERE name = ? AND type IN ('table', 'view')", (table,)
    ).fetchone()
    if row is None:
        raise SchemaError(f"table {table!r} does not exist in this database")
    if row[0] != "table":
        raise SchemaError(f"{table!r} is a view; only tables can be synced")
    info = connection.execute(f"PRAGMA table_xinfo({quote_identifier(table)})").fetchall()
    hidden = [
        name for _cid, name, _type, _notnull, _default, _pk, hidden_flag in info if hidden_flag == 1
    ]
    if hidden:  # (a virtual table's: those are refused above as not tables)
        raise SchemaError(f"table {table!r}: hidden columns {hidden} cannot be synced")
    # Generated columns (hidden 2: VIRTUAL, 3: STORED) are not synced: each
    # site computes them from the columns that are, as SQLite does on every
    # write, and no one can write them (docs/keys.md).
    info = [entry for entry in info if entry[6] not in GENERATED_HIDDEN_FLAGS]
    columns = tuple(str(entry[1]) for entry in info)
    declared = tuple(str(entry[2] or "") for entry in info)
    keyed = sorted((entry[5], str(entry[1])) for entry in info if entry[5] > 0)
    if not keyed:
        raise SchemaError(
            f"table {table!r} has no PRIMARY KEY: syncmesh merges rows by key, so every"
            " synced table needs one.  Recreate it with a primary key, preferably a random"
            " 128-bit TEXT or BLOB key (for example: id TEXT PRIMARY KEY DEFAULT"
            " (lower(hex(randomblob(16))))), then track it again."
        )
    return TableSpec(table, columns, declared, tuple(name for _order, name in keyed))


def column_defaults(connection: sqlite3.Connection, table: str) -> dict[str, str | None]:
    """Each column's DEFAULT, as the SQL expression text of its definition (None: none)."""
    info = connection.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
    return {str(entry[1]): None if entry[4] is None else str(entry[4]) for entry in info}


def _non_binary_key_columns(
    connection: sqlite3.Connection, spec: TableSpec
) -> list[tuple[str, str]]:
    """(column, collation) for each primary-key column that does not compare BINARY."""
    found: list[tuple[str, str]] = []
    for _seq, name, _unique, origin, _partial in connection.execute(
        f"PRAGMA index_list({quote_identifier(spec.name)})"
    ).fetchall():
        if origin != "pk":
            continue
        for _seqno, _cid, column, _desc, collation, is_key in connection.execute(
            f"PRAGMA index_xinfo({quote_identifier(name)})"
        ).fetchall():
            if is_key and column is not None and str(collation).upper() != "BINARY":
                found.append((str(column), str(collation)))
    return found


def refuse_key_collations(connection: sqlite3.Connection, spec: TableSpec) -> None:
    """SchemaError if a key column compares with a collation other than BINARY.

    Keys such a collation calls equal ('a' and 'A' under NOCASE) are one row
    to SQLite but two keys to the merge, which orders and addresses keys by
    their bytes.  Concurrent inserts of 'a' at one node and 'A' at another
    leave a row on each that the other cannot take (the user table's key
    refuses it), and no merge rule can pick one without dropping an
    acknowledged write: the sites would never converge (issue 12, defect 3).
    So `track` refuses the table with the fix.  There is no opt-in: nothing
    would make it safe.  (An INTEGER PRIMARY KEY has no collation; WITHOUT
    ROWID and rowid tables report their key's collation through the "pk"
    index.)
    """
    for column, collation in _non_binary_key_columns(connection, spec):
        raise SchemaError(
            f"table {spec.name!r}: primary key column {column!r} has COLLATE {collation}:"
            " keys it calls equal (such as 'a' and 'A' under NOCASE) are one row to SQLite"
            " but two to syncmesh, so concurrent inserts of both at two nodes could never"
            " converge.  Recreate the table with a BINARY key (drop the COLLATE clause from"
            " the key) and normalise case in the application, or keep a case-insensitive"
            " UNIQUE index on another column (docs/keys.md)."
        )


UNTYPED_KEY_RISK = (
    "SQLite calls 1 and 1.0 (or 0 and -0.0) one key, but"
    " syncmesh keeps storage classes apart, so a key changed from 1 to 1.0, or inserted as"
    " 1 at one site and as 1.0 at another, leaves the sites with different rows"
)
UNTYPED_KEY_FIX = (
    "Recreate the table with the key's type declared: TEXT for text ids (random UUIDs),"
    " BLOB for binary ids, NUMERIC for numbers the application picks (docs/keys.md)."
)


def untyped_key_columns(spec: TableSpec) -> list[str]:
    """The key columns declared without a type (BLOB affinity: any storage class goes)."""
    return [
        column for column in spec.pk if not spec.declared_types[spec.columns.index(column)].strip()
    ]


def refuse_untyped_keys(spec: TableSpec) -> None:
    """SchemaError if a key column was declared without a type (issue 12, defect 3).

    Such a column keeps each value's storage class, and SQLite compares
    INTEGER 1 and REAL 1.0 as equal: one row to SQLite, two keys to the
    merge, which addresses keys by storage class and bytes.  A key changed
    from 1 to 1.0 keeps shipping the old key's class, and concurrent
    inserts of both never converge.  A declared type fixes it: TEXT and
    NUMERIC store one class per value, and a BLOB-declared key is for
    binary ids (it is warned about if it may hold numbers).  Tables tracked
    before this refusal keep syncing and are reported when `serve` starts.
    """
    for column in untyped_key_columns(spec):
        raise SchemaError(
            f"table {spec.name!r}: primary key column {column!r} has no declared type,"
            f" so it has no fixed affinity: {UNTYPED_KEY_RISK}.  {UNTYPED_KEY_FIX}"
        )


_AUTOINCREMENT = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)
_RANDOM_CALL = re.compile(r"\brandom(blob)?\s*\(", re.IGNORECASE)
ALLOW_INTEGER_KEYS_FLAG = "--allow-integer-keys"
ALLOW_INTEGER_KEYS_SETTING = "[tables] allow_integer_keys"
UUID_KEY_FIX = (
    "Use random UUID keys instead: in SQL `id TEXT PRIMARY KEY DEFAULT"
    " (lower(hex(randomblob(16))))`; in Django `id = models.UUIDField(primary_key=True,"
    " default=uuid.uuid4, editable=False)`; in SQLAlchemy `mapped_column(Uuid,"
    " primary_key=True, default=uuid.uuid4)` or `mapped_column(String(36), primary_key=True,"
    " default=lambda: str(uuid.uuid4()))`."
)


def _integer_key_column(spec: TableSpec) -> str | None:
    """The key column of a single-column key with integer affinity (declared type has INT)."""
    if len(spec.pk) != 1:
        return None
    declared = spec.declared_types[spec.columns.index(spec.pk[0])]
    return spec.pk[0] if "INT" in declared.upper() else None


def allocated_key(connection: sqlite3.Connection, spec: TableSpec) -> str | None:
    """How SQLite allocates `spec`'s key values by itself, in words; None if it does not.

    Two cases, both numbering rows per site so that two sites pick the same
    key for different rows:

    - a rowid alias: SQLite's own rule is a single-column key declared
      exactly INTEGER of a rowid table, with or without AUTOINCREMENT, except
      `INTEGER PRIMARY KEY DESC` in a column definition.  Rather than
      re-parse the SQL, this asks SQLite: every other primary key (not an
      alias, or of a WITHOUT ROWID table) has an index of origin "pk".  A
      DEFAULT on an alias is never used (the rowid is);
    - a single-column integer key that is no alias but has a DEFAULT that is
      not random (a constant, the time): every site computes the same values.
    """
    column = _integer_key_column(spec)
    if column is None:
        return None
    row = connection.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (spec.name,)
    ).fetchone()
    if row is None:  # gone (a tracked table dropped): nothing to allocate
        return None
    origins = [
        entry[3]
        for entry in connection.execute(f"PRAGMA index_list({quote_identifier(spec.name)})")
    ]
    if "pk" not in origins:
        kind = (
            "INTEGER PRIMARY KEY AUTOINCREMENT"
            if _AUTOINCREMENT.search(str(row[0] or ""))
            else "INTEGER PRIMARY KEY"
        )
        return (
            f"an {kind}, which SQLite allocates at each site on its own (the largest id plus one)"
        )
    for _cid, name, _type, _notnull, default, _pk in connection.execute(
        f"PRAGMA table_info({quote_identifier(spec.name)})"
    ):
        if name == column and default is not None and not _RANDOM_CALL.search(str(default)):
            return (
                f"an integer key with DEFAULT {default}, which gives the same values at every site"
            )
    return None


def _allocated_key_risk(spec: TableSpec, how: str) -> str:
    return (
        f"table {spec.name!r}: its primary key {spec.pk[0]!r} is {how}, so two sites that"
        " insert while apart pick the same id, and syncmesh merges their unrelated rows"
        " into one and re-attaches child rows to the wrong parent."
    )


def _opt_in_command(database: str, spec: TableSpec) -> str:
    quoted = " ".join(shlex.quote(word) for word in (database, spec.name))
    return f"syncmesh track {quoted} {ALLOW_INTEGER_KEYS_FLAG}"


def refuse_allocated_keys(
    connection: sqlite3.Connection, spec: TableSpec, allowed: Collection[str], database: str
) -> None:
    """SchemaError if SQLite allocates `spec`'s keys and the user did not opt in for it.

    The merge takes one key for one thing at every site (docs/keys.md), so
    locally numbered keys silently merge unrelated rows (issue 14, part 5).
    The opt-in (`allowed`: table names) is for a table only one site writes,
    or whose ids the application allocates without collision.
    """
    how = allocated_key(connection, spec)
    if how is None or spec.name in allowed:
        return
    raise SchemaError(
        f"{_allocated_key_risk(spec, how)}  {UUID_KEY_FIX}  If only one site ever writes"
        " this table, or the application allocates its ids so that sites never collide"
        f" (for example per-site ranges), track it anyway: `{_opt_in_command(database, spec)}`,"
        f' or {ALLOW_INTEGER_KEYS_SETTING} = ["{spec.name}"] for `serve` (docs/keys.md,'
        ' "Integer keys").'
    )


def allocated_key_warning(
    connection: sqlite3.Connection, spec: TableSpec, database: str
) -> str | None:
    """The warning for a tracked table whose keys SQLite allocates, without the opt-in.

    Such a table was tracked before `track` refused these keys; it keeps
    syncing (refusing it now would stop a working deployment), and this
    says what to do when `serve` starts, in status and on the dashboard.
    """
    how = allocated_key(connection, spec)
    if how is None:
        return None
    return (
        f"{_allocated_key_risk(spec, how)}  It was tracked before syncmesh refused such"
        f" keys and keeps syncing.  {UUID_KEY_FIX}  If only one site writes it, or its ids"
        " never collide (per-site ranges), say so and this warning stops:"
        f" `{_opt_in_command(database, spec)}` (docs/keys.md)."
    )


def _key_collation_warnings(connection: sqlite3.Connection, spec: TableSpec) -> list[str]:
    """A warning per key column that compares with a collation other than BINARY.

    `track` refuses such tables (`refuse_key_collations`); this reports one
    tracked before that refusal existed, when `serve` starts.
    """
    return [
        f"table {spec.name!r}: primary key column {column!r} has COLLATE"
        f" {collation}: keys it calls equal (such as 'a' and 'A' under NOCASE)"
        " are one row to SQLite but two to syncmesh, and concurrent inserts of"
        " both at two nodes never converge, so replicas can differ; `track` refuses"
        " such tables today.  Recreate the table with a BINARY key (drop the"
        " COLLATE clause from the key) (docs/keys.md)."
        for column, collation in _non_binary_key_columns(connection, spec)
    ]


def table_warnings(connection: sqlite3.Connection, spec: TableSpec) -> list[str]:
    """Risks of replicating `spec` multi-master, in words an operator can act on."""
    warnings: list[str] = []
    quoted = quote_identifier(spec.name)
    if _integer_key_column(spec) is not None and allocated_key(connection, spec) is None:
        warnings.append(
            f"table {spec.name!r}: integer primary key {spec.pk[0]!r} is not allocated by"
            " SQLite, so the application picks its values: make sure two sites never pick"
            " the same id for different rows (per-site ranges, or a (site, local_id) key),"
            " or they merge into one row (docs/keys.md)."
        )
    for _seq, name, unique, origin, _partial in connection.execute(
        f"PRAGMA index_list({quoted})"
    ).fetchall():
        if unique and origin != "pk":
            warnings.append(
                f"table {spec.name!r}: UNIQUE index {name!r} can be violated by writes on two"
                " nodes; such a row is quarantined (not applied) on the node that cannot take"
                " it, and the rest keeps syncing."
            )
    warnings.extend(apply_warnings(connection, spec))
    if connection.execute(f"PRAGMA foreign_key_list({quoted})").fetchall():
        warnings.append(
            f"table {spec.name!r}: FOREIGN KEY constraints can be violated when rows arrive"
            " out of order or a parent is deleted on another node.  syncmesh applies peers'"
            " rows with foreign keys unenforced (PRAGMA foreign_keys is off on its"
            " connection), so a child may briefly point at a missing parent.  A child of a"
            " parent deleted concurrently on another node is resolved by the orphan policy"
            " ([tables.orphans], default: the key's ON DELETE action, cascade otherwise;"
            " docs/keys.md, Foreign keys)."
        )
    return warnings


def application_trigger_warnings(connection: sqlite3.Connection, table: str) -> list[str]:
    """The application's triggers on `table` that would fire again on a peer's row.

    A trigger's effects at the origin are captured writes that sync like any
    other; fired again by the apply they are applied twice (a name that gets
    its suffix twice, a counter bumped at every node).  SQLite cannot turn
    triggers off per connection and the engine does not rewrite a user's
    trigger, so it names each one that does not read the apply flag, and the
    guard that makes it run for local writes only.
    """
    rows = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
        " AND name NOT LIKE '\\_syncmesh%' ESCAPE '\\' ORDER BY name",
        (table,),
    ).fetchall()
    return [
        f"table {table!r}: application trigger {name!r} also fires when a peer's row is"
        " applied, so its effects (already captured and synced from where it first ran)"
        " are applied twice and the nodes diverge.  Guard it to run for local writes"
        f" only: add `WHEN {APPLY_GUARD}` (AND-ed with any WHEN it has) and recreate it"
        ' (docs/keys.md, "Application triggers").'
        for name, sql in rows
        if "_syncmesh_state" not in (sql or "")
    ]


def fingerprint(specs: list[TableSpec]) -> str:
    """A short hash of the tracked tables' names, columns, types and keys.

    Two nodes sync only when their fingerprints match: a column that one side
    lacks would silently drop values on the other.
    """
    canonical = [
        [
            spec.name,
            list(spec.columns),
            [kind.upper() for kind in spec.declared_types],
            list(spec.pk),
        ]
        for spec in sorted(specs, key=lambda spec: spec.name)
    ]
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def unique_column_sets(connection: sqlite3.Connection, table: str) -> list[tuple[str, ...]]:
    """The column sets of `table`'s secondary UNIQUE indexes (expression indexes left out)."""
    quoted = quote_identifier(table)
    sets: list[tuple[str, ...]] = []
    for _seq, name, unique, origin, _partial in connection.execute(
        f"PRAGMA index_list({quoted})"
    ).fetchall():
        if not unique or origin == "pk":
            continue
        info = connection.execute(f"PRAGMA index_info({quote_identifier(name)})").fetchall()
        columns = tuple(str(entry[2]) for entry in info if entry[2] is not None)
        if columns and len(columns) == len(info):
            sets.append(columns)
    return sets


_REPLACE_CLAUSE = re.compile(r"\bON\s+CONFLICT\s+REPLACE\b", re.IGNORECASE)


def replacing_unique_sets(connection: sqlite3.Connection, table: str) -> list[tuple[str, ...]]:
    """The UNIQUE column sets of `table` if its definition says ON CONFLICT REPLACE, else [].

    Such a constraint makes a write that collides with another key's value
    delete that other row, silently (`changes()` does not count it), so the
    apply looks for a holder of the value before it writes (issue 12, defect 1).
    """
    row = connection.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    if row is None or row[0] is None or not _REPLACE_CLAUSE.search(str(row[0])):
        return []
    return unique_column_sets(connection, table)


_CONFLICT_CLAUSE = re.compile(r"\bON\s+CONFLICT\s+(REPLACE|IGNORE|FAIL|ABORT|ROLLBACK)\b", re.I)
_RAISE_IGNORE = re.compile(r"\bRAISE\s*\(\s*IGNORE\s*\)", re.I)


def untyped_key_warnings(specs: Iterable[TableSpec]) -> list[str]:
    """A warning per tracked key column declared without a type (tracked before the refusal).

    Logged when `serve` starts, shown in status and on the dashboard, as for integer keys.
    """
    return [
        f"table {spec.name!r}: primary key column {column!r} has no declared type, so it"
        f" has no fixed affinity: {UNTYPED_KEY_RISK}.  `track` refuses such tables today;"
        f" this one was tracked before and keeps syncing.  {UNTYPED_KEY_FIX}"
        for spec in specs
        for column in untyped_key_columns(spec)
    ]


def _key_affinity_warnings(spec: TableSpec) -> list[str]:
    """Key columns whose values may compare equal across storage classes.

    A key declared without a type is refused by `track` (`refuse_untyped_keys`):
    this reports one tracked before, when `serve` starts.  A BLOB-declared key has
    the same affinity; it is accepted, as binary ids are what it is for, with
    a warning to keep numbers out of it.  (INTEGER, REAL, NUMERIC and TEXT
    keys store one storage class per value: SQLite turns 1.0 into 1 in an
    INTEGER or NUMERIC column and -0.0 into 0.0 in a REAL one.)
    """
    warnings = untyped_key_warnings([spec])
    for column in spec.pk:
        declared = spec.declared_types[spec.columns.index(column)].upper()
        if "BLOB" in declared:
            warnings.append(
                f"table {spec.name!r}: primary key column {column!r} is declared"
                f" {declared!r}, which has no fixed affinity: {UNTYPED_KEY_RISK}.  Keep numbers"
                " out of it (binary ids are what it is for)."
            )
    return warnings


def apply_warnings(connection: sqlite3.Connection, spec: TableSpec) -> list[str]:
    """Table features that make SQLite skip or widen the apply's writes (issue 12).

    The apply checks every write and quarantines one that did not take
    effect as merged, so these do not lose writes; but the rows they
    refuse wait in the quarantine until someone changes the data.
    """
    warnings = _key_collation_warnings(connection, spec)
    row = connection.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (spec.name,)
    ).fetchone()
    clauses = (
        sorted({m.upper() for m in _CONFLICT_CLAUSE.findall(str(row[0] or ""))}) if row else []
    )
    if clauses:
        warnings.append(
            f"table {spec.name!r}: constraints with ON CONFLICT {'/'.join(clauses)} change"
            " what a write does without an error.  syncmesh checks every write it applies:"
            " a row that such a clause would skip, or that would delete another row"
            " (REPLACE), is quarantined instead, and waits there until the data is changed"
            " (docs/keys.md).  Prefer plain constraints."
        )
    for name, sql in connection.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?",
        (spec.name,),
    ).fetchall():
        if not str(name).startswith(RESERVED_PREFIX) and _RAISE_IGNORE.search(str(sql or "")):
            warnings.append(
                f"table {spec.name!r}: trigger {name!r} can RAISE(IGNORE), which skips a"
                " write without an error.  A peer's row it skips is quarantined here (the"
                " apply checks every write), not lost; it waits until the data changes."
            )
    warnings.extend(_key_affinity_warnings(spec))
    # At `serve` start too: a trigger created after `track` is named then.
    warnings.extend(application_trigger_warnings(connection, spec.name))
    return warnings
