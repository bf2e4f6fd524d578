"""Verify and repair between two sites: the exchange of hash trees (docs/protocol.md).

The asking side (this module) holds one store: a node's, or the file of
`syncmesh verify app.db`.  The answering side is a node
(syncmesh.node.verify_server), at `POST /sync/v1/verify` beside the peer
WebSocket and admitted the same way (with TLS: a configured peer's
certificate).  Each request and answer is one msgpack map; every request
is one round trip:

1. `roots`: the asker's root hash per table.  Equal tables end there: one
   round trip when the sites agree.  For the others the answer carries
   the 256 branch hashes.
2. `leaves`: for each differing branch, the asker's 256 leaf hashes; the
   answer names the leaves that differ and lists their rows (key, digest).
   The asker compares them with its own rows of those leaves.
3. `digests`: after a pause (`settle_s`), both sides read the candidate
   keys again.  A key whose digests agree now was a write in flight; one
   that differs with both digests unchanged is divergent; one still
   changing is checked again, up to `settle_rounds` times, then reported
   as unsettled (not as divergent).

So identical sites cost one round trip, and d differing rows three, with
bytes in proportion to the differing branches and leaves.  `deep` makes
both sides hash values too, from a scan of their tables (store.summary).

Repair fetches the peer's rows for the divergent keys (`fetch`) and merges
them here, sends ours (`push`) for the peer to merge, both through the
normal merge, so no newer write can be lost.  Rows whose stamps agree but
whose values differ (found only by `deep`) have no merge to decide them:
repair stamps this side's values anew, which makes them win everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from syncmesh.errors import ProtocolError, StoreError, SyncError, TransportError
from syncmesh.model import CELL_FIELDS, DEFAULT_CELL_STAMP, ChangeBatch
from syncmesh.protocol.verify import (
    BRANCH_ARRAY,
    KEYS_PER_REQUEST,
    LEAF_ARRAY,
    TREE_BRANCHES,
    TREE_LEAVES_PER_BRANCH,
    DigestsRequest,
    FetchRequest,
    Key,
    LeavesRequest,
    PushRequest,
    RootsRequest,
    VerifyRequest,
    decode_digests_answer,
    decode_fetch_answer,
    decode_leaves_answer,
    decode_push_answer,
    decode_roots_answer,
    encode_request,
    refusal_detail,
)
from syncmesh.store.base import DEEP_ROWS_PER_STEP, VerifyStore
from syncmesh.store.summary import BRANCHES, LEAVES_PER_BRANCH, TableSummary
from syncmesh.transport.base import UnreachableError, VerifyExchange

log = logging.getLogger(__name__)

SETTLE_S_DEFAULT = 1.0
SETTLE_ROUNDS_DEFAULT = 3
DEEP_SESSIONS_MAX = 4
DEEP_SESSION_TTL_S = 300.0

T = TypeVar("T")
StoreCall = Callable[..., Awaitable[Any]]

# The wire's tree shape (protocol.verify) is the store's.
assert (TREE_BRANCHES, TREE_LEAVES_PER_BRANCH) == (BRANCHES, LEAVES_PER_BRANCH)


# -- results ------------------------------------------------------------------------


@dataclass(slots=True)
class TableDifference:
    """What verify found in one table."""

    table: str
    divergent: list[Key] = field(default_factory=list)  # stable, different digests
    missing_here: list[Key] = field(default_factory=list)  # of `divergent`: no row here
    missing_there: list[Key] = field(default_factory=list)  # of `divergent`: none there
    unsettled: list[Key] = field(default_factory=list)  # still changing after every re-check
    # Of `divergent`: (our digest, theirs) as they held still, for `confirm`.
    digests: dict[Key, tuple[int | None, int | None]] = field(default_factory=dict, repr=False)

    def note_divergent(self, key: Key, ours: int | None, theirs: int | None) -> None:
        self.divergent.append(key)
        self.digests[key] = (ours, theirs)
        if ours is None:
            self.missing_here.append(key)
        if theirs is None:
            self.missing_there.append(key)

    def sort(self) -> None:
        for listed in (self.divergent, self.missing_here, self.missing_there, self.unsettled):
            listed.sort(key=repr)


@dataclass(slots=True)
class VerifyReport:
    peer_site: str
    deep: bool
    tables: list[str]
    differences: dict[str, TableDifference]
    not_shared: list[str]  # tables the peer does not track or does not share with us
    round_trips: int
    bytes_sent: int
    bytes_received: int
    seconds: float
    corrected_digests: int = 0  # deep: stored digests here that did not match their stamps
    # Tables not compared because their columns differ at the peer (a migration
    # not run everywhere): table -> (our value columns, the peer's).
    other_columns: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    # The feed heads once the trees were read, ours and the peer's (None: it
    # did not say): every row compared is at or below them.  Rows in flight
    # are no divergence: a node judges only once each side has applied the
    # other's feed up to them (node.verify_server).
    head_seq: int = 0
    peer_head_seq: int | None = None
    # Per origin, the greatest stamp held once the trees were read, here and at
    # the peer (None: it did not say): the fleet's caught-up test, per origin
    # (node.verify_server).
    held: dict[str, int] = field(default_factory=dict)
    peer_held: dict[str, int] | None = None

    @property
    def divergent_rows(self) -> int:
        return sum(len(found.divergent) for found in self.differences.values())

    @property
    def unsettled_rows(self) -> int:
        return sum(len(found.unsettled) for found in self.differences.values())

    @property
    def identical(self) -> bool:
        """Proven identical: nothing differs, nothing was still changing, all tables shared."""
        return (
            self.divergent_rows == 0
            and self.unsettled_rows == 0
            and not self.not_shared
            and not self.other_columns
        )

    @property
    def diverged(self) -> bool:
        """Rows differ and held still (or a table is not shared, or its columns differ
        at the peer: not compared until the migration has run at both): what to act on.

        Rows still changing at every re-read are writes in flight on a busy
        table: neither proven equal nor found different.
        """
        return self.divergent_rows > 0 or bool(self.not_shared) or bool(self.other_columns)

    def as_json(self) -> dict[str, Any]:
        return {
            "peer_site": self.peer_site,
            "deep": self.deep,
            "identical": self.identical,
            "diverged": self.diverged,
            "tables": self.tables,
            "not_shared": self.not_shared,
            "other_columns": {
                name: {"here": here, "there": there}
                for name, (here, there) in self.other_columns.items()
            },
            "divergent_rows": self.divergent_rows,
            "unsettled_rows": self.unsettled_rows,
            "round_trips": self.round_trips,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "seconds": round(self.seconds, 3),
            "corrected_digests": self.corrected_digests,
            "differences": {
                name: {
                    "divergent": [list(key) for key in found.divergent],
                    "missing_here": [list(key) for key in found.missing_here],
                    "missing_there": [list(key) for key in found.missing_there],
                    "unsettled": [list(key) for key in found.unsettled],
                }
                for name, found in self.differences.items()
            },
        }


@dataclass(slots=True)
class RepairReport:
    before: VerifyReport
    after: VerifyReport
    fetched_rows: int  # the peer's rows merged here
    pushed_rows: int  # our rows the peer merged
    restamped_rows: int  # rows whose values differed under equal stamps (deep)


# -- the asking side -------------------------------------------------------------------


class VerifyClient:
    """Requests to one node's verify route; counts round trips and bytes.

    `exchange` carries the requests: what `Connector.verify_exchange`
    returns, or `transport.HttpVerifyExchange(url, ssl=...)` from the CLI.
    With TLS the exchange checks that the node's certificate names the site
    meant, as a dialler checks the peer it reached, so another member of the
    cluster cannot answer (and feed a repair) in its place.
    """

    def __init__(self, exchange: VerifyExchange) -> None:
        self._exchange = exchange
        self.url = self._exchange.url
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    async def __aenter__(self) -> VerifyClient:
        await self._exchange.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exchange.__aexit__(*exc)

    async def call(self, request: VerifyRequest) -> bytes:
        """The answer's body to `request`; SyncError if unreachable or refused."""
        body = encode_request(request)
        try:
            status, answer = await self._exchange.post(body)
        except UnreachableError as exc:
            raise SyncError(f"cannot reach {self.url}: {exc.reason}") from exc
        except TransportError as exc:
            raise SyncError(f"cannot reach {self.url}: {exc}") from exc
        self.round_trips += 1
        self.bytes_sent += len(body)
        self.bytes_received += len(answer)
        if status != 200:
            raise SyncError(f"{self.url} refused verify ({status}): {refusal_detail(answer)}")
        return answer


@contextmanager
def _answer_from(client: VerifyClient) -> Iterator[None]:
    """Turn an answer that does not have the expected shape into a SyncError naming it."""
    try:
        yield
    except ProtocolError as exc:  # VerifyAnswerError, or a malformed BATCH frame
        raise SyncError(f"{client.url} sent a verify answer this node cannot read: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
        raise SyncError(
            f"{client.url} sent a verify answer this node cannot read: {type(exc).__name__}: {exc}"
        ) from exc


async def verify(
    store: VerifyStore,
    call: StoreCall,
    client: VerifyClient,
    tables: Sequence[str] | None = None,
    *,
    deep: bool = False,
    settle_s: float = SETTLE_S_DEFAULT,
    settle_rounds: int = SETTLE_ROUNDS_DEFAULT,
) -> VerifyReport:
    """Compare `store` with the node behind `client`; see the module's docstring."""
    started = time.monotonic()
    first_trips, first_sent, first_received = (
        client.round_trips,
        client.bytes_sent,
        client.bytes_received,
    )
    names = list(tables) if tables else [spec.name for spec in store.specs()]
    for name in names:
        if name not in {spec.name for spec in store.specs()}:
            raise StoreError(f"table {name!r} is not tracked here")
    session = uuid.uuid4().hex
    corrected = 0
    if deep:
        trees = {}
        for name in names:
            trees[name], fixed = await deep_tree(store, call, name)
            corrected += fixed
    else:
        trees = await call(store.summaries, names)
    columns = {spec.name: list(spec.value_columns) for spec in store.specs() if spec.name in trees}
    head_seq = await call(store.head_seq)
    held = await call(store.held_claims)
    body = await client.call(
        RootsRequest({name: tree.root() for name, tree in trees.items()}, deep, session, columns)
    )
    asked: dict[str, dict[int, bytes]] = {}
    with _answer_from(client):
        roots = decode_roots_answer(body)
        peer_site, not_shared = roots.site, roots.not_shared
        other_columns = {
            name: (columns[name], theirs)
            for name, theirs in roots.other_columns.items()
            if name in columns
        }
        for name, branches in roots.tables.items():
            if branches is None:
                continue
            theirs = BRANCH_ARRAY.unpack(branches)
            ours = trees[name].branches()
            asked[name] = {
                branch: LEAF_ARRAY.pack(*trees[name].branch_leaves(branch))
                for branch in range(BRANCHES)
                if ours[branch] != theirs[branch]
            }
    # Candidate keys: (our digest, theirs) per key of the leaves that differ.
    candidates: dict[str, dict[Key, tuple[int | None, int | None]]] = {}
    if asked:
        body = await client.call(LeavesRequest(asked, deep, session))
        with _answer_from(client):
            listed = {
                name: (dict(found.rows), found.leaves)
                for name, found in decode_leaves_answer(body).tables.items()
                if name in asked
            }
        for name, (theirs_by_key, leaves) in listed.items():
            ours_by_key = await call(store.leaf_digests, name, leaves, deep=deep)
            candidates[name] = {
                key: (ours_by_key.get(key), theirs_by_key.get(key))
                for key in set(theirs_by_key) | set(ours_by_key)
                if ours_by_key.get(key) != theirs_by_key.get(key)
            }
    differences = await _settle(
        store, call, client, candidates, deep=deep, settle_s=settle_s, rounds=settle_rounds
    )
    return VerifyReport(
        peer_site=peer_site,
        deep=deep,
        tables=names,
        differences=differences,
        not_shared=not_shared,
        other_columns=other_columns,
        round_trips=client.round_trips - first_trips,
        bytes_sent=client.bytes_sent - first_sent,
        bytes_received=client.bytes_received - first_received,
        seconds=time.monotonic() - started,
        corrected_digests=corrected,
        head_seq=head_seq,
        peer_head_seq=roots.head_seq,
        held=held,
        peer_held=roots.held,
    )


async def _settle(
    store: VerifyStore,
    call: StoreCall,
    client: VerifyClient,
    candidates: dict[str, dict[Key, tuple[int | None, int | None]]],
    *,
    deep: bool,
    settle_s: float,
    rounds: int,
) -> dict[str, TableDifference]:
    """Re-read candidate keys on both sides until each agrees, holds still, or rounds end."""
    differences = {name: TableDifference(name) for name in candidates}
    pending = {name: dict(keys) for name, keys in candidates.items() if keys}
    for _round in range(max(1, rounds)):
        if not pending:
            break
        await asyncio.sleep(settle_s)
        theirs_now = await _remote_digests(client, pending, deep)
        still: dict[str, dict[Key, tuple[int | None, int | None]]] = {}
        for name, keys in pending.items():
            ordered = list(keys)
            ours_now = await call(store.key_digests, name, ordered, deep=deep)
            with _answer_from(client):
                compared = list(zip(ordered, ours_now, theirs_now[name], strict=True))
            for key, ours, theirs in compared:
                if ours == theirs:
                    continue  # a write in flight, arrived
                if (ours, theirs) == keys[key]:
                    differences[name].note_divergent(key, ours, theirs)
                else:
                    still.setdefault(name, {})[key] = (ours, theirs)
        pending = still
    for name, keys in pending.items():
        differences[name].unsettled.extend(keys)
    for found in differences.values():
        found.sort()
    return {
        name: found for name, found in differences.items() if found.divergent or found.unsettled
    }


async def confirm(
    store: VerifyStore, call: StoreCall, client: VerifyClient, report: VerifyReport
) -> VerifyReport:
    """`report` with its divergent rows read once more on both sides.

    A row stays divergent only if both digests are still the ones it held
    still with; one that agrees now was in flight after all, and one that
    changed is unsettled.  For a caller that knows rows may have been in
    flight longer than the re-reads waited (the periodic verify of a peer
    that was still catching up, node.verify_server): it re-reads once both
    sides have caught up, so that only a real divergence is reported.
    """
    judged = {name: dict(found.digests) for name, found in report.differences.items()}
    judged = {name: keys for name, keys in judged.items() if keys}
    if not judged:
        return report
    first_trips, first_sent, first_received = (
        client.round_trips,
        client.bytes_sent,
        client.bytes_received,
    )
    theirs_now = await _remote_digests(client, judged, report.deep)
    differences: dict[str, TableDifference] = {}
    for name, found in report.differences.items():
        kept = TableDifference(name, unsettled=list(found.unsettled))
        keys = judged.get(name, {})
        ordered = list(keys)
        ours_now = await call(store.key_digests, name, ordered, deep=report.deep) if keys else []
        with _answer_from(client):
            compared = list(zip(ordered, ours_now, theirs_now.get(name, []), strict=True))
        for key, ours, theirs in compared:
            if ours == theirs:
                continue
            if (ours, theirs) == keys[key]:
                kept.note_divergent(key, ours, theirs)
            else:
                kept.unsettled.append(key)
        kept.sort()
        if kept.divergent or kept.unsettled:
            differences[name] = kept
    return dataclasses.replace(
        report,
        differences=differences,
        round_trips=report.round_trips + client.round_trips - first_trips,
        bytes_sent=report.bytes_sent + client.bytes_sent - first_sent,
        bytes_received=report.bytes_received + client.bytes_received - first_received,
    )


async def held_now(client: VerifyClient) -> dict[str, int] | None:
    """The peer's `held` now (None: it does not say): a roots request of no table,
    so no tree is read there."""
    body = await client.call(RootsRequest({}, False, "", {}))
    with _answer_from(client):
        return decode_roots_answer(body).held


def lacking(holder: Mapping[str, int], held: Mapping[str, int]) -> list[str]:
    """The origin sites of which `holder` holds less than `held` does (sorted).

    Each side's `held` is the greatest stamp per origin: a side below the
    other's for some origin still lacks a write the other held when its
    trees were read, which would read as a divergence while it travels.
    """
    return sorted(site for site, stamp in held.items() if holder.get(site, 0) < stamp)


async def _remote_digests(
    client: VerifyClient, keys: Mapping[str, Mapping[Key, object]], deep: bool
) -> dict[str, list[int | None]]:
    found: dict[str, list[int | None]] = {name: [] for name in keys}
    chunks = _chunked({name: list(listed) for name, listed in keys.items()})
    for chunk in chunks:
        body = await client.call(DigestsRequest(chunk, deep))
        with _answer_from(client):
            for name, digests in decode_digests_answer(body).tables.items():
                found[name].extend(digests)
    return found


def _chunked(keys: Mapping[str, list[Key]]) -> list[dict[str, list[Key]]]:
    """The keys in requests of at most KEYS_PER_REQUEST keys, tables sharing one."""
    chunks: list[dict[str, list[Key]]] = [{}]
    count = 0
    for name, listed in keys.items():
        for key in listed:
            if count == KEYS_PER_REQUEST:
                chunks.append({})
                count = 0
            chunks[-1].setdefault(name, []).append(key)
            count += 1
    return [chunk for chunk in chunks if chunk]


class WrittenAfterTrees(Exception):
    """Rows a repair would merge carry a write their holder did not hold when its
    trees were read (`rows_past_held`): writes in flight, the feeds' to deliver."""

    def __init__(self, rows: list[tuple[str, Key]]) -> None:
        shown = ", ".join(f"{table} {list(key)}" for table, key in rows[:3])
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        super().__init__(f"{len(rows)} rows written after the trees were read ({shown}{more})")
        self.rows = rows


def rows_past_held(batch: ChangeBatch, held: Mapping[str, int]) -> list[tuple[str, Key]]:
    """The rows of `batch` with a stamp (causal length or cell) above `held`'s entry
    for the stamp's site: states their holder reached after `held` was read.

    `held` is a side's `held_claims` read right after its trees: every row in
    those trees is at or below it.  A row past it got into a verify's
    candidates later, through a leaves or digests request answered from the
    store as it is by then, and only if its leaf was asked about (its branch
    differed for another row): one line of an order, not the order nor its
    other lines (`syncmesh chaos --transport nats`, torn-transaction).
    """
    sites = batch.sites
    found: list[tuple[str, Key]] = []
    for table in batch.tables:
        first = table.key_count
        for row in table.rows:
            stamps = [(row[first + 1], row[first + 2])]
            stamps.extend(
                zip(row[first + 4 :: CELL_FIELDS], row[first + 5 :: CELL_FIELDS], strict=False)
            )
            for hlc, site in stamps:
                if not isinstance(hlc, int) or not isinstance(site, int):
                    continue  # an absent cell (no stamp)
                name = sites[site] if 0 <= site < len(sites) else ""
                if name == DEFAULT_CELL_STAMP.site_id:
                    continue  # a column's default: nobody's write
                if hlc > held.get(name, 0):
                    found.append((table.table, tuple(row[:first])))
                    break
    return found


async def _check_held_at_trees(
    store: VerifyStore,
    call: StoreCall,
    report: VerifyReport,
    chunk: Mapping[str, list[Key]],
    theirs: Sequence[ChangeBatch],
) -> None:
    """Raise WrittenAfterTrees if a row of `chunk`, ours or the peer's, is past what
    its holder held when the trees were read (nothing checked if the peer did not
    say its `held`).

    Per origin that is the holder's `held`; for its own writes, its feed head
    too, read with the trees: each own write is captured under a seq equal to
    its stamp, so those before the trees are at or below the head, those
    after above it.  `held` alone would not do for them: a node restoring
    from a backup claims no own write past its lost ones until they are
    back (ADR 0006), while it goes on writing.
    """
    if report.peer_held is None:
        return
    their_bound = _with_own(report.peer_held, report.peer_site, report.peer_head_seq)
    our_bound = _with_own(report.held, store.site_id, report.head_seq)
    late = [row for batch in theirs for row in rows_past_held(batch, their_bound)]
    for name, keys in chunk.items():
        late.extend(rows_past_held(await call(store.rows_of, name, keys), our_bound))
    if late:
        raise WrittenAfterTrees(late)


def _with_own(held: Mapping[str, int], site: str, head_seq: int | None) -> dict[str, int]:
    bound = dict(held)
    if head_seq is not None:
        bound[site] = max(bound.get(site, 0), head_seq)
    return bound


async def merge_divergent(
    store: VerifyStore,
    call: StoreCall,
    client: VerifyClient,
    report: VerifyReport,
    *,
    held_at_trees: bool = False,
) -> tuple[int, int, int]:
    """Merge the rows `report` found divergent both ways; (fetched, pushed, restamped) rows.

    The peer's rows for those keys are merged here and ours there, each
    through the normal merge (`merge_repair_rows`): no newer write can
    lose, and a row the feeds never carried (a vector that claimed it
    wrongly, a row removed behind the engine's back) is back on both
    sides.  The keys go in chunks across tables, each chunk merged in one
    transaction on each side: an order and its lines that both differ are
    never seen one without the other (a per-table merge showed lines of an
    order without the order: `syncmesh chaos`, torn-transaction).  With a
    deep report, rows whose stamps agree but whose values differ have no
    merge to decide them: this side stamps them anew.

    `held_at_trees` (the periodic verify): before a chunk is merged, each of
    its rows, ours and the peer's, must be at or below what its holder held
    when the trees were read (`rows_past_held`); otherwise WrittenAfterTrees
    is raised and nothing more is merged.  A row written since is in flight,
    and may be a part of a transaction whose other rows were never compared.
    """
    fetched = pushed = restamped = 0
    divergent = {name: found.divergent for name, found in report.differences.items()}
    divergent = {name: keys for name, keys in divergent.items() if keys}
    if report.deep:
        for name, keys in divergent.items():
            # Equal stamps, different values: no merge decides; this side wins.
            stamps_ours = await call(store.key_digests, name, keys)
            stamps_theirs = (await _remote_digests(client, {name: dict.fromkeys(keys)}, False))[
                name
            ]
            same_stamps = [
                key
                for key, ours, theirs in zip(keys, stamps_ours, stamps_theirs, strict=True)
                if ours is not None and ours == theirs
            ]
            if same_stamps:
                restamped += await call(store.restamp, name, same_stamps)
    for chunk in _chunked(divergent):
        body = await client.call(FetchRequest(chunk))
        with _answer_from(client):
            theirs = list(decode_fetch_answer(body).batches.values())
        if held_at_trees:
            await _check_held_at_trees(store, call, report, chunk, theirs)
        for batch in _joined(theirs):
            result = await call(store.merge_repair_rows, report.peer_site, batch)
            fetched += result.applied_rows
        ours = [await call(store.rows_of, name, keys) for name, keys in chunk.items()]
        for batch in _joined(ours):
            if batch.row_count:
                body = await client.call(PushRequest(batch, store.site_id))
                with _answer_from(client):
                    pushed += decode_push_answer(body).applied
    return fetched, pushed, restamped


def _joined(batches: Sequence[ChangeBatch]) -> list[ChangeBatch]:
    """`batches` of one store's rows (`rows_of`, one per table) as few batches as merge whole.

    Batches with the same sites table (`rows_of` sends the store's whole
    one, the same for every table unless a site was added in between) are
    one batch of all their tables; the rest stay apart.
    """
    by_sites: dict[tuple[str, ...], ChangeBatch] = {}
    for batch in batches:
        if not batch.tables:
            continue
        held = by_sites.get(batch.sites)
        by_sites[batch.sites] = (
            batch if held is None else replace(held, tables=(*held.tables, *batch.tables))
        )
    return list(by_sites.values())


async def repair(
    store: VerifyStore,
    call: StoreCall,
    client: VerifyClient,
    tables: Sequence[str] | None = None,
    *,
    deep: bool = False,
    settle_s: float = SETTLE_S_DEFAULT,
    settle_rounds: int = SETTLE_ROUNDS_DEFAULT,
) -> RepairReport:
    """Verify, merge the divergent rows both ways, verify again."""
    before = await verify(
        store, call, client, tables, deep=deep, settle_s=settle_s, settle_rounds=settle_rounds
    )
    fetched, pushed, restamped = await merge_divergent(store, call, client, before)
    after = await verify(
        store, call, client, tables, deep=deep, settle_s=settle_s, settle_rounds=settle_rounds
    )
    return RepairReport(before, after, fetched, pushed, restamped)


async def deep_tree(store: VerifyStore, call: StoreCall, name: str) -> tuple[TableSummary, int]:
    """A table's deep tree, read in steps: the store's thread is free between them."""
    tree, after, fixed = await call(store.deep_summary_step, name, None, DEEP_ROWS_PER_STEP)
    while after is not None:
        part, after, more = await call(store.deep_summary_step, name, after, DEEP_ROWS_PER_STEP)
        tree.merge(part)
        fixed += more
    return tree, fixed


async def direct_call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A StoreCall for a caller that owns its store on the event loop's thread (the CLI)."""
    return function(*args, **kwargs)
