"""A fleet site whose file is restored from a backup gets its own lost writes back
from the stream (ADR 0014, "A site restored from a backup"; docs/nats.md).

Real `syncmesh serve --nats` processes on a real 3-server JetStream cluster
(tests/nats_cluster.py), all on 127.0.0.1; writes through the sqlite3 shell;
every wait is a deadline loop on a state.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from tests.helpers import sqlite3_shell
from tests.nats_cluster import NatsCluster
from tests.nodeproc import (
    Cluster,
    NodeProcess,
    query,
    row_count,
    run_cli,
    wait_converged,
    wait_for,
)
from tests.test_nats import (
    FAST_STATUS,
    describe,
    fleet_name,
    fleet_of,
    nats_node,
    publish_one_by_one,
)

CONVERGE_S = 30.0  # a deadline for states on a loaded machine; passing runs take a few s


def incarnation(db: Path) -> str:
    (row,) = query(db, "SELECT incarnation FROM _syncmesh_state")
    return str(row[0])


def test_a_restored_fleet_site_gets_its_lost_writes_back_from_the_stream(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: own writes made after the backup, held only by the stream and the other
    sites, come back to the restored site; edits made to the restored file before
    the restart are kept and reach the other site; status says restored.

    Method: a writes row 'kept' and is backed up (stopped, file copied); a runs
    again and writes three rows and an update of 'kept' that reach b through the
    stream; a stops and its file is replaced by the backup; the application
    writes 'edit' into the restored file; a starts.  Both files must end with
    the same five rows ('kept' updated), a's fleet status must say restored,
    and a must have drawn a new incarnation.  Fails before the fix: nothing
    brought a its own writes back over the stream, and status said all was well.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('kept', 'old', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    a.stop()
    backup = cluster.directory / "a-backup.db"
    shutil.copyfile(a.db, backup)
    a.start().wait_until_ready()
    sqlite3_shell(
        a.db,
        "INSERT INTO items VALUES ('lost-1', 'x', 1), ('lost-2', 'y', 2);"
        " INSERT INTO items VALUES ('lost-3', 'z', 3);"
        " UPDATE items SET name = 'new' WHERE id = 'kept';",
    )
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: (
            len(rows) == 4 and (("kept", "text"), ("new", "text"), (1, "integer")) in rows
        ),
        describe=describe(cluster, nats_cluster),
    )
    a.stop()
    before = incarnation(a.db)
    shutil.copyfile(backup, a.db)
    assert row_count(a.db, "items") == 1
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('edit', 'after restore', 9)")
    a.start().wait_until_ready()
    dump = wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 5,
        describe=describe(cluster, nats_cluster),
    )
    assert (("kept", "text"), ("new", "text"), (1, "integer")) in dump
    assert (("edit", "text"), ("after restore", "text"), (9, "integer")) in dump
    assert {row[0][0] for row in dump} == {"kept", "lost-1", "lost-2", "lost-3", "edit"}
    wait_for(
        lambda: fleet_of(a)["own_restores"] == 1,
        CONVERGE_S,
        "a's fleet status to count the restore",
        describe(cluster, nats_cluster),
    )
    status = a.status()
    assert status["fleet"]["own_restore"].startswith("own writes restored from the stream"), status
    assert status["store"]["restore_floor"] == 0, status
    assert status["fleet"]["site_id_conflict"] == "", status  # a restore is no copy
    assert incarnation(a.db) not in (before, "")
    assert "holds own writes of this site that the file lost" in a.log_text()
    with a.open_url("/metrics", timeout_s=5) as response:
        metrics = response.read().decode()
    assert f'syncmesh_fleet_own_restores_total{{stream="SYNCMESH_{fleet.upper()}"}} 1.0' in (
        metrics
    )
    assert "own restore" in run_cli("status", str(a.db)).stdout
    # b took a's new incarnation for a new chain of a's, with no gap.
    assert fleet_of(b)["gaps"] == []
    # After the recovery, a restart detects nothing more (no restore, no new incarnation).
    recovered = incarnation(a.db)
    a.stop()
    a.start().wait_until_ready()
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('later', 'l', 10)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 6)
    assert incarnation(a.db) == recovered
    assert fleet_of(a)["own_restores"] == 0  # this run restored nothing


def test_a_plain_restart_of_a_fleet_site_detects_no_restore(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: no false restore, ever: a restarted site keeps its incarnation.

    Method: a writes a row; b updates it, so that a publishes the row again
    with only a's older cells and the message's chain end past a's own
    writes (the check then reads it); a restarts and writes 60 transactions.
    a's incarnation must not change, no restore must be logged or shown, and
    both sites converge.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    start = incarnation(a.db)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('r', 'from a', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    published = fleet_of(a)["published_messages"]
    sqlite3_shell(b.db, "UPDATE items SET qty = 2 WHERE id = 'r'")
    wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: (("r", "text"), ("from a", "text"), (2, "integer")) in rows,
    )
    wait_for(
        lambda: fleet_of(a)["published_messages"] > published,
        CONVERGE_S,
        "a to publish its row again after b's update",
        describe(cluster, nats_cluster),
    )
    a.stop()
    a.start().wait_until_ready()
    # Many transactions in a row: the status rounds that look for another file on
    # a's subject run while a publishes, and must take none of a's messages for one.
    for batch in range(15):
        sqlite3_shell(
            a.db,
            " ".join(f"INSERT INTO items VALUES ('s{batch}-{n}', 'a', {n});" for n in range(4)),
        )
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 61)
    assert fleet_of(a)["published_messages"] >= 2
    wait_for(
        lambda: fleet_of(a)["state"] == "streaming",
        CONVERGE_S,
        "a to stream",
        describe(cluster, nats_cluster),
    )
    assert incarnation(a.db) == start
    shown = fleet_of(a)
    assert (shown["own_restore"], shown["own_restores"]) == ("", 0)
    assert shown["site_id_conflict"] == ""
    assert a.status()["store"]["restore_floor"] == 0
    # The restart read a's republished row (its chain end lies past a's own
    # writes) and found nothing lost: the check ran, and did not fire.
    assert "none holds an own write this file lacks" in a.log_text()
    assert "file lost" not in a.log_text()
    assert "older than its peers' view" not in a.log_text()


async def _make_stream_keeping(servers: NatsCluster, fleet: str, *, per_site: int) -> None:
    """The changes stream, made by the operator, keeping `per_site` messages per subject."""
    client = await nats.connect(servers=servers.urls)
    try:
        await client.jetstream().add_stream(
            StreamConfig(
                name=f"SYNCMESH_{fleet.upper()}",
                subjects=[f"syncmesh.{fleet}.changes.*"],
                num_replicas=3,
                max_msgs_per_subject=per_site,
            )
        )
    finally:
        await client.close()


def test_lost_writes_whose_messages_the_stream_dropped_come_back_from_the_state_stream(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: when the changes stream no longer holds the start of the lost run (its
    limits dropped our older messages), our copies in the state stream are merged.

    Method: the changes stream keeps 2 messages per site; after the backup, a
    publishes 4 transactions one by one (3 inserts, an update of the backed-up
    row), so the first 2 are dropped; b holds all.  a's file is replaced by
    the backup and a starts: every row must come back, the log must say the
    state stream was used, and status must say restored.
    """
    fleet = fleet_name()
    asyncio.run(_make_stream_keeping(nats_cluster, fleet, per_site=2))
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('kept', 'old', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    a.stop()
    backup = cluster.directory / "a-backup.db"
    shutil.copyfile(a.db, backup)
    a.start().wait_until_ready()
    publish_one_by_one(
        cluster,
        nats_cluster,
        a,
        [
            "INSERT INTO items VALUES ('lost-1', 'x', 1)",
            "INSERT INTO items VALUES ('lost-2', 'y', 2)",
            "UPDATE items SET name = 'new' WHERE id = 'kept'",
            "INSERT INTO items VALUES ('lost-3', 'z', 3)",
        ],
    )
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 4)
    a.stop()
    shutil.copyfile(backup, a.db)
    a.start().wait_until_ready()
    dump = wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 4 and ("kept", "text") in [row[0] for row in rows],
        describe=describe(cluster, nats_cluster),
    )
    assert (("kept", "text"), ("new", "text"), (1, "integer")) in dump
    assert {row[0][0] for row in dump} == {"kept", "lost-1", "lost-2", "lost-3"}
    wait_for(
        lambda: fleet_of(a)["own_restores"] == 1,
        CONVERGE_S,
        "a's fleet status to count the restore",
        describe(cluster, nats_cluster),
    )
    assert "copies of our rows in" in fleet_of(a)["own_restore"]
    assert "merging our copies from the compacted state stream" in a.log_text()
    assert a.status()["store"]["restore_floor"] == 0
    assert fleet_of(a)["site_id_conflict"] == ""


def test_a_copied_file_publishing_on_the_same_subject_is_reported_at_both(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: two live files with one site id on a fleet are told apart from a restore
    and reported loudly at both, with the fix (issue 12, defect 7).

    Method: a writes a row and stops; its file is copied to c; a and c start
    on the same fleet (same site id, same subject) and each writes a row.
    Each must see a message on its subject that it did not publish: status
    `site_id_conflict` naming `init --new-site-id`, a health reason, an
    ERROR line, and no restore taken.
    """
    fleet = fleet_name()
    a, c = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "c"))
    cluster.start(a)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('first', 'a', 1)")
    wait_for(
        lambda: fleet_of(a)["published_messages"] >= 1,
        CONVERGE_S,
        "a to publish its row",
        describe(cluster, nats_cluster),
    )
    a.stop()
    shutil.copyfile(a.db, c.db)
    cluster.start(a, c)
    # One at a time: the writer's message is then the last on the subject when
    # the other one's status round reads it.
    for writer, other in ((a, c), (c, a)):
        sqlite3_shell(writer.db, f"INSERT INTO items VALUES ('at-{writer.name}', 'x', 2)")

        def reported(node: NodeProcess = other) -> bool:
            return "init --new-site-id" in fleet_of(node)["site_id_conflict"]

        wait_for(
            reported,
            CONVERGE_S,
            f"{other.name} to report the other file on its subject",
            describe(cluster, nats_cluster),
        )
    for node in (a, c):
        code, body = node.health()
        assert code == 503, body
        assert "init --new-site-id" in str(body)
        assert "ERROR syncmesh.node.fleet_restore: fleet: " in node.log_text()
        assert fleet_of(node)["own_restores"] == 0


def test_a_restored_file_that_ran_without_the_stream_first_still_gets_its_writes_back(
    cluster: Cluster, nats_cluster: NatsCluster
) -> None:
    """Goal: a restored file that is served (and captures writes) before its link to
    the stream ever opens still gets its lost writes back once it opens.

    Found by `syncmesh chaos --transport nats --faults restore,kill,nats-kill --seed 5
    --only 0 --nodes 3 --duration 8`: the restored node was killed before its fleet
    connected; its next run's own entry already covered its new writes, which lie
    past the lost ones, and the check saw nothing.  Method: as the first test, but
    the restored file first runs with an unreachable NATS server while the
    application writes to it; then it starts with the real servers.
    """
    fleet = fleet_name()
    a, b = (nats_node(cluster, name, nats_cluster, fleet) for name in ("a", "b"))
    cluster.start(a, b)
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('kept', 'old', 1)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 1)
    a.stop()
    backup = cluster.directory / "a-backup.db"
    shutil.copyfile(a.db, backup)
    a.start().wait_until_ready()
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('lost-1', 'x', 1), ('lost-2', 'y', 2)")
    wait_converged([a.db, b.db], "items", CONVERGE_S, check=lambda rows: len(rows) == 3)
    a.stop()
    shutil.copyfile(backup, a.db)
    offline = cluster.node(
        "a-offline",
        a.db,
        extra_args=("--nats", "nats://127.0.0.1:1", "--cluster", fleet),
        env=FAST_STATUS,
    )
    offline.start().wait_until_ready()
    (head_before,) = query(a.db, "SELECT seq FROM _syncmesh_state")[0]
    sqlite3_shell(a.db, "INSERT INTO items VALUES ('offline', 'while the stream was away', 5)")
    wait_for(
        lambda: query(a.db, "SELECT seq FROM _syncmesh_state")[0][0] > head_before,
        CONVERGE_S,
        "the offline run to capture its write",
    )
    offline.stop()
    a.start().wait_until_ready()
    dump = wait_converged(
        [a.db, b.db],
        "items",
        CONVERGE_S,
        check=lambda rows: len(rows) == 4,
        describe=describe(cluster, nats_cluster),
    )
    assert {row[0][0] for row in dump} == {"kept", "lost-1", "lost-2", "offline"}
    wait_for(
        lambda: fleet_of(a)["own_restores"] == 1,
        CONVERGE_S,
        "a's fleet status to count the restore",
        describe(cluster, nats_cluster),
    )
