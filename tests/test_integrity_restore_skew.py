"""A restored file whose lost writes were stamped ahead of its wall clock (issue 12).

Found by `syncmesh chaos --seed 2200 --only 8 --nodes 5 --topology star
--adversarial all --faults-per-schedule 4 --duration 8` (every default fault
and `restore`): the hub's clock ran 2.7 s ahead (`skew`), a leaf's clock
followed it (the HLC takes the greatest stamp it sees), and the leaf's file
was replaced by a copy 1.8 s old.  The writes the copy lost were stamped
ahead of the leaf's wall clock, so the restarted leaf stamped its new writes
*below* them (ADR 0006, residual risk 3).  The restore was detected at the
next HELLO, but every peer's vector entry for the leaf already covered the
lost stamps: peers took the new writes for ones they held, and never asked
for them.  One row stayed at the leaf alone (convergence, liveness).

The fix: on detecting a restore, the store stamps anew its own writes of
this run that lie at or below the claim (`vector.restamp_window`), after
its clock jumped past the claim, so they are above every peer's entry.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncmesh.clock import HybridClock, pack
from syncmesh.errors import ClockDriftError
from syncmesh.store.sqlite import SqliteStore
from syncmesh.store.sqlite.vector import RESTORE_CLAIM_AHEAD_MS_MAX
from syncmesh.store.summary import summary_of
from tests.helpers import ManualClock, exchange_all

BASE_MS = 1_700_000_000_000
DRIFT_MS_MAX = 5_000
SKEW_MS = 3_000  # p's clock is ahead of n's, within the drift limit
DDL = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER)"


def open_store(path: Path, clock: ManualClock) -> SqliteStore:
    return SqliteStore.open(path, clock=HybridClock(clock, drift_ms_max=DRIFT_MS_MAX))


def new_store(path: Path, clock: ManualClock) -> SqliteStore:
    store = open_store(path, clock)
    store.init()
    store.connection.execute(DDL)
    store.track(["items"])
    return store


def write(store: SqliteStore, sql: str) -> None:
    """A local write, captured at once (as the node's capture loop does)."""
    store.connection.execute(sql)
    store.capture()


def names(store: SqliteStore) -> dict[str, str]:
    return dict(store.connection.execute("SELECT id, name FROM items"))


def ordinal_of(store: SqliteStore, site_id: str) -> int:
    row = store.connection.execute(
        "SELECT ordinal FROM _syncmesh_sites WHERE site_id = ?", (site_id,)
    ).fetchone()
    return int(row[0])


def meet(left: SqliteStore, right: SqliteStore) -> None:
    """What a session does: each side's restore check on the other's HELLO, then
    cursor upkeep for an incarnation that changed, then a pull each way."""
    for source, target in ((left, right), (right, left)):
        target.note_peer_vector(source.vector())
    for source, target in ((left, right), (right, left)):
        cursor = target.peer_cursor(source.site_id)
        if cursor is not None and cursor.incarnation != source.incarnation:
            target.reset_peer_cursor(source.site_id, source.incarnation, source.head_seq(), "")
    exchange_all(left, right)
    exchange_all(right, left)


@pytest.fixture
def restored_behind_its_lost_writes(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    """n, restored from a copy, whose lost write p holds stamped ahead of n's wall clock.

    n's clock follows p's (3 s ahead) when n applies p's writes; n writes
    `before`, is copied, writes `lost` (which p takes), and its file is put
    back 1 s later, before its wall clock reaches the lost stamps.
    """
    clock_n, clock_p = ManualClock(BASE_MS), ManualClock(BASE_MS + SKEW_MS)
    n = new_store(tmp_path / "n.db", clock_n)
    p = new_store(tmp_path / "p.db", clock_p)
    write(p, "INSERT INTO items VALUES ('p0', 'from p', 0)")
    meet(n, p)
    write(n, "INSERT INTO items VALUES ('before', 'before the copy', 1)")
    meet(n, p)
    copy = sqlite3.connect(tmp_path / "copy.db")
    n.connection.backup(copy)
    copy.close()
    clock_n.advance(300)
    clock_p.advance(1_000)
    write(p, "INSERT INTO items VALUES ('p1', 'from p', 1)")
    meet(n, p)  # n's clock follows p's again
    write(n, "INSERT INTO items VALUES ('lost', 'after the copy', 2)")
    meet(n, p)
    assert names(p)["lost"] == "after the copy"
    n.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'n.db'}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "copy.db", tmp_path / "n.db")
    clock_n.advance(700)  # still 2.3 s before the lost write's stamp
    n = open_store(tmp_path / "n.db", clock_n)
    try:
        assert "lost" not in names(n)
        yield n, p
    finally:
        n.close()
        p.close()


def test_restore_fault_writes_made_below_the_lost_stamps_reach_the_peers(
    restored_behind_its_lost_writes: tuple[SqliteStore, SqliteStore],
) -> None:
    """Goal: what the restored node writes before it learns of the restore reaches
    its peers, and it gets back its lost write, when the lost write's stamp is
    ahead of its wall clock (as after following a skewed peer's clock)."""
    n, p = restored_behind_its_lost_writes
    write(n, "INSERT INTO items VALUES ('new', 'after the restore', 3)")
    write(n, "UPDATE items SET qty = 10 WHERE id = 'p0'")  # p's row; p wrote its name
    write(n, "DELETE FROM items WHERE id = 'before'")
    assert n.note_peer_vector(p.vector()), "p's HELLO claims the lost write: a restore"
    meet(n, p)
    meet(n, p)
    assert names(n)["lost"] == "after the copy", "the restored node lost a write p held"
    assert names(p) == names(n), "a write of the restored node never reached p"
    assert names(p) == {
        "p0": "from p",
        "p1": "from p",
        "lost": "after the copy",
        "new": "after the restore",
    }
    assert p.connection.execute("SELECT qty FROM items WHERE id = 'p0'").fetchone() == (10,)
    # Only n's own stamps were renewed: p0's name is still p's write, everywhere.
    for store in (n, p):
        p_ordinal = 0 if store is p else ordinal_of(n, p.site_id)
        name_site = store.connection.execute(
            "SELECT s0 FROM _syncmesh_shadow_items WHERE k0 = 'p0'"
        ).fetchone()
        assert name_site == (p_ordinal,), "a cell p wrote is now stamped as n's"
    for store in (n, p):
        # The tombstone's new stamp kept the stored digests and the hash tree exact.
        kept = store.summaries(["items"])["items"]
        assert store.deep_summary("items")[1] == 0, "a stored digest does not match its row"
        pairs = store.connection.execute("SELECT kh, dg FROM _syncmesh_shadow_items")
        assert kept.leaves == summary_of(pairs).leaves
    assert n.summaries(["items"]) == p.summaries(["items"])


JUMP_BACK_MS = 9_000  # beyond the drift limit: the lost stamps look "from the future"


def test_restore_fault_with_the_clock_set_back_beyond_the_drift_limit_gets_the_lost_write(
    tmp_path: Path,
) -> None:
    """Goal: a file restored on a machine whose clock then went back further than the
    drift limit still detects the restore, gets its lost write back, and its own writes
    made meanwhile end above the lost ones at both sites.

    Found by `syncmesh chaos --seed 600 --only 46 --nodes 4 --topology mesh --duration 6
    --adversarial all --faults ...,jump,restore`: the restored node's clock jumped 9.3 s
    back; peers' claims of its lost writes were refused as "from the future" until the
    clock caught up, and by then its new writes were stamped past them: nothing was
    detected, the lost writes stayed lost.  Now such a claim (within an hour beyond the
    limit) starts restore mode at once; the stamp is not adopted (beyond the limit) until
    the clock is near it, when this run's own stamps below it are renewed.
    """
    clock_n, clock_p = ManualClock(BASE_MS), ManualClock(BASE_MS)
    n = new_store(tmp_path / "n.db", clock_n)
    p = new_store(tmp_path / "p.db", clock_p)
    try:
        write(n, "INSERT INTO items VALUES ('before', 'before the copy', 1)")
        meet(n, p)
        copy = sqlite3.connect(tmp_path / "copy.db")
        n.connection.backup(copy)
        copy.close()
        for clock in (clock_n, clock_p):
            clock.advance(1_000)
        write(n, "INSERT INTO items VALUES ('lost', 'after the copy', 2)")
        meet(n, p)
        assert names(p)["lost"] == "after the copy"
        n.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp_path / 'n.db'}{suffix}").unlink(missing_ok=True)
        shutil.copy(tmp_path / "copy.db", tmp_path / "n.db")
        for clock in (clock_n, clock_p):
            clock.advance(500)
        clock_n.advance(-JUMP_BACK_MS)  # n's wall clock goes back, beyond the drift limit
        n = open_store(tmp_path / "n.db", clock_n)
        write(n, "INSERT INTO items VALUES ('new', 'after the restore', 3)")
        write(n, "UPDATE items SET name = 'edited after the restore' WHERE id = 'before'")
        hlc_before = n.context.state()["hlc"]
        assert n.note_peer_vector(p.vector()), "p's claim of the lost write: a restore"
        assert n.restoring()
        assert n.context.state()["hlc"] == hlc_before, "a stamp beyond the drift limit was adopted"
        meet(n, p)
        assert n.restoring(), "restore mode ended before the lost write was back"
        # The clock is set right again: the lost write applies, n's writes made
        # meanwhile are stamped anew above it, and both sites converge.
        clock_n.advance(JUMP_BACK_MS)
        n.capture()
        n.retry_quarantine()
        meet(n, p)
        n.retry_quarantine()
        meet(n, p)
        assert not n.restoring()
        assert (
            names(n)
            == names(p)
            == {
                "before": "edited after the restore",
                "lost": "after the copy",
                "new": "after the restore",
            }
        )
    finally:
        n.close()
        p.close()


def test_a_claim_of_own_writes_far_in_the_future_is_refused_not_taken_for_a_restore(
    tmp_path: Path,
) -> None:
    """Goal: a claim about our own writes more than an hour beyond the drift limit is a
    broken or hostile peer's: refused (ClockDriftError), no restore mode, clock unmoved;
    one within that hour is taken for a restore (the test above)."""
    clock = ManualClock(BASE_MS)
    n = new_store(tmp_path / "n.db", clock)
    try:
        write(n, "INSERT INTO items VALUES ('a', 'x', 1)")
        last = n.context.clock.last
        far = pack(BASE_MS + DRIFT_MS_MAX + RESTORE_CLAIM_AHEAD_MS_MAX + 1_000, 0)
        with pytest.raises(ClockDriftError):
            n.note_peer_vector({n.site_id: far})
        assert not n.restoring()
        assert n.context.clock.last == last
        near = pack(BASE_MS + DRIFT_MS_MAX + RESTORE_CLAIM_AHEAD_MS_MAX - 1_000, 0)
        assert n.note_peer_vector({n.site_id: near})
        assert n.restoring()
        assert n.context.clock.last == last, "a stamp beyond the drift limit was adopted"
    finally:
        n.close()
