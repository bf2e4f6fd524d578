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
import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgpack

from syncmesh.errors import StoreError, SyncError
from syncmesh.model import SqlValue
from syncmesh.protocol import Batch, decode, encode
from syncmesh.store import Store
from syncmesh.store.base import DEEP_ROWS_PER_STEP
from syncmesh.store.summary import BRANCHES, LEAVES_PER_BRANCH, TableSummary
from syncmesh.transport import SYNC_PATH

log = logging.getLogger(__name__)

VERIFY_PATH = SYNC_PATH + "/verify"
CONTENT_TYPE = "application/msgpack"
VERIFY_VERSION = 1
SETTLE_S_DEFAULT = 1.0
SETTLE_ROUNDS_DEFAULT = 3
KEYS_PER_REQUEST = 16_384  # keys in one digests/fetch/push request
BRANCHES_PER_REQUEST = BRANCHES  # all of one table's branches fit one request (~530 KB)
DEEP_SESSIONS_MAX = 4
DEEP_SESSION_TTL_S = 300.0
REQUEST_TIMEOUT_S = 120.0

Key = tuple[SqlValue, ...]
T = TypeVar("T")
StoreCall = Callable[..., Awaitable[Any]]

LEAF_ARRAY = struct.Struct(f"<{LEAVES_PER_BRANCH}q")
BRANCH_ARRAY = struct.Struct(f"<{BRANCHES}q")


class VerifyRequestError(SyncError):
    """A verify request the answering node cannot read (HTTP 400, named)."""


# -- results ------------------------------------------------------------------------


@dataclass(slots=True)
class TableDifference:
    """What verify found in one table."""

    table: str
    divergent: list[Key] = field(default_factory=list)  # stable, different digests
    missing_here: list[Key] = field(default_factory=list)  # of `divergent`: no row here
    missing_there: list[Key] = field(default_factory=list)  # of `divergent`: none there
    unsettled: list[Key] = field(default_factory=list)  # still changing after every re-check


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

    @property
    def divergent_rows(self) -> int:
        return sum(len(found.divergent) for found in self.differences.values())

    @property
    def unsettled_rows(self) -> int:
        return sum(len(found.unsettled) for found in self.differences.values())

    @property
    def identical(self) -> bool:
        """Proven identical: nothing differs, nothing was still changing, all tables shared."""
        return self.divergent_rows == 0 and self.unsettled_rows == 0 and not self.not_shared

    @property
    def diverged(self) -> bool:
        """Rows differ and held still (or a table is not shared): what to act on.

        Rows still changing at every re-read are writes in flight on a busy
        table: neither proven equal nor found different.
        """
        return self.divergent_rows > 0 or bool(self.not_shared)

    def as_json(self) -> dict[str, Any]:
        return {
            "peer_site": self.peer_site,
            "deep": self.deep,
            "identical": self.identical,
            "diverged": self.diverged,
            "tables": self.tables,
            "not_shared": self.not_shared,
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


# -- the wire -------------------------------------------------------------------------


def pack(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise VerifyRequestError(f"verify message is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict):
        raise VerifyRequestError("verify message is not a map")
    return message


def read_field(message: Mapping[str, Any], name: str, kind: type[T] | tuple[type, ...]) -> T:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise VerifyRequestError(f"verify message: {name!r} is missing or not a {kind}")
    return value  # type: ignore[return-value]


def read_keys(value: Any, what: str) -> list[Key]:
    if not isinstance(value, list) or len(value) > KEYS_PER_REQUEST:
        raise VerifyRequestError(f"{what}: keys must be a list of at most {KEYS_PER_REQUEST}")
    keys = []
    for key in value:
        if not isinstance(key, list) or not key:
            raise VerifyRequestError(f"{what}: a key is not a non-empty list of values")
        for part in key:
            if part is not None and not isinstance(part, int | float | str | bytes):
                raise VerifyRequestError(f"{what}: a key value is not an SQL value")
        keys.append(tuple(key))
    return keys


# -- the asking side -------------------------------------------------------------------


class VerifyClient:
    """Requests to one node's verify route over HTTP; counts round trips and bytes.

    With TLS, pass a context from `transport.client_context_for_site`: the
    node's certificate must then name the site meant, as a dialler checks
    the peer it reached, so another member of the cluster cannot answer
    (and feed a repair) in its place.
    """

    def __init__(self, url: str, *, ssl: Any = None, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url.rstrip("/") + VERIFY_PATH
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    async def __aenter__(self) -> VerifyClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._session is not None, "use `async with VerifyClient(...)`"
        body = pack({"v": VERIFY_VERSION, "op": op, **fields})
        try:
            async with self._session.post(
                self.url, data=body, headers={"Content-Type": CONTENT_TYPE}, ssl=self._ssl
            ) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SyncError(f"cannot reach {self.url}: {str(exc) or type(exc).__name__}") from exc
        self.round_trips += 1
        self.bytes_sent += len(body)
        self.bytes_received += len(answer)
        if status != 200:
            raise SyncError(f"{self.url} refused verify ({status}): {_error_text(answer)}")
        return unpack(answer)


@contextmanager
def _answer_from(client: VerifyClient) -> Iterator[None]:
    """Turn an answer that does not have the expected shape into a SyncError naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
        raise SyncError(
            f"{client.url} sent a verify answer this node cannot read: {type(exc).__name__}: {exc}"
        ) from exc


def _error_text(body: bytes) -> str:
    try:
        message = unpack(body)
    except VerifyRequestError:
        return body[:200].decode("utf-8", "replace")
    return str(message.get("detail") or message.get("error") or message)


async def verify(
    store: Store,
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
    answer = await client.call(
        "roots",
        tables={name: tree.root() for name, tree in trees.items()},
        deep=deep,
        session=session,
    )
    asked: dict[str, dict[int, bytes]] = {}
    with _answer_from(client):
        peer_site = str(answer.get("site", ""))
        not_shared = [str(name) for name in answer.get("not_shared", [])]
        for name, verdict in answer.get("tables", {}).items():
            if verdict.get("same"):
                continue
            theirs = BRANCH_ARRAY.unpack(verdict["branches"])
            ours = trees[name].branches()
            asked[name] = {
                branch: LEAF_ARRAY.pack(*trees[name].branch_leaves(branch))
                for branch in range(BRANCHES)
                if ours[branch] != theirs[branch]
            }
    # Candidate keys: (our digest, theirs) per key of the leaves that differ.
    candidates: dict[str, dict[Key, tuple[int | None, int | None]]] = {}
    if asked:
        answer = await client.call("leaves", tables=asked, deep=deep, session=session)
        with _answer_from(client):
            listed = {
                name: (
                    {tuple(key): value for key, value in found["rows"]},
                    [int(leaf) for leaf in found["leaves"]],
                )
                for name, found in answer["tables"].items()
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
        round_trips=client.round_trips - first_trips,
        bytes_sent=client.bytes_sent - first_sent,
        bytes_received=client.bytes_received - first_received,
        seconds=time.monotonic() - started,
        corrected_digests=corrected,
    )


async def _settle(
    store: Store,
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
                    found = differences[name]
                    found.divergent.append(key)
                    if ours is None:
                        found.missing_here.append(key)
                    if theirs is None:
                        found.missing_there.append(key)
                else:
                    still.setdefault(name, {})[key] = (ours, theirs)
        pending = still
    for name, keys in pending.items():
        differences[name].unsettled.extend(keys)
    for found in differences.values():
        for listed in (found.divergent, found.missing_here, found.missing_there, found.unsettled):
            listed.sort(key=repr)
    return {
        name: found for name, found in differences.items() if found.divergent or found.unsettled
    }


async def _remote_digests(
    client: VerifyClient, keys: Mapping[str, Mapping[Key, object]], deep: bool
) -> dict[str, list[int | None]]:
    found: dict[str, list[int | None]] = {name: [] for name in keys}
    chunks = _chunked({name: list(listed) for name, listed in keys.items()})
    for chunk in chunks:
        answer = await client.call(
            "digests",
            tables={name: [list(key) for key in listed] for name, listed in chunk.items()},
            deep=deep,
        )
        with _answer_from(client):
            for name, digests in answer["tables"].items():
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


async def repair(
    store: Store,
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
    fetched = pushed = restamped = 0
    for name, found in before.differences.items():
        keys = found.divergent
        if not keys:
            continue
        if deep:
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
        for start in range(0, len(keys), KEYS_PER_REQUEST):
            chunk = keys[start : start + KEYS_PER_REQUEST]
            answer = await client.call("fetch", tables={name: [list(key) for key in chunk]})
            with _answer_from(client):
                message = decode(answer["batches"][name])
            if not isinstance(message, Batch):
                raise SyncError(f"{client.url} answered a fetch with a {type(message).__name__}")
            result = await call(store.merge_repair_rows, before.peer_site, message.batch)
            fetched += result.applied_rows
            ours = await call(store.rows_of, name, chunk)
            if ours.row_count:
                answer = await client.call("push", batch=encode(Batch(ours)), site=store.site_id)
                pushed += int(answer.get("applied", 0))
    after = await verify(
        store, call, client, tables, deep=deep, settle_s=settle_s, settle_rounds=settle_rounds
    )
    return RepairReport(before, after, fetched, pushed, restamped)


async def deep_tree(store: Store, call: StoreCall, name: str) -> tuple[TableSummary, int]:
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
