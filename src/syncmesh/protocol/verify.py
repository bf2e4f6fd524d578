"""The messages of verify and repair, and their encoding: typed, checked here.

Verify is request and answer, not a session (docs/protocol.md, "Verify and
repair"; the exchange itself is described in syncmesh.node.verify).  Each
request and each answer is one msgpack map; a request names its version
`v` and its `op`:

    roots    the asker's root hash per table          -> same, or the 256 branch hashes
    leaves   the asker's leaf hashes per differing branch -> differing leaves, their rows
    digests  keys                                      -> each key's digest now (None: no row)
    fetch    keys                                      -> the rows, as a BATCH frame per table
    push     a BATCH frame of the asker's rows         -> rows applied and quarantined

`decode_request` is the answering node's trust boundary, as `codec.decode`
is for sync frames: every field is checked for type and size, and anything
malformed is a `VerifyRequestError` naming the problem (the node answers it
with HTTP 400).  Whether a table is tracked and shared with the asker is the
node's question, not the codec's.  `decode_answer` is the asker's boundary.
The encoders write the maps exactly as versions before these types did:
same keys, same order, same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from syncmesh.errors import ProtocolError
from syncmesh.model import ChangeBatch, SqlValue
from syncmesh.protocol.codec import decode, encode
from syncmesh.protocol.messages import Batch

VERIFY_VERSION = 1
KEYS_PER_REQUEST = 16_384  # keys in one digests/fetch/push request
# The hash tree's shape is part of the wire: 256 branches of 256 leaves
# (the store's trees have this shape: syncmesh.store.summary).
TREE_BRANCHES = 256
TREE_LEAVES_PER_BRANCH = 256
BRANCHES_PER_REQUEST = TREE_BRANCHES  # all of one table's branches fit one request (~530 KB)
LEAF_ARRAY = struct.Struct(f"<{TREE_LEAVES_PER_BRANCH}q")
BRANCH_ARRAY = struct.Struct(f"<{TREE_BRANCHES}q")

Key = tuple[SqlValue, ...]
T = TypeVar("T")


class VerifyRequestError(ProtocolError):
    """A verify request the answering node cannot read (HTTP 400, named)."""


# -- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootsRequest:
    tables: dict[str, int]  # table -> the asker's root hash
    deep: bool
    session: str  # names the deep trees the node keeps between requests ("" if not deep)
    # table -> the asker's value columns, in table order (None: an older asker).
    # A row's digest hashes its cells in that order, so replicas whose columns
    # differ (a migration not run everywhere yet) differ in every row written
    # since: such a table is not compared (`RootsAnswer.other_columns`).
    columns: dict[str, list[str]] | None = None


@dataclass(frozen=True, slots=True)
class LeavesRequest:
    tables: dict[str, dict[int, bytes]]  # table -> branch -> its leaf hashes (LEAF_ARRAY)
    deep: bool
    session: str


@dataclass(frozen=True, slots=True)
class DigestsRequest:
    tables: dict[str, list[Key]]
    deep: bool


@dataclass(frozen=True, slots=True)
class FetchRequest:
    tables: dict[str, list[Key]]


@dataclass(frozen=True, slots=True)
class PushRequest:
    batch: ChangeBatch  # the asker's rows, decoded from a BATCH frame
    site: str  # the asker's site id ("" if it sent none)


VerifyRequest = RootsRequest | LeavesRequest | DigestsRequest | FetchRequest | PushRequest


# -- answers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootsAnswer:
    site: str  # the answering node's site id
    tables: dict[str, bytes | None]  # table -> None if the roots agree, else BRANCH_ARRAY
    not_shared: list[str]  # tables asked about that the node does not share with the asker
    # table -> the node's value columns, for tables whose columns differ from
    # the asker's: not compared (their rows' digests cannot agree).
    other_columns: dict[str, list[str]] = field(default_factory=dict)
    # The node's feed head once its trees were read (None: a node from before
    # it was sent): the asker knows when it has applied every row they held.
    head_seq: int | None = None
    # Per origin site, the greatest stamp the node holds (HELLO's `held`) once
    # its trees were read (None: a node from before it was sent).  A fleet
    # site's chain carries only its own writes, so "caught up" is judged per
    # origin there: the asker holds this, and the node what the asker held
    # (node.verify_server).
    held: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class LeafRows:
    leaves: list[int]  # the leaves that differ
    rows: list[tuple[Key, int]]  # the node's rows in them: key, digest


@dataclass(frozen=True, slots=True)
class LeavesAnswer:
    tables: dict[str, LeafRows]


@dataclass(frozen=True, slots=True)
class DigestsAnswer:
    tables: dict[str, list[int | None]]  # per table, one digest per key asked (None: no row)


@dataclass(frozen=True, slots=True)
class FetchAnswer:
    batches: dict[str, ChangeBatch]


@dataclass(frozen=True, slots=True)
class PushAnswer:
    applied: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class VerifyRefusal:
    """The answer to a request the node could not read; `detail` names the problem."""

    detail: str


VerifyAnswerMessage = (
    RootsAnswer | LeavesAnswer | DigestsAnswer | FetchAnswer | PushAnswer | VerifyRefusal
)


# -- bytes <-> maps -----------------------------------------------------------------------


def pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def unpack(body: bytes) -> dict[Any, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise VerifyRequestError(f"verify message is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict):
        raise VerifyRequestError("verify message is not a map")
    return message


def _keys_plain(tables: dict[str, list[Key]]) -> dict[str, list[list[SqlValue]]]:
    return {name: [list(key) for key in keys] for name, keys in tables.items()}


def encode_request(request: VerifyRequest) -> bytes:
    head: dict[str, Any] = {"v": VERIFY_VERSION}
    match request:
        case RootsRequest(tables, deep, session, columns):
            fields = {**head, "op": "roots", "tables": tables, "deep": deep, "session": session}
            return pack(fields if columns is None else {**fields, "columns": columns})
        case LeavesRequest(tables, deep, session):
            return pack(
                {**head, "op": "leaves", "tables": tables, "deep": deep, "session": session}
            )
        case DigestsRequest(tables, deep):
            return pack({**head, "op": "digests", "tables": _keys_plain(tables), "deep": deep})
        case FetchRequest(tables):
            return pack({**head, "op": "fetch", "tables": _keys_plain(tables)})
        case PushRequest(batch, site):
            return pack({**head, "op": "push", "batch": encode(Batch(batch)), "site": site})


def decode_request(body: bytes, *, frame_bytes_max: int) -> VerifyRequest:
    """The request in `body`; VerifyRequestError naming what is wrong with it."""
    message = unpack(body)
    if message.get("v") != VERIFY_VERSION:
        raise VerifyRequestError(
            f"verify version {message.get('v')!r} is not {VERIFY_VERSION} (upgrade one side)"
        )
    op = read_field(message, "op", str)
    deep = bool(message.get("deep"))
    if op == "roots":
        roots = _named_tables(message)
        for name, root in roots.items():
            if not isinstance(root, int) or isinstance(root, bool):
                raise VerifyRequestError(f"roots: the root of {name!r} is not an integer")
        return RootsRequest(roots, deep, _session(message, deep), _columns(message, "columns"))
    if op == "leaves":
        return LeavesRequest(_leaves(_named_tables(message)), deep, _session(message, deep))
    if op == "digests":
        return DigestsRequest(_key_tables(message), deep)
    if op == "fetch":
        return FetchRequest(_key_tables(message))
    if op == "push":
        frame = read_field(message, "batch", bytes)
        try:
            pushed = decode(frame, frame_bytes_max=frame_bytes_max)
        except ProtocolError as exc:
            raise VerifyRequestError(f"push: {exc}") from exc
        if not isinstance(pushed, Batch):
            raise VerifyRequestError("push: the frame is not a BATCH")
        site = message.get("site")
        return PushRequest(pushed.batch, site if isinstance(site, str) else "")
    raise VerifyRequestError(f"unknown verify op {op!r}")


def read_field(message: dict[Any, Any], name: str, kind: type[T] | tuple[type, ...]) -> T:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise VerifyRequestError(f"verify message: {name!r} is missing or not a {kind}")
    return value  # type: ignore[return-value]


def read_keys(value: object, what: str) -> list[Key]:
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


def _named_tables(message: dict[Any, Any]) -> dict[str, Any]:
    tables: dict[Any, Any] = read_field(message, "tables", dict)
    for name in tables:
        if not isinstance(name, str):
            raise VerifyRequestError(f"table {name!r} is not shared with you here")
    return tables


def _key_tables(message: dict[Any, Any]) -> dict[str, list[Key]]:
    return {name: read_keys(keys, name) for name, keys in _named_tables(message).items()}


def _session(message: dict[Any, Any], deep: bool) -> str:
    return read_field(message, "session", str) if deep else ""


def _leaves(tables: dict[str, Any]) -> dict[str, dict[int, bytes]]:
    checked: dict[str, dict[int, bytes]] = {}
    for name, branches in tables.items():
        if not isinstance(branches, dict) or len(branches) > BRANCHES_PER_REQUEST:
            raise VerifyRequestError(f"leaves: branches of {name!r} are not a map")
        for branch, packed in branches.items():
            if not isinstance(branch, int) or not 0 <= branch < TREE_BRANCHES:
                raise VerifyRequestError(f"leaves: branch {branch!r} is out of range")
            if not isinstance(packed, bytes) or len(packed) != LEAF_ARRAY.size:
                raise VerifyRequestError(
                    f"leaves: branch {branch} is not {TREE_LEAVES_PER_BRANCH} hashes"
                )
        checked[name] = branches
    return checked


def _columns(message: dict[str, Any], name: str) -> dict[str, list[str]] | None:
    """The optional map `name` of table -> column names; VerifyRequestError if malformed."""
    if name not in message:
        return None
    found = message[name]
    if not isinstance(found, dict) or not all(
        isinstance(table, str)
        and isinstance(columns, list)
        and all(isinstance(column, str) for column in columns)
        for table, columns in found.items()
    ):
        raise VerifyRequestError(f"{name}: not a map of table names to lists of column names")
    return {table: list(columns) for table, columns in found.items()}


def _other_columns(message: dict[str, Any]) -> dict[str, list[str]]:
    """A roots answer's `other_columns` (absent from older nodes: none)."""
    try:
        return _columns(message, "other_columns") or {}
    except VerifyRequestError as exc:
        raise VerifyAnswerError(str(exc)) from exc


def encode_answer(answer: VerifyAnswerMessage) -> bytes:
    match answer:
        case RootsAnswer(site, tables, not_shared, other_columns, head_seq, held):
            extra = {"other_columns": other_columns} if other_columns else {}
            return pack(
                {
                    **extra,
                    "site": site,
                    **({} if head_seq is None else {"head_seq": head_seq}),
                    **({} if held is None else {"held": held}),
                    "tables": {
                        name: {"same": True}
                        if branches is None
                        else {"same": False, "branches": branches}
                        for name, branches in tables.items()
                    },
                    "not_shared": not_shared,
                }
            )
        case LeavesAnswer(tables):
            return pack(
                {
                    "tables": {
                        name: {
                            "leaves": found.leaves,
                            "rows": [[list(k), d] for k, d in found.rows],
                        }
                        for name, found in tables.items()
                    }
                }
            )
        case DigestsAnswer(tables):
            return pack({"tables": tables})
        case FetchAnswer(batches):
            return pack({"batches": {name: encode(Batch(rows)) for name, rows in batches.items()}})
        case PushAnswer(applied, quarantined):
            return pack({"applied": applied, "quarantined": quarantined})
        case VerifyRefusal(detail):
            return pack({"error": "bad request", "detail": detail})


def refusal_detail(body: bytes) -> str:
    """The text of a refused request's answer, for the asker's error message."""
    try:
        message = unpack(body)
    except VerifyRequestError:
        return body[:200].decode("utf-8", "replace")
    return str(message.get("detail") or message.get("error") or message)


class VerifyAnswerError(ProtocolError):
    """An answer the asking side cannot read."""


def decode_roots_answer(body: bytes) -> RootsAnswer:
    message = unpack(body)
    with _answer_fields():
        tables: dict[str, bytes | None] = {}
        for name, verdict in message.get("tables", {}).items():
            if verdict.get("same"):
                tables[str(name)] = None
                continue
            branches = verdict["branches"]
            BRANCH_ARRAY.unpack(branches)  # the size is checked here, not at first use
            tables[str(name)] = bytes(branches)
        return RootsAnswer(
            str(message.get("site", "")),
            tables,
            [str(name) for name in message.get("not_shared", [])],
            _other_columns(message),
            None if message.get("head_seq") is None else int(message["head_seq"]),
            _held(message),
        )


def _held(message: dict[str, Any]) -> dict[str, int] | None:
    """A roots answer's `held` (absent from older nodes: None)."""
    found = message.get("held")
    if found is None:
        return None
    if not isinstance(found, dict) or not all(
        isinstance(site, str) and isinstance(stamp, int) and not isinstance(stamp, bool)
        for site, stamp in found.items()
    ):
        raise VerifyAnswerError("held: not a map of site ids to stamps")
    return dict(found)


def decode_leaves_answer(body: bytes) -> LeavesAnswer:
    message = unpack(body)
    with _answer_fields():
        return LeavesAnswer(
            {
                str(name): LeafRows(
                    [int(leaf) for leaf in found["leaves"]],
                    [(tuple(key), value) for key, value in found["rows"]],
                )
                for name, found in message["tables"].items()
            }
        )


def decode_digests_answer(body: bytes) -> DigestsAnswer:
    message = unpack(body)
    with _answer_fields():
        return DigestsAnswer({str(name): list(found) for name, found in message["tables"].items()})


def decode_fetch_answer(body: bytes) -> FetchAnswer:
    message = unpack(body)
    with _answer_fields():
        batches: dict[str, ChangeBatch] = {}
        for name, frame in message["batches"].items():
            fetched = decode(frame)
            if not isinstance(fetched, Batch):
                raise VerifyAnswerError(f"a fetch answered a {type(fetched).__name__}")
            batches[str(name)] = fetched.batch
        return FetchAnswer(batches)


def decode_push_answer(body: bytes) -> PushAnswer:
    message = unpack(body)
    with _answer_fields():
        return PushAnswer(int(message.get("applied", 0)), int(message.get("quarantined", 0)))


@contextmanager
def _answer_fields() -> Iterator[None]:
    """Turn an answer that does not have the expected shape into a VerifyAnswerError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
        raise VerifyAnswerError(f"{type(exc).__name__}: {exc}") from exc
