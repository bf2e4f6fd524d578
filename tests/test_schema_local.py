"""DDL by any tool on a tracked table, at one store: noticed, handled, nothing lost (issue 14).

The DDL runs in the sqlite3 shell, as a user or a migration tool would run
it, on the file a store has open; `reconcile_schema()` (what the node's
capture loop calls) then brings the store in line
(docs/adr/0013-schema-evolution.md).  Writes are made between the DDL and
the reconcile too, since a running node notices DDL only after it
committed.  Where two stores sync, both have run the same DDL: mixed
schema versions are the apply's part (schema-mixed).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from xxhash import xxh3_64_intdigest

from syncmesh.errors import SchemaError
from syncmesh.model import Cell, ChangeBatch, RowChange, SqlValue, Stamp
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.ddl import DEFAULT_CELL_HLC, DEFAULT_CELL_SITE
from syncmesh.store.sqlite.functions import whole_row_text_sql
from syncmesh.store.summary import summary_of
from tests.helpers import exchange_all, rows_with_types, run_cli, sqlite3_shell

# The stamp of a cell an added column filled with its default: the same at every site.
DEFAULT_STAMP = Stamp(DEFAULT_CELL_HLC, DEFAULT_CELL_SITE)
ITEMS = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


def _open(path: Path) -> SqliteStore:
    store = SqliteStore.open(path)
    store.init()
    store.connection.execute(ITEMS)
    store.connection.execute("INSERT INTO items VALUES ('a', 'apple', 1), ('b', 'bean', 2)")
    store.track(["items"])
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = _open(tmp_path / "a.db")
    yield opened
    opened.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "b.db")
    opened.init()
    opened.connection.execute(ITEMS)
    opened.track(["items"])
    yield opened
    opened.close()


def feed(store: SqliteStore, from_seq: int = 0) -> ChangeBatch:
    return store.read_batch(from_seq, {}, 100_000)


def rows(store: SqliteStore, from_seq: int = 0) -> dict[tuple[SqlValue, ...], RowChange]:
    return {change.pk: change for change in feed(store, from_seq).rows}


def stamp(store: SqliteStore, key: str, column: str) -> Stamp:
    return rows(store)[(key,)].state.cells[column].stamp


def shell(store: SqliteStore, sql: str) -> str:
    return sqlite3_shell(Path(store.context.path), sql)


def synced_equal(a: SqliteStore, b: SqliteStore, table: str = "items") -> None:
    """Exchange both ways; then both files hold the same rows and merge state."""
    a.capture()
    b.capture()
    exchange_all(a, b)
    exchange_all(b, a)
    assert rows_with_types(a.connection, table) == rows_with_types(b.connection, table)
    assert a.quarantine() == b.quarantine() == []
    views = [
        {
            change.pk: (change.state.cl, sorted(change.state.cells.items()))
            for change in feed(store).rows
        }
        for store in (a, b)
    ]
    assert views[0] == views[1]
    # Equal stamps, equal hash trees: verify agrees (default-stamped cells included).
    trees = [store.summaries([table])[table] for store in (a, b)]
    assert trees[0].root() == trees[1].root()
    assert a.deep_summary(table)[0].root() == b.deep_summary(table)[0].root()


def triggers(store: SqliteStore, table: str = "items") -> list[str]:
    return [
        row[0]
        for row in store.connection.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ? ORDER BY name",
            (table,),
        )
    ]


# -- the triggers ---------------------------------------------------------------------


def test_drop_column_by_the_shell_succeeds_on_a_tracked_table(store: SqliteStore) -> None:
    """Regression: the update trigger read OLD.c; SQLite refused the drop ('error in trigger')."""
    shell(store, "ALTER TABLE items DROP COLUMN qty")
    columns = [row[1] for row in store.connection.execute("PRAGMA table_info(items)")]
    assert columns == ["id", "name"]


def test_triggers_name_no_value_column_outside_update_of(store: SqliteStore) -> None:
    for (sql,) in store.connection.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'items'"
    ):
        for column in ("name", "qty"):
            assert f'OLD."{column}"' not in sql
            assert f'NEW."{column}"' not in sql


def test_a_file_with_the_old_update_trigger_gets_per_column_triggers_at_open(
    tmp_path: Path,
) -> None:
    """Files from before ADR 0013 have one update trigger that reads every value column."""
    path = tmp_path / "old.db"
    store = _open(path)
    names = triggers(store)
    for name in names:
        if name.startswith(("_syncmesh_update", "_syncmesh_key")):
            store.connection.execute(f'DROP TRIGGER "{name}"')
    store.connection.execute(
        'CREATE TRIGGER "_syncmesh_update_items" AFTER UPDATE ON items'
        " WHEN (SELECT applying FROM _syncmesh_state) = 0 BEGIN"
        ' INSERT INTO "_syncmesh_log_items" (op, mask, k0) SELECT 3,'
        ' (OLD."name" IS NOT NEW."name") | ((OLD."qty" IS NOT NEW."qty") << 1), NEW."id"; END'
    )
    store.close()
    with pytest.raises(AssertionError, match="error in trigger"):
        sqlite3_shell(path, "ALTER TABLE items DROP COLUMN qty")
    store = SqliteStore.open(path)
    try:
        assert triggers(store) == sorted(names)
        sqlite3_shell(path, "ALTER TABLE items DROP COLUMN qty")
    finally:
        store.close()


# -- ADD COLUMN -----------------------------------------------------------------------


def test_add_column_gets_a_new_slot_and_resends_no_row(store: SqliteStore) -> None:
    head = store.head_seq()
    shell(store, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
    assert store.reconcile_schema() == ["table 'items': column 'note' added"]
    assert store.specs()[0].columns == ("id", "name", "qty", "note")
    assert store.context.tables["items"].slots == (0, 1, 2)
    assert feed(store, head).rows == []  # every row holds the default: nothing to send
    assert store.reconcile_schema() == []  # cheap and silent when nothing changed


def test_add_column_captures_writes_made_before_the_reconcile(store: SqliteStore) -> None:
    """The new column has no trigger until the reconcile: its values are caught up."""
    head = store.head_seq()
    shell(
        store,
        "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none';"
        " UPDATE items SET note = 'ripe' WHERE id = 'a';"
        " INSERT INTO items VALUES ('c', 'corn', 3, 'new');"
        " INSERT INTO items VALUES ('d', 'date', 4, 'none');",
    )
    store.reconcile_schema()
    changed = rows(store, head)
    assert set(changed) == {("a",), ("c",), ("d",)}
    assert changed[("a",)].state.cells["note"].value == "ripe"
    assert changed[("a",)].state.cells["name"].stamp == stamp(store, "b", "name")  # untouched
    assert changed[("c",)].state.cells["note"].value == "new"
    # 'd' was inserted (captured) with the default: its cell has the default stamp, like b's.
    assert changed[("d",)].state.cells["note"].stamp == DEFAULT_STAMP
    assert stamp(store, "b", "note") == DEFAULT_STAMP
    store.connection.execute("UPDATE items SET note = 'eaten' WHERE id = 'b'")
    store.capture()
    assert rows(store)[("b",)].state.cells["note"].value == "eaten"


def test_added_column_syncs_between_two_stores_that_both_added_it(
    store: SqliteStore, peer: SqliteStore
) -> None:
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items ADD COLUMN note TEXT")
        each.reconcile_schema()
    store.connection.execute("UPDATE items SET note = 'from a' WHERE id = 'a'")
    peer.connection.execute("INSERT INTO items VALUES ('p', 'pea', 9, 'from b')")
    synced_equal(store, peer)
    assert peer.connection.execute("SELECT note FROM items WHERE id = 'a'").fetchone() == (
        "from a",
    )


# -- RENAME COLUMN --------------------------------------------------------------------


def test_rename_column_keeps_the_slot_its_stamps_and_the_former_name(
    store: SqliteStore,
) -> None:
    before = stamp(store, "a", "qty")
    head = store.head_seq()
    # The UPDATE between the DDL and the reconcile fires the renamed trigger.
    shell(store, "ALTER TABLE items RENAME COLUMN qty TO amount; UPDATE items SET amount = 7")
    assert store.reconcile_schema() == ["table 'items': column 'qty' renamed to 'amount'"]
    spec = store.specs()[0]
    assert spec.columns == ("id", "name", "amount")
    assert spec.former_of("amount") == ("qty",)
    assert store.context.tables["items"].slots == (0, 1)
    assert stamp(store, "a", "amount") > before
    assert {change.pk for change in feed(store, head).rows} == {("a",), ("b",)}
    assert rows(store)[("a",)].state.cells["amount"].value == 7


def test_rename_column_twice_keeps_every_former_name_newest_first(store: SqliteStore) -> None:
    shell(store, "ALTER TABLE items RENAME COLUMN qty TO amount")
    store.reconcile_schema()
    shell(store, "ALTER TABLE items RENAME COLUMN amount TO count")
    store.reconcile_schema()
    assert store.specs()[0].former_of("count") == ("amount", "qty")
    # Two renames between looks: only the name before and after are known.
    shell(
        store, "ALTER TABLE items RENAME COLUMN count TO a; ALTER TABLE items RENAME COLUMN a TO b"
    )
    store.reconcile_schema()
    assert store.specs()[0].former_of("b") == ("count", "amount", "qty")


def test_renamed_column_syncs_between_two_stores(store: SqliteStore, peer: SqliteStore) -> None:
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items RENAME COLUMN name TO title")
        each.reconcile_schema()
    store.connection.execute("UPDATE items SET title = 'apricot' WHERE id = 'a'")
    synced_equal(store, peer)
    assert peer.connection.execute("SELECT title FROM items WHERE id = 'a'").fetchone() == (
        "apricot",
    )


# -- DROP COLUMN ----------------------------------------------------------------------


def test_drop_column_retires_its_slot_and_a_readded_name_starts_empty(
    store: SqliteStore,
) -> None:
    store.connection.execute("UPDATE items SET qty = 5 WHERE id = 'a'")
    store.capture()
    shell(store, "ALTER TABLE items DROP COLUMN qty")
    assert store.reconcile_schema() == ["table 'items': column 'qty' dropped"]
    layout = store.context.tables["items"].layout
    [dropped] = layout.dropped
    assert (dropped.name, dropped.slot) == ("qty", 1)
    assert dropped.dropped_hlc > 0
    assert layout.dropped_names() == frozenset({"qty"})
    store.connection.execute("UPDATE items SET name = 'avocado' WHERE id = 'a'")
    store.capture()
    assert rows(store)[("a",)].state.cells["name"].value == "avocado"
    shell(store, "ALTER TABLE items ADD COLUMN qty INTEGER")
    store.reconcile_schema()
    layout = store.context.tables["items"].layout
    assert layout.slot_of("qty") == 2  # a new slot, never the retired one
    # What schema-mixed needs: cells of `qty` stamped before its drop here are the old column's.
    assert layout.born_of("qty") == dropped.dropped_hlc
    assert layout.dropped_names() == frozenset()
    assert rows(store)[("a",)].state.cells["qty"] == Cell(None, DEFAULT_STAMP)  # not 5


def test_dropped_column_syncs_no_more_and_the_rest_does(
    store: SqliteStore, peer: SqliteStore
) -> None:
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items DROP COLUMN qty")
        each.reconcile_schema()
    store.connection.execute("UPDATE items SET name = 'apple pie' WHERE id = 'a'")
    peer.connection.execute("DELETE FROM items WHERE id = 'b'")
    synced_equal(store, peer)
    assert rows_with_types(peer.connection, "items") == [(("a", "text"), ("apple pie", "text"))]


# -- table rebuild --------------------------------------------------------------------

# What Django's SQLite schema editor runs for AddField with a default (and
# AlterField and friends): create, copy, drop, rename, in one transaction.
DJANGO_REBUILD = """
BEGIN;
CREATE TABLE "new__items" ("id" TEXT NOT NULL PRIMARY KEY, "name" TEXT NULL,
    "qty" INTEGER NULL, "colour" TEXT DEFAULT 'green' NOT NULL);
INSERT INTO "new__items" ("id", "name", "qty", "colour")
    SELECT "id", "name", "qty", 'green' FROM "items";
DROP TABLE "items";
ALTER TABLE "new__items" RENAME TO "items";
CREATE INDEX "items_name_idx" ON "items" ("name");
COMMIT;
"""


def test_a_django_rebuild_is_caught_up_without_resending_copied_rows(
    store: SqliteStore,
) -> None:
    before = stamp(store, "a", "name")
    head = store.head_seq()
    shell(
        store,
        DJANGO_REBUILD
        # Writes while the triggers are gone: all inserts and deletes are recovered.
        + "INSERT INTO items VALUES ('c', 'corn', 3, 'yellow');"
        " INSERT INTO items (id, name, qty) VALUES ('d', 'date', 4);"
        " DELETE FROM items WHERE id = 'b';",
    )
    assert store.schema_problems() != []  # not caught up yet, and said so
    lines = store.reconcile_schema()
    assert "table 'items': column 'colour' added" in lines
    assert any("capture triggers were gone" in line for line in lines)
    assert store.schema_problems() == []
    changed = rows(store, head)
    assert set(changed) == {("b",), ("c",), ("d",)}  # 'a', copied, is not sent again
    assert not changed[("b",)].state.alive
    assert changed[("c",)].state.cells["colour"].value == "yellow"
    assert stamp(store, "a", "name") == before
    store.connection.execute("UPDATE items SET colour = 'red' WHERE id = 'a'")
    store.capture()
    assert rows(store)[("a",)].state.cells["colour"].value == "red"
    assert len(triggers(store)) == 3 + 3  # insert, key, delete; name, qty, colour


def test_rebuild_catch_up_recovers_an_update_of_an_older_row_by_another_connection(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """An UPDATE of a row the rebuild copied, made before the triggers are back, is captured.

    Another connection rebuilds the table and, right after its commit,
    updates a copied row; the store reconciles only then.  The key is the
    same, so only the row's value fingerprint shows the write (ADR 0013).
    It reaches a peer; the rows the rebuild copied unchanged are not sent.
    """
    synced_equal(store, peer)
    head = store.head_seq()
    other = sqlite3.connect(store.context.path, isolation_level=None)
    try:
        other.executescript(DJANGO_REBUILD)
        other.execute("UPDATE items SET name = 'after the rebuild' WHERE id = 'a'")
    finally:
        other.close()
    lines = store.reconcile_schema()
    assert any("rows inserted, updated or deleted meanwhile caught up" in x for x in lines)
    changed = rows(store, head)
    assert set(changed) == {("a",)}  # 'b', copied unchanged, is not sent again
    assert changed[("a",)].state.cells["name"].value == "after the rebuild"
    assert changed[("a",)].state.cells["name"].stamp.hlc > head
    shell(peer, DJANGO_REBUILD)
    peer.reconcile_schema()
    synced_equal(store, peer)
    assert peer.connection.execute("SELECT name FROM items WHERE id = 'a'").fetchone() == (
        "after the rebuild",
    )


def test_rebuild_catch_up_recovers_an_update_made_in_the_shell_of_a_peers_row(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """The same in the sqlite3 shell, for a row a peer wrote last: its fingerprint is
    the apply's, not the capture's."""
    peer.connection.execute("INSERT INTO items VALUES ('p', 'from a peer', 7)")
    synced_equal(store, peer)
    head = store.head_seq()
    shell(store, DJANGO_REBUILD + "UPDATE items SET qty = 8 WHERE id = 'p';")
    store.reconcile_schema()
    changed = rows(store, head)
    assert set(changed) == {("p",)}
    assert changed[("p",)].state.cells["qty"].value == 8


def test_rows_written_just_before_ddl_get_their_fingerprints_at_the_reconcile(
    store: SqliteStore,
) -> None:
    """Writes pending at a DDL are captured with the old definition, which cannot read the
    row's values by name: the reconcile fills their fingerprints in, so an update of such
    a row after a later rebuild is still caught."""
    store.capture()
    shell(store, "UPDATE items SET qty = 5 WHERE id = 'a'; ALTER TABLE items ADD COLUMN note TEXT;")
    store.reconcile_schema()
    assert store.connection.execute(
        "SELECT count(*) FROM _syncmesh_shadow_items WHERE vf IS NULL"
    ).fetchone() == (0,)
    head = store.head_seq()
    shell(
        store,
        "BEGIN; CREATE TABLE new__items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, note TEXT);"
        " INSERT INTO new__items SELECT id, name, qty, note FROM items; DROP TABLE items;"
        " ALTER TABLE new__items RENAME TO items; COMMIT;"
        " UPDATE items SET qty = 6 WHERE id = 'a';",
    )
    store.reconcile_schema()
    assert set(rows(store, head)) == {("a",)}
    assert rows(store)[("a",)].state.cells["qty"].value == 6


def test_a_file_from_before_fingerprints_gets_them_at_open(tmp_path: Path) -> None:
    """A shadow table without `vf` (an older syncmesh) gets it, filled, when opened."""
    path = tmp_path / "old.db"
    store = _open(path)
    store.capture()
    store.connection.execute("ALTER TABLE _syncmesh_shadow_items DROP COLUMN vf")
    store.close()
    store = SqliteStore.open(path)
    try:
        assert store.connection.execute(
            "SELECT count(*) FROM _syncmesh_shadow_items WHERE vf IS NULL"
        ).fetchone() == (0,)
        head = store.head_seq()
        shell(store, DJANGO_REBUILD + "UPDATE items SET qty = 3 WHERE id = 'b';")
        store.reconcile_schema()
        assert set(rows(store, head)) == {("b",)}
    finally:
        store.close()


def test_a_rebuild_that_changes_a_columns_type_affinity_resends_no_row(
    store: SqliteStore,
) -> None:
    """A rebuild that turns `qty` INTEGER into TEXT stores 1 as '1': no write, nothing sent."""
    head = store.head_seq()
    shell(
        store,
        "BEGIN; CREATE TABLE new__items (id TEXT PRIMARY KEY, name TEXT, qty TEXT);"
        " INSERT INTO new__items SELECT id, name, qty FROM items; DROP TABLE items;"
        " ALTER TABLE new__items RENAME TO items; COMMIT;",
    )
    store.reconcile_schema()
    assert store.connection.execute("SELECT typeof(qty) FROM items").fetchall() == [("text",)] * 2
    assert rows(store, head) == {}


DROP_QTY_REBUILD = (
    "BEGIN; CREATE TABLE new__items (id TEXT PRIMARY KEY, name TEXT);"
    " INSERT INTO new__items SELECT id, name FROM items; DROP TABLE items;"
    " ALTER TABLE new__items RENAME TO items; COMMIT;"
)


def test_a_rebuild_that_drops_a_column_catches_an_update_of_a_kept_column(
    store: SqliteStore,
) -> None:
    """A rebuild that drops `qty` (Django removing an indexed field, Alembic batch
    `drop_column`), then an UPDATE of `name` before the triggers are back: captured.

    The fingerprints are per cell, so the cells that are left are compared
    without the dropped one; the row the rebuild only copied is not sent.
    """
    head = store.head_seq()
    shell(store, DROP_QTY_REBUILD + "UPDATE items SET name = 'later' WHERE id = 'b';")
    lines = store.reconcile_schema()
    assert "table 'items': column 'qty' dropped" in lines
    assert any("rows inserted, updated or deleted meanwhile caught up" in x for x in lines)
    assert not any("cannot be told" in line for line in lines)
    changed = rows(store, head)
    assert set(changed) == {("b",)}
    assert changed[("b",)].state.cells["name"].value == "later"
    # Fingerprints are rewritten without the dropped slot, and a later rebuild compares again.
    head = store.head_seq()
    shell(
        store,
        DJANGO_REBUILD.replace('"qty" INTEGER NULL, ', "").replace('"qty", ', "")
        + "UPDATE items SET name = 'even later' WHERE id = 'a';",
    )
    store.reconcile_schema()
    assert set(rows(store, head)) == {("a",)}


def test_the_rebuild_catch_up_stamps_only_the_cells_that_changed(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """An UPDATE of `qty` alone, made while the triggers were gone, renews `qty`'s stamp
    and leaves `name`'s: a concurrent write of `name` at a peer is not overridden."""
    synced_equal(store, peer)
    name_before = stamp(store, "a", "name")
    qty_before = stamp(store, "a", "qty")
    peer.connection.execute("UPDATE items SET name = 'peer wins' WHERE id = 'a'")
    peer.capture()
    shell(store, DJANGO_REBUILD + "UPDATE items SET qty = 9 WHERE id = 'a';")
    store.reconcile_schema()
    assert stamp(store, "a", "name") == name_before
    assert stamp(store, "a", "qty").hlc > qty_before.hlc
    shell(peer, DJANGO_REBUILD)
    peer.reconcile_schema()
    synced_equal(store, peer)
    assert store.connection.execute("SELECT name, qty FROM items WHERE id = 'a'").fetchone() == (
        "peer wins",
        9,
    )


def _whole_row_fingerprints(store: SqliteStore) -> None:
    """Give every live row the whole-row fingerprint a syncmesh from before per-cell ones kept."""
    cells = [(0, "s.h0", "t.name"), (1, "s.h1", "t.qty")]
    texts = store.connection.execute(
        f"SELECT s.k0, {whole_row_text_sql(cells)} FROM _syncmesh_shadow_items s"
        " JOIN items t ON t.id = s.k0 WHERE s.cl % 2 = 1"
    ).fetchall()
    for key, text in texts:
        value = xxh3_64_intdigest(text.encode())
        whole = value - (1 << 64) if value >= 1 << 63 else value
        store.connection.execute(
            "UPDATE _syncmesh_shadow_items SET vf = ? WHERE k0 = ?", (whole, key)
        )


def test_whole_row_fingerprints_from_before_are_still_compared_whole(
    store: SqliteStore,
) -> None:
    """Rows last written by a syncmesh from before per-cell fingerprints: an update
    meanwhile is still caught after a rebuild that drops nothing (as a full-row update)."""
    store.capture()
    _whole_row_fingerprints(store)
    head = store.head_seq()
    shell(store, DJANGO_REBUILD + "UPDATE items SET qty = 7 WHERE id = 'b';")
    store.reconcile_schema()
    assert set(rows(store, head)) == {("b",)}
    assert rows(store)[("b",)].state.cells["qty"].value == 7


def test_whole_row_fingerprints_and_a_dropped_column_are_said_untold_then_renewed(
    store: SqliteStore,
) -> None:
    """With a column dropped, a whole-row fingerprint from before has nothing to compare:
    the line says how many rows, and every fingerprint is per cell afterwards."""
    store.capture()
    _whole_row_fingerprints(store)
    shell(store, DROP_QTY_REBUILD)
    lines = store.reconcile_schema()
    assert any("2 rows last written by a syncmesh from before" in line for line in lines)
    assert store.connection.execute(
        "SELECT count(*) FROM _syncmesh_shadow_items WHERE typeof(vf) != 'blob'"
    ).fetchone() == (0,)


RENAME_NAME_REBUILD = (
    "BEGIN; CREATE TABLE new__items (id TEXT PRIMARY KEY, label TEXT, qty INTEGER);"
    " INSERT INTO new__items SELECT id, name, qty FROM items; DROP TABLE items;"
    " ALTER TABLE new__items RENAME TO items; COMMIT;"
)


def test_a_rebuild_that_renames_a_column_is_recognised_by_its_values(store: SqliteStore) -> None:
    """Alembic's batch `alter_column(new_column_name=)` or `sqlite-utils transform --rename`
    rebuild the table: the renamed column reads as dropped and added by name, but it holds
    the dropped one's values row by row, so it keeps its slot and stamps like a RENAME COLUMN."""
    before = stamp(store, "a", "name")
    head = store.head_seq()
    shell(store, RENAME_NAME_REBUILD)
    lines = store.reconcile_schema()
    assert (
        "table 'items': column 'name' renamed to 'label' (in a table rebuild: recognised by"
        " its values)" in lines
    )
    assert "table 'items': column 'name' dropped" not in lines
    assert "table 'items': column 'label' added" not in lines
    assert rows(store, head) == {}  # nothing is sent again
    assert stamp(store, "a", "label") == before
    assert store.context.tables["items"].spec.former_of("label") == ("name",)


def test_a_rebuild_rename_during_a_rolling_deploy_loses_no_write_either_way(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """Site A rebuilds with the rename and writes the new column; site B, not migrated yet,
    writes the old one; then B migrates the same way.  Both writes survive everywhere (taken
    for a drop and an add, A's write was overwritten by B's re-stamped copy and B's was
    discarded at A)."""
    synced_equal(store, peer)
    shell(store, RENAME_NAME_REBUILD)
    store.reconcile_schema()
    store.connection.execute("UPDATE items SET label = 'from A' WHERE id = 'a'")
    peer.connection.execute("UPDATE items SET name = 'from B' WHERE id = 'b'")
    for source, target in ((store, peer), (peer, store)):
        source.capture()
        exchange_all(source, target)
    shell(peer, RENAME_NAME_REBUILD)
    peer.reconcile_schema()
    synced_equal(store, peer)
    for each in (store, peer):
        assert each.connection.execute("SELECT id, label FROM items ORDER BY id").fetchall() == [
            ("a", "from A"),
            ("b", "from B"),
        ]


def test_a_rebuild_renaming_a_column_updated_meanwhile_is_recognised_and_logs_the_update(
    store: SqliteStore,
) -> None:
    """A row updated between the rebuild and the reconcile does not match; the others do:
    still a rename, and the update is sent."""
    store.connection.execute("INSERT INTO items VALUES ('c', 'corn', 3)")
    store.capture()
    head = store.head_seq()
    shell(store, RENAME_NAME_REBUILD + "UPDATE items SET label = 'changed' WHERE id = 'c';")
    lines = store.reconcile_schema()
    assert any("renamed to 'label' (in a table rebuild" in line for line in lines)
    changed = rows(store, head)
    assert set(changed) == {("c",)}
    assert changed[("c",)].state.cells["label"].value == "changed"


def test_a_rebuild_swapping_a_constant_column_for_another_is_no_rename(
    store: SqliteStore,
) -> None:
    """A dropped column of one value and an added one of the same value (a default) match
    row by row but say nothing: a drop and an add, as by name."""
    store.connection.execute("UPDATE items SET qty = 0")
    store.capture()
    shell(
        store,
        "BEGIN; CREATE TABLE new__items (id TEXT PRIMARY KEY, name TEXT, amount INTEGER"
        " DEFAULT 0); INSERT INTO new__items (id, name) SELECT id, name FROM items;"
        " DROP TABLE items; ALTER TABLE new__items RENAME TO items; COMMIT;",
    )
    lines = store.reconcile_schema()
    assert "table 'items': column 'qty' dropped" in lines
    assert "table 'items': column 'amount' added" in lines


def test_rebuilt_table_syncs_between_two_stores(store: SqliteStore, peer: SqliteStore) -> None:
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, DJANGO_REBUILD)
        each.reconcile_schema()
    store.connection.execute("INSERT INTO items VALUES ('c', 'corn', 3, 'yellow')")
    peer.connection.execute("UPDATE items SET colour = 'blue' WHERE id = 'a'")
    synced_equal(store, peer)
    assert peer.connection.execute("SELECT colour FROM items ORDER BY id").fetchall() == [
        ("blue",),
        ("green",),
        ("yellow",),
    ]


def test_dropped_triggers_are_put_back_and_rows_caught_up(store: SqliteStore) -> None:
    head = store.head_seq()
    for name in triggers(store):
        store.connection.execute(f'DROP TRIGGER "{name}"')
    store.connection.execute("INSERT INTO items VALUES ('c', 'corn', 3)")
    [problem] = store.schema_problems()
    assert "has lost its capture triggers (_syncmesh_delete_items" in problem
    store.reconcile_schema()
    assert set(rows(store, head)) == {("c",)}
    assert len(triggers(store)) == 5


def test_a_single_dropped_update_trigger_is_put_back(store: SqliteStore) -> None:
    store.connection.execute('DROP TRIGGER "_syncmesh_update1_items"')
    [problem] = store.schema_problems()
    assert "_syncmesh_update1_items" in problem
    store.reconcile_schema()
    assert "_syncmesh_update1_items" in triggers(store)
    assert store.schema_problems() == []


# -- RENAME TABLE ---------------------------------------------------------------------


def test_rename_table_keeps_the_shadow_state_and_the_feed(store: SqliteStore) -> None:
    before = rows(store)
    shell(store, "ALTER TABLE items RENAME TO goods; INSERT INTO goods VALUES ('c', 'corn', 3)")
    assert store.reconcile_schema() == ["table 'items' renamed to 'goods'"]
    [spec] = store.specs()
    assert (spec.name, spec.former_names) == ("goods", ("items",))
    after = rows(store)
    assert {pk: change.state for pk, change in after.items() if pk != ("c",)} == {
        pk: change.state for pk, change in before.items()
    }
    assert after[("c",)].state.cells["name"].value == "corn"
    assert {table.table for table in feed(store).tables} == {"goods"}
    names = {row[0] for row in store.connection.execute("SELECT name FROM sqlite_schema")}
    assert "_syncmesh_shadow_goods" in names
    assert "_syncmesh_shadow_items" not in names
    assert "_syncmesh_shadow_goods_seq" in names
    assert all(name.endswith("_goods") for name in triggers(store, "goods"))


def test_renamed_table_syncs_between_two_stores(store: SqliteStore, peer: SqliteStore) -> None:
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items RENAME TO goods")
        each.reconcile_schema()
    store.connection.execute("UPDATE goods SET qty = 10 WHERE id = 'a'")
    synced_equal(store, peer, "goods")


# -- indexes --------------------------------------------------------------------------


def test_unique_index_created_or_dropped_later_gets_its_replace_checks(
    store: SqliteStore,
) -> None:
    shell(store, "CREATE UNIQUE INDEX items_name ON items (name)")
    assert store.reconcile_schema() == ["table 'items': capture triggers updated (indexes changed)"]
    assert "_syncmesh_replace_insert_items" in triggers(store)
    head = store.head_seq()
    # INSERT OR REPLACE deletes 'b' (same name) without a delete trigger firing.
    store.connection.execute("INSERT OR REPLACE INTO items VALUES ('c', 'bean', 3)")
    store.capture()
    assert not rows(store, head)[("b",)].state.alive
    shell(store, "DROP INDEX items_name")
    store.reconcile_schema()
    assert "_syncmesh_replace_insert_items" not in triggers(store)


# -- tables that cannot be reconciled ---------------------------------------------------


def test_a_dropped_table_is_a_problem_with_the_fix_and_the_others_keep_syncing(
    store: SqliteStore, peer: SqliteStore
) -> None:
    for each in (store, peer):
        each.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
        each.track(["notes"])
    shell(store, "DROP TABLE items; INSERT INTO notes VALUES ('n', 'still synced')")
    [line] = store.reconcile_schema()
    assert "'items' is tracked but no longer exists" in line
    assert "syncmesh untrack" in line
    assert store.schema_problems() == [line]
    assert [spec.name for spec in store.specs()] == ["notes"]
    exchange_all(store, peer)
    assert peer.connection.execute("SELECT * FROM notes").fetchall() == [("n", "still synced")]
    # Created again, it comes back.
    shell(store, ITEMS)
    store.reconcile_schema()
    assert [spec.name for spec in store.specs()] == ["items", "notes"]
    assert store.schema_problems() == []


def test_a_changed_primary_key_is_a_problem_and_track_refuses_it(store: SqliteStore) -> None:
    shell(
        store,
        "CREATE TABLE new_items (id TEXT, name TEXT, qty INTEGER, PRIMARY KEY (id, name));"
        " INSERT INTO new_items SELECT * FROM items; DROP TABLE items;"
        " ALTER TABLE new_items RENAME TO items;",
    )
    [line] = store.reconcile_schema()
    assert "primary key changed from ['id'] to ['id', 'name']" in line
    assert store.schema_problems() == [line]
    with pytest.raises(SchemaError, match="primary key changed"):
        store.track(["items"])
    store.untrack(["items"])
    store.track(["items"])
    assert store.specs()[0].pk == ("id", "name")
    assert store.schema_problems() == []


# -- track and untrack -------------------------------------------------------------------


def test_untrack_drops_the_bookkeeping_and_keeps_the_data(store: SqliteStore) -> None:
    store.untrack(["items"])
    assert store.specs() == []
    assert triggers(store) == []
    names = {row[0] for row in store.connection.execute("SELECT name FROM sqlite_schema")}
    assert not any(name.startswith("_syncmesh_shadow_items") for name in names)
    assert "_syncmesh_log_items" not in names
    assert store.connection.execute("SELECT count(*) FROM items").fetchone() == (2,)
    store.connection.execute("INSERT INTO items VALUES ('c', 'corn', 3)")
    assert store.capture() == 0
    with pytest.raises(SchemaError, match="not tracked"):
        store.untrack(["items"])
    store.track(["items"])  # and back, with every row
    assert set(rows(store)) == {("a",), ("b",), ("c",)}


def test_gaining_a_table_forgets_peer_cursors_and_other_sites_claims(
    store: SqliteStore, peer: SqliteStore
) -> None:
    store.connection.execute("INSERT INTO items VALUES ('c', 'corn', 3)")
    synced_equal(store, peer)
    assert peer.peer_cursor(store.site_id).cursor > 0  # type: ignore[union-attr]
    assert store.site_id in peer.vector()
    peer.connection.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    peer.track(["notes"])
    assert peer.peer_cursor(store.site_id).cursor == 0  # type: ignore[union-attr]
    assert set(peer.vector()) == {peer.site_id}
    synced_equal(store, peer)  # read again from the start: the merge is idempotent


def test_reconcile_keeps_the_hash_trees_exact(store: SqliteStore) -> None:
    """Added and dropped columns change every live row's digest; all are refreshed."""
    store.summaries(["items"])
    for ddl in (
        "ALTER TABLE items ADD COLUMN note TEXT",
        "ALTER TABLE items RENAME COLUMN note TO remark",
        "ALTER TABLE items DROP COLUMN qty",
        DJANGO_REBUILD.replace('"qty" INTEGER NULL, ', "").replace('"qty", ', ""),
        # A rebuild that adds a column in the middle: every live row's digest moves.
        "CREATE TABLE new__items (id TEXT PRIMARY KEY, name TEXT, middle TEXT DEFAULT 'm',"
        " colour TEXT); INSERT INTO new__items (id, name, colour)"
        " SELECT id, name, colour FROM items; DROP TABLE items;"
        " ALTER TABLE new__items RENAME TO items;",
    ):
        shell(store, ddl)
        store.reconcile_schema()
        kept = store.summaries(["items"])["items"]
        assert store.deep_summary("items")[1] == 0  # every stored digest matches its stamps
        rebuilt = store.connection.execute("SELECT kh, dg FROM _syncmesh_shadow_items")
        assert kept.leaves == summary_of(rebuilt).leaves


def test_a_slot_beyond_the_masks_bits_logs_its_own_slot(store: SqliteStore) -> None:
    """Slots are never reused; past bit 62 a column's update logs its own slot.

    It used to log -1 (every column), which stamped every cell of the row:
    a concurrent update of another column elsewhere was lost
    (tests/test_wide_tables.py).
    """
    for _ in range(62):  # slots 2..63 used and retired
        for ddl in ("ALTER TABLE items ADD COLUMN spare", "ALTER TABLE items DROP COLUMN spare"):
            store.connection.execute(ddl)
            store.reconcile_schema()
    store.connection.execute("ALTER TABLE items ADD COLUMN late")
    store.reconcile_schema()
    assert store.context.tables["items"].layout.slot_of("late") == 64
    before = rows(store)[("a",)].state.cells
    store.connection.execute("UPDATE items SET qty = 3 WHERE id = 'a'")
    store.capture()
    middle = rows(store)[("a",)].state.cells
    assert middle["qty"].stamp > before["qty"].stamp
    assert middle["name"].stamp == before["name"].stamp  # a bit of its own: column-level
    store.connection.execute("UPDATE items SET late = 1 WHERE id = 'a'")
    store.capture()
    after = rows(store)[("a",)].state.cells
    assert after["late"].value == 1
    assert after["late"].stamp > middle["qty"].stamp
    assert after["name"].stamp == middle["name"].stamp  # its own slot only
    assert after["qty"].stamp == middle["qty"].stamp


def test_an_open_store_survives_ddl_by_another_connection(store: SqliteStore) -> None:
    other = sqlite3.connect(store.context.path)
    try:
        other.execute("ALTER TABLE items ADD COLUMN note TEXT")
        other.execute("INSERT INTO items VALUES ('c', 'corn', 3, 'x')")
        other.commit()
    finally:
        other.close()
    store.reconcile_schema()
    assert rows(store)[("c",)].state.cells["note"].value == "x"


def test_a_table_of_sixty_value_columns_is_captured(tmp_path: Path) -> None:
    """The capture's SQL functions stay within SQLite's 127 arguments at 60 value columns.

    Regression: passing each slot as its own argument to the pasts function
    made captures of tables wider than 41 value columns fail.
    """
    store = SqliteStore.open(tmp_path / "wide.db")
    try:
        store.init()
        columns = ", ".join(f"c{index}" for index in range(60))
        store.connection.execute(f"CREATE TABLE wide (id TEXT PRIMARY KEY, {columns})")
        store.connection.execute("INSERT INTO wide (id) VALUES ('w')")
        store.track(["wide"])
        store.connection.execute("UPDATE wide SET c59 = 1")
        assert store.capture() == 1
        assert rows(store)[("w",)].state.cells["c59"].value == 1
    finally:
        store.close()


def test_a_read_or_apply_right_after_ddl_follows_it_first(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """Rows are read and written by column name: the store reconciles before either.

    Regression: between a RENAME COLUMN and the next reconcile, the feed
    query and the apply named the old column ("no such column").
    """
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items RENAME COLUMN qty TO amount")
    store.connection.execute("UPDATE items SET amount = 8 WHERE id = 'a'")
    exchange_all(store, peer)  # read_batch at one, apply_batch at the other: no reconcile yet
    assert peer.connection.execute("SELECT amount FROM items WHERE id = 'a'").fetchone() == (8,)
    # The lines of those reconciles are not lost: the next call returns them.
    assert store.reconcile_schema() == ["table 'items': column 'qty' renamed to 'amount'"]
    assert store.reconcile_schema() == []


def test_a_row_quarantined_before_add_column_gets_the_default_when_retried(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """Found by the state machine's soak; the apply's part of mixed versions (issue 14)."""
    store.connection.execute("INSERT INTO items VALUES ('q', 'quince', 1)")
    store.capture()
    # Refused by a trigger at the peer, so quarantined there (reason: the write was skipped).
    peer.connection.execute(
        "CREATE TRIGGER no_q BEFORE INSERT ON items WHEN NEW.id = 'q'"
        " BEGIN SELECT RAISE(IGNORE); END"
    )
    exchange_all(store, peer)
    assert len(peer.quarantine()) == 1
    peer.connection.execute("DROP TRIGGER no_q")
    for each in (store, peer):
        shell(each, "ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
        each.reconcile_schema()
    assert peer.retry_quarantine() == 1
    assert peer.connection.execute("SELECT note FROM items WHERE id = 'q'").fetchone() == ("none",)


def test_the_schema_benchmark_runs_and_resends_only_the_rows_updated_meanwhile(
    tmp_path: Path,
) -> None:
    """bench/schema.py at a tiny size, so its code cannot rot (no speed is checked)."""
    from bench import schema as bench_schema

    figures = {name: value for name, value, _unit in bench_schema.run(300, tmp_path)}
    fed = [value for name, value in figures.items() if name.endswith("rows put in the feed")]
    assert fed == [0, 0, 0, 0, bench_schema.UPDATED_MEANWHILE, 0]


def test_the_cli_track_follows_a_changed_table_and_refuses_a_rekeyed_one(tmp_path: Path) -> None:
    """`syncmesh track` of a tracked table after DDL, as a user runs it (it refused before)."""
    path = tmp_path / "app.db"
    sqlite3_shell(path, ITEMS + "; INSERT INTO items VALUES ('a', 'apple', 1);")
    assert run_cli("init", str(path)).returncode == 0
    assert run_cli("track", str(path), "items").returncode == 0
    sqlite3_shell(
        path,
        "ALTER TABLE items ADD COLUMN note TEXT; INSERT INTO items VALUES ('b', 'bean', 2, 'new');",
    )
    result = run_cli("track", str(path), "items")
    assert result.returncode == 0, result.stderr
    opened = SqliteStore.open(path)
    try:
        assert opened.specs()[0].columns == ("id", "name", "qty", "note")
        assert rows(opened)[("b",)].state.cells["note"].value == "new"
    finally:
        opened.close()
    sqlite3_shell(
        path,
        "CREATE TABLE n (id TEXT, name TEXT, qty INTEGER, note TEXT, PRIMARY KEY (id, name));"
        " INSERT INTO n SELECT * FROM items; DROP TABLE items; ALTER TABLE n RENAME TO items;",
    )
    refused = run_cli("track", str(path), "items")
    assert refused.returncode == 1
    assert "primary key changed" in refused.stderr
    assert "syncmesh untrack" in refused.stderr


def test_a_row_held_whole_but_for_default_cells_is_not_sent_back(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """The default stamp counts as held by everyone: a relay does not echo rows back.

    After ADD COLUMN every row has a default-stamped cell, which no vector
    names; without this, every row the peer applied from us would be sent
    back to us, all of it already held.
    """
    synced_equal(store, peer)
    for each in (store, peer):
        shell(each, "ALTER TABLE items ADD COLUMN note TEXT")
        each.reconcile_schema()
    synced_equal(store, peer)
    store.connection.execute("UPDATE items SET qty = 5 WHERE id = 'a'")
    store.capture()
    exchange_all(store, peer)  # the peer applied it: a new seq in its feed
    cursor = store.peer_cursor(peer.site_id)
    assert cursor is not None
    batch = peer.read_batch(cursor.cursor, store.vector(), 1_000)
    assert batch.rows == []  # we hold every stamp of it, the default one included


def test_status_reads_while_a_renamed_table_is_not_followed_yet(store: SqliteStore) -> None:
    """Regression: status counted rows of the table under its old name, and failed."""
    shell(store, "ALTER TABLE items RENAME TO goods")
    status = store.status()
    assert status.tables == {"items": -1}
    [problem] = status.schema_problems
    assert "table 'items' renamed to 'goods'" in problem
    store.reconcile_schema()
    assert store.status().tables == {"goods": 2}


def test_a_table_renamed_over_a_dropped_tracked_one_waits_for_its_untrack(
    store: SqliteStore,
) -> None:
    """DROP TABLE u; ALTER TABLE t RENAME TO u, with both tracked: nothing is mixed up.

    The old `u` is gone (its rows are not taken for t's), t's rename waits
    until the old u is untracked, and every other table keeps syncing.
    """
    store.connection.execute("CREATE TABLE goods (id TEXT PRIMARY KEY, label TEXT)")
    store.connection.execute("INSERT INTO goods VALUES ('g', 'old goods row')")
    store.track(["goods"])
    shell(store, "DROP TABLE goods; ALTER TABLE items RENAME TO goods")
    lines = store.reconcile_schema()
    assert any("'goods' is tracked but no longer exists" in line for line in lines)
    assert any("renamed to 'goods', the name of another tracked table" in line for line in lines)
    assert store.specs() == []
    store.untrack(["goods"])
    assert store.reconcile_schema() == ["table 'items' renamed to 'goods'"]
    [spec] = store.specs()
    assert (spec.name, spec.columns) == ("goods", ("id", "name", "qty"))
    assert set(rows(store)) == {("a",), ("b",)}  # items' rows, not the old goods'


def test_two_stores_stay_equal_through_a_sequence_of_every_kind_of_ddl(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """Each change runs at both stores (the second while the first writes), then they sync."""
    synced_equal(store, peer)
    steps = [
        ("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'n'", "items", "note"),
        ("ALTER TABLE items RENAME COLUMN name TO title", "items", "title"),
        ("ALTER TABLE items DROP COLUMN qty", "items", "note"),
        (
            "CREATE TABLE new__items (id TEXT PRIMARY KEY, title TEXT, note TEXT DEFAULT 'n',"
            " size INTEGER DEFAULT 0); INSERT INTO new__items (id, title, note)"
            " SELECT id, title, note FROM items; DROP TABLE items;"
            " ALTER TABLE new__items RENAME TO items;",
            "items",
            "size",
        ),
        ("ALTER TABLE items RENAME TO goods", "goods", "title"),
        ("CREATE UNIQUE INDEX goods_title ON goods (title)", "goods", "note"),
    ]
    for index, (ddl, table, column) in enumerate(steps):
        shell(store, ddl)
        store.connection.execute(f"INSERT INTO {table} (id) VALUES ('s{index}')")
        store.connection.execute(f"UPDATE {table} SET {column} = 'v{index}' WHERE id = 'a'")
        shell(peer, ddl)
        peer.connection.execute(f"UPDATE {table} SET {column} = 'p{index}' WHERE id = 'b'")
        for each in (store, peer):
            each.reconcile_schema()
        synced_equal(store, peer, table)
    assert peer.connection.execute("SELECT count(*) FROM goods").fetchone() == (8,)


def test_a_file_from_before_slots_reads_slot_i_for_column_i(tmp_path: Path) -> None:
    """`_syncmesh_tables.spec` without slots (files from before ADR 0013): nothing rewritten."""
    path = tmp_path / "old.db"
    store = _open(path)
    store.connection.execute(
        "UPDATE _syncmesh_tables SET spec = ? WHERE name = 'items'",
        ('{"columns": ["id", "name", "qty"], "types": ["TEXT", "TEXT", "INTEGER"], "pk": ["id"]}',),
    )
    before = rows(store)
    store.close()
    store = SqliteStore.open(path)
    try:
        layout = store.context.tables["items"].layout
        assert (layout.slots, layout.born, layout.dropped, layout.next_slot) == (
            (0, 1),
            (0, 0),
            (),
            2,
        )
        assert rows(store) == before
        store.connection.execute("UPDATE items SET qty = 9 WHERE id = 'a'")
        store.capture()
        assert rows(store)[("a",)].state.cells["qty"].value == 9
    finally:
        store.close()


def test_writes_logged_before_a_drop_keep_their_stamps(store: SqliteStore) -> None:
    """The pending log is captured with the old definition first (ADR 0013)."""
    head = store.head_seq()
    store.connection.execute("UPDATE items SET name = 'apricot', qty = 3 WHERE id = 'a'")
    shell(store, "ALTER TABLE items DROP COLUMN qty")  # before any capture
    store.reconcile_schema()
    changed = rows(store, head)
    assert set(changed) == {("a",)}
    assert changed[("a",)].state.cells["name"].value == "apricot"
    assert changed[("a",)].state.cells["name"].stamp > stamp(store, "b", "name")


def test_track_of_a_renamed_table_under_its_new_name_follows_the_rename(
    store: SqliteStore,
) -> None:
    """Regression: `track goods` after RENAME TABLE items TO goods tracked it a second time."""
    before = rows(store)
    shell(store, "ALTER TABLE items RENAME TO goods")
    store.track(["goods"])
    [spec] = store.specs()
    assert (spec.name, spec.former_names) == ("goods", ("items",))
    # The same shadow state, no second backfill.
    assert {pk: change.state for pk, change in rows(store).items()} == {
        pk: change.state for pk, change in before.items()
    }
    assert len(triggers(store, "goods")) == 5  # one set of capture triggers
    store.connection.execute("INSERT INTO goods VALUES ('c', 'corn', 3)")
    assert store.capture() == 1


def test_fields_other_modules_keep_in_the_spec_survive_a_reconcile(store: SqliteStore) -> None:
    """integer_keys.py keeps its opt-in in `_syncmesh_tables.spec`: DDL must not drop it."""
    # Written by another process (`syncmesh track --allow-integer-keys`) after this
    # store loaded the table: the reconcile reads the spec again before it writes.
    store.connection.execute(
        "UPDATE _syncmesh_tables SET spec = json_set(spec, '$.integer_keys_allowed', json('true'))"
    )
    for ddl in (
        "ALTER TABLE items ADD COLUMN note TEXT",
        "ALTER TABLE items RENAME COLUMN note TO remark",
        "ALTER TABLE items RENAME TO goods",
    ):
        shell(store, ddl)
        store.reconcile_schema()
    [(spec,)] = store.connection.execute("SELECT spec FROM _syncmesh_tables").fetchall()
    assert json.loads(spec)["integer_keys_allowed"] is True


def test_a_unique_index_and_its_column_dropped_in_one_transaction_roll_back_whole(
    store: SqliteStore, peer: SqliteStore
) -> None:
    """The documented limit (docs/schema.md): refused whole, nothing lost, and the
    same change split in two transactions is followed."""
    shell(store, "CREATE UNIQUE INDEX items_name ON items (name)")
    store.reconcile_schema()
    path = Path(store.context.path)
    result = subprocess.run(
        [
            "sqlite3",
            str(path),
            "BEGIN; DROP INDEX items_name; ALTER TABLE items DROP COLUMN name; COMMIT;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "error in trigger _syncmesh_replace" in result.stderr
    assert "after drop column" in result.stderr
    assert shell(store, "SELECT id, name, qty FROM items ORDER BY id") == "a|apple|1\nb|bean|2\n"
    assert "items_name" in shell(store, "SELECT name FROM sqlite_master WHERE type = 'index'")
    # Split: the node follows the DROP INDEX, then the DROP COLUMN goes through.
    shell(store, "DROP INDEX items_name")
    store.reconcile_schema()
    shell(store, "ALTER TABLE items DROP COLUMN name")
    store.reconcile_schema()
    assert store.schema_problems() == []
    assert [spec.value_columns for spec in store.specs()] == [("qty",)]
    shell(store, "UPDATE items SET qty = 5 WHERE id = 'a'")
    exchange_all(store, peer)
    assert shell(peer, "SELECT id, qty FROM items ORDER BY id") == "a|5\nb|2\n"
