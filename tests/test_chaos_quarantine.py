"""The chaos checkers and rows a constraint turned away (issue 12).

A write that a table's constraint refuses at a site waits in that site's
quarantine for an operator (docs/keys.md): sites then rightly differ in
that row, and the write is not lost.  The checkers read each replica's
quarantine and classify such writes; a write that is in neither the final
state nor a constraint's quarantine is still a lost write.  Hand-made
histories for the rules, and real stores for the two things the rules
rely on: the store's reasons are recognised, and `read_replica` reads the
rows the quarantine holds back.
"""

from __future__ import annotations

from pathlib import Path

from syncmesh.chaos.checkers import (
    Held,
    check_convergence,
    check_held,
    check_writes,
    constraint_quarantines,
    is_constraint_refusal,
    refused_by_constraint,
    waiting_in_quarantine,
)
from syncmesh.chaos.history import QuarantinedRow, Replica, read_replica
from syncmesh.clock import HybridClock
from syncmesh.model import SqlValue
from syncmesh.store.sqlite import SqliteStore
from tests.helpers import ManualClock, exchange_all
from tests.test_chaos_checkers import (
    COLUMNS,
    T1,
    T2,
    A,
    B,
    alive,
    kinds,
    replica,
    update,
    upsert,
    with_a,
)

UNIQUE_REASON = "constraint failed: UNIQUE constraint failed: kv.a"
DRIFT_REASON = "stamp 123 is 9000 ms ahead of the local clock (drift limit 5000 ms)"


def held_back(reason: str, stamp: int, site: str, a: str, cl: int = 1) -> QuarantinedRow:
    cells: dict[str, SqlValue] = {"a": a, "b": "b0", "n": 0}
    return QuarantinedRow(reason, cl, dict.fromkeys(cells, (stamp, site)), dict(cells))


def with_quarantine(base: Replica, *rows: QuarantinedRow) -> Replica:
    base.quarantined = {("kv", (1,)): list(rows)}
    return base


def test_a_write_a_constraint_turned_away_is_quarantined_not_lost() -> None:
    """B's insert of key 1 collided at A (UNIQUE): A holds it in quarantine."""
    at_a = with_quarantine(replica({}), held_back(UNIQUE_REASON, T2, B, "x"))
    violations, tally = check_writes([upsert("n1", B, 0, "x", T2, 1)], at_a)
    assert violations == []
    assert tally.quarantined == 1
    assert tally.exact == 0


def test_the_same_absence_without_the_quarantine_is_a_lost_write() -> None:
    violations, _ = check_writes([upsert("n1", B, 0, "x", T2, 1)], replica({}))
    assert kinds(violations) == ["lost-write"]


def test_a_quarantine_entry_no_constraint_explains_does_not_excuse_a_loss() -> None:
    """A stamp from the future resolves by itself: it is no end state."""
    at_a = with_quarantine(replica({}), held_back(DRIFT_REASON, T2, B, "x"))
    violations, tally = check_writes([upsert("n1", B, 0, "x", T2, 1)], at_a)
    assert kinds(violations) == ["lost-write"]
    assert tally.quarantined == 0
    assert waiting_in_quarantine([at_a]) == [f"n0: kv key [1]: {DRIFT_REASON}"]


def test_a_write_in_neither_the_row_nor_the_quarantine_is_still_lost() -> None:
    """The quarantine holds an older version of the row than the write: a real loss."""
    at_a = with_quarantine(
        replica({1: alive(1, T1, A, "mine")}), held_back(UNIQUE_REASON, T1, B, "x")
    )
    writes = [upsert("n1", B, 0, "x", T1, 1), update("n1", B, 1, "y", T2, 1)]
    violations, _ = check_writes(writes, at_a)
    assert kinds(violations) == ["lost-write"]
    assert "update #1 at n1" in violations[0].message, violations


def test_an_update_held_back_by_a_constraint_is_quarantined() -> None:
    """The row is here at an older stamp; the newer update waits in the quarantine."""
    here = alive(1, T1, B, "x")
    at_a = with_quarantine(replica({1: here}), held_back(UNIQUE_REASON, T2, B, "y"))
    writes = [upsert("n1", B, 0, "x", T1, 1), update("n1", B, 1, "y", T2, 1)]
    violations, tally = check_writes(writes, at_a)
    assert violations == []
    assert tally.quarantined == 2


def test_replicas_that_differ_only_in_refused_rows_converge() -> None:
    at_a = with_quarantine(
        replica({2: alive(1, T1, A, "z")}, "n0"), held_back(UNIQUE_REASON, T2, B, "x")
    )
    at_b = replica({1: alive(1, T2, B, "x"), 2: alive(1, T1, A, "z")}, "n1")
    refused = refused_by_constraint([at_a, at_b])
    assert refused == {("kv", (1,))}
    assert check_convergence([at_a, at_b], refused) == []
    assert kinds(check_convergence([at_a, at_b])) == ["convergence"]


def test_refused_rows_do_not_hide_other_differences() -> None:
    at_a = with_quarantine(
        replica({2: alive(1, T1, A, "z")}, "n0"), held_back(UNIQUE_REASON, T2, B, "x")
    )
    at_b = replica({1: alive(1, T2, B, "x"), 2: with_a(alive(1, T1, A, "z"), "w", (T2, B))}, "n1")
    violations = check_convergence([at_a, at_b], refused_by_constraint([at_a, at_b]))
    assert kinds(violations) == ["convergence"]
    assert "key [2]" in violations[0].message


def test_the_stores_constraint_reasons_are_recognised_and_read_back(tmp_path: Path) -> None:
    """Real stores: one email inserted at two sites under a UNIQUE constraint.

    Each site keeps its own row and quarantines the other's; `read_replica`
    reads the held-back row, the checkers see its reason as a constraint's,
    and both writes are accounted for at both sites.
    """
    ddl = "CREATE TABLE kv (id INTEGER PRIMARY KEY, a TEXT UNIQUE, b TEXT, n INTEGER)"
    stores = {}
    for name in ("a", "b"):
        store = SqliteStore.open(
            tmp_path / f"{name}.db",
            clock=HybridClock(ManualClock(1_700_000_000_000), drift_ms_max=60_000),
        )
        store.init()
        store.connection.execute(ddl)
        store.track(["kv"], allow_integer_keys=["kv"])
        stores[name] = store
    try:
        stores["a"].connection.execute("INSERT INTO kv VALUES (1, 'x', 'b0', 0)")
        stores["b"].connection.execute("INSERT INTO kv VALUES (2, 'x', 'b0', 0)")
        for store in stores.values():
            store.capture()
        exchange_all(stores["a"], stores["b"])
        exchange_all(stores["b"], stores["a"])
        reasons = [str(entry["reason"]) for entry in stores["a"].quarantine()]
        assert reasons, "the colliding row was not quarantined"
        assert all(is_constraint_refusal(reason) for reason in reasons), reasons
        site = {name: store.site_id for name, store in stores.items()}
    finally:
        for store in stores.values():
            store.close()
    replicas = [read_replica(name, tmp_path / f"{name}.db") for name in ("a", "b")]
    assert refused_by_constraint(replicas) == {("kv", (1,)), ("kv", (2,))}
    assert replicas[0].quarantined[("kv", (2,))][0].values["a"] == "x"
    writes = [
        upsert("a", site["a"], 0, "x", replicas[0].tables["kv"][(1,)].stamps["a"][0], 1),
        upsert("b", site["b"], 0, "x", replicas[1].tables["kv"][(2,)].stamps["a"][0], 1),
    ]
    writes[1].key = [2]
    assert replicas[0].columns["kv"] == COLUMNS
    for held in replicas:
        violations, tally = check_writes(writes, held)
        assert violations == [], violations
        assert tally.quarantined == 1
        assert tally.exact == 1


def test_a_held_row_a_constraint_turned_away_is_not_a_lost_held_write() -> None:
    """After a restore: a row another node held is in the replica's constraint quarantine."""
    held: Held = {("kv", (1,)): (1, {"a": (T2, B), "b": (T2, B), "n": (T2, B)})}
    at_a = with_quarantine(replica({}), held_back(UNIQUE_REASON, T2, B, "x"))
    assert check_held(held, at_a, what="n1") == []
    assert kinds(check_held(held, replica({}), what="n1")) == ["held-write"]
    older = with_quarantine(replica({}), held_back(UNIQUE_REASON, T1, B, "x"))
    assert kinds(check_held(held, older, what="n1")) == ["held-write"] * 3


def test_a_row_turned_away_on_the_way_is_not_lost_beyond_it() -> None:
    """A star: the hub quarantined B's row, so a leaf never saw it; that is no loss."""
    hub = with_quarantine(replica({}, "hub"), held_back(UNIQUE_REASON, T2, B, "x"))
    leaf = replica({}, "leaf")
    writes = [upsert("n1", B, 0, "x", T2, 1)]
    violations, tally = check_writes(writes, leaf, None, constraint_quarantines([hub, leaf]))
    assert violations == []
    assert tally.quarantined == 1
    # Without the hub's quarantine the leaf's absence is a loss.
    assert kinds(check_writes(writes, leaf, None, constraint_quarantines([leaf]))[0]) == [
        "lost-write"
    ]
