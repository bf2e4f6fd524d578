"""A fleet site restored from a backup gets its own lost writes back from the stream.

ADR 0014, "A site restored from a backup".  On a fleet no peer ever sends
a site its own writes, and no HELLO claims them, so without this a site
whose file was replaced by an older copy never got back the writes it
made after the copy, though its own subject in the stream (and its copies
in the state stream) still held them: the site and the fleet disagreed
for good.  Every time the link opens, before anything is published:

1. **Check.** The last message on our own subject; if its chain end lies
   past `Store.stream_scan_floor` (own writes up to there are held), the
   own messages ending past it are read, and the greatest own stamp of
   each goes through the store's restore check (`note_stream_claims`, the
   check of a HELLO's claim: a stamp inside a gap is a lost write).  In a
   file never restored no own stamp lies in a gap, so a normal restart
   detects nothing (the check is cheap then: usually no message, at most
   a few, ends past the floor).
2. **Recovery.** While restoring (restore mode on: a new incarnation, the
   clock past the lost stamps), the own messages ending past the lowered
   floor are merged back (`merge_repair_rows`: the merge is a join, a
   repeat does no harm).  When the stream no longer holds the start of
   that run (its limits dropped our messages), our copies in the state
   stream are merged too, if our marker says they are complete.  Then
   `own_writes_back` leaves restore mode once the own writes of earlier
   incarnations reach the restore floor (our current incarnation's are
   new writes, stamped past the lost ones: they prove nothing), unless a
   claim the stream cannot answer (a WebSocket peer's) keeps it on.

Apart from a restore, a *copy* of the file served while the original runs
publishes on our subject too: messages there that this process did not
publish (no publish receipt names them) are reported (`judge`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from syncmesh.errors import ClockDriftError, SiteIdConflict
from syncmesh.model import ChangeBatch
from syncmesh.node.chain import HEADER_FROM, HEADER_INCARNATION, HEADER_TO, header_int
from syncmesh.node.config import NodeConfig
from syncmesh.node.cursors import MARK_PREFIX
from syncmesh.node.origin import own_stamp_max
from syncmesh.node.worker import StoreWorker
from syncmesh.store import Store
from syncmesh.transport.stream import FleetLink, StoredMessage

log = logging.getLogger(__name__)

RECEIPTS_KEPT_MAX = 10_000  # publish receipts remembered to tell our messages from a copy's
TWIN_FIX = (
    "two live database files share this site id (a copy of the file was started): run"
    " `syncmesh init --new-site-id` on the copy"
)


class OwnRestoreHost(Protocol):
    """What the check needs from its node."""

    config: NodeConfig
    store: Store
    worker: StoreWorker

    def now_ms(self) -> int: ...

    def feed_advanced(self) -> None: ...


class OwnRestore:
    """The restore check of our own subject, and the recovery from it (status kept here)."""

    def __init__(
        self,
        host: OwnRestoreHost,
        link: FleetLink,
        decode: Callable[[StoredMessage], ChangeBatch | None],
        marker_token: str,
        cluster: str,
    ) -> None:
        self._host = host
        self._link = link
        self._decode = decode
        self._marker = marker_token
        self._cluster = cluster
        self._mark = 0  # the mark as stored (stream seq), once read
        # A check of this process found nothing lost (or recovered it all): later
        # checks (the link opened again) need not read this run's messages again.
        self._run_checked = False
        # For status: what happens or happened ("" if never); restores completed.
        self.status = ""
        self.restores = 0
        # Another live file publishing on our subject (a copy with our site id), for
        # status and health: "" if none seen.
        self.twin = ""
        self._checked_seq = 0  # our subject's last stream seq when the link opened
        self._receipts: set[int] = set()  # stream seqs of our publishes, not yet delivered back
        self._receipt_max = 0
        self._published_max = 0  # the newest receipt of this link (0: none yet)
        self._suspects: set[int] = set()  # delivered on our subject, not (yet) ours

    async def check(self, own: str) -> None:
        """Detect, from our own subject, that the file lost own writes; recover them if so."""
        store, worker, link = self._host.store, self._host.worker, self._link
        subject = link.subject_of(own)
        last = await link.last_message(subject)
        self._receipts.clear()
        self._suspects.clear()
        self._published_max = 0
        self._checked_seq = self._receipt_max = 0 if last is None else last.stream_seq
        if last is None:
            self._run_checked = True  # nothing of ours on the stream
            return
        stored = await worker.call(store.peer_cursor, self._mark_key(own))
        self._mark = 0 if stored is None else stored.head_seq
        floor = await worker.call(store.stream_scan_floor)
        if self._run_checked:
            # What this run published is this file's (later messages follow the mark).
            floor = max(floor, await worker.call(lambda: store.vector().get(own, 0)))
        if header_int(last.headers, HEADER_TO) <= floor and last.stream_seq <= self._mark:
            self._run_checked = True
            return  # every own stamp on the stream is at most the floor: nothing lost
        restoring_before = await worker.call(store.restoring)
        ours = await worker.call(lambda: store.incarnation)
        messages = await self._own_messages_after(subject, floor, last, self._mark)
        # While restoring already, messages of our current incarnation carry our new
        # writes (stamped past the lost ones): no claim of a lost write.
        claims = [
            claim
            for message in messages
            if not (restoring_before and _incarnation(message) == ours)
            and (batch := self._decode(message)) is not None
            and (claim := own_stamp_max(batch, own)) > 0
        ]
        try:
            first = await worker.call(
                store.note_stream_claims,
                claims,
                _incarnation(last),
                header_int(last.headers, HEADER_TO),
            )
        except ClockDriftError as exc:
            self.status = f"own writes on {subject} not checked: {exc}"
            log.error("fleet: the own writes on our subject %s are not checked: %s", subject, exc)
            return
        except SiteIdConflict as exc:
            # Refused once (the clock and head moved past the claim); kept for status.
            self.twin = f"on our subject {subject}: {exc}; {TWIN_FIX}"
            log.error("fleet: %s", self.twin)
            raise
        if not await worker.call(store.restoring):
            log.info(
                "fleet: %d messages of our subject end past our seq %d or follow our mark %d;"
                " none holds an own write this file lacks",
                len(messages),
                floor,
                self._mark,
            )
            await self._store_mark(own, last.stream_seq)
            return
        if first:
            log.warning(
                "fleet: stream %s holds own writes of this site that the file lost (restored"
                " from an older copy?): new incarnation, merging them back from the stream",
                link.stream_name,
            )
        await self._recover(own, subject, last)

    async def _recover(self, own: str, subject: str, last: StoredMessage) -> None:
        """Merge the own writes the stream holds past the floor; leave restore mode if all back.

        Restore mode ends when the own writes of *earlier* incarnations that
        the stream holds reach the restore floor (`own_writes_back`): those
        were published before the restore was detected, by the run that lost
        them (or an earlier one).  Messages of our current incarnation are
        merged too but do not count: they carry this file's new writes,
        stamped past every lost one, and would end restore mode while a lost
        write only a WebSocket peer holds is still missing.
        """
        store, worker, link = self._host.store, self._host.worker, self._link
        floor = await worker.call(store.stream_scan_floor)  # lowered by the detection
        ours = await worker.call(lambda: store.incarnation)
        messages = await self._own_messages_after(subject, floor, last)
        self.status = (
            f"restoring own writes from stream {link.stream_name}: {len(messages)} messages of"
            f" our subject end past our seq {floor}"
        )
        complete = bool(messages) and header_int(messages[0].headers, HEADER_FROM) <= floor
        rows, upto = 0, 0
        for message in messages:
            batch = self._decode(message)
            if batch is None:
                complete = False  # counted and logged by the decoder; the state stream has it
                continue
            if _incarnation(message) != ours:
                upto = max(upto, own_stamp_max(batch, own))
            rows += (await worker.call(store.merge_repair_rows, own, batch)).applied_rows
        source = f"{len(messages)} messages of our subject in stream {link.stream_name}"
        if not complete:
            copies = await link.read_state(own)
            marker = next((m for m in copies if m.subject.endswith("." + self._marker)), None)
            if marker is None:
                self.status = (
                    f"restoring own writes: stream {link.stream_name} no longer holds our"
                    f" messages after our seq {floor} and {link.state_stream_name} holds no"
                    " complete state of ours; own writes lost by the restore come back only"
                    " from a WebSocket peer that holds them (--peer URL)"
                )
                log.error("fleet: %s", self.status)
                self._host.feed_advanced()
                return
            log.warning(
                "fleet: stream %s no longer holds our messages after our seq %d: merging our"
                " copies from the compacted state stream %s",
                link.stream_name,
                floor,
                link.state_stream_name,
            )
            for copy in copies:
                batch = None if copy is marker else self._decode(copy)
                if batch is None:
                    continue
                if _incarnation(copy) != ours:
                    upto = max(upto, own_stamp_max(batch, own))
                rows += (await worker.call(store.merge_repair_rows, own, batch)).applied_rows
            source += f" and {len(copies) - 1} copies of our rows in {link.state_stream_name}"
        self._host.feed_advanced()
        ended = await worker.call(store.own_writes_back, upto)
        if ended or not await worker.call(store.restoring):
            await self._store_mark(own, last.stream_seq)
            self.restores += 1
            self.status = (
                f"own writes restored from the stream: {rows} rows merged back from {source}"
                f" (own writes up to {upto}); new incarnation"
                f" {await worker.call(lambda: store.incarnation)}"
            )
            log.warning("fleet: %s", self.status)
            return
        self.status = (
            f"restoring own writes: {rows} rows merged back from {source}; restore mode stays"
            " until a WebSocket peer returns the rest (its claim lies past what the stream holds)"
        )
        log.warning("fleet: %s", self.status)

    # -- another live file on our subject ------------------------------------------------

    def note_published(self, stream_seq: int) -> None:
        """The stream stored a message of ours (a publish receipt) at `stream_seq`."""
        self._receipts.add(stream_seq)
        self._receipt_max = max(self._receipt_max, stream_seq)
        self._published_max = max(self._published_max, stream_seq)
        if len(self._receipts) > RECEIPTS_KEPT_MAX:
            # The oldest half is judged for good: later deliveries of them are ignored.
            kept = sorted(self._receipts)[RECEIPTS_KEPT_MAX // 2 :]
            self._checked_seq = max(self._checked_seq, kept[0] - 1)
            self._receipts = set(kept)

    def note_delivered(self, message: StoredMessage) -> None:
        """A message on our own subject came back through our consumer (judged later)."""
        if message.stream_seq > self._checked_seq:
            self._suspects.add(message.stream_seq)

    async def judge(self, own: str, *, publishing: bool) -> None:
        """Messages on our subject that this process did not publish: a copy of the file.

        Our publishes are one at a time, each retried with its message id
        until the stream acknowledges it (a retry of a stored one is
        answered with its sequence).  So a message on our subject past the
        check that no receipt names, once a later receipt exists or no
        publish of ours is waiting, was published by another process with
        our site id: a copy of this file that writes too (issue 12, defect
        7).  The messages looked at are the ones our consumer delivers (a
        copy shares our durable consumer, so each sees part of them) and
        the last one on our subject, read at every status round.  Said at
        ERROR, in status and in health, with the fix.  A restore is never
        the cause: the run that lost the writes no longer publishes.
        """
        last = await self._link.last_message(self._link.subject_of(own))
        if last is not None and last.stream_seq > self._checked_seq:
            self._suspects.add(last.stream_seq)
        if self._published_max > self._mark and not self.twin:
            # What this file published holds nothing it lacks: the next check starts here.
            await self._store_mark(own, self._published_max)
        self._suspects = {seq for seq in self._suspects if seq > self._checked_seq}
        twins = {
            seq
            for seq in self._suspects
            if seq not in self._receipts and (seq < self._receipt_max or not publishing)
        }
        self._suspects = {
            seq for seq in self._suspects if seq not in twins and seq not in self._receipts
        }
        if not twins or self.twin:
            return
        self.twin = (
            f"another process publishes on our subject {self._link.subject_of(own)} (stream seq"
            f" {min(twins)}): {TWIN_FIX}"
        )
        log.error("fleet: %s", self.twin)

    def _mark_key(self, own: str) -> str:
        return f"{MARK_PREFIX}{self._cluster}/{own}"

    async def _store_mark(self, own: str, stream_seq: int) -> None:
        """Our subject up to `stream_seq` holds no own write this file lacks (kept in the file).

        A file restored from a copy has the copy's mark, so its next check
        reads every message of ours published since, whatever runs came in
        between: the lost writes then lie in the gap a run recorded
        (`_syncmesh_runs`), even if this file captured past them before its
        link ever opened (found by `syncmesh chaos --transport nats --faults
        restore,kill,nats-kill --seed 5 --only 0 --nodes 3 --duration 8`).
        """
        self._run_checked = True
        if stream_seq <= self._mark:
            return
        store = self._host.store
        await self._host.worker.call(
            store.reset_peer_cursor,
            self._mark_key(own),
            "",
            stream_seq,
            self._link.subject_of(own),
        )
        self._mark = stream_seq

    async def _own_messages_after(
        self, subject: str, floor: int, last: StoredMessage, mark: int | None = None
    ) -> list[StoredMessage]:
        """Our messages up to `last` ending past `floor`, or after `mark`, in stream order.

        Chain ends grow along our subject (they are seqs of our clock), so
        the first one past the floor is found by bisecting the stream
        sequences (a few requests), then the rest are read in order.
        """
        link = self._link
        after = last.stream_seq if mark is None else mark
        low, high = 1, last.stream_seq
        while low < high:
            middle = (low + high) // 2
            found = await link.next_message(subject, middle)
            if found is None or header_int(found.headers, HEADER_TO) > floor:
                high = middle
            else:
                low = found.stream_seq + 1
        messages = []
        found = await link.next_message(subject, min(low, after + 1))
        while found is not None and found.stream_seq <= last.stream_seq:
            if header_int(found.headers, HEADER_TO) > floor or found.stream_seq > after:
                messages.append(found)
            found = await link.next_message(subject, found.stream_seq + 1)
        return messages


def _incarnation(message: StoredMessage) -> str:
    return message.headers.get(HEADER_INCARNATION, "")
