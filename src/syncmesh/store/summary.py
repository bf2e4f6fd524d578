"""Hash-tree summaries of the tracked tables: what `syncmesh verify` compares.

Design: docs/adr/0010-verify-hash-tree.md.  Every shadow row carries two
more integers:

- `kh`, the hash of its key (XXH3-64 of the key's msgpack bytes);
  its low 16 bits are the row's *leaf*, the same on every node;
- `dg`, its *digest*: an XXH3-64 of the key hash, the causal length
  and its stamp, and, for a live row, every cell's stamp (HLC and site id),
  packed as int64s (`digest`).

A leaf's hash is the XOR of the digests of its rows; 256 leaves make a
branch and the 256 branches make the root.  XOR makes the upkeep O(1) per
changed row: a row that changes moves its leaf by `old dg ^ new dg`, and
both are in hand where the row is written (the capture upsert hands them
to `syncmesh_fold_digest`, the apply path has the old row loaded).  The
tree itself lives in memory (`Summaries`, 512 KB per table) and is rebuilt
from the `kh`/`dg` columns in one scan when it cannot be trusted: when
the store opens, or when another process (a `syncmesh track`, `repair` or
`quarantine retry`) wrote to the file since.

Digests hash stamps, not values: a stamp names one write, so two nodes
holding the same stamps hold the same values, unless something wrote the
file behind the engine's back.  That is what `--deep` is for: a *deep*
digest adds the values, read from the table itself, and a deep tree is
computed by a scan on both sides (`deep_digest`).
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
from xxhash import xxh3_64_intdigest

from syncmesh.model import DEFAULT_CELL_STAMP, SqlValue, text_of_bytes

LEAF_BITS = 16
LEAVES = 1 << LEAF_BITS
LEAF_MASK = LEAVES - 1
BRANCHES = 256
LEAVES_PER_BRANCH = LEAVES // BRANCHES

# TEXT that is not UTF-8 packs as its own bytes (model.TEXT_ERRORS); valid text is unchanged.
_pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


def _hash(data: bytes) -> int:
    """XXH3-64 of `data`, as a signed int64 (SQLite's integers are signed).

    XXH3 rather than a cryptographic hash: the trees find differences, they
    do not defend against a peer that lies (it could lie about its rows
    anyway), and the capture computes one or two per written row, where
    BLAKE2b cost three times as much.
    """
    value = xxh3_64_intdigest(data)
    return value - _TWO_64 if value >= _TWO_63 else value


_TWO_63, _TWO_64 = 1 << 63, 1 << 64


def key_hash(key: Sequence[SqlValue]) -> int:
    """A key's 64-bit hash, of its msgpack bytes (which keep 1, 1.0, '1' and b'1' apart).

    Stored with the row (`kh`), so a row's digest is computed without
    encoding its key again; its low 16 bits are the row's leaf.
    """
    return _hash(_pack(list(key)))


def key_hash_of_bytes(pairs: Sequence[SqlValue]) -> int:
    """`key_hash` of a key given as (is TEXT, value) pairs, TEXT as its bytes.

    For SQL functions, which receive TEXT only if it is valid UTF-8: a key
    column's TEXT comes cast to a BLOB.  A one-column TEXT key (the common
    kind) packs as a one-element array header, a msgpack str header and
    its bytes, which is what `_pack` makes of the str the store reads, so
    only the headers are built (half the time of decoding and packing).
    """
    if len(pairs) == 2 and pairs[0] and type(pairs[1]) is bytes:
        value = pairs[1]
        return _hash(b"\x91" + _str_header(len(value)) + value)
    return key_hash(
        [
            text_of_bytes(value) if is_text and isinstance(value, bytes) else value
            for is_text, value in zip(pairs[0::2], pairs[1::2], strict=True)
        ]
    )


def _str_header(size: int) -> bytes:
    """The msgpack header of a str of `size` bytes (fixstr, str 8, 16 or 32)."""
    if size < 32:
        return bytes((0xA0 | size,))
    if size < 1 << 8:
        return b"\xd9" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xda" + size.to_bytes(2, "big")
    return b"\xdb" + size.to_bytes(4, "big")


def leaf_of(hashed_key: int) -> int:
    return hashed_key & LEAF_MASK


_Stamp = TypeVar("_Stamp")
_Site = TypeVar("_Site")
NO_STAMP = -(2**63)  # a NULL HLC, as a digest field
NO_SITE = 0  # a NULL site, as a digest field
# The stamp's HLC of a cell an added column filled with its default (nobody
# wrote it; the same at every site: store/sqlite/ddl.py).  Such cells at the
# end of a row are left out of its digest, so that ADD COLUMN, which appends
# one to every row, changes no digest and needs no pass to refresh them.
DEFAULT_CELL_HLC = DEFAULT_CELL_STAMP.hlc


def trim_default_cells(
    hlcs: Sequence[_Stamp], sites: Sequence[_Site]
) -> tuple[Sequence[_Stamp], Sequence[_Site]]:
    """`hlcs` and `sites` without the trailing cells that hold an added column's default."""
    count = len(hlcs)
    while count and hlcs[count - 1] == DEFAULT_CELL_HLC:
        count -= 1
    return hlcs[:count], sites[:count]


@functools.lru_cache(maxsize=4096)
def site_code(site_id: str) -> int:
    """A site id as a digest field: its XXH3-64 (site ids are text, fields int64)."""
    return _hash(site_id.encode())


@functools.lru_cache(maxsize=64)
def _fields_struct(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}q")


def fields_digest(fields: Sequence[int]) -> int:
    """The digest of a row's fields: XXH3-64 of them packed as little-endian int64s."""
    return _hash(_fields_struct(len(fields)).pack(*fields))


def digest(
    hashed_key: int,
    cl: int,
    cl_hlc: int | None,
    cl_site: str | None,
    cells: Sequence[int | str | None] | None,
) -> int:
    """A row's digest.  `cells`: (hlc, site id) per value column, flat; None if dead.

    The fields are the key hash, the causal length, its stamp's HLC and
    site, and for a live row the cells' HLCs, then their sites: int64s, a site as
    `site_code` of its id, a NULL as NO_STAMP or NO_SITE.  A deleted row's
    cells are left out: a tombstone ships no cells, so a node that only
    ever saw the delete holds none, and still agrees.
    """
    fields = [
        hashed_key,
        cl,
        NO_STAMP if cl_hlc is None else cl_hlc,
        NO_SITE if cl_site is None else site_code(cl_site),
    ]
    if cl % 2 == 1 and cells:
        hlcs, sites = cells[0::2], cells[1::2]
        if hlcs and hlcs[-1] == DEFAULT_CELL_HLC:
            hlcs, sites = trim_default_cells(hlcs, sites)
        fields += [NO_STAMP if hlc is None else hlc for hlc in hlcs]  # type: ignore[misc]
        fields += [NO_SITE if site is None else site_code(site) for site in sites]
    return fields_digest(fields)


def deep_digest(stamps_digest: int, alive: bool, values: Sequence[SqlValue]) -> int:
    """The digest of a row with its values (a dead row has none: its stamps digest)."""
    if not alive:
        return stamps_digest
    return _hash(_pack([stamps_digest, list(values)]))


def xor_all(values: Iterable[int]) -> int:
    return functools.reduce(operator.xor, values, 0)


@dataclass(slots=True)
class TableSummary:
    """One table's tree: the leaves; branches and root are XORs of them."""

    leaves: list[int] = field(default_factory=lambda: [0] * LEAVES)

    def root(self) -> int:
        return xor_all(self.leaves)

    def branches(self) -> list[int]:
        return [
            xor_all(self.leaves[start : start + LEAVES_PER_BRANCH])
            for start in range(0, LEAVES, LEAVES_PER_BRANCH)
        ]

    def branch_leaves(self, branch: int) -> list[int]:
        start = branch * LEAVES_PER_BRANCH
        return self.leaves[start : start + LEAVES_PER_BRANCH]

    def add(self, leaf: int, delta: int) -> None:
        self.leaves[leaf] ^= delta

    def merge(self, other: TableSummary) -> None:
        """XOR in the tree of other rows (a part of the same table)."""
        self.leaves = [
            ours ^ theirs for ours, theirs in zip(self.leaves, other.leaves, strict=True)
        ]


def summary_of(pairs: Iterable[tuple[int, int]]) -> TableSummary:
    """The tree of (key hash, digest) pairs."""
    summary = TableSummary()
    leaves = summary.leaves
    for hashed_key, row_digest in pairs:
        leaves[hashed_key & LEAF_MASK] ^= row_digest
    return summary


class Summaries:
    """The in-memory trees of one store, kept in step with its own commits.

    The trees describe the file as of `as_of` (the feed's head seq).  A
    write transaction of this store records leaf deltas in `pending`; they
    reach the trees when it commits, provided nobody else moved the head
    since the trees were last right (`begin` saw `as_of`).  Otherwise the
    trees are dropped, to be rebuilt by a scan on next use.
    """

    def __init__(self) -> None:
        self.tables: dict[str, TableSummary] = {}
        self.as_of: int | None = None  # None: not built, or not to be trusted
        self._pending: dict[str, dict[int, int]] = {}
        self._began_at: int | None = None

    def note(self, table: str, leaf: int, delta: int) -> None:
        if delta:
            deltas = self._pending.setdefault(table, {})
            deltas[leaf] = deltas.get(leaf, 0) ^ delta

    def begin(self, head: int) -> None:
        self._pending.clear()
        self._began_at = head

    def commit(self, head: int) -> None:
        if self.as_of is not None and self._began_at == self.as_of:
            for table, deltas in self._pending.items():
                summary = self.tables.get(table)
                if summary is None:
                    self.as_of = None
                    break
                for leaf, delta in deltas.items():
                    summary.add(leaf, delta)
            else:
                self.as_of = head
        else:
            self.as_of = None
        self._pending.clear()
        self._began_at = None

    def rollback(self) -> None:
        self._pending.clear()
        self._began_at = None

    def invalidate(self) -> None:
        self.as_of = None
        self.tables.clear()

    def valid_at(self, head: int) -> bool:
        return self.as_of is not None and self.as_of == head


class SiteCodes(dict[SqlValue, int]):
    """Site ordinal (or a batch's site index) -> `site_code` of its id; None -> NO_SITE.

    A plain dict lookup for every site seen before: the capture looks up a
    few per changed row.
    """

    def __init__(self, site: Callable[[int], str]) -> None:
        super().__init__()
        self[None] = NO_SITE
        self._site = site

    def __missing__(self, ordinal: SqlValue) -> int:
        code = site_code(self._site(ordinal))  # type: ignore[arg-type]
        self[ordinal] = code
        return code

    def clear(self) -> None:
        super().clear()
        self[None] = NO_SITE


def shadow_digest(
    hashed_key: int,
    cl: SqlValue,
    cl_hlc: SqlValue,
    cl_site: SqlValue,
    stamps: Sequence[SqlValue],
    codes: Mapping[SqlValue, int],
) -> int:
    """The digest of a shadow row: cl, cl_hlc, cl_site, then h0, s0, ... (sites as `codes` keys).

    The same fields as `digest`, gathered in one pass: the capture calls
    this once per row it changes, so every step counts.
    """
    assert isinstance(cl, int), f"causal length {cl!r} is not an integer"
    fields = [hashed_key, cl, NO_STAMP if cl_hlc is None else cl_hlc, codes[cl_site]]
    if cl % 2 == 1 and stamps:
        hlcs, sites = stamps[0::2], stamps[1::2]
        if hlcs and hlcs[-1] == DEFAULT_CELL_HLC:
            hlcs, sites = trim_default_cells(hlcs, sites)
        fields += [NO_STAMP if hlc is None else hlc for hlc in hlcs]
        fields += map(codes.__getitem__, sites)
    return fields_digest(fields)  # type: ignore[arg-type]
