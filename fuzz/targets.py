"""What one fuzz input does, and what must hold after it.

`decode_one(data)`: `decode` either returns a message or raises
ProtocolError; anything else (another exception, a crash, a hang) is a
finding.

`ApplyTarget(data)`: the first byte chooses whether a decoded batch is
made to continue the stored cursor (so that it reaches the merge) or is
left as it came (so that the store refuses most of them); the rest is a
frame.  A frame that does not decode, or a batch the store refuses
(StoreError), must leave the database exactly as it was; a batch that
applies must leave it intact (`PRAGMA integrity_check`, every
`INTEGRITY_EVERY` inputs).  Identifiers from the frame must never reach
SQL text: an SQLite authorizer sees every statement the store prepares,
and any table it names must be a tracked table, a syncmesh bookkeeping,
shadow or log table, or SQLite's own; any column of a tracked table must
be one of its columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

from syncmesh.errors import ProtocolError, StoreError
from syncmesh.protocol import Batch, Hello, Message, decode, encode
from syncmesh.store.sqlite import SqliteStore

PEER = "fuzz-peer"
SCHEMA = (
    "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER);"
    "CREATE TABLE pairs (a INTEGER, b BLOB, v REAL, PRIMARY KEY (a, b));"
    "CREATE UNIQUE INDEX items_name ON items (name)"
)
TRACKED = ("items", "pairs")
IDENTIFIERS = {"items", "pairs", "id", "name", "qty", "a", "b", "v"}
TABLE_ACTIONS = (
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_CREATE_TRIGGER,
)
COLUMN_ACTIONS = (sqlite3.SQLITE_READ, sqlite3.SQLITE_UPDATE)
RESET_EVERY = 2_000  # inputs between fresh copies of the template database
INTEGRITY_EVERY = 500


class Finding(AssertionError):
    """A property of the target failed (not a crash of the code under test)."""


def decode_one(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


def make_template(directory: Path) -> Path:
    path = directory / "template.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(SCHEMA)
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?)", [(f"k{i}", f"n{i}", i) for i in range(20)]
        )
        connection.commit()
    store = SqliteStore.open(path)
    try:
        store.init()
        store.track(list(TRACKED))
        store.capture()
        store.reset_peer_cursor(PEER, "inc", 0, "fuzz")
    finally:
        store.close()
    return path


class ApplyTarget:
    """A store under fire; call it with fuzz inputs."""

    def __init__(self, directory: Path | None = None) -> None:
        # Quarantined rows are logged at WARNING, one line each: not at this rate
        # (close() restores the level).
        self._log_level = logging.getLogger("syncmesh").level
        logging.getLogger("syncmesh").setLevel(logging.ERROR)
        self._own_directory = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix="syncmesh-fuzz-")) if directory is None else directory
        )
        self.template = make_template(self.directory)
        self.inputs = 0
        self.applied = 0
        self.refused = 0
        self.undecodable = 0
        self._store: SqliteStore | None = None
        self._violations: list[str] = []
        self._open()

    def _open(self) -> None:
        if self._store is not None:
            self._store.close()
        live = self.directory / "live.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{live}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.template, live)
        self._store = SqliteStore.open(live)
        self._store.connection.set_authorizer(self._authorize)

    @property
    def store(self) -> SqliteStore:
        """The live store the inputs are applied to (replaced every RESET_EVERY inputs)."""
        if self._store is None:
            raise RuntimeError("the target is closed")
        return self._store

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        """Called by SQLite for every table and column a statement being prepared uses."""
        if action in TABLE_ACTIONS and arg1 is not None:
            if arg1 not in TRACKED and not arg1.startswith(("_syncmesh", "sqlite_")):
                self._violations.append(f"table {arg1!r}")
            elif action in COLUMN_ACTIONS and arg1 in TRACKED and arg2 not in IDENTIFIERS | {""}:
                self._violations.append(f"column {arg2!r} of {arg1}")
        return sqlite3.SQLITE_OK

    def figures(self) -> str:
        return (
            f"applied {self.applied}, refused by the store {self.refused},"
            f" undecodable {self.undecodable}"
        )

    def close(self) -> None:
        logging.getLogger("syncmesh").setLevel(self._log_level)
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __call__(self, data: bytes) -> None:
        self.inputs += 1
        if self.inputs % RESET_EVERY == 0:
            self._open()
        store = self._store
        assert store is not None
        if not data:
            return
        continue_cursor, frame = data[0] & 1, data[1:]
        before = digest(store.connection)
        try:
            message = decode(frame)
        except ProtocolError:
            self.undecodable += 1
            _same(before, digest(store.connection), "an undecodable frame")
            return
        if not isinstance(message, Batch):
            return
        batch = message.batch
        if continue_cursor:
            cursor = store.peer_cursor(PEER)
            assert cursor is not None
            to_seq = max(batch.to_seq, cursor.cursor)
            batch = dataclasses.replace(
                batch,
                incarnation=cursor.incarnation,
                from_seq=cursor.cursor,
                to_seq=to_seq,
                head_seq=max(batch.head_seq, to_seq),
            )
        self._violations.clear()
        try:
            store.apply_batch(PEER, batch)
        except StoreError:
            self.refused += 1
            _same(before, digest(store.connection), "a refused batch")
            return
        self.applied += 1
        if self._violations:
            raise Finding(f"SQL named what is not ours: {self._violations}")
        if self.applied % INTEGRITY_EVERY == 0:
            result = store.connection.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise Finding(f"integrity check after an applied batch: {result}")


def _same(before: str, after: str, what: str) -> None:
    if before != after:
        raise Finding(f"{what} changed the database")


def digest(connection: sqlite3.Connection) -> str:
    """A hash of every row of every table (user, shadow, bookkeeping)."""
    hasher = hashlib.sha256()
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
        )
    ]
    for name in tables:
        hasher.update(name.encode())
        quoted = '"' + name.replace('"', '""') + '"'
        for row in connection.execute(f"SELECT * FROM {quoted} ORDER BY 1"):
            hasher.update(repr(row).encode())
    return hasher.hexdigest()


def seed_frames() -> list[bytes]:
    """Valid frames of every kind, as a starting corpus (hand-built, deterministic)."""
    import time

    from syncmesh.model import ChangeBatch, TableRows
    from syncmesh.protocol import PROTOCOL_VERSION, Ack, Have, Pull, Refuse, TableSchema

    now = (time.time_ns() // 1_000_000) << 16  # an HLC of this moment: seeds that win
    old = 1_700_000_000_000 << 16  # and of 2023: seeds that lose to the template's rows
    vector = {"a" * 32: now, "b": 5}
    sites = ("a" * 32, "b")
    items = TableRows(
        "items",
        ("name", "qty"),
        1,
        [
            # Cells are (value, hlc, site, past): CELL_FIELDS of protocol 2.
            ["k1", 1, old, 0, "x", old, 0, None, 7, old, 1, None],
            ["k2", 2, now, 1, None, None, None, None, None, None, None, None],
            ["k3", 1, now, 0, "n4", now, 1, None, 7, now, 1, None],  # UNIQUE(name): quarantined
            ["new", 3, now, 0, "n", now, 0, f'{{"1":{old}}}', -5, now, 0, None],
        ],
    )
    pairs = TableRows("pairs", ("v",), 2, [[1, b"\x00", 1, now, 0, 1.5, now, 1, None]])
    hostile = TableRows(
        'items"; DROP TABLE items; --',
        ("name); DELETE FROM items; --",),
        1,
        [["k", 1, now, 0, "v", now, 0, None]],
    )
    # A column renamed from `title` (ADR 0013): the table entry's optional fifth element.
    renamed = TableRows("items", items.columns, 1, items.rows[:1], (("title", "label"), ()))
    batches = [
        ChangeBatch("inc", 0, 10, 10, vector, sites, (items,)),
        ChangeBatch("inc", 0, 4, 4, None, sites, (renamed,)),
        ChangeBatch("inc", 0, 5, 9, None, sites, (pairs,)),
        ChangeBatch("inc", 0, 3, 3, None, sites, (hostile, items)),
        ChangeBatch("inc", 0, 0, 0, {}, (), ()),
    ]
    messages: list[Message] = [
        Hello(PROTOCOL_VERSION, "a" * 32, "inc", "0123456789abcdef", ("items", "pairs"), 5, vector),
        Hello(
            PROTOCOL_VERSION,
            "b",
            "inc",
            "0123456789abcdef",
            ("items",),
            5,
            vector,
            schema={"items": TableSchema(("goods",), ("id", "name"), ((), ("title",)))},
        ),
        Refuse("no"),
        Pull("inc", 3, vector, False),
        Ack(9, vector),
        Have(vector),
        *(Batch(batch) for batch in batches),
    ]
    frames = [encode(message) for message in messages]
    # Raw (uncompressed) variants of the compressed ones, so both paths are seeded:
    # the wire's first byte says 0 raw, 1 zstd (protocol/DESIGN.md).
    import zstandard

    frames += [
        b"\x00" + zstandard.ZstdDecompressor().decompress(frame[1:])
        for frame in frames
        if frame[0] == 1
    ]
    return frames
