"""SQLite DDL: bookkeeping tables, shadow tables, log tables and the capture triggers.

Capture design (docs/adr/0002-stamp-in-capture-loop.md): a trigger cannot
call the hybrid clock, so it only *logs* the write: one row appended to the
table's `_syncmesh_log_<table>` with the operation, the key, and a bit mask
of the columns that changed.  The engine's capture transaction moments later
folds the log into the shadow table, stamping every logged cell with one HLC
and one `seq`.  Because a committed transaction is visible whole or not at
all, every local transaction lands inside one capture, so peers receive it
whole.

Triggers use only SQL that SQLite 3.37 understands and no application-defined
functions, so every writer of the file is captured: the application, the
`sqlite3` shell, another language's driver.  Writes the engine applies from
peers are not captured: `_syncmesh_state.applying` is 1 only inside the
engine's apply transaction, which clears it before commit, so no other
connection ever sees it set.

Triggers name no value column outside `UPDATE OF` (docs/adr/0013-schema-evolution.md):
SQLite re-parses every trigger after `ALTER TABLE DROP COLUMN` and fails the
drop if one reads `OLD.c` or `NEW.c`, so each value column has its own
`AFTER UPDATE OF c` trigger that logs the column's bit, and the key-change
trigger compares key columns only (a key column cannot be dropped).  A
column is captured when an UPDATE sets it, even to the value it had.
`RENAME COLUMN` rewrites the `UPDATE OF` header, which is how the engine
tells a renamed column from a dropped one (reconcile.py).

Shadow columns: `k0..kN` (the primary key values), `cl`, `cl_hlc`, `cl_site`,
`seq`, `kh` and `dg` (the row's key hash and digest in the table's hash tree,
store/summary.py), then per value column slot i (layout.py): `h{i}` (stamp) and `s{i}` (site
ordinal; 0 is this node); then `pasts`, what the row's cells know of earlier writes
(docs/adr/0007-conflict-ledger.md): JSON `{"<i>": {"p": past, "k":
knowledge}}` per value column slot i, each an object {"<ordinal>": hlc};
`p` is the value's past (what its writer knew), `k` what this node learned
beyond it from writes it discarded.  NULL when all are empty: every row
whose cells only this site wrote.  Last `vf`, the row's value fingerprints
as the engine last wrote or stamped it, 4 bytes per cell
(functions.values_fingerprint; NULL: unknown; an INTEGER, one hash of the
whole row, in rows last written before per-cell fingerprints), which tell
a table rebuild's copied rows from rows updated before the triggers were
back, and which of their cells changed (reconcile.py).
"""

from __future__ import annotations

import sqlite3

from syncmesh.model import CELL_FIELDS, DEFAULT_CELL_STAMP, TableSpec
from syncmesh.schema import quote_identifier as quote_identifier  # the backend quotes via ddl
from syncmesh.store.sqlite.layout import TableLayout
from syncmesh.store.summary import DEFAULT_CELL_HLC as DEFAULT_CELL_HLC

BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    site_id TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- newest change-feed seq (an HLC value: never reused)
    hlc INTEGER NOT NULL,            -- greatest stamp issued or observed (clock floor)
    applying INTEGER NOT NULL,       -- 1 only inside the engine's apply transaction
    tables_version INTEGER NOT NULL, -- bumped by track/untrack so a running node reloads
    restore_floor INTEGER NOT NULL   -- own-site stamps below this may be missing (restore)
);
CREATE TABLE IF NOT EXISTS _syncmesh_tables (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL               -- JSON: columns, declared types, primary key
);
CREATE TABLE IF NOT EXISTS _syncmesh_sites (
    ordinal INTEGER PRIMARY KEY,     -- 0 is this node
    site_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS _syncmesh_vector (
    site_id TEXT PRIMARY KEY,        -- origin site
    hlc INTEGER NOT NULL             -- all its writes stamped <= hlc are held here
);
CREATE TABLE IF NOT EXISTS _syncmesh_peers (
    site_id TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,       -- the peer incarnation the cursor belongs to
    cursor INTEGER NOT NULL,         -- we applied the peer's feed up to this seq
    head_seq INTEGER NOT NULL,       -- the peer's head when we last heard
    address TEXT NOT NULL DEFAULT '',
    applied_rows INTEGER NOT NULL DEFAULT 0,
    last_applied_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _syncmesh_quarantine (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    pk TEXT NOT NULL,                -- the key, as SQL literals, for people
    change BLOB NOT NULL,            -- the row change, to retry through the merge
    origin TEXT NOT NULL,            -- the peer it came from
    reason TEXT NOT NULL,
    min_stamps TEXT NOT NULL,        -- JSON {site: lowest hlc}: caps the version vector
    created_ms INTEGER NOT NULL,
    column_created TEXT              -- JSON {our column: its creation stamp here}, or NULL
);
CREATE INDEX IF NOT EXISTS _syncmesh_quarantine_key ON _syncmesh_quarantine (table_name, pk);
"""

# Where this file issued no own stamps (docs/adr/0006-restore-detection.md):
# one row per run that captured, the gap between the own writes the file
# held when the run began and the run's first possible stamp.  A peer's
# claim of an own write inside a gap is a write this file made and lost.
RUNS_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_runs (
    own_floor INTEGER NOT NULL,      -- V[self] when the run began
    run_start INTEGER NOT NULL       -- the run's own stamps are at least this
)
"""

# Per site, the greatest vector entry a reaching-head batch showed, before
# the quarantine's cap (vector.merge).  Not a vector: it claims no holding.
# It is what HELLO tells a site of its own writes (`held`), so that a row
# of its held here only in quarantine cannot hide a restore of its file
# (docs/adr/0006-restore-detection.md, residual risk 4).
SEEN_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_seen (
    site_id TEXT PRIMARY KEY,
    hlc INTEGER NOT NULL
)
"""

# Waiting cells (docs/adr/0013-schema-evolution.md, "Mixed schema
# versions"): cells of a tracked table's column this node does not have
# (yet), kept with their stamps and merged when the column appears.  One
# per table, key and column: the greatest (cl, hlc, site) wins, as in the
# merge (a cell of a later life of the row supersedes any of an earlier).
# Their stamps cap the version vector like quarantined rows do.  Cells of
# a column dropped here are discarded and counted instead, unless stamped
# after the drop here: those may be of a column added again under the name
# at another site, and are *parked* until it is added here too (they cap the
# vector like waiting cells: this node cannot relay them).
WAITING_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_waiting (
    table_name TEXT NOT NULL,        -- the local table the row belongs to
    pk BLOB NOT NULL,                -- the key values (msgpack), exact
    column_name TEXT NOT NULL,       -- the column as the sender named it
    former TEXT NOT NULL,            -- JSON list: the sender's former names of it
    cl INTEGER NOT NULL,             -- the row's causal length the cell belongs to
    hlc INTEGER NOT NULL,            -- the cell's stamp
    site_id TEXT NOT NULL,
    change BLOB NOT NULL,            -- the row change of this one cell (model.row_to_plain)
    origin TEXT NOT NULL,            -- the peer it came from
    PRIMARY KEY (table_name, pk, column_name)
);
CREATE TABLE IF NOT EXISTS _syncmesh_discarded (
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,       -- a column dropped here, as the sender named it
    cells INTEGER NOT NULL,          -- cells of it that arrived and were discarded
    PRIMARY KEY (table_name, column_name)
);
CREATE TABLE IF NOT EXISTS _syncmesh_waiting_floor (
    site_id TEXT PRIMARY KEY,
    hlc INTEGER NOT NULL             -- at most the lowest waiting stamp of the site: the cap
);
CREATE TABLE IF NOT EXISTS _syncmesh_parked (
    table_name TEXT NOT NULL,        -- as in _syncmesh_waiting
    pk BLOB NOT NULL,
    column_name TEXT NOT NULL,       -- a name dropped here, as the sender named it
    former TEXT NOT NULL,
    cl INTEGER NOT NULL,
    hlc INTEGER NOT NULL,            -- after the drop here
    site_id TEXT NOT NULL,
    change BLOB NOT NULL,
    origin TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0, -- the sender's generation of the column (0: unsaid)
    PRIMARY KEY (table_name, pk, column_name)
)
"""
# Added to _syncmesh_parked after it first shipped (opening.upgrade adds it).
PARKED_GENERATION_COLUMN = "generation"

# Membership and tombstone collection (docs/adr/0015-membership-and-tombstone-gc.md):
# every site known, with its vector as last heard; per table and origin, the
# stamp below which tombstones were collected; the greatest causal length
# collected (keys new here start above it, so a re-insert wins everywhere).
LIFECYCLE_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_members (
    site_id TEXT PRIMARY KEY,
    seen TEXT NOT NULL DEFAULT '{}', -- JSON {origin: hlc}: its vector as last heard (max)
    forgotten_ms INTEGER NOT NULL DEFAULT 0, -- > 0: taken out by `syncmesh forget`
    heard_ms INTEGER NOT NULL DEFAULT 0      -- when its vector last grew here
);
CREATE TABLE IF NOT EXISTS _syncmesh_horizon (
    table_name TEXT NOT NULL,
    site_id TEXT NOT NULL,           -- origin of the deletes
    hlc INTEGER NOT NULL,            -- its tombstones stamped <= hlc were collected here
    deleted INTEGER,                 -- the greatest stamp of them collected (NULL: not known)
    PRIMARY KEY (table_name, site_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _syncmesh_lifecycle (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cl_floor INTEGER NOT NULL,       -- even: greatest causal length collected (or learned)
    collected INTEGER NOT NULL,      -- tombstones collected here, ever
    stale_dropped INTEGER NOT NULL   -- arrivals of collected rows dropped (ADR 0015 rule 1)
);
INSERT OR IGNORE INTO _syncmesh_lifecycle VALUES (1, 0, 0, 0)
"""

# The conflict ledger (docs/adr/0007-conflict-ledger.md): the conflicts this
# node resolved, newest kept up to a limit, and a running count per table.
CONFLICT_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS _syncmesh_conflicts (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    pk TEXT NOT NULL,                -- the key values as JSON (model.json_safe)
    column_name TEXT NOT NULL,
    winner_value,                    -- no declared type: values keep their storage class
    winner_hlc INTEGER NOT NULL,
    winner_site TEXT NOT NULL,
    loser_value,
    loser_hlc INTEGER NOT NULL,
    loser_site TEXT NOT NULL,
    resolved_ms INTEGER NOT NULL,    -- when this node's merge resolved it (wall clock)
    UNIQUE (table_name, pk, column_name, loser_hlc, loser_site, winner_hlc, winner_site)
);
CREATE TABLE IF NOT EXISTS _syncmesh_conflict_totals (
    table_name TEXT PRIMARY KEY,
    total INTEGER NOT NULL           -- conflicts ever recorded here, beyond the ledger's limit
);
"""


def shadow_name(table: str) -> str:
    return f"_syncmesh_shadow_{table}"


def shadow_seq_index_name(table: str) -> str:
    return f"_syncmesh_shadow_{table}_seq"


TRIGGER_PREFIX = "_syncmesh_"


def trigger_name(table: str, kind: str) -> str:
    """The (unquoted) name of one of `table`'s capture triggers; `kind` says which."""
    return f"{TRIGGER_PREFIX}{kind}_{table}"


def update_trigger_kind(slot: int) -> str:
    """The trigger kind of the `AFTER UPDATE OF` trigger of value column slot `slot`."""
    return f"update{slot}"


def _cell_columns(slots: tuple[int, ...]) -> list[str]:
    return [name for slot in slots for name in (f"h{slot}", f"s{slot}")]


def shadow_columns(layout: TableLayout) -> list[str]:
    """Live shadow column names in table order (all plain identifiers, no quoting needed).

    A retired slot's columns (a dropped value column) stay in the shadow
    table, unread: dropping them would rewrite the whole shadow table.
    """
    keys = [f"k{index}" for index in range(len(layout.spec.pk))]
    return [
        *keys,
        "cl",
        "cl_hlc",
        "cl_site",
        "seq",
        KEY_HASH_COLUMN,
        DIGEST_COLUMN,
        *_cell_columns(layout.slots),
        PASTS_COLUMN,
    ]


def width_problem(
    connection: sqlite3.Connection,
    table: str,
    value_columns: int,
    key_columns: int,
    shadow_width: int,
) -> str | None:
    """Why syncmesh cannot sync `table` with `value_columns` (shadow `shadow_width` wide), or None.

    A row of the feed, and as the apply loads it, has four fields per value
    column (value, stamp, site, past), and the shadow table two columns per
    value column (a dropped
    one's stay); SQLite allows SQLITE_LIMIT_COLUMN columns in a table and in
    a result (2,000 by default).  Without this, `track`, an ADD COLUMN or
    the first read of the feed failed with SQLite's "too many columns",
    which names no fix.
    """
    limit = connection.getlimit(sqlite3.SQLITE_LIMIT_COLUMN)
    feed_width = key_columns + FEED_ROW_FIELDS + CELL_FIELDS * value_columns
    if shadow_width <= limit and feed_width <= limit:
        return None
    most = min(
        (limit - (shadow_width - 2 * value_columns)) // 2,
        (limit - key_columns - FEED_ROW_FIELDS) // CELL_FIELDS,
    )
    return (
        f"table {table!r} has {value_columns} value columns: syncmesh reads"
        f" {CELL_FIELDS} fields per value column in a row of its feed, and SQLite allows"
        f" {limit} columns, so it syncs tables of at most {most} value columns (columns"
        " dropped since the table was tracked count too); split the table, or leave it"
        " out of what is tracked"
    )


# A row as the apply loads it, besides its key and cells: the causal length,
# its stamp and site (the feed's), then `pasts` and the digest.
FEED_ROW_FIELDS = 5


# One column per row, not per cell: the shadow stays as wide as it was plus
# one, whatever the table's width, and a capture builds one more field.
PASTS_COLUMN = "pasts"
# The row's key hash (its place in the table's hash tree) and its digest (store.summary,
# docs/adr/0010-verify-hash-tree.md).
KEY_HASH_COLUMN = "kh"
DIGEST_COLUMN = "dg"
# The row's value fingerprint (functions.values_fp_sql): not part of the
# digest or the feed, only compared by the reconcile after a table rebuild.
VALUES_FP_COLUMN = "vf"


def shadow_ddl(layout: TableLayout) -> list[str]:
    """CREATE statements for the shadow table of `layout` and its seq index."""
    spec = layout.spec
    shadow = quote_identifier(shadow_name(spec.name))
    keys = ", ".join(f"k{index}" for index in range(len(spec.pk)))
    cells = "".join(f", h{slot} INTEGER, s{slot} INTEGER" for slot in layout.slots)
    cells += f", {PASTS_COLUMN} TEXT"
    # Key columns have no declared type, so values keep their storage class.
    key_defs = ", ".join(f"k{index}" for index in range(len(spec.pk)))
    return [
        f"CREATE TABLE IF NOT EXISTS {shadow} ({key_defs}, cl INTEGER NOT NULL,"
        f" cl_hlc INTEGER, cl_site INTEGER, seq INTEGER, {KEY_HASH_COLUMN} INTEGER,"
        f" {DIGEST_COLUMN} INTEGER{cells}, {VALUES_FP_COLUMN} BLOB, PRIMARY KEY ({keys}))"
        " WITHOUT ROWID",
        shadow_seq_index_ddl(spec.name),
    ]


def shadow_seq_index_ddl(table: str) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_identifier(shadow_seq_index_name(table))}"
        f" ON {quote_identifier(shadow_name(table))} (seq)"
    )


def shadow_slot_ddl(table: str, slot: int, default_site: int) -> list[str]:
    """ALTER statements that give `table`'s shadow the columns of a new slot.

    Every existing row reads the default stamp (DEFAULT_CELL_HLC, and
    `default_site`, the ordinal of DEFAULT_CELL_SITE) without being
    rewritten: SQLite's ADD COLUMN with a constant default touches no row,
    so adding a column to a table of a million rows costs no pass over its
    shadow.  Rows written later list the slot's columns explicitly.
    """
    assert isinstance(default_site, int)
    shadow = quote_identifier(shadow_name(table))
    return [
        f"ALTER TABLE {shadow} ADD COLUMN h{slot} INTEGER DEFAULT {DEFAULT_CELL_HLC}",
        f"ALTER TABLE {shadow} ADD COLUMN s{slot} INTEGER DEFAULT {default_site}",
    ]


def log_name(table: str) -> str:
    return f"_syncmesh_log_{table}"


def log_ddl(spec: TableSpec) -> str:
    """The pending-change log of `spec`: an append-only table the triggers write.

    Appending to a rowid table is the cheapest write SQLite has, which keeps
    the cost a trigger adds to the application's own write small.
    """
    keys = "".join(f", k{index}" for index in range(len(spec.pk)))
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(log_name(spec.name))}"
        f" (id INTEGER PRIMARY KEY, op INTEGER NOT NULL, mask INTEGER NOT NULL{keys})"
    )


# The stamp of a cell that holds its column's default because ADD COLUMN (or a
# rebuild that added the column) filled it in: nobody wrote it.  Every site
# gives such cells the same stamp, older than any write, so the rows need not
# be sent again, digests agree, and any real write wins.  (Left unstamped, the
# cell would ship its value without a stamp, which the codec refuses, and an
# apply of the row elsewhere would write NULL over the default.)  Trailing
# such cells are left out of a row's digest (store.summary), so ADD COLUMN
# changes no digest.
DEFAULT_CELL_SITE = DEFAULT_CELL_STAMP.site_id

# Log operations.  `mask` has bit i set when value column slot i changed; -1 is all.
OP_INSERT, OP_DELETE, OP_UPDATE = 1, 2, 3
OP_CHECK = 4  # the row may have been deleted by a REPLACE: look whether it exists
ALL_COLUMNS = -1
MASK_COLUMNS_MAX = 62  # bits of a positive int64; a slot beyond logs its own number


def slot_mask(slot: int) -> int:
    """The log mask of a write to value column slot `slot`.

    Slots beyond the bits of an int64 (a table of more than 62 value
    columns) log `-2 - slot`: that one slot (`capture_table` folds it into
    the wide part of the key's mask).  Files from before logged ALL_COLUMNS
    there, which stamped every cell of the row on an update of one.
    """
    return 1 << slot if slot < MASK_COLUMNS_MAX else -2 - slot


def _key_changed(column: str) -> str:
    """SQL that is true when a key column's stored bytes or storage class changed.

    The key's own collation and affinity would call 1 and 1.0 (untyped key)
    or 'a' and 'A' (NOCASE key) equal; the merge addresses keys by value and
    storage class, so such a change is a delete of the old key and an insert
    of the new one (issue 12, defect 3).  Only key columns are named: a
    trigger that named a value column would block its DROP COLUMN.
    """
    quoted = quote_identifier(column)
    return (
        f"(OLD.{quoted} IS NOT NEW.{quoted} COLLATE BINARY"
        f" OR typeof(OLD.{quoted}) IS NOT typeof(NEW.{quoted}))"
    )


NOT_APPLYING = "(SELECT applying FROM _syncmesh_state) = 0"


def capture_triggers(
    layout: TableLayout, unique: list[tuple[str, ...]] | None = None
) -> dict[str, str]:
    """Trigger name -> CREATE TRIGGER statement, for every trigger that logs writes to a table.

    `unique` lists the column sets of the table's secondary UNIQUE indexes.
    INSERT OR REPLACE (and UPDATE OR REPLACE) deletes rows that collide on
    them without firing delete triggers (unless the writer's connection set
    recursive_triggers), so BEFORE triggers log those rows' keys as OP_CHECK:
    the capture then looks whether each still exists.  The statements are
    what `sqlite_schema.sql` holds once they ran, so a trigger whose text
    differs (a rename rewrote it, an index changed) is told by comparing.
    """
    spec = layout.spec
    table = quote_identifier(spec.name)
    log = quote_identifier(log_name(spec.name))
    names = ", ".join(["op", "mask", *(f"k{index}" for index in range(len(spec.pk)))])

    def keys(row: str) -> str:
        return ", ".join(f"{row}.{quote_identifier(column)}" for column in spec.pk)

    def logged(op: int, mask: int, row: str) -> str:
        return f"  INSERT INTO {log} ({names}) VALUES ({op}, {mask}, {keys(row)});"

    def create(kind: str, event: str, when: str, body: str) -> tuple[str, str]:
        name = trigger_name(spec.name, kind)
        return name, (
            f"CREATE TRIGGER {quote_identifier(name)} {event} ON {table} WHEN {when}\nBEGIN\n"
            f"{body}\nEND"
        )

    key_changed = " OR ".join(_key_changed(column) for column in spec.pk)
    key_list = ", ".join(quote_identifier(column) for column in spec.pk)
    triggers = dict(
        [
            create(
                "insert",
                "AFTER INSERT",
                NOT_APPLYING,
                logged(OP_INSERT, ALL_COLUMNS, "NEW"),
            ),
            # A changed primary key is a delete of the old key and an insert of the new.
            create(
                "key",
                f"AFTER UPDATE OF {key_list}",
                f"{NOT_APPLYING} AND ({key_changed})",
                logged(OP_DELETE, 0, "OLD") + "\n" + logged(OP_INSERT, ALL_COLUMNS, "NEW"),
            ),
            create(
                "delete",
                "AFTER DELETE",
                NOT_APPLYING,
                logged(OP_DELETE, 0, "OLD"),
            ),
        ]
    )
    for column, slot in zip(spec.value_columns, layout.slots, strict=True):
        # The column is named in the header only: DROP COLUMN of it still works.
        name, sql = create(
            update_trigger_kind(slot),
            f"AFTER UPDATE OF {quote_identifier(column)}",
            NOT_APPLYING,
            logged(OP_UPDATE, slot_mask(slot), "NEW"),
        )
        triggers[name] = sql
    if unique:
        triggers.update(_replace_checks(spec, unique, log, names))
    return triggers


def _replace_checks(
    spec: TableSpec, unique: list[tuple[str, ...]], log: str, names: str
) -> dict[str, str]:
    table = quote_identifier(spec.name)
    collides = " OR ".join(
        "("
        + " AND ".join(f"t.{quote_identifier(c)} = NEW.{quote_identifier(c)}" for c in cols)
        + ")"
        for cols in unique
    )
    keys = ", ".join(f"t.{quote_identifier(column)}" for column in spec.pk)

    def same(row: str) -> str:
        return " AND ".join(
            f"t.{quote_identifier(column)} IS {row}.{quote_identifier(column)}"
            for column in spec.pk
        )

    check = f"INSERT INTO {log} ({names}) SELECT {OP_CHECK}, 0, {keys} FROM {table} t"
    on_insert = trigger_name(spec.name, "replace_insert")
    on_update = trigger_name(spec.name, "replace_update")
    return {
        on_insert: f"CREATE TRIGGER {quote_identifier(on_insert)}"
        f" BEFORE INSERT ON {table} WHEN {NOT_APPLYING}\nBEGIN\n"
        f"  {check} WHERE ({collides}) AND NOT ({same('NEW')});\nEND",
        on_update: f"CREATE TRIGGER {quote_identifier(on_update)}"
        f" BEFORE UPDATE ON {table} WHEN {NOT_APPLYING}\nBEGIN\n"
        f"  {check} WHERE ({collides}) AND NOT ({same('NEW')}) AND NOT ({same('OLD')});\nEND",
    }


# The triggers every tracked table has; without them inserts or deletes go uncaptured.
ESSENTIAL_TRIGGER_KINDS = ("insert", "key", "delete")
# The single update trigger of files from before ADR 0013: it read OLD.c of every
# value column, which made DROP COLUMN fail ("error in trigger").
LEGACY_UPDATE_TRIGGER_KIND = "update"

EXISTING_TRIGGERS_SQL = (
    "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?"
    " AND name LIKE '\\_syncmesh\\_%' ESCAPE '\\'"
)


def drop_trigger_sql(name: str) -> str:
    return f"DROP TRIGGER IF EXISTS {quote_identifier(name)}"
