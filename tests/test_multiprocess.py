"""End-to-end tests on real `syncmesh serve` processes on 127.0.0.1.

Each test starts node processes with `tests.nodeproc`, writes to their files
the way applications do (Python's sqlite3, the `sqlite3` shell), injects a
fault with signals or file copies, and then waits, against a deadline, for
the state that PROPERTIES.md promises.  Oracles: a reference SQLite file that
sees the same logical writes (P1, P5), the shadow tables' per-cell stamps
(P1, P4), counts, cursors and `PRAGMA integrity_check` (P9, P10).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from syncmesh.model import SqlValue
from syncmesh.protocol import FRAME_BYTES_MAX
from tests.nodeproc import (
    Cluster,
    NodeProcess,
    TypedRow,
    cell_stamps,
    integrity_check,
    make_db,
    query,
    row_count,
    run_cli,
    table_dump,
    wait_converged,
    wait_for,
)

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB)"
CONVERGE_S = 30.0


def sqlite3_shell() -> str:
    found = shutil.which("sqlite3")
    if found is None:
        pytest.fail("the sqlite3 command-line shell is required (apt-get install sqlite3)")
    return found


def write(path: Path, sql: str, params: Sequence[SqlValue] = ()) -> None:
    """One transaction through Python's sqlite3, as an application would write."""
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as connection, connection:
        connection.execute(sql, params)


def write_many(path: Path, sql: str, rows: Sequence[Sequence[SqlValue]]) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=10.0)) as connection, connection:
        connection.executemany(sql, rows)


def shell(path: Path, sql: str) -> None:
    """Run `sql` through the sqlite3 command-line shell (another SQLite writer)."""
    result = subprocess.run(
        [sqlite3_shell(), "-bail", "-cmd", ".timeout 10000", str(path), sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"sqlite3 {path} {sql!r} exited {result.returncode}"
    assert not result.stderr, f"sqlite3 {path} {sql!r} complained: {result.stderr}"


def shell_started(path: Path, sql: str) -> subprocess.Popen[str]:
    """Start the sqlite3 shell on `sql` without waiting (for concurrent writes)."""
    return subprocess.Popen(
        [sqlite3_shell(), "-bail", "-cmd", ".timeout 10000", str(path), sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def shell_finished(process: subprocess.Popen[str]) -> None:
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, f"sqlite3 exited {process.returncode}: {err}"
    assert not err, f"sqlite3 complained: {err}"


class Reference:
    """An untracked SQLite file that receives the same logical writes: the expected table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute(SCHEMA)
            connection.commit()

    def apply(self, sql: str, params: Sequence[SqlValue] = ()) -> None:
        write(self.path, sql, params)

    def apply_many(self, sql: str, rows: Sequence[Sequence[SqlValue]]) -> None:
        write_many(self.path, sql, rows)

    def dump(self) -> list[TypedRow]:
        return table_dump(self.path, "items")


def values_by_id(dump: list[TypedRow]) -> dict[SqlValue, tuple[SqlValue, ...]]:
    return {row[0][0]: tuple(value for value, _type in row) for row in dump}


def values_by_id_typed(dump: list[TypedRow]) -> dict[SqlValue, TypedRow]:
    return {row[0][0]: row for row in dump}


def site_of(node: NodeProcess) -> str:
    site = node.status()["site_id"]
    assert isinstance(site, str)
    return site


def peer_state(node: NodeProcess, site_id: str) -> str | None:
    peer = node.peer(site_id)
    return None if peer is None else str(peer["state"])


def wait_streaming(a: NodeProcess, b: NodeProcess, timeout_s: float = CONVERGE_S) -> None:
    """Wait until `a` and `b` each report a streaming session with the other."""
    a_site, b_site = site_of(a), site_of(b)

    def both() -> bool:
        return peer_state(a, b_site) == "streaming" and peer_state(b, a_site) == "streaming"

    wait_for(both, timeout_s, f"{a.name} and {b.name} to stream", describe=lambda: a.log_tail())


def assert_same_stamps(paths: Sequence[Path], what: str = "items") -> None:
    """P1: rows, tombstones and per-cell stamps (as site ids) are equal on every replica."""
    stamps = [cell_stamps(path, what) for path in paths]
    for path, other in zip(paths[1:], stamps[1:], strict=True):
        assert other == stamps[0], f"shadow stamps of {path.name} differ from {paths[0].name}"


# -- topologies -----------------------------------------------------------------------


@pytest.mark.multiprocess
def test_chain_relays_writes_from_both_ends(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: in a chain A <- B <- C, writes at either end reach every node, types intact.

    Method: B dials A and C dials B, so A and C never talk directly.  A
    writes through Python's sqlite3 and C through the sqlite3 shell, with
    values whose storage class differs from the column's affinity (text in
    INTEGER, blob in TEXT, integer in BLOB, 2**62, unicode).  Then C updates
    a row written by A and A deletes a row written by C.  Every file must
    equal a reference file that saw the same writes, value and typeof()
    alike, and the shadow stamps must be equal too.
    """
    paths = [make_db(tmp_path / f"{name}.db", SCHEMA) for name in "abc"]
    reference = Reference(tmp_path / "reference.db")
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    c = cluster.node("c", peers=[b])
    cluster.start(a, b, c)

    insert = "INSERT INTO items VALUES (?, ?, ?, ?, ?)"
    from_a: list[Sequence[SqlValue]] = [
        ("a1", "alpha", 1, 1.5, b"\x00\x01"),
        ("a2", None, 2**62, -0.25, b""),
        ("a3", "ünïcode ✓", -7, 1e300, None),
        ("a4", "", "text-in-int", 3, "text in blob"),
    ]
    write_many(a.db, insert, from_a)
    reference.apply_many(insert, from_a)
    from_c = (
        "INSERT INTO items VALUES ('c1', x'00ff', 42, 'n/a', 12);"
        " INSERT INTO items VALUES ('c2', 'gamma', NULL, 0.1, x'');"
    )
    shell(c.db, from_c)
    with contextlib.closing(sqlite3.connect(reference.path)) as connection:
        connection.executescript(from_c)

    expected = reference.dump()
    assert [cell[1] for cell in values_by_id_typed(expected)["a4"]] == [
        "text",
        "text",
        "text",
        "real",
        "text",
    ]
    wait_converged(paths, "items", CONVERGE_S, check=lambda d: d == expected, describe=cluster.logs)

    shell(c.db, "UPDATE items SET qty = 5, name = 'set at c' WHERE id = 'a2'")
    reference.apply("UPDATE items SET qty = 5, name = 'set at c' WHERE id = 'a2'")
    write(a.db, "DELETE FROM items WHERE id = 'c1'")
    reference.apply("DELETE FROM items WHERE id = 'c1'")
    expected = reference.dump()
    wait_converged(paths, "items", CONVERGE_S, check=lambda d: d == expected, describe=cluster.logs)
    assert_same_stamps(paths)
    # The relay is real: A has no session with C.
    assert site_of(c) not in {peer["site_id"] for peer in a.status()["peers"]}


@pytest.mark.multiprocess
def test_mesh_conflicts_resolve_by_column_stamp_and_causal_length(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: conflicting writes resolve as documented, identically on every node (P1, P4, P6).

    Method: three nodes in a mesh (each dials those started before it).
    1. Concurrent writes to DIFFERENT columns of one row, through Python's
       sqlite3 at n1 and the sqlite3 shell at n2: both values survive.
    2. Concurrent writes to the SAME column: every node ends with the value
       whose stamp is the final stamp, and that stamp names the writer.
    3. The same column with a gap the test establishes: n2 is stopped, n1
       writes (and its stamp is read), then n2's file is written while n2
       is down, so its capture at restart stamps later: n2's value wins.
    4. Delete beats a concurrent update: n3 is stopped, n1 deletes a row,
       then n3's file updates that row (later in time); after restart the
       row is gone everywhere.
    5. A re-insert after that resurrects the row, with no column of its
       earlier life (P6b).
    """
    paths = [make_db(tmp_path / f"n{index}.db", SCHEMA) for index in (1, 2, 3)]
    n1 = cluster.node("n1")
    n2 = cluster.node("n2", peers=[n1])
    n3 = cluster.node("n3", peers=[n1, n2])
    cluster.start(n1, n2, n3)
    sites = {node.name: site_of(node) for node in (n1, n2, n3)}
    write_many(
        n3.db,
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        [(f"r{i}", f"seed {i}", i, float(i), bytes([i])) for i in (1, 2, 3, 4)],
    )
    wait_converged(paths, "items", CONVERGE_S, check=lambda d: len(d) == 4, describe=cluster.logs)

    # 1. Different columns, at the same time: a column-level merge keeps both.
    process = shell_started(n2.db, "UPDATE items SET price = 9.5 WHERE id = 'r1'")
    write(n1.db, "UPDATE items SET name = 'from python' WHERE id = 'r1'")
    shell_finished(process)
    dump = wait_converged(
        paths,
        "items",
        CONVERGE_S,
        check=lambda d: values_by_id(d)["r1"] == ("r1", "from python", 1, 9.5, b"\x01"),
        describe=cluster.logs,
    )
    assert values_by_id_typed(dump)["r1"][3] == (9.5, "real")

    # 2. The same column, at the same time: the greater stamp wins everywhere.
    process = shell_started(n2.db, "UPDATE items SET qty = 200 WHERE id = 'r4'")
    write(n1.db, "UPDATE items SET qty = 100 WHERE id = 'r4'")
    shell_finished(process)

    def r4_settled(d: list[TypedRow]) -> bool:
        if values_by_id(d)["r4"][2] not in (100, 200):
            return False
        stamps = [cell_stamps(path, "items")[("r4",)]["qty"] for path in paths]
        return all(stamp == stamps[0] for stamp in stamps)

    dump = wait_converged(paths, "items", CONVERGE_S, check=r4_settled, describe=cluster.logs)
    winner_site = cell_stamps(n3.db, "items")[("r4",)]["qty"][1]
    final_qty = values_by_id(dump)["r4"][2]
    assert isinstance(final_qty, int)
    writer = {100: sites["n1"], 200: sites["n2"]}[final_qty]
    assert winner_site == writer, "the surviving qty of r4 is not the write with the final stamp"

    # 3. The same column with a gap: n2 is down; n1 writes first, n2 later.
    n2.stop()
    write(n1.db, "UPDATE items SET qty = 111 WHERE id = 'r2'")
    wait_for(
        lambda: values_by_id(table_dump(n3.db, "items"))["r2"][2] == 111,
        CONVERGE_S,
        "n1's write to reach n3",
        describe=cluster.logs,
    )
    first_stamp = cell_stamps(n1.db, "items")[("r2",)]["qty"]
    assert first_stamp[1] == sites["n1"]
    shell(n2.db, "UPDATE items SET qty = 222 WHERE id = 'r2'")
    n2.start().wait_until_ready()
    wait_converged(
        paths,
        "items",
        CONVERGE_S,
        check=lambda d: values_by_id(d)["r2"][2] == 222,
        describe=cluster.logs,
    )
    for path in paths:
        hlc, site = cell_stamps(path, "items")[("r2",)]["qty"]
        assert site == sites["n2"], f"{path.name}: r2.qty was not won by n2's later write"
        assert hlc > first_stamp[0], f"{path.name}: r2.qty stamp {hlc} <= {first_stamp}"

    # 4. Delete beats a concurrent update, even one stamped later.
    n3.stop()
    write(n1.db, "DELETE FROM items WHERE id = 'r3'")
    wait_for(
        lambda: "r3" not in values_by_id(table_dump(n2.db, "items")),
        CONVERGE_S,
        "n1's delete to reach n2",
        describe=cluster.logs,
    )
    shell(n3.db, "UPDATE items SET name = 'late update', qty = 33 WHERE id = 'r3'")
    n3.start().wait_until_ready()
    dump = wait_converged(
        paths,
        "items",
        CONVERGE_S,
        check=lambda d: "r3" not in values_by_id(d),
        describe=cluster.logs,
    )
    assert set(values_by_id(dump)) == {"r1", "r2", "r4"}
    for path in paths:
        assert cell_stamps(path, "items")[("r3",)]["cl"] == 2, f"{path.name}: r3 not a tombstone"

    # 5. A re-insert after convergence resurrects the row, without its old columns.
    shell(n2.db, "INSERT INTO items (id, name) VALUES ('r3', 'reborn')")
    wait_converged(
        paths,
        "items",
        CONVERGE_S,
        check=lambda d: values_by_id(d).get("r3") == ("r3", "reborn", None, None, None),
        describe=cluster.logs,
    )
    wait_for(
        lambda: all(cell_stamps(path, "items")[("r3",)]["cl"] == 3 for path in paths),
        CONVERGE_S,
        "r3's causal length 3 everywhere",
    )
    assert_same_stamps(paths)


# -- crashes, partitions, restores ----------------------------------------------------

BACKLOG_TRANSACTIONS = 30
BACKLOG_ROWS_PER_TRANSACTION = 1_000


def backlog_rows(start: int, count: int) -> list[tuple[SqlValue, ...]]:
    return [
        (f"k{i:07d}", f"row {i}", i, i / 7, i.to_bytes(4, "big") * 4)
        for i in range(start, start + count)
    ]


@pytest.mark.multiprocess
def test_sigkill_mid_stream_then_restart_converges_exactly(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a node killed with SIGKILL while applying a backlog recovers exactly (P5, P9, P10).

    Method: B dials A.  While B is paused, A takes 30,000 rows in 30
    transactions (A sends batches of at most 1,000 rows, unless its capture
    merged transactions into one group).  B resumes; the test polls B's row
    count and, once it is strictly between 0 and the total, freezes B,
    re-checks, and SIGKILLs it.  The killed file must pass integrity_check,
    hold whole transactions only (a multiple of 1,000 rows), and its stored
    cursor must match its rows exactly (data and cursor commit together).
    After a restart on the same file B must converge: exact count, no
    duplicates, equal dumps, and B's cursor on A equal to A's head.
    """
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    a = cluster.node("a", extra_args=["--batch-rows", str(BACKLOG_ROWS_PER_TRANSACTION)])
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    wait_streaming(a, b)
    a_site = site_of(a)

    total = 0
    killed_at = -1
    # Bounded retries: on a fast machine B may apply a whole backlog between two polls.
    for _attempt in range(3):
        round_start = total
        b.pause()  # the backlog piles up at A while B cannot apply anything
        for _ in range(BACKLOG_TRANSACTIONS):
            write_many(
                a_db,
                "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                backlog_rows(total, BACKLOG_ROWS_PER_TRANSACTION),
            )
            total += BACKLOG_ROWS_PER_TRANSACTION
        b.resume()
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            count = row_count(b_db, "items")
            if count >= total:
                break  # missed the window: another round with a fresh backlog
            if count > round_start:
                # Freeze B where it is, check it is still short of the total, then kill it
                # there: the SIGKILL lands at whatever point of the stream B had reached.
                b.pause()
                killed_at = row_count(b_db, "items")
                if killed_at < total:
                    b.kill()
                else:
                    b.resume()
                    killed_at = -1
                break
            time.sleep(0.005)  # polls fast to catch B mid-stream; no verdict hangs on it
        if killed_at >= 0:
            break
    assert killed_at >= 0, f"B always applied the whole backlog before the kill\n{cluster.logs()}"

    # The killed file: intact, whole transactions only, cursor consistent with its rows.
    assert integrity_check(b_db) == "ok"
    held = row_count(b_db, "items")
    assert held == killed_at, f"B held {killed_at} rows when frozen, {held} after the kill"
    assert 0 < held < total, f"B holds {held} of {total} rows after the kill"
    assert held % BACKLOG_ROWS_PER_TRANSACTION == 0, f"a partial transaction is visible: {held}"
    (cursor,) = query(b_db, "SELECT cursor FROM _syncmesh_peers WHERE site_id = ?", (a_site,))[0]
    (rows_upto_cursor,) = query(
        a_db, "SELECT count(*) FROM _syncmesh_shadow_items WHERE seq <= ?", (cursor,)
    )[0]
    assert rows_upto_cursor == held, (
        f"B's stored cursor {cursor} covers {rows_upto_cursor} rows of A but B holds {held}"
    )

    b.start().wait_until_ready()
    dump = wait_converged(
        [a_db, b_db], "items", 60.0, check=lambda d: len(d) == total, describe=cluster.logs
    )
    ids = [row[0][0] for row in dump]
    assert ids == [f"k{i:07d}" for i in range(total)]
    for path in (a_db, b_db):
        assert integrity_check(path) == "ok"
        assert query(path, "SELECT count(*), count(DISTINCT id) FROM items") == [(total, total)]
        assert query(path, "SELECT count(*) FROM _syncmesh_shadow_items") == [(total,)]

    def caught_up() -> bool:
        head = a.status()["store"]["seq"]
        peer = b.peer(a_site)
        stored = query(b_db, "SELECT cursor FROM _syncmesh_peers WHERE site_id = ?", (a_site,))
        return peer is not None and peer["cursor"] == head and stored == [(head,)]

    wait_for(caught_up, CONVERGE_S, "B's cursor on A to reach A's head", describe=cluster.logs)


@pytest.mark.multiprocess
def test_stopped_node_captures_offline_writes_and_converges(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a node stopped for a while catches up, with writes made while it was down (P5, P14).

    Method: a mesh of three.  C is stopped with SIGTERM; meanwhile A and B
    keep writing (inserts, an update, a delete), and C's file is written
    directly (Python's sqlite3) while no node runs on it.  C restarts on the
    same file and must capture those writes at start and exchange
    everything: all files equal a reference that saw every write.
    """
    paths = [make_db(tmp_path / f"{name}.db", SCHEMA) for name in "abc"]
    reference = Reference(tmp_path / "reference.db")
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    c = cluster.node("c", peers=[a, b])
    cluster.start(a, b, c)
    insert = "INSERT INTO items VALUES (?, ?, ?, ?, ?)"
    seed = [(f"s{i}", f"seed {i}", i, i * 0.5, None) for i in range(20)]
    write_many(a.db, insert, seed)
    reference.apply_many(insert, seed)
    expected = reference.dump()
    wait_converged(paths, "items", CONVERGE_S, check=lambda d: d == expected, describe=cluster.logs)

    c.stop()
    operations: list[tuple[NodeProcess, str, Sequence[SqlValue]]] = [
        (a, insert, ("from-a", "written at a", 1, 1.0, b"a")),
        (a, "UPDATE items SET name = 'a was here' WHERE id = 's1'", ()),
        (b, "DELETE FROM items WHERE id = 's2'", ()),
        (c, insert, ("from-c", "written at c while down", 3, 3.0, b"c")),
        (c, "UPDATE items SET qty = -3 WHERE id = 's3'", ()),
        (c, "DELETE FROM items WHERE id = 's4'", ()),
    ]
    for node, sql, params in operations:
        write(node.db, sql, params)
        reference.apply(sql, params)
    expected = reference.dump()
    # A and B agree without C; C's file holds only its own offline writes so far.
    wait_converged(paths[:2], "items", CONVERGE_S, check=lambda d: "from-a" in values_by_id(d))
    assert "from-a" not in values_by_id(table_dump(c.db, "items"))

    c.start().wait_until_ready()
    wait_converged(paths, "items", CONVERGE_S, check=lambda d: d == expected, describe=cluster.logs)
    assert_same_stamps(paths)


OFFLINE_BLOB_BYTES = 2 << 20
# Enough 2 MiB rows to exceed one frame (whatever the limit is today), each in
# its own small transaction.
OFFLINE_BLOB_ROWS = FRAME_BYTES_MAX // OFFLINE_BLOB_BYTES + 4


@pytest.mark.multiprocess
def test_offline_writes_larger_than_one_frame_still_reach_the_peer(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: however much was written while a node was down, it all reaches its peer (P5, P14c).

    Method: while A is down, separate transactions each insert one row with
    a 2 MiB random blob: every transaction is far below the frame limit
    (`FRAME_BYTES_MAX`), together they are above it.  A starts with B
    dialling it; B must end with every row.  The test stops waiting early
    once B has reconnected 4 times without receiving a row, and then fails
    with the evidence (A's seq groups, the errors in both logs).

    What it guards against: A's capture at start stamps the whole offline
    backlog as ONE seq group (below `CAPTURE_ENTRIES_PER_SEQ` entries), a
    batch never splits a group, so the one possible batch is bigger than a
    frame and the session ends and restarts for ever with the same batch.
    """
    assert FRAME_BYTES_MAX <= 256 << 20, "the frame limit grew: resize this test's backlog"
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    for index in range(OFFLINE_BLOB_ROWS):  # one transaction per row
        write(
            a_db,
            "INSERT INTO items VALUES (?, 'offline blob', ?, 0.0, ?)",
            (f"blob{index:03d}", index, os.urandom(OFFLINE_BLOB_BYTES)),
        )
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)

    def arrived_or_stuck() -> bool:
        if row_count(b_db, "items") == OFFLINE_BLOB_ROWS:
            return True
        peers = b.status()["peers"]
        return bool(peers) and peers[0]["reconnects"] >= 4 and peers[0]["cursor"] == 0

    wait_for(arrived_or_stuck, 90.0, "B to receive the rows or to be stuck retrying")
    held = row_count(b_db, "items")
    if held != OFFLINE_BLOB_ROWS:
        groups = query(a_db, "SELECT seq, count(*) FROM _syncmesh_shadow_items GROUP BY seq")
        errors = [
            f"{node.name}: {line}"
            for node in (a, b)
            for line in node.log_text().splitlines()
            if "ended" in line or "refused" in line or "frame" in line
        ][-4:]
        raise AssertionError(
            f"B holds {held} of {OFFLINE_BLOB_ROWS} rows and is stuck: A captured"
            f" {OFFLINE_BLOB_ROWS} separate {OFFLINE_BLOB_BYTES >> 20} MiB transactions as"
            f" {len(groups)} seq group(s) of {[count for _seq, count in groups]} rows, and a"
            f" batch never splits a group, so it is larger than FRAME_BYTES_MAX"
            f" ({FRAME_BYTES_MAX >> 20} MiB).  Log lines:\n" + "\n".join(errors)
        )
    wait_converged([a_db, b_db], "items", CONVERGE_S, describe=cluster.logs)


@pytest.mark.multiprocess
def test_paused_node_catches_up_after_resume(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: a node frozen with SIGSTOP loses nothing and catches up after SIGCONT (P14).

    Method: B dials A.  B is paused (its status API stops answering), A
    writes and B's file is written by another connection while B cannot
    capture; after SIGCONT both writes must reach both files.
    """
    paths = [make_db(tmp_path / f"{name}.db", SCHEMA) for name in "ab"]
    a = cluster.node("a")
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    wait_streaming(a, b)
    b.pause_outside_a_write()  # the application writes b's file below
    with pytest.raises(OSError, match="timed out"):
        b.status(timeout_s=0.5)
    write(a.db, "INSERT INTO items VALUES ('during-pause-a', 'a', 1, 1.0, NULL)")
    write(b.db, "INSERT INTO items VALUES ('during-pause-b', 'b', 2, 2.0, NULL)")
    b.resume()
    wait_converged(
        paths,
        "items",
        CONVERGE_S,
        check=lambda d: set(values_by_id(d)) == {"during-pause-a", "during-pause-b"},
        describe=cluster.logs,
    )
    assert_same_stamps(paths)


@pytest.mark.multiprocess
def test_restored_backup_gets_lost_writes_back_and_new_writes_win(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: a node restarted on an old copy of its file heals (PROPERTIES.md fault list, P4).

    Method: A dials B.  A writes, is stopped cleanly (so the WAL is
    checkpointed) and its .db file is copied as a backup.  A restarts,
    writes more (new rows and an update of cell x.qty), which reaches B.
    A is stopped, its file replaced by the backup, and started again.  A
    must notice (its incarnation changes), get its lost writes back from
    B, converge, and a NEW write at A to x.qty must win on both nodes over
    A's lost write (its stamp is greater).
    """
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    b_db = make_db(tmp_path / "b.db", SCHEMA)
    b = cluster.node("b")
    a = cluster.node("a", peers=[b])
    cluster.start(b, a)
    insert = "INSERT INTO items VALUES (?, ?, ?, ?, ?)"
    write_many(a_db, insert, [(f"old{i}", "before backup", i, 0.0, None) for i in range(10)])
    write(a_db, insert, ("x", "cell x", 1, 1.0, None))
    wait_converged([a_db, b_db], "items", CONVERGE_S, check=lambda d: len(d) == 11)

    a.stop()
    wal = a_db.with_name(a_db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "a clean stop left WAL content behind"
    backup = tmp_path / "a-backup.db"
    shutil.copyfile(a_db, backup)

    a.start().wait_until_ready()
    incarnation = a.status()["store"]["incarnation"]
    write_many(a_db, insert, [(f"new{i}", "after backup", i, 0.0, None) for i in range(10)])
    write(a_db, "UPDATE items SET qty = 2 WHERE id = 'x'")
    after_backup = wait_converged(
        [a_db, b_db],
        "items",
        CONVERGE_S,
        check=lambda d: len(d) == 21 and values_by_id(d)["x"][2] == 2,
        describe=cluster.logs,
    )
    lost_stamp = cell_stamps(a_db, "items")[("x",)]["qty"]

    a.stop()
    shutil.copyfile(backup, a_db)
    for suffix in ("-wal", "-shm"):  # a restore replaces the file and its stale WAL index
        a_db.with_name(a_db.name + suffix).unlink(missing_ok=True)
    assert len(table_dump(a_db, "items")) == 11
    log_start = len(a.log_text())
    a.start().wait_until_ready()
    a.wait_for_log("restored", timeout_s=CONVERGE_S, since=log_start)  # a WARNING says so
    wait_for(
        lambda: a.status()["store"]["incarnation"] != incarnation,
        CONVERGE_S,
        "A to take a new incarnation after the restore",
        describe=cluster.logs,
    )
    wait_converged(
        [a_db, b_db],
        "items",
        CONVERGE_S,
        check=lambda d: d == after_backup,
        describe=cluster.logs,
    )

    write(a_db, "UPDATE items SET qty = 3 WHERE id = 'x'")
    wait_converged(
        [a_db, b_db],
        "items",
        CONVERGE_S,
        check=lambda d: values_by_id(d)["x"][2] == 3,
        describe=cluster.logs,
    )
    for path in (a_db, b_db):
        hlc, site = cell_stamps(path, "items")[("x",)]["qty"]
        assert site == lost_stamp[1], f"{path.name}: x.qty stamp names site {site}"
        assert hlc > lost_stamp[0], f"{path.name}: new x.qty stamp {hlc} <= lost {lost_stamp}"
    assert_same_stamps([a_db, b_db])


# -- refusals -------------------------------------------------------------------------


def wait_reconnects(node: NodeProcess, count: int) -> None:
    def enough() -> bool:
        peers: list[dict[str, Any]] = node.status()["peers"]
        return bool(peers) and all(peer["reconnects"] >= count for peer in peers)

    wait_for(enough, CONVERGE_S, f"{node.name} to retry {count} times", describe=node.log_tail)


@pytest.mark.multiprocess
def test_copied_file_is_refused_until_given_a_new_site_id(cluster: Cluster, tmp_path: Path) -> None:
    """Goal: two live nodes with the same site id (a copied file) are refused, then fixed.

    Method: B's file is a byte copy of A's.  With B dialing A, both logs
    must name the shared site id and say the file is a copy, and no
    session streams.  After `syncmesh init --new-site-id` on B's file and a
    restart, B has a new site id and the two sync both ways.
    """
    a_db = make_db(tmp_path / "a.db", SCHEMA)
    a = cluster.node("a")
    cluster.start(a)
    seq_before = a.status()["store"]["seq"]
    write(a_db, "INSERT INTO items VALUES ('before-copy', 'shared', 1, 1.0, NULL)")
    wait_for(
        lambda: a.status()["store"]["seq"] != seq_before,
        CONVERGE_S,
        "A to capture its write",
    )
    a.stop()  # a clean stop checkpoints the WAL: the .db file alone is the copy
    b_db = tmp_path / "b.db"
    shutil.copyfile(a_db, b_db)
    b = cluster.node("b", b_db, peers=[a])
    cluster.start(a, b)
    site = site_of(a)
    assert site_of(b) == site
    for node in (a, b):
        node.wait_for_log(f"both ends have site id {site}")
        log = node.log_text()
        assert "copy" in log, f"{node.name}'s log does not say the file is a copy"
    wait_reconnects(b, 2)
    assert all(peer["state"] != "streaming" for peer in b.status()["peers"])
    assert not a.status()["peers"]

    b.stop()
    output = run_cli("init", "--new-site-id", str(b_db)).stdout
    new_site = output.strip().rsplit(" ", 1)[-1]
    assert new_site != site, output
    assert len(new_site) == 32, output
    b.start().wait_until_ready()
    assert site_of(b) == new_site
    wait_streaming(a, b)
    write(a_db, "INSERT INTO items VALUES ('from-a', 'a', 2, 2.0, NULL)")
    write(b_db, "INSERT INTO items VALUES ('from-b', 'b', 3, 3.0, NULL)")
    wait_converged(
        [a_db, b_db],
        "items",
        CONVERGE_S,
        check=lambda d: set(values_by_id(d)) == {"before-copy", "from-a", "from-b"},
        describe=cluster.logs,
    )
    assert_same_stamps([a_db, b_db])


# -- process lifecycle ----------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_shuts_down_cleanly_on_signal(
    cluster: Cluster, tmp_path: Path, sig: signal.Signals
) -> None:
    """Goal: `syncmesh serve` exits 0 on SIGTERM and on SIGINT, even mid-stream.

    Method: B dials A; A takes a 5,000-row backlog (batches of 500 rows) and
    B is signalled as soon as it has applied a first batch, usually while
    it still streams; it must exit 0.  Restarted, B resumes from its cursor and
    converges; then both nodes are signalled with sessions open and must
    exit 0, logging their shutdown.
    """
    paths = [make_db(tmp_path / f"{name}.db", SCHEMA) for name in "ab"]
    a = cluster.node("a", extra_args=["--batch-rows", "500"])
    b = cluster.node("b", peers=[a])
    cluster.start(a, b)
    wait_streaming(a, b)
    rows = [(uuid.uuid4().hex, "bulk", i, 0.5, None) for i in range(5_000)]
    for start in range(0, len(rows), 500):
        write_many(a.db, "INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows[start : start + 500])
    wait_for(lambda: row_count(b.db, "items") > 0, CONVERGE_S, "B to start applying", cluster.logs)
    b.stop(sig)
    b.start().wait_until_ready()
    wait_converged(
        paths, "items", CONVERGE_S, check=lambda d: len(d) == len(rows), describe=cluster.logs
    )
    wait_streaming(a, b)
    b.stop(sig)
    a.stop(sig)
    for node in (a, b):
        assert "syncmesh: shutting down" in node.log_text()
        assert "Traceback" not in node.log_text(), node.log_tail()
        assert integrity_check(node.db) == "ok"
