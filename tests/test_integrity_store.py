"""Issue 12's defects at the store, through its public methods only.

Each test reproduces one defect of issue 12 ("no writer, constraint or byte
sequence may wedge sync, lose an acknowledged write, or invent a row") the
way a user meets it: rows written with plain SQL on one file, synced with
`exchange` (one pull, through the wire codec, as a session does).  Tests
that fail on today's code are strict xfails naming the defect: the fix
flips them.  Where the issue allows two fixes (refuse the table at
`track`, or honour it), a refusal by `track` with a SchemaError that names
the feature counts as the fix too.

Written against `SqliteStore.open/init/track/capture/read_batch/apply_batch/
vector/note_peer_vector/quarantine` and plain SQL on `SqliteStore.connection`,
so they survive the store's move behind Protocols.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock, pack
from syncmesh.errors import SchemaError
from syncmesh.model import Cell, ChangeBatch, RowChange, RowState, SqlValue, Stamp
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 60_000

MakeStore = Callable[..., SqliteStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Initialised stores on real files; `ddl` creates `items` (and more), then it is tracked."""
    opened: list[SqliteStore] = []

    def make(name: str, ddl: str, *, clock: ManualClock | None = None) -> SqliteStore:
        hybrid = HybridClock(clock or ManualClock(BASE_MS), drift_ms_max=DRIFT_MS_MAX)
        store = SqliteStore.open(tmp_path / f"{name}.db", clock=hybrid)
        opened.append(store)
        store.init()
        store.connection.executescript(ddl)
        store.track(["items"])
        return store

    yield make
    for store in opened:
        store.close()


def write(store: SqliteStore, sql: str, *params: SqlValue) -> None:
    """A local write, captured at once (as the node's capture loop does)."""
    store.connection.execute(sql, params)
    store.capture()


def sync_pair(left: SqliteStore, right: SqliteStore) -> None:
    exchange_all(left, right)
    exchange_all(right, left)


def typed_rows(store: SqliteStore) -> list[tuple[object, ...]]:
    """`items` with each value's storage class and exact bytes (hex), in BINARY order.

    (`hex()` of a number is of its text form: hex(1) is '31'.)"""
    columns = [row[1] for row in store.connection.execute("PRAGMA table_info(items)")]
    selected = ", ".join(f'typeof("{column}"), hex("{column}")' for column in columns)
    order = ", ".join(f'"{column}" COLLATE BINARY' for column in columns)
    return [
        tuple(row)
        for row in store.connection.execute(f"SELECT {selected} FROM items ORDER BY {order}")
    ]


def quarantined_keys(store: SqliteStore) -> list[str]:
    return [str(entry["pk"]) for entry in store.quarantine()]


def track_refuses(ddl: str, store_factory: MakeStore, feature: str) -> bool:
    """True if `track` refuses the table naming `feature` (an allowed fix of the defect)."""
    try:
        store_factory("probe", ddl)
    except SchemaError as exc:
        refusal = str(exc)
    else:
        return False
    assert feature.lower() in refusal.lower(), refusal
    return True


# -- defect 1: the apply trusts that SQLite did what it asked ------------------------

REPLACE_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, e TEXT UNIQUE ON CONFLICT REPLACE, v)"


def test_defect1_on_conflict_replace_loses_no_acknowledged_write(make_store: MakeStore) -> None:
    if track_refuses(REPLACE_DDL, make_store, "ON CONFLICT"):
        return
    a, b = make_store("a", REPLACE_DDL), make_store("b", REPLACE_DDL)
    write(a, "INSERT INTO items VALUES ('a', 'x', 1)")
    write(b, "INSERT INTO items VALUES ('b', 'x', 2)")
    sync_pair(a, b)
    for store, own, other in ((a, "a", "b"), (b, "b", "a")):
        held = [row[0] for row in store.connection.execute("SELECT id FROM items")]
        assert own in held, f"{store.site_id} lost its own acknowledged write {own!r}"
        assert other in held or any(other in key for key in quarantined_keys(store)), (
            f"{other!r} is neither applied nor quarantined at the site of {own!r}"
        )


IGNORE_TRIGGER_DDL = """
CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER);
CREATE TRIGGER items_no_negative BEFORE INSERT ON items WHEN NEW.qty < 0
BEGIN SELECT RAISE(IGNORE); END;
"""
PLAIN_DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


def test_defect1_ignored_apply_never_ships_a_phantom_row(make_store: MakeStore) -> None:
    if track_refuses(IGNORE_TRIGGER_DDL, make_store, "RAISE(IGNORE)"):
        return
    writer = make_store("writer", PLAIN_DDL)
    relay = make_store("relay", IGNORE_TRIGGER_DDL)
    reader = make_store("reader", PLAIN_DDL)
    write(writer, "INSERT INTO items VALUES ('k', 'negative', -1)")
    exchange_all(writer, relay)
    exchange_all(relay, reader)
    # Every row the reader holds was written by someone.
    assert typed_rows(reader) in ([], typed_rows(writer))
    relayed = relay.connection.execute("SELECT count(*) FROM items").fetchone()[0]
    assert relayed == 1 or quarantined_keys(relay), "the ignored write vanished without a trace"


# -- defect 2: a restored node adopts its own lost writes' stamps from a BATCH vector ---


def _replace_file(backup: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, target)


def test_defect2_restored_node_gets_its_lost_write_back_through_a_relay(
    make_store: MakeStore, tmp_path: Path
) -> None:
    clock_n = ManualClock(BASE_MS)
    n = make_store("n", PLAIN_DDL, clock=clock_n)
    p = make_store("p", PLAIN_DDL, clock=ManualClock(BASE_MS))
    q = make_store("q", PLAIN_DDL, clock=ManualClock(BASE_MS))
    backup = sqlite3.connect(tmp_path / "n-backup.db")
    n.connection.backup(backup)
    backup.close()
    clock_n.advance(1_000)
    write(n, "INSERT INTO items VALUES ('lost', 'acknowledged by q', 1)")
    exchange_all(n, q)  # q holds the write: it was acknowledged
    n.close()

    _replace_file(tmp_path / "n-backup.db", tmp_path / "n.db")
    clock_n.advance(1_000)
    n = SqliteStore.open(tmp_path / "n.db", clock=HybridClock(clock_n, drift_ms_max=DRIFT_MS_MAX))
    try:
        write(n, "INSERT INTO items VALUES ('new', 'after the restore', 2)")
        assert not n.note_peer_vector(p.vector())  # p's HELLO: p holds nothing of n yet
        sync_pair(n, p)
        exchange_all(q, p)  # q relays the lost write to p
        exchange_all(p, n)  # p's batch carries p's vector, with n's lost stamp
    finally:
        n.close()
    # A restart; then n meets q and p again, as HELLO and PULL would.
    n = SqliteStore.open(tmp_path / "n.db", clock=HybridClock(clock_n, drift_ms_max=DRIFT_MS_MAX))
    try:
        for peer in (q, p):
            n.note_peer_vector(peer.vector())
            cursor = peer.peer_cursor(n.site_id)
            if cursor is not None and cursor.incarnation != n.incarnation:
                peer.reset_peer_cursor(n.site_id, n.incarnation, n.head_seq(), "")
            sync_pair(n, peer)
        held = n.connection.execute("SELECT name FROM items WHERE id = 'lost'").fetchone()
        assert held == ("acknowledged by q",), "the restored node lost an acknowledged write"
    finally:
        n.close()


# -- defect 3: key changes that the key's collation or affinity calls equal -----------

NOCASE_DDL = "CREATE TABLE items (id TEXT COLLATE NOCASE PRIMARY KEY, name TEXT, qty INTEGER)"
UNTYPED_KEY_DDL = "CREATE TABLE items (id PRIMARY KEY, name TEXT, qty INTEGER)"


def test_defect3_nocase_key_rename_is_synced(make_store: MakeStore) -> None:
    if track_refuses(NOCASE_DDL, make_store, "NOCASE"):
        return
    a, b = make_store("a", NOCASE_DDL), make_store("b", NOCASE_DDL)
    write(a, "INSERT INTO items VALUES ('a', 'n', 1)")
    sync_pair(a, b)
    write(a, "UPDATE items SET id = 'A' WHERE id = 'a'")
    sync_pair(a, b)
    assert typed_rows(b) == typed_rows(a)


def test_defect3_concurrent_nocase_keys_converge(make_store: MakeStore) -> None:
    if track_refuses(NOCASE_DDL, make_store, "NOCASE"):
        return
    a, b = make_store("a", NOCASE_DDL), make_store("b", NOCASE_DDL)
    write(a, "INSERT INTO items VALUES ('a', 'from a', 1)")
    write(b, "INSERT INTO items VALUES ('A', 'from b', 2)")
    sync_pair(a, b)
    sync_pair(a, b)
    assert typed_rows(a) == typed_rows(b)


def test_defect3_untyped_key_integer_to_real_is_synced(make_store: MakeStore) -> None:
    """`track` refuses a key declared without a type (the fix); were it accepted, it must sync."""
    if track_refuses(UNTYPED_KEY_DDL, make_store, "affinity"):
        return
    a, b = make_store("a", UNTYPED_KEY_DDL), make_store("b", UNTYPED_KEY_DDL)
    write(a, "INSERT INTO items VALUES (1, 'n', 1)")
    sync_pair(a, b)
    write(a, "UPDATE items SET id = 1.0 WHERE id = 1")
    assert typed_rows(a)[0][0] == "real"
    sync_pair(a, b)
    assert typed_rows(b) == typed_rows(a)


def test_defect3_key_change_between_equal_values_is_logged(make_store: MakeStore) -> None:
    """The update trigger compares keys by bytes and storage class, not by affinity."""
    a = make_store("a", UNTYPED_KEY_DDL.replace("id PRIMARY KEY", "id BLOB PRIMARY KEY"))
    write(a, "INSERT INTO items VALUES (1, 'n', 1)")
    a.connection.execute("UPDATE items SET id = 1.0 WHERE id = 1")
    logged = a.connection.execute(
        "SELECT op, typeof(k0) FROM _syncmesh_log_items ORDER BY id"
    ).fetchall()
    assert logged == [(2, "integer"), (1, "real")]  # delete of 1, insert of 1.0


def test_defect3_track_refuses_a_key_without_a_type_with_the_fix(make_store: MakeStore) -> None:
    with pytest.raises(SchemaError, match=r"(?s)no declared type.*Recreate the table with the key"):
        make_store("a", UNTYPED_KEY_DDL)


def test_defect3_track_refuses_a_nocase_key_with_the_fix(make_store: MakeStore) -> None:
    with pytest.raises(SchemaError, match=r"(?s)COLLATE NOCASE.*Recreate the table with a BINARY"):
        make_store("a", NOCASE_DDL)


# -- defect 4: one non-UTF-8 TEXT value wedges a node ---------------------------------


def test_defect4_non_utf8_text_value_syncs_with_its_bytes(make_store: MakeStore) -> None:
    a, b = make_store("a", PLAIN_DDL), make_store("b", PLAIN_DDL)
    write(a, "INSERT INTO items VALUES ('bad', CAST(X'61E962' AS TEXT), 1)")
    write(a, "INSERT INTO items VALUES ('good', 'after it', 2)")
    exchange_all(a, b)
    assert typed_rows(b) == typed_rows(a)
    assert ("text", "626164", "text", "61E962", "integer", "31") in typed_rows(b)


def test_defect4_non_utf8_text_key_stops_neither_capture_nor_apply(
    make_store: MakeStore,
) -> None:
    a, b = make_store("a", PLAIN_DDL), make_store("b", PLAIN_DDL)
    a.connection.execute("INSERT INTO items VALUES (CAST(X'E9' AS TEXT), 'bad key', 1)")
    write(a, "INSERT INTO items VALUES ('good', 'after it', 2)")
    write(b, "INSERT INTO items VALUES ('from b', 'to a', 3)")
    sync_pair(a, b)
    assert typed_rows(a) == typed_rows(b)
    assert ("text", "E9", "text", "626164206B6579", "integer", "31") in typed_rows(b)


# -- defect 5: equal stamps, values of another storage class --------------------------


def _batch_of(site: str, hlc: int, value: SqlValue) -> ChangeBatch:
    cell = Cell(value, Stamp(hlc, "edited"))
    row = RowChange("items", ("k",), RowState(1, Stamp(hlc, "edited"), {"v": cell}))
    return ChangeBatch.of_rows(f"inc-{site}", 0, 1, 1, None, [row], {"items": ("v",)})


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, 1.0), (-0.0, 0.0)],
    ids=["integer-real", "negative-zero"],
)
def test_defect5_equal_stamps_converge_whatever_the_delivery_order(
    make_store: MakeStore, first: SqlValue, second: SqlValue
) -> None:
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, v)"
    hlc = pack(BASE_MS, 0)
    results = []
    for name, order in (("ab", (first, second)), ("ba", (second, first))):
        store = make_store(name, ddl)
        for peer, value in zip(("p1", "p2"), order, strict=True):
            store.reset_peer_cursor(peer, f"inc-{peer}", 1, "")
            store.apply_batch(peer, _batch_of(peer, hlc, value))
        (value,) = store.connection.execute("SELECT v FROM items").fetchone()
        results.append((type(value), math.copysign(1.0, value)))
    assert results[0] == results[1]


# -- defect 6: 0.0 -> -0.0 in an untyped column -------------------------------------


# Fixed by ADR 0013: the per-column triggers capture every column an UPDATE
# sets, so no comparison of old and new values can call 0.0 and -0.0 equal.
def test_defect6_update_to_negative_zero_is_synced(make_store: MakeStore) -> None:
    ddl = "CREATE TABLE items (id TEXT PRIMARY KEY, v)"
    a, b = make_store("a", ddl), make_store("b", ddl)
    write(a, "INSERT INTO items VALUES ('k', ?)", 0.0)
    sync_pair(a, b)
    write(a, "UPDATE items SET v = ? WHERE id = 'k'", -0.0)
    sync_pair(a, b)
    (value,) = b.connection.execute("SELECT v FROM items").fetchone()
    assert math.copysign(1.0, value) == -1.0


# -- defect 8: a failed read pins an old snapshot on the store's connection ----------


def test_defect8_store_recovers_while_a_failed_read_is_still_referenced(
    make_store: MakeStore, tmp_path: Path
) -> None:
    a, b = make_store("a", PLAIN_DDL), make_store("b", PLAIN_DDL)
    outside = sqlite3.connect(tmp_path / "a.db", timeout=10.0)
    try:
        outside.execute("INSERT INTO items VALUES ('bad', CAST(X'E9' AS TEXT), 1)")
        outside.commit()
        a.capture()
        failures: list[Exception] = []  # a node keeps errors around: logs, futures, link state
        try:
            a.read_batch(0, b.vector(), 1_000)
        except Exception as exc:  # any error of the read will do
            failures.append(exc)
        outside.execute("UPDATE items SET name = 'fixed by hand' WHERE id = 'bad'")
        outside.commit()
        assert a.capture() == 1, "the fix was not captured: the store reads an old snapshot"
        exchange_all(a, b)
        assert b.connection.execute("SELECT name FROM items").fetchall() == [("fixed by hand",)]
    finally:
        outside.close()


# -- also looked at: rows for repair read without a capture ----------------------------


def test_rows_for_repair_never_ship_a_value_under_another_writes_stamp(
    make_store: MakeStore,
) -> None:
    a = make_store("a", PLAIN_DDL)
    write(a, "INSERT INTO items VALUES ('k', 'captured', 1)")
    [before] = a.read_batch(0, {}, 1_000).rows
    a.connection.execute("UPDATE items SET name = 'not captured yet' WHERE id = 'k'")
    for change in a.rows_of("items", [("k",)]).rows:
        cell = change.state.cells["name"]
        if cell.value == "not captured yet":
            assert cell.stamp > before.state.cells["name"].stamp, (
                "an uncaptured value under the stamp of the write it replaced"
            )


def test_splitting_a_seq_group_never_moves_the_head_back(
    make_store: MakeStore, tmp_path: Path
) -> None:
    behind = make_store("a", PLAIN_DDL, clock=ManualClock(BASE_MS))
    behind.connection.executemany(
        "INSERT INTO items VALUES (?, 'n', 1)", [("k1",), ("k2",), ("k3",)]
    )
    behind.capture()
    group = behind.head_seq()
    # Another process on the same file (a second node process, `syncmesh track`)
    # with a clock 30 s ahead, within the drift limit, writes and captures.
    ahead = SqliteStore.open(
        tmp_path / "a.db",
        clock=HybridClock(ManualClock(BASE_MS + 30_000), drift_ms_max=DRIFT_MS_MAX),
    )
    try:
        write(ahead, "INSERT INTO items VALUES ('k4', 'n', 2)")
        head = ahead.head_seq()
    finally:
        ahead.close()
    assert behind.split_seq_group(group)
    assert behind.head_seq() >= head
