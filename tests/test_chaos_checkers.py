"""The chaos checkers on hand-made histories: each finds what it names, and only that."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from syncmesh.chaos.checkers import (
    ClockCheck,
    ClockSample,
    Violation,
    check_captured,
    check_clocks,
    check_convergence,
    check_echo,
    check_indexes,
    check_logs,
    check_no_fleet_gap,
    check_no_resurrection,
    check_orders,
    check_phantoms,
    check_schema,
    check_waiting,
    check_writes,
    dead_everywhere,
    in_final_shape,
    rows_repaired_by_verify,
    torn_orders,
)
from syncmesh.chaos.history import Key, Replica, RowDump, Write, read_replica
from syncmesh.chaos.migrations import PLANS
from syncmesh.chaos.run import all_applied_from_stream
from syncmesh.chaos.workload import WORKLOAD_DDL, WORKLOAD_INTEGER_KEY_TABLES, WORKLOAD_TABLES
from syncmesh.clock import pack
from syncmesh.merge import value_order_key
from syncmesh.model import SqlValue
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.ddl import DEFAULT_CELL_SITE

A, B = "site-a", "site-b"
COLUMNS = ("a", "b", "n")
T1, T2, T3 = pack(1_000, 0), pack(2_000, 0), pack(3_000, 0)


def alive(cl: int, stamp: int, site: str, a: str, b: str = "b0", n: int = 0) -> RowDump:
    return RowDump(
        cl,
        (stamp, site),
        ((a, "text"), (b, "text"), (n, "integer")),
        {"a": (stamp, site), "b": (stamp, site), "n": (stamp, site)},
    )


def dead(cl: int, stamp: int, site: str) -> RowDump:
    return RowDump(cl, (stamp, site), None, {})


def with_a(row: RowDump, value: str, stamp: tuple[int, str]) -> RowDump:
    """`row` with column a holding `value` under `stamp`."""
    assert row.values is not None
    return RowDump(
        row.cl, row.cl_stamp, ((value, "text"), *row.values[1:]), {**row.stamps, "a": stamp}
    )


def replica(rows: dict[int, RowDump], node: str = "n0") -> Replica:
    return Replica(node, A, T3, {"kv": {(key,): row for key, row in rows.items()}}, {"kv": COLUMNS})


def upsert(node: str, site: str, index: int, a: str, stamp: int | None, cl: int | None) -> Write:
    cells: dict[str, SqlValue] = {"a": a, "b": "b0", "n": 0}
    return Write("upsert", node, site, "kv", [1], index, cells, stamp=stamp, cl=cl)


def update(node: str, site: str, index: int, a: str, stamp: int | None, cl: int | None) -> Write:
    return Write("update", node, site, "kv", [1], index, {"a": a}, stamp=stamp, cl=cl)


def kinds(violations: list[Violation]) -> list[str]:
    return [violation.checker for violation in violations]


# -- convergence ---------------------------------------------------------------------------


def test_identical_replicas_converge() -> None:
    rows = {1: alive(1, T1, A, "x")}
    assert check_convergence([replica(rows, "n0"), replica(dict(rows), "n1")]) == []


def test_a_storage_class_difference_is_divergence() -> None:
    one = replica({1: alive(1, T1, A, "x", n=1)}, "n0")
    other = replica({1: alive(1, T1, A, "x")}, "n1")
    other.tables["kv"][(1,)] = RowDump(
        1, (T1, A), (("x", "text"), ("b0", "text"), (1.0, "real")), one.tables["kv"][(1,)].stamps
    )
    violations = check_convergence([one, other])
    assert kinds(violations) == ["convergence"]
    assert "key [1]" in violations[0].message


def test_a_stamp_difference_is_divergence() -> None:
    one = replica({1: alive(1, T1, A, "x")}, "n0")
    other = replica({1: alive(1, T2, A, "x")}, "n1")
    assert kinds(check_convergence([one, other])) == ["convergence"]


# -- lost writes ---------------------------------------------------------------------------


def test_the_greatest_stamp_holding_the_cell_is_no_loss() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1), update("n1", B, 1, "y", T2, 1)]
    final = replica({1: with_a(alive(1, T1, A, "x"), "y", (T2, B))})
    violations, tally = check_writes(writes, final)
    assert violations == []
    assert tally.exact == 2


def test_a_write_with_a_greater_stamp_than_the_final_cell_was_lost() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1), update("n1", B, 1, "y", T2, 1)]
    final = replica({1: alive(1, T1, A, "x")})  # y (T2) should have won
    violations, _ = check_writes(writes, final)
    assert kinds(violations) == ["lost-write"]
    assert "update #1 at n1" in violations[0].message


def test_same_stamp_later_write_of_the_same_node_wins() -> None:
    # Two writes at one node folded into one capture share the stamp.
    writes = [upsert("n0", A, 1, "x", T1, 1), update("n0", A, 2, "z", T1, 1)]
    final = replica({1: with_a(alive(1, T1, A, "x"), "z", (T1, A))})
    violations, _ = check_writes(writes, final)
    assert violations == []


def test_a_value_under_a_writes_stamp_that_nobody_later_wrote_is_a_loss() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1)]
    final = replica({1: alive(1, T1, A, "other")})
    assert kinds(check_writes(writes, final)[0]) == ["lost-write"]


def test_writes_of_an_earlier_life_lose_to_the_delete() -> None:
    writes = [
        upsert("n0", A, 1, "x", T1, 1),
        Write("delete", "n1", B, "kv", [1], 1, stamp=T2, cl=2),
        update("n0", A, 2, "late", T3, 1),  # concurrent with the delete, bigger stamp
    ]
    violations, tally = check_writes(writes, replica({1: dead(2, T2, B)}))
    assert violations == []
    assert tally.superseded_life == 2


def test_a_causal_length_above_the_final_one_was_lost() -> None:
    writes = [Write("delete", "n1", B, "kv", [1], 1, stamp=T2, cl=2)]
    violations, _ = check_writes(writes, replica({1: alive(1, T1, A, "x")}))
    assert "lost-write" in kinds(violations)


def test_a_deleted_row_that_shows_again_is_a_resurrection() -> None:
    writes = [
        upsert("n0", A, 1, "x", T1, 1),
        Write("delete", "n1", B, "kv", [1], 1, stamp=T2, cl=2),
    ]
    present = RowDump(2, (T2, B), (("x", "text"), ("b0", "text"), (0, "integer")), {})
    assert "resurrection" in kinds(check_writes(writes, replica({1: present}))[0])


def test_a_row_alive_in_a_life_nobody_inserted_is_a_resurrection() -> None:
    writes = [
        upsert("n0", A, 1, "x", T1, 1),
        Write("delete", "n1", B, "kv", [1], 1, stamp=T2, cl=2),
    ]
    final = replica({1: alive(3, T3, A, "x")})
    assert "resurrection" in kinds(check_writes(writes, final)[0])


def test_writes_without_a_stamp_are_counted_not_judged() -> None:
    writes = [upsert("n1", B, 1, "x", T1, 1), update("n0", A, 1, "gone", None, None)]
    violations, tally = check_writes(writes, replica({1: alive(1, T1, B, "x")}))
    assert violations == []
    assert (tally.exact, tally.unverified) == (1, 1)


# -- phantoms and orders -------------------------------------------------------------------


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1)]
    assert check_phantoms(writes, replica({1: alive(1, T1, A, "x")})) == []
    assert kinds(check_phantoms(writes, replica({1: alive(1, T1, A, "forged")}))) == [
        "phantom-write"
    ]
    # Right value, wrong site: some node claimed a write it did not make.
    assert "phantom-write" in kinds(check_phantoms(writes, replica({1: alive(1, T1, B, "x")})))


# -- after a rolling migration (the migrate fault) --------------------------------------------


def with_column(row: RowDump, value: SqlValue, kind: str, stamp: tuple[int, str]) -> RowDump:
    """`row` with a fourth value column `c` holding `value` under `stamp`."""
    assert row.values is not None
    return RowDump(row.cl, row.cl_stamp, (*row.values, (value, kind)), {**row.stamps, "c": stamp})


def migrated(rows: dict[int, RowDump]) -> Replica:
    return Replica("n0", A, T3, {"kv": {(k,): r for k, r in rows.items()}}, {"kv": (*COLUMNS, "c")})


def test_an_added_columns_default_under_the_default_stamp_is_no_phantom() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1)]
    default_cell = (1, DEFAULT_CELL_SITE)
    row = with_column(alive(1, T1, A, "x"), None, "null", default_cell)
    assert check_phantoms(writes, migrated({1: row}), "kv", {"c": None}) == []
    # Without the migration's defaults, nobody wrote that cell.
    assert kinds(check_phantoms(writes, migrated({1: row}))) == ["phantom-write"]
    # A value other than the default under the default stamp: nobody wrote it.
    forged = with_column(alive(1, T1, A, "x"), "c-forged", "text", default_cell)
    assert kinds(check_phantoms(writes, migrated({1: forged}), "kv", {"c": None})) == [
        "phantom-write"
    ]
    # The default under a real site's stamp is a write that site must have made.
    claimed = with_column(alive(1, T1, A, "x"), None, "null", (T1, B))
    assert kinds(check_phantoms(writes, migrated({1: claimed}), "kv", {"c": None})) == [
        "phantom-write"
    ]


def test_a_write_of_the_added_column_is_judged_like_any_other() -> None:
    write = Write("update", "n0", A, "kv", [1], 2, {"c": "n0.2.c"}, stamp=T2, cl=1)
    writes = [upsert("n0", A, 1, "x", T1, 1), write]
    kept = with_column(alive(1, T1, A, "x"), "n0.2.c", "text", (T2, A))
    assert check_writes(writes, migrated({1: kept}))[0] == []
    assert check_phantoms(writes, migrated({1: kept}), "kv", {"c": None}) == []
    lost = with_column(alive(1, T1, A, "x"), None, "null", (1, DEFAULT_CELL_SITE))
    assert kinds(check_writes(writes, migrated({1: lost}))[0]) == ["lost-write"]


def test_writes_under_a_renamed_columns_old_name_count_under_the_new_one() -> None:
    old = Write("update", "n0", A, "kv", [1], 1, {"b": "n0.1.b", "a": "n0.1.a"}, stamp=T1, cl=1)
    new = Write("update", "n1", B, "kv", [1], 1, {"bee": "n1.1.bee"}, stamp=T2, cl=1, schema=1)
    order = Write("order", "n0", A, "orders", ["o1"], 2, {"b": "not kv"}, lines=1)
    renamed, dropped = in_final_shape([old, new, order], PLANS["rename"])
    assert [write.cells for write in renamed] == [
        {"bee": "n0.1.b", "a": "n0.1.a"},
        {"bee": "n1.1.bee"},
        {"b": "not kv"},
    ]
    assert dropped == set()
    assert old.cells == {"b": "n0.1.b", "a": "n0.1.a"}  # the history itself is left alone


def test_a_write_is_mapped_through_the_steps_run_after_it_only() -> None:
    """add+rename: a write made after the add but before the rename has `c` and `b`."""
    before = Write("update", "n0", A, "kv", [1], 1, {"b": "n0.1.b"}, schema=0)
    between = Write("update", "n0", A, "kv", [1], 2, {"b": "n0.2.b", "c": "n0.2.c"}, schema=1)
    after = Write("update", "n0", A, "kv", [1], 3, {"bee": "n0.3.bee", "b": "x"}, schema=2)
    shaped, _ = in_final_shape([before, between, after], PLANS["add+rename"])
    assert [write.cells for write in shaped] == [
        {"bee": "n0.1.b"},
        {"bee": "n0.2.b", "c": "n0.2.c"},
        {"bee": "n0.3.bee", "b": "x"},  # written after the rename: its names are final
    ]


def test_writes_to_a_renamed_table_count_under_its_new_name() -> None:
    old = Write("upsert", "n0", A, "kv", [1], 1, {"a": "n0.1.a"}, schema=0)
    new = Write("update", "n1", B, "kv_items", [1], 2, {"a": "n1.2.a"}, schema=1)
    shaped, _ = in_final_shape([old, new], PLANS["rename-table+rebuild"])
    assert [(write.table, write.cells) for write in shaped] == [
        ("kv_items", {"a": "n0.1.a"}),
        ("kv_items", {"a": "n1.2.a"}),
    ]
    assert PLANS["rename-table+rebuild"].final_table == "kv_items"


def drop_readd_replica(b_value: SqlValue, b_stamp: tuple[int, str]) -> Replica:
    """kv after drop+readd: columns a, n, then the new b."""
    row = RowDump(
        1,
        (T1, A),
        (("n0.1.a", "text"), (0, "integer"), (b_value, "text" if b_value else "null")),
        {"a": (T1, A), "n": (T1, A), "b": b_stamp},
    )
    return Replica("n0", A, T3, {"kv": {(1,): row}}, {"kv": ("a", "n", "b")})


def test_a_dropped_columns_values_are_gone_and_must_not_come_back_in_the_re_added_one() -> None:
    plan = PLANS["drop+readd"]
    assert plan.columns(COLUMNS)[-1] == ("a", "n", "b")
    assert plan.final_defaults() == {"b": None}
    old = Write("upsert", "n0", A, "kv", [1], 1, {"a": "n0.1.a", "b": "n0.1.b", "n": 0})
    writes = [replace_stamp(old, T1)]
    shaped, dropped = in_final_shape(writes, plan)
    assert shaped[0].cells == {"a": "n0.1.a", "n": 0}  # b's value is judged nowhere
    assert dropped == {("kv", (1,), "b", value_order_key("n0.1.b"))}
    # The new b holds its default, unwritten: right.
    fine = drop_readd_replica(None, (1, DEFAULT_CELL_SITE))
    assert check_writes(shaped, fine)[0] == []
    assert check_phantoms(shaped, fine, "kv", plan.final_defaults(), dropped) == []
    # The old value is back in the new column: a resurrection, not just a phantom.
    back = drop_readd_replica("n0.1.b", (T1, A))
    assert kinds(check_phantoms(shaped, back, "kv", plan.final_defaults(), dropped)) == [
        "resurrection"
    ]
    # A value written into the new b after the re-add is judged like any other.
    new = Write("update", "n0", A, "kv", [1], 5, {"b": "n0.5.b"}, stamp=T2, cl=1, schema=2)
    shaped, dropped = in_final_shape([*writes, new], plan)
    kept = drop_readd_replica("n0.5.b", (T2, A))
    assert check_writes(shaped, kept)[0] == []
    assert check_phantoms(shaped, kept, "kv", plan.final_defaults(), dropped) == []


def replace_stamp(write: Write, stamp: int) -> Write:
    write.stamp, write.cl = stamp, 1
    return write


def test_indexes_are_checked_at_every_node() -> None:
    plan = PLANS["index+unindex"]
    assert plan.final_indexes() == frozenset({"kv_a"})
    assert check_indexes({"n0": frozenset({"kv_a"})}, plan.final_indexes(), "kv") == []
    behind = {"n0": frozenset({"kv_a"}), "n1": frozenset({"kv_a", "kv_n_unique"})}
    violations = check_indexes(behind, plan.final_indexes(), "kv")
    assert kinds(violations) == ["migrate"]
    assert "n1" in violations[0].message


def test_a_replica_that_did_not_migrate_is_a_violation() -> None:
    done = migrated({})
    behind = replica({}, "n1")
    assert check_schema([done], "kv", (*COLUMNS, "c")) == []
    violations = check_schema([done, behind], "kv", (*COLUMNS, "c"))
    assert kinds(violations) == ["migrate"]
    assert "n1" in violations[0].message


def test_the_dump_reads_each_columns_stamps_from_its_slot(tmp_path: Path) -> None:
    """After a DROP COLUMN, slots are no longer positions: b lives in slot 1, not 0."""
    path = tmp_path / "n0.db"
    connection = sqlite3.connect(path)
    connection.executescript(WORKLOAD_DDL)
    connection.close()
    store = SqliteStore.open(path)
    site = store.init()
    store.track(WORKLOAD_TABLES, allow_integer_keys=WORKLOAD_INTEGER_KEY_TABLES)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("INSERT INTO kv VALUES (1, 'x', 'y', 1)")
    store.capture()
    first = read_replica("n0", path).row("kv", (1,))
    assert first is not None
    connection.execute("ALTER TABLE kv DROP COLUMN a")
    store.reconcile_schema()
    connection.execute("UPDATE kv SET b = 'y2' WHERE k = 1")
    store.capture()
    connection.close()
    store.close()
    dumped = read_replica("n0", path)
    row = dumped.row("kv", (1,))
    assert row is not None
    assert dumped.columns["kv"] == ("b", "n")
    assert row.values == (("y2", "text"), (1, "integer"))
    assert row.stamps["n"] == first.stamps["n"]  # n's stamp, read from slot 2
    assert row.stamps["b"] > first.stamps["b"]  # b's new stamp, read from slot 1
    assert row.stamps["b"][1] == site


def tracked_workload_file(path: Path) -> SqliteStore:
    """A file with the chaos workload's tables, tracked: its open store."""
    connection = sqlite3.connect(path)
    connection.executescript(WORKLOAD_DDL)
    connection.close()
    store = SqliteStore.open(path)
    store.init()
    store.track(WORKLOAD_TABLES, allow_integer_keys=WORKLOAD_INTEGER_KEY_TABLES)
    return store


def test_a_row_written_behind_the_capture_is_reported_as_never_captured(tmp_path: Path) -> None:
    """A row in a tracked table with no shadow row is a violation of its own, and the
    lost-write report of its key says the row is there but was never captured.

    The row is written while `_syncmesh_state.applying` reads 1 (as if the engine
    were applying), so its capture trigger does not fire: the dump, read through
    the shadow rows, cannot see it, and only the `uncaptured` checker does.
    """
    path = tmp_path / "n0.db"
    store = tracked_workload_file(path)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("INSERT INTO kv VALUES (1, 'x', 'y', 1)")
    store.capture()
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("UPDATE _syncmesh_state SET applying = 1")
    connection.execute("INSERT INTO kv VALUES (2, 'behind', 'the capture', 2)")
    connection.execute("UPDATE _syncmesh_state SET applying = 0")
    connection.execute("COMMIT")
    store.capture()
    connection.close()
    store.close()
    dumped = read_replica("n0", path)
    assert dumped.uncaptured == {"kv": [(2,)]}
    found = check_captured([dumped])
    assert kinds(found) == ["uncaptured"]
    assert "kv: 1 rows in the table were never captured" in found[0].message
    written = Write("upsert", "n0", dumped.site, "kv", [2], 7, {"a": "behind"}, lo=5, hi=9)
    lost, _tally = check_writes([written], dumped)
    assert kinds(lost) == ["lost-write"]
    assert "its row is in the table, never captured" in lost[0].message
    assert "upsert #7 at n0 (schema step 0, clock 5..9, stamp not read)" in lost[0].message


def test_a_replica_with_every_row_captured_has_nothing_uncaptured(tmp_path: Path) -> None:
    path = tmp_path / "n0.db"
    store = tracked_workload_file(path)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("INSERT INTO kv VALUES (1, 'x', 'y', 1), (2, 'z', NULL, 2)")
    connection.execute("DELETE FROM kv WHERE k = 1")
    store.capture()
    connection.close()
    store.close()
    dumped = read_replica("n0", path)
    assert dumped.uncaptured == {}
    assert check_captured([dumped]) == []


def order_replica(orders: dict[str, int], lines: dict[str, int]) -> Replica:
    order_rows: dict[Key, RowDump] = {
        (order_id,): RowDump(1, None, (("n0", "text"), (count, "integer")), {})
        for order_id, count in orders.items()
    }
    line_rows: dict[Key, RowDump] = {
        (order_id, line): RowDump(1, None, ((7, "integer"),), {})
        for order_id, count in lines.items()
        for line in range(count)
    }
    return Replica(
        "n1",
        A,
        T3,
        {"orders": order_rows, "order_lines": line_rows},
        {"orders": ("node", "lines"), "order_lines": ("amount",)},
    )


def test_orders_must_arrive_whole() -> None:
    writes = [Write("order", "n0", A, "orders", ["o1"], 1, lines=3)]
    assert check_orders(writes, order_replica({"o1": 3}, {"o1": 3})) == []
    assert kinds(check_orders(writes, order_replica({"o1": 3}, {"o1": 2}))) == ["torn-transaction"]
    assert kinds(check_orders(writes, order_replica({}, {}))) == ["lost-write"]


def test_torn_orders_are_seen_in_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "torn.db"
    connection = sqlite3.connect(path)
    connection.executescript(WORKLOAD_DDL)
    connection.execute("INSERT INTO orders VALUES ('whole', 'n0', 2), ('torn', 'n0', 3)")
    connection.executemany(
        "INSERT INTO order_lines VALUES (?, ?, 1)",
        [("whole", 0), ("whole", 1), ("torn", 0), ("orphan", 0)],
    )
    connection.commit()
    connection.close()
    assert sorted(torn_orders(path)) == [
        "lines of order orphan without the order",
        "order torn shows 1 of 3 lines",
    ]


def test_the_dump_of_a_real_file_names_sites_and_hides_tombstone_cells(tmp_path: Path) -> None:
    path = tmp_path / "n0.db"
    connection = sqlite3.connect(path)
    connection.executescript(WORKLOAD_DDL)
    connection.close()
    store = SqliteStore.open(path)
    site = store.init()
    store.track(WORKLOAD_TABLES, allow_integer_keys=WORKLOAD_INTEGER_KEY_TABLES)
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO kv VALUES (1, 'x', NULL, 1), (2, 'y', 'z', 2)")
    connection.commit()
    store.capture()
    connection.execute("DELETE FROM kv WHERE k = 2")
    connection.commit()
    store.capture()
    connection.close()
    store.close()
    dumped = read_replica("n0", path)
    live, tomb = dumped.row("kv", (1,)), dumped.row("kv", (2,))
    assert live is not None
    assert tomb is not None
    assert live.values == (("x", "text"), (None, "null"), (1, "integer"))
    assert {stamp[1] for stamp in live.stamps.values()} == {site}
    assert (tomb.cl, tomb.values, tomb.stamps) == (2, None, {})


# -- echo and clocks -----------------------------------------------------------------------


def test_echo_is_bounded_per_applied_change() -> None:
    assert check_echo(1_000, 10, 200) == []
    assert kinds(check_echo(10_000, 10, 200)) == ["echo"]
    assert check_echo(500, 0, 200) == []  # nothing to apply: heartbeats only


def test_a_traceback_in_a_node_log_is_an_internal_error() -> None:
    quiet = "INFO session with x ended: peer 127.0.0.1:1: connection reset\n"
    broken = quiet + "ERROR boom\nTraceback (most recent call last):\n  File 'x.py'\nKeyError: 1\n"
    violations = check_logs({"n0": quiet, "n1": broken})
    assert kinds(violations) == ["internal-error"]
    assert violations[0].message.startswith("n1: ERROR boom | Traceback")
    assert "KeyError" in violations[0].message


def test_a_gap_in_the_limitless_chaos_stream_is_a_violation() -> None:
    quiet = "INFO syncmesh.node.fleet: fleet: on stream SYNCMESH_CHAOS as ...\n"
    gap = quiet + "ERROR syncmesh.node.fleet: fleet stream gap: site s's changes after ...\n"
    violations = check_no_fleet_gap({"n0": quiet, "n1": gap, "n2": quiet})
    assert kinds(violations) == ["fleet-gap"]
    assert violations[0].message.startswith("n1: ERROR syncmesh.node.fleet: fleet stream gap")


def fleet(
    site: str, published: int, positions: dict[str, int], **overrides: object
) -> dict[str, object]:
    """A node's `/v1/status` fleet object, as much of it as quiescence reads."""
    return {
        "state": "streaming",
        "gaps": [],
        "publish_waiting_since_ms": 0,
        "subject": f"syncmesh.chaos.changes.{site}",
        "published_seq": published,
        "sites": [{"site_id": other, "cursor": cursor} for other, cursor in positions.items()],
        **overrides,
    }


def test_quiescence_over_nats_waits_until_every_site_applied_every_chain() -> None:
    caught_up = [
        {"fleet": fleet("a", 10, {"b": 20, "c": 0})},
        {"fleet": fleet("b", 20, {"a": 10})},  # c published nothing: no position needed
        {"fleet": fleet("c", 0, {"a": 10, "b": 20})},
    ]
    assert all_applied_from_stream(caught_up)
    behind = [caught_up[0], {"fleet": fleet("b", 20, {"a": 9})}, caught_up[2]]
    assert not all_applied_from_stream(behind)
    for change in ({"state": "backoff"}, {"gaps": ["gap"]}, {"publish_waiting_since_ms": 5}):
        odd = [{"fleet": fleet("a", 10, {"b": 20}, **change)}, *caught_up[1:]]
        assert not all_applied_from_stream(odd), change
    assert not all_applied_from_stream([None, *caught_up[1:]])  # a node that did not answer
    assert not all_applied_from_stream([{"fleet": None}, *caught_up[1:]])


def test_clock_floors_never_go_back_nor_adopt_far_stamps() -> None:
    now = 1_700_000_000_000
    samples = [
        ClockSample("n0", now, 0, pack(now - 10, 0)),
        ClockSample("n0", now + 100, 0, pack(now - 20, 0)),  # went back
        ClockSample("n1", now, 0, pack(now + 9_000, 0)),  # 9 s ahead, limit 5 s
        ClockSample("n2", now, 0, pack(now + 9_000, 0)),  # its own clock was beyond: exempt
        ClockSample("n3", now, 4_000, pack(now + 4_100, 0)),  # skewed within the limit
    ]
    violations = check_clocks(samples, ClockCheck(5_000, exempt={"n2"}))
    messages = [violation.message for violation in violations]
    assert len(messages) == 2
    # Found by the long chaos run: a node skewed +4 s adopted a neighbour's
    # stamp 8 s ahead (within its limit then) and keeps it once set right.
    healed = [
        ClockSample("n4", now, 4_000, pack(now + 8_000, 0)),
        ClockSample("n4", now + 500, 0, pack(now + 8_000, 0)),
    ]
    assert check_clocks(healed, ClockCheck(5_000)) == []
    never_ahead = [ClockSample("n5", now, 0, pack(now + 8_000, 0))]
    assert len(check_clocks(never_ahead, ClockCheck(5_000))) == 1
    assert messages[0].startswith("n0: clock floor went back")
    assert messages[1].startswith("n1: clock floor 9000 ms ahead")


def test_cells_still_waiting_once_every_node_migrated_are_a_violation() -> None:
    assert check_waiting({"n0": {}, "n1": {}}) == []
    violations = check_waiting({"n0": {}, "n1": {("kv", "c"): 3}})
    assert kinds(violations) == ["migrate"]
    assert "n1: 3 cells of kv.c still wait" in violations[0].message


def test_each_plan_says_its_final_shape() -> None:
    """What the `migrate` checker expects after each plan: table, columns, defaults, indexes."""
    shapes = {
        name: (
            plan.final_table,
            plan.columns(COLUMNS)[-1],
            plan.final_defaults(),
            plan.final_indexes(),
        )
        for name, plan in PLANS.items()
    }
    no_indexes: frozenset[str] = frozenset()
    assert shapes == {
        "add+rename": (
            "kv",
            ("a", "bee", "n", "c", "d"),
            {"c": None, "d": "d-default"},
            no_indexes,
        ),
        "drop+rebuild": ("kv", ("a", "n", "c"), {"c": None}, no_indexes),
        "rename-table+rebuild": ("kv_items", ("a", "b", "n", "c"), {"c": None}, no_indexes),
        "index+unindex": ("kv", COLUMNS, {}, frozenset({"kv_a"})),
        "add": ("kv", ("a", "b", "n", "c", "d"), {"c": None, "d": "d-default"}, no_indexes),
        "rebuild": ("kv", ("a", "b", "n", "c"), {"c": None}, no_indexes),
        "rename": ("kv", ("a", "bee", "n"), {}, no_indexes),
        "drop": ("kv", ("a", "n"), {}, no_indexes),
        "drop+readd": ("kv", ("a", "n", "b"), {"b": None}, no_indexes),
        "rebuild-rename": ("kv", ("a", "bee", "n"), {}, no_indexes),
        "rebuild-drop": ("kv", ("a", "n"), {}, no_indexes),
    }
    # A rebuild copies the columns the table has when it runs, whatever the steps before.
    rebuild = PLANS["drop+rebuild"].steps[1]
    assert rebuild.sql("kv", ("a", "n"))[:2] == (
        "CREATE TABLE new__kv (k INTEGER PRIMARY KEY, a TEXT, n INTEGER, c TEXT)",
        "INSERT INTO new__kv (k, a, n, c) SELECT k, a, n, NULL FROM kv",
    )


# -- tombstone collection (issue 16, ADR 0015) ---------------------------------------------


def delete(node: str, site: str, index: int, stamp: int | None, cl: int | None) -> Write:
    return Write("delete", node, site, "kv", [1], index, stamp=stamp, cl=cl)


def collected(rows: dict[int, RowDump], count: int = 1) -> Replica:
    """A replica whose node collected `count` tombstones (its shadow rows are gone)."""
    found = replica(rows)
    found.collected = count
    return found


def test_a_deleted_key_whose_tombstone_was_collected_is_not_lost() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1), delete("n1", B, 1, T2, 2)]
    violations, tally = check_writes(writes, collected({}))
    assert violations == []
    assert tally.collected == 1


def test_a_key_without_a_row_is_lost_when_nothing_was_collected() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1), delete("n1", B, 1, T2, 2)]
    violations, _ = check_writes(writes, replica({}))
    assert kinds(violations) == ["lost-write"]


def test_a_key_without_a_row_whose_last_life_was_alive_is_lost_even_if_collection_ran() -> None:
    writes = [
        upsert("n0", A, 1, "x", T1, 1),
        delete("n1", B, 1, T2, 2),
        upsert("n0", A, 2, "again", T3, 3),
    ]
    violations, _ = check_writes(writes, collected({}))
    assert kinds(violations) == ["lost-write"]


def test_a_deleted_row_alive_at_the_end_without_a_later_insert_is_a_resurrection() -> None:
    writes = [upsert("n0", A, 1, "x", T1, 1), delete("n1", B, 1, T2, 2)]
    # The stale first life came back (a tombstone collected, the row re-merged).
    assert kinds(check_no_resurrection(writes, collected({1: alive(1, T1, A, "x")}))) == [
        "resurrection"
    ]
    # A life above the delete that no insert left is one too.
    assert kinds(check_no_resurrection(writes, collected({1: alive(3, T3, A, "x")}))) == [
        "resurrection"
    ]


def test_a_row_revived_by_a_later_insert_is_no_resurrection() -> None:
    writes = [
        upsert("n0", A, 1, "x", T1, 1),
        delete("n1", B, 1, T2, 2),
        upsert("n0", A, 2, "again", T3, 3),
    ]
    assert check_no_resurrection(writes, collected({1: alive(3, T3, A, "again")})) == []
    assert check_no_resurrection(writes, collected({})) == [], "absent is fine too"
    assert check_no_resurrection(writes[:2], collected({1: dead(2, T2, B)})) == []


def test_a_delete_taken_back_by_a_rejoin_is_not_judged() -> None:
    """A delete at a node whose file a snapshot replaced before anyone held it never left."""
    writes = [upsert("n0", A, 1, "x", T1, 1), delete("n1", B, 1, T2, 2)]
    stale = collected({1: alive(1, T1, A, "x")})
    assert kinds(check_no_resurrection(writes, stale)) == ["resurrection"]
    assert check_no_resurrection(writes, stale, lambda write: write.node == "n1") == []


def test_replicas_differing_only_in_a_collected_tombstone_converge_without_tombstones() -> None:
    holding = replica({1: dead(2, T2, B), 2: alive(1, T1, A, "x")}, node="n0")
    gone = replica({2: alive(1, T1, A, "x")}, node="n1")
    assert kinds(check_convergence([holding, gone])) == ["convergence"]
    assert check_convergence([holding, gone], tombstones=False) == []
    assert dead_everywhere([holding, gone]) == {("kv", (1,))}
    # A row alive at one of them is still a difference.
    revived = replica({1: alive(3, T3, A, "y"), 2: alive(1, T1, A, "x")}, node="n2")
    assert kinds(check_convergence([holding, revived], tombstones=False)) == ["convergence"]
    assert dead_everywhere([holding, revived]) == set()


def test_a_child_whose_parent_is_gone_was_deleted_by_the_cascade_once_collected() -> None:
    cascades = {"adv_children": ("parent", "adv_parents")}
    child = Write("upsert", "n0", A, "adv_children", ["c1"], 1, {"parent": "p1", "v": 1})
    parent = alive(1, T1, A, "x")
    with_parent = Replica(
        "n0",
        A,
        T3,
        {"adv_children": {}, "adv_parents": {("p1",): parent}},
        {"adv_children": ("parent", "v"), "adv_parents": COLUMNS},
        collected=1,
    )
    without_parent = Replica(
        "n0",
        A,
        T3,
        {"adv_children": {}, "adv_parents": {}},
        {"adv_children": ("parent", "v"), "adv_parents": COLUMNS},
        collected=1,
    )
    assert kinds(check_writes([child], without_parent, cascades=cascades)[0]) == []
    assert kinds(check_writes([child], with_parent, cascades=cascades)[0]) == ["lost-write"]
    assert kinds(check_writes([child], without_parent)[0]) == ["lost-write"], "no cascade known"
    # The parent was deleted (the cascade took the child) and inserted again later.
    again = Replica(
        "n0",
        A,
        T3,
        {"adv_children": {}, "adv_parents": {("p1",): alive(3, T3, B, "again")}},
        {"adv_children": ("parent", "v"), "adv_parents": COLUMNS},
        collected=1,
    )
    later_child = Write(
        "upsert", "n0", A, "adv_children", ["c1"], 1, {"parent": "p1", "v": 1}, stamp=T2, cl=1
    )
    assert kinds(check_writes([later_child], again, cascades=cascades)[0]) == []


def test_a_child_of_an_ended_parent_life_is_cascaded_even_if_its_clock_ran_ahead() -> None:
    """Issue 12's lost `adv_children` rows: a checker misjudgement, not a lost write.

    n1, its clock skewed ahead, writes a child under the parent's life 3;
    concurrently n2 deletes the parent (life 4) and n0 inserts it again
    (life 5).  The declared `ON DELETE CASCADE` rightly deletes the child
    (docs/keys.md, foreign keys), and its tombstone is collected.  The
    re-insert's stamp is below the child's (n1's clock ran ahead), so the
    stamps alone cannot tell that the child's parent life ended: the life
    the child saw (`parent_cl`) can.
    """
    cascades = {"adv_children": ("parent", "adv_parents")}
    skewed = pack(5_000, 0)  # n1's clock floor when it wrote: above the re-insert's T3
    reinserted = Replica(
        "n0",
        A,
        skewed,
        {"adv_children": {}, "adv_parents": {("p5",): alive(5, T3, B, "again")}},
        {"adv_children": ("parent", "v"), "adv_parents": COLUMNS},
        collected=1,
    )

    def child(parent_cl: int | None) -> Write:
        write = Write("upsert", "n1", A, "adv_children", ["c"], 82, {"parent": "p5", "v": 82})
        write.lo, write.parent_cl = skewed, parent_cl
        return write

    # The stamps' guess (no parent life recorded) reports the loss...
    assert kinds(check_writes([child(None)], reinserted, cascades=cascades)[0]) == ["lost-write"]
    # ...the parent's lives say the cascade took it: the child's life of the parent ended.
    violations, tally = check_writes([child(3)], reinserted, cascades=cascades)
    assert violations == []
    assert tally.collected == 1
    # A child written under the parent's final life, then gone, is lost whatever the stamps.
    found = check_writes([child(5)], reinserted, cascades=cascades)[0]
    assert kinds(found) == ["lost-write"]
    assert "parent's causal length 5" in found[0].message
    assert "adv_parents 'p5' alive at causal length 5" in found[0].message
    early = child(5)
    early.lo = T1  # even with a stamp below the parent's final life's
    assert kinds(check_writes([early], reinserted, cascades=cascades)[0]) == ["lost-write"]


def test_rows_the_periodic_verify_repaired_are_counted_from_the_node_logs() -> None:
    """The report names schedules where a feed missed rows: the verify's repair lines
    count, a divergence only reported (repair off) or a failed repair does not."""
    logs = {
        "n0": (
            "2026-12-07 10:00:00,000 WARNING syncmesh.node.verify_server: verify against"
            " http://127.0.0.1:9/sync: 3 rows differed (items: 2, orders: 1); repaired: 1 of"
            " the peer's rows merged here, 2 of ours there\n"
            "2026-12-07 10:00:01,000 WARNING syncmesh.node.verify_server: verify against"
            " http://127.0.0.1:9/sync: 4 rows differ (items: 4); `syncmesh repair DB --peer"
            " http://127.0.0.1:9/sync` merges them\n"
        ),
        "n1": (
            "2026-12-07 10:00:02,000 WARNING syncmesh.node.verify_server: verify against fleet"
            " site 0a1b: 1 rows differed (items: 1); repaired: 0 of the peer's rows merged"
            " here, 1 of ours there\n"
        ),
    }
    logs["n2"] = (
        "2026-12-07 10:00:03,000 WARNING syncmesh.node.verify_server: verify against"
        " http://127.0.0.1:9/sync: 1 rows differed (items: 1); repaired: 0 of the peer's"
        " rows merged here, 0 of ours there\n"
    )  # a row a constraint turns away again: found at every round, merged never
    assert rows_repaired_by_verify(logs) == 4
    assert rows_repaired_by_verify({"n0": "nothing here\n"}) == 0
