"""Opening a syncmesh SQLite file: the connection, its functions, upgrades, identity.

Owns the connection settings (WAL, `synchronous=NORMAL`, busy timeout,
page cache), the Python functions registered on the connection, bringing
a file made by an older syncmesh up to date, `init` (the bookkeeping
tables and the site id) and `new_site_id`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from syncmesh.errors import StoreError
from syncmesh.model import SqlValue, text_of_bytes
from syncmesh.store.sqlite import reconcile
from syncmesh.store.sqlite.context import StoreContext
from syncmesh.store.sqlite.ddl import (
    BOOKKEEPING_DDL,
    CONFLICT_LEDGER_DDL,
    DIGEST_COLUMN,
    KEY_HASH_COLUMN,
    LEGACY_UPDATE_TRIGGER_KIND,
    LIFECYCLE_DDL,
    PARKED_GENERATION_COLUMN,
    PASTS_COLUMN,
    RUNS_DDL,
    SEEN_DDL,
    VALUES_FP_COLUMN,
    WAITING_DDL,
    trigger_name,
)
from syncmesh.store.sqlite.functions import (
    CAPTURE_PASTS_FUNCTION,
    CELL_FP_FUNCTION,
    FIELDS_FUNCTION,
    FOLD_DIGEST_FUNCTION,
    KEY_HASH_FUNCTION,
    NEW_ROW_DIGEST_FUNCTION,
    ROW_DIGEST_FUNCTION,
    TEXT_KEY_HASH_FUNCTION,
    VALUES_FP_CHANGES_FUNCTION,
    VALUES_FP_FUNCTION,
    capture_pasts,
    cell_fingerprint,
    fingerprint_changes,
    pack_fields,
    register_packed,
    text_key_hash,
    values_fingerprint,
)
from syncmesh.store.sqlite.table import TableSql
from syncmesh.store.summary import LEAF_MASK, fields_digest, key_hash, leaf_of, shadow_digest

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# What the write-ahead log is cut back to when this connection resets it
# after a checkpoint.  SQLite reuses the WAL but never shrinks it otherwise:
# a burst of writes during a long read (a backup, a report, a slow peer's
# feed) left it at the burst's size for good, several times the database
# in a soak (docs/performance.md, issue 16).  A few checkpoints' worth
# (SQLite checkpoints every 1,000 pages, 4 MB at the default page size).
WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024
CACHE_KIB = 65_536
DATABASE_FILE_MODE = 0o600


def create_private(path: str | Path) -> None:
    """Create an empty file at `path` with mode 0600 if nothing is there yet."""
    name = str(path)
    if name == ":memory:" or name.startswith("file:") or not name:
        return
    try:
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc}") from exc
    os.close(descriptor)


def connect(path: str | Path) -> sqlite3.Connection:
    """The engine's connection to `path`, with its settings and the capture's function.

    A new file is created 0600 (only its owner may read it); SQLite gives
    its -wal and -shm files the same mode.  An existing file keeps its mode.
    """
    create_private(path)
    try:
        connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # TEXT that is not valid UTF-8 reads as a str with lone surrogates
        # that keep its bytes (model.TEXT_ERRORS): one such value must not
        # make every read of its row raise (issue 12, defect 4).
        connection.text_factory = text_of_bytes
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        connection.execute("PRAGMA synchronous = NORMAL")
        # Shadow rows are keyed like the user rows (often random keys), so a
        # batch touches pages all over the shadow table: keep them cached.
        connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        # The feed reads cells' pasts with SQLite's JSON functions.
        connection.execute("SELECT json_extract('{}', '$.p')")
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(
            f"cannot use {path}: this SQLite ({sqlite3.sqlite_version}) lacks the JSON"
            " functions (built in since 3.38; JSON1 before)"
        ) from exc
    # The capture upsert calls it for rows whose cells another site wrote.
    register_packed(connection, CAPTURE_PASTS_FUNCTION, capture_pasts, 3, deterministic=True)
    connection.create_function(FIELDS_FUNCTION, -1, pack_fields, deterministic=True)
    # The capture, the apply and the reconcile keep rows' value fingerprints with it.
    connection.create_function(VALUES_FP_FUNCTION, 1, values_fingerprint, deterministic=True)
    connection.create_function(
        VALUES_FP_CHANGES_FUNCTION, 3, fingerprint_changes, deterministic=True
    )
    connection.create_function(CELL_FP_FUNCTION, 1, cell_fingerprint, deterministic=True)
    # The set-based capture hashes the keys new here with it.
    connection.create_function(TEXT_KEY_HASH_FUNCTION, -1, text_key_hash, deterministic=True)
    return connection


def _digest_of(hashed_key: int, fields: Sequence[SqlValue], codes: Mapping[SqlValue, int]) -> int:
    """`shadow_digest` of a shadow row's fields, or, for fields no store wrote, a digest of them.

    Another program may have written anything into a shadow row (a stamp
    that is text, a site ordinal never given out).  An exception here would
    fail the whole capture, every time, and with it every local write
    (issue 12).  Such a row gets a digest of its fields as they are, which
    matches no sound row (so `verify` finds it); the feed holds it back
    (feed.py) until a new write stamps it afresh.
    """
    if type(fields[0]) is int:
        try:
            return shadow_digest(hashed_key, fields[0], fields[1], fields[2], fields[3:], codes)
        except (KeyError, TypeError, struct.error):
            pass
    return key_hash([hashed_key, *(repr(field) for field in fields)])


def register_digest_functions(ctx: StoreContext) -> None:
    """SQL functions of the hash tree (store.summary), on the context's connection."""
    summaries = ctx.summaries

    def codes() -> Mapping[SqlValue, int]:
        return ctx.require_init().codes

    def fold_digest(
        table: str,
        old: int | None,
        guess: int | None,
        guessed_key: int | None,
        hashed_key: int,
        *fields: SqlValue,
    ) -> int:
        # The capture upsert's digest of a row it changed; see CaptureSql._capture_sql.
        # A guess (capture noted a key it thought new) is taken back on the leaf
        # it was noted on: the key as logged may hash apart from the key as
        # stored (1.0 logged for a row stored under 1).
        new = _digest_of(hashed_key, fields, codes())
        leaf = leaf_of(hashed_key)
        if guess and guessed_key is not None and leaf_of(guessed_key) != leaf:
            summaries.note(table, leaf_of(guessed_key), guess)
            guess = None
        summaries.note(table, leaf, (old or 0) ^ (guess or 0) ^ new)
        return new

    def row_digest(hashed_key: int, *fields: SqlValue) -> int:
        return _digest_of(hashed_key, fields, codes())

    def new_row_digest(table: str, hashed_key: int, cl: int, hlc: int, own: int, cells: int) -> int:
        # The set-based capture's digest of a row new here, every cell stamped
        # `hlc` by us (`own`: our site's code): `shadow_digest` of such a row,
        # its fields built here rather than passed from SQL.
        fields = [hashed_key, cl, hlc, own]
        if cl % 2 == 1:
            fields += [hlc] * cells
            fields += [own] * cells
        new = fields_digest(fields)
        summaries.note(table, hashed_key & LEAF_MASK, new)
        return new

    def hash_key(*key: SqlValue) -> int:
        return key_hash(key)

    connection = ctx.connection
    register_packed(connection, FOLD_DIGEST_FUNCTION, fold_digest, 5)
    register_packed(connection, ROW_DIGEST_FUNCTION, row_digest, 1)
    connection.create_function(NEW_ROW_DIGEST_FUNCTION, 6, new_row_digest)
    connection.create_function(KEY_HASH_FUNCTION, -1, hash_key, deterministic=True)


def upgrade(ctx: StoreContext) -> None:
    """Bring a file made by an older syncmesh up to date: digests, the conflict ledger.

    Adds the ledger tables and the shadow tables' `pasts` column (empty:
    cells written before know nothing, which may report a conflict that
    a causal overwrite of such a cell was).
    """
    _upgrade_digests(ctx)
    _upgrade_triggers(ctx)
    _upgrade_values_fp(ctx)
    runs = ctx.connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_runs'"
    ).fetchone()
    if runs is None:
        with ctx.transaction():
            ctx.connection.execute(RUNS_DDL)
    seen = ctx.connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_seen'"
    ).fetchone()
    if seen is None:
        with ctx.transaction():
            ctx.connection.execute(SEEN_DDL)
    waiting = ctx.connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_parked'"
    ).fetchone()
    if waiting is None:  # (each statement is CREATE ... IF NOT EXISTS)
        with ctx.transaction():
            _run_script(ctx, WAITING_DDL)
    parked_columns = {
        row[1] for row in ctx.connection.execute("PRAGMA table_info(_syncmesh_parked)")
    }
    if PARKED_GENERATION_COLUMN not in parked_columns:
        with ctx.transaction():
            ctx.connection.execute(
                f"ALTER TABLE _syncmesh_parked ADD COLUMN {PARKED_GENERATION_COLUMN}"
                " INTEGER NOT NULL DEFAULT 0"
            )
    horizon_columns = {
        row[1] for row in ctx.connection.execute("PRAGMA table_info(_syncmesh_horizon)")
    }
    if horizon_columns and "deleted" not in horizon_columns:
        # Collections from before it: the greatest stamp collected is not known
        # (NULL), and the admission check takes the horizon itself (lifecycle).
        with ctx.transaction():
            ctx.connection.execute("ALTER TABLE _syncmesh_horizon ADD COLUMN deleted INTEGER")
    quarantine_columns = {
        row[1] for row in ctx.connection.execute("PRAGMA table_info(_syncmesh_quarantine)")
    }
    if "column_created" not in quarantine_columns:  # entries from before it: unknown (NULL)
        with ctx.transaction():
            ctx.connection.execute(
                "ALTER TABLE _syncmesh_quarantine ADD COLUMN column_created TEXT"
            )
    if (
        ctx.connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_quarantine_key'"
        ).fetchone()
        is None
    ):  # files from before it: `quarantine.add` looks entries up by key
        with ctx.transaction():
            ctx.connection.execute(
                "CREATE INDEX IF NOT EXISTS _syncmesh_quarantine_key"
                " ON _syncmesh_quarantine (table_name, pk)"
            )
    lifecycle = ctx.connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_lifecycle'"
    ).fetchone()
    if lifecycle is None:
        with ctx.transaction():
            _run_script(ctx, LIFECYCLE_DDL)
    missing = _lacking(ctx, PASTS_COLUMN)
    ledger = ctx.connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = '_syncmesh_conflicts'"
    ).fetchone()
    if not missing and ledger is not None:
        return
    with ctx.transaction():
        for statement in CONFLICT_LEDGER_DDL.split(";"):
            if statement.strip():
                ctx.connection.execute(statement)
        for table in _lacking(ctx, PASTS_COLUMN):
            ctx.connection.execute(f"ALTER TABLE {table.shadow} ADD COLUMN {PASTS_COLUMN} TEXT")
    log.info("%s: added the conflict ledger to a file made by an older syncmesh", ctx.path)


def _upgrade_triggers(ctx: StoreContext) -> None:
    """Replace the single update trigger of files from before ADR 0013 by one per column.

    The old trigger compared `OLD.c` with `NEW.c` for every value column,
    which made `ALTER TABLE DROP COLUMN` fail ("error in trigger").  A table
    whose insert trigger is gone too (rebuilt while no node ran) is left to
    `reconcile_schema`, which also catches its rows up.
    """
    legacy = []
    for table in ctx.tables.values():
        triggers = reconcile.existing_triggers(ctx.connection, table.spec.name)
        name = table.spec.name
        if (
            trigger_name(name, LEGACY_UPDATE_TRIGGER_KIND) in triggers
            and trigger_name(name, "insert") in triggers
        ):
            legacy.append((table, triggers))
    if not legacy:
        return
    with ctx.transaction():
        for table, triggers in legacy:
            reconcile.sync_triggers(ctx.connection, table.layout, triggers)
    log.info("%s: capture triggers of %d tables made per column", ctx.path, len(legacy))


def _upgrade_digests(ctx: StoreContext) -> None:
    """Add the hash tree's columns to shadow tables made before it, and fill them."""
    stale = _lacking(ctx, DIGEST_COLUMN)
    if not stale:
        return
    with ctx.transaction():
        for table in stale:
            for column in (KEY_HASH_COLUMN, DIGEST_COLUMN):
                ctx.connection.execute(f"ALTER TABLE {table.shadow} ADD COLUMN {column} INTEGER")
            ctx.connection.execute(table.sql_verify.fill_digests_sql)
    log.info("%s: added row digests (for syncmesh verify) to %d tables", ctx.path, len(stale))


def _upgrade_values_fp(ctx: StoreContext) -> None:
    """Add the value fingerprints (reconcile.py) to shadow tables made before them, filled."""
    stale = _lacking(ctx, VALUES_FP_COLUMN)
    if not stale:
        return
    with ctx.transaction():
        for table in stale:
            ctx.connection.execute(f"ALTER TABLE {table.shadow} ADD COLUMN {VALUES_FP_COLUMN} BLOB")
            reconcile.fill_values_fp(ctx.connection, table)
    log.info("%s: added value fingerprints to %d tables", ctx.path, len(stale))


def _lacking(ctx: StoreContext, column: str) -> list[TableSql]:
    """The tracked tables whose shadow table lacks `column`."""
    return [
        table
        for table in ctx.tables.values()
        if column
        not in {row[1] for row in ctx.connection.execute(f"PRAGMA table_info({table.shadow})")}
    ]


def init(ctx: StoreContext) -> None:
    """Create the bookkeeping tables and this node's site id, if missing (one transaction)."""
    with ctx.transaction():
        _run_script(
            ctx,
            BOOKKEEPING_DDL
            + CONFLICT_LEDGER_DDL
            + ";"
            + RUNS_DDL
            + ";"
            + SEEN_DDL
            + ";"
            + WAITING_DDL
            + ";"
            + LIFECYCLE_DDL,
        )
        row = ctx.connection.execute("SELECT site_id FROM _syncmesh_state").fetchone()
        if row is None:
            site_id = uuid.uuid4().hex
            ctx.connection.execute(
                "INSERT INTO _syncmesh_state VALUES (1, ?, ?, 0, 0, 0, 0, 0)",
                (site_id, uuid.uuid4().hex),
            )
            ctx.connection.execute(
                "INSERT INTO _syncmesh_sites (ordinal, site_id) VALUES (0, ?)", (site_id,)
            )


def _run_script(ctx: StoreContext, script: str) -> None:
    """Run the `;`-separated statements of `script` (in the caller's transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            ctx.connection.execute(statement)


def new_site_id(ctx: StoreContext, site_id: str | None = None) -> str:
    """Give the file a new identity; the old identity's stamps move to a fresh ordinal.

    `site_id`: the new identity, if the caller chose it (a snapshot's joiner
    announces it to its source first); a fresh one otherwise.
    """
    ctx.require_init()
    new_site = site_id or uuid.uuid4().hex
    connection = ctx.connection
    with ctx.transaction():
        old_site = ctx.site_id()
        cursor = connection.execute(
            "INSERT INTO _syncmesh_sites (site_id) VALUES (?)", (new_site + "-tmp",)
        )
        moved = int(cursor.lastrowid or 0)
        for table in ctx.tables.values():
            sets = ["cl_site = CASE WHEN cl_site = 0 THEN :moved ELSE cl_site END"]
            sets += [
                f"s{slot} = CASE WHEN s{slot} = 0 THEN :moved ELSE s{slot} END"
                for slot in table.slots
            ]
            connection.execute(f"UPDATE {table.shadow} SET {', '.join(sets)}", {"moved": moved})
            # Pasts and knowledge name sites by ordinal too.
            table.rename_ordinal(connection, 0, moved)
        connection.execute("UPDATE _syncmesh_sites SET site_id = ? WHERE ordinal = 0", (new_site,))
        connection.execute(
            "UPDATE _syncmesh_sites SET site_id = ? WHERE ordinal = ?", (old_site, moved)
        )
        connection.execute(
            "UPDATE _syncmesh_state SET site_id = ?, incarnation = ?",
            (new_site, uuid.uuid4().hex),
        )
    ctx.load()
    return new_site
