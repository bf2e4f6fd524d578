"""A restored node's claims about its own writes, from a session begun before it knew.

A session's PULL tells the peer whether we restore; only then does the
peer's send loop include our own writes (`Session._filter_vector`).  A
batch of a session whose PULL said we were not restoring therefore never
holds our lost writes, though its vector may claim them: adopting that
claim ended restore mode with the lost writes still missing, and status
said all was well (found by `syncmesh chaos --seed 700 --only 44 --nodes 4
--topology star --duration 6 --adversarial all --faults ...,restore`: the
hub restored, a batch of a session that began before the detection applied
3 ms after it).  The session now tells the store (`own_claims`), and a
session whose PULL said "not restoring" starts again once we restore.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.helpers import ManualClock, exchange_all
from tests.test_integrity_restore_unclaimed import (
    BASE_MS,
    ids,
    new_store,
    open_store,
    put_back,
    session_filter,
)


def test_a_batch_read_before_the_peer_knew_we_restore_does_not_end_restore_mode(
    tmp_path: Path,
) -> None:
    """Goal: n, restored, keeps restoring until a peer told that it restores sends `lost`.

    Method: n, p and q sync; n's file is copied; n writes `lost`, which p and
    q receive.  n is restored from the copy.  q's send loop reads a batch for
    n's session as it began, before the restore was seen (n's PULL said not
    restoring: its own writes are left out), while q's vector claims `lost`.
    p's HELLO then reveals the restore.  q's batch, applied now, must not end
    restore mode (`own_claims=False`); p's batch, read for a PULL that asks
    for n's own writes, brings `lost` back and ends it.
    """
    clocks = {name: ManualClock(BASE_MS) for name in "npq"}
    n = new_store(tmp_path / "n.db", clocks["n"])
    p = new_store(tmp_path / "p.db", clocks["p"])
    q = new_store(tmp_path / "q.db", clocks["q"])
    stores = [n, p, q]
    for source in stores:
        for target in stores:
            if source is not target:
                exchange_all(source, target)
    copy = sqlite3.connect(tmp_path / "copy.db")
    n.connection.backup(copy)
    copy.close()
    clocks["n"].advance(1)
    n.connection.execute("INSERT INTO notes VALUES ('lost', 'x')")
    n.capture()
    exchange_all(n, p)
    exchange_all(n, q)
    n.close()
    put_back(tmp_path / "copy.db", tmp_path / "n.db")
    clocks["n"].advance(1_000)
    n = open_store(tmp_path / "n.db", clocks["n"])
    try:
        # q's session began first: n's PULL said "not restoring".
        filter_then = session_filter(n)
        q_cursor = n.peer_cursor(q.site_id)
        assert q_cursor is not None
        old = q.read_batch(q_cursor.cursor, filter_then, 100)
        assert old.vector is not None
        assert old.vector[n.site_id] > n.vector()[n.site_id]  # it claims `lost`
        # p's HELLO reveals the restore.
        assert n.note_peer_vector(p.vector(), p.held_claims())
        assert n.restoring()
        n.apply_batch(q.site_id, old, own_claims=False)
        assert n.restoring(), "a claim read before the peer knew ended restore mode"
        assert "lost" not in ids(n)
        p_cursor = n.peer_cursor(p.site_id)
        assert p_cursor is not None
        n.apply_batch(p.site_id, p.read_batch(p_cursor.cursor, session_filter(n), 100))
        assert "lost" in ids(n)
        assert not n.restoring()
    finally:
        for store in (n, p, q):
            store.close()
