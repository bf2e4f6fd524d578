"""Hash-tree summaries of the tracked tables: what `syncmesh verify` compares.

Design: docs/adr/0010-verify-hash-tree.md.  Every shadow row carries two
more integers:

- `lf`, its *leaf*: a hash of the key alone (CRC-32 of the key's msgpack
  bytes, 16 bits), so a key sits in the same leaf on every node;
- `dg`, its *digest*: a 64-bit BLAKE2b of the key, the causal length and
  its stamp, and, for a live row, every cell's stamp (HLC and site id).

A leaf's hash is the XOR of the digests of its rows; 256 leaves make a
branch and the 256 branches make the root.  XOR makes the upkeep O(1) per
changed row: a row that changes moves its leaf by `old dg ^ new dg`, and
both are in hand where the row is written (the capture upsert hands them
to `syncmesh_fold_digest`, the apply path has the old row loaded).  The
tree itself lives in memory (`Summaries`, 512 KB per table) and is rebuilt
from the `lf`/`dg` columns in one scan when it cannot be trusted: when
the Store opens, or when another process (a `syncmesh track`, `repair` or
`quarantine retry`) wrote to the file since.

Digests hash stamps, not values: a stamp names one write, so two nodes
holding the same stamps hold the same values, unless something wrote the
file behind the engine's back.  That is what `--deep` is for: a *deep*
digest adds the values, read from the table itself, and a deep tree is
computed by a scan on both sides (`deep_digest`).
"""

from __future__ import annotations

import functools
import hashlib
import operator
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgpack

from syncmesh.model import SqlValue

LEAF_BITS = 16
LEAVES = 1 << LEAF_BITS
BRANCHES = 256
LEAVES_PER_BRANCH = LEAVES // BRANCHES
DIGEST_BYTES = 8

FOLD_DIGEST_FUNCTION = "syncmesh_fold_digest"
ROW_DIGEST_FUNCTION = "syncmesh_row_digest"
KEY_LEAF_FUNCTION = "syncmesh_key_leaf"

_pack = msgpack.Packer(use_bin_type=True).pack


def key_bytes(key: Sequence[SqlValue]) -> bytes:
    """The key's canonical bytes: msgpack keeps 1, 1.0, '1' and b'1' apart."""
    return _pack(list(key))


def leaf_of(key_data: bytes) -> int:
    return zlib.crc32(key_data) & (LEAVES - 1)


def _signed(data: bytes) -> int:
    return int.from_bytes(data, "little", signed=True)


def digest(
    key_data: bytes,
    cl: int,
    cl_hlc: int | None,
    cl_site: str | None,
    cells: Sequence[int | str | None] | None,
) -> int:
    """A row's digest.  `cells`: (hlc, site id) per value column, flat; None if dead.

    A deleted row's cells are left out: a tombstone ships no cells, so a
    node that only ever saw the delete holds none, and still agrees.
    """
    payload = _pack([key_data, cl, cl_hlc, cl_site, None if cl % 2 == 0 else list(cells or ())])
    return _signed(hashlib.blake2b(payload, digest_size=DIGEST_BYTES).digest())


def deep_digest(stamps_digest: int, alive: bool, values: Sequence[SqlValue]) -> int:
    """The digest of a row with its values (a dead row has none: its stamps digest)."""
    if not alive:
        return stamps_digest
    payload = _pack([stamps_digest, list(values)])
    return _signed(hashlib.blake2b(payload, digest_size=DIGEST_BYTES).digest())


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


def summary_of(pairs: Iterable[tuple[int, int]]) -> TableSummary:
    """The tree of (leaf, digest) pairs."""
    summary = TableSummary()
    leaves = summary.leaves
    for leaf, row_digest in pairs:
        leaves[leaf] ^= row_digest
    return summary


class Summaries:
    """The in-memory trees of one Store, kept in step with its own commits.

    The trees describe the file as of `as_of` (the feed's head seq).  A
    write transaction of this Store records leaf deltas in `pending`; they
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


SiteOf = Callable[[int], str]


def stamp_cells(stamps: Sequence[SqlValue], site_of: SiteOf) -> list[int | str | None]:
    """(hlc, site ordinal) pairs, flat, as (hlc, site id) pairs, flat."""
    cells: list[int | str | None] = []
    for at in range(0, len(stamps), 2):
        hlc, ordinal = stamps[at], stamps[at + 1]
        cells.append(hlc if isinstance(hlc, int) else None)
        cells.append(site_of(ordinal) if isinstance(ordinal, int) else None)
    return cells


def shadow_digest(
    key: Sequence[SqlValue],
    cl: SqlValue,
    cl_hlc: SqlValue,
    cl_site: SqlValue,
    stamps: Sequence[SqlValue],
    site_of: SiteOf,
) -> tuple[int, int]:
    """(leaf, digest) of a shadow row: key, cl, cl_hlc, cl_site (ordinal), h0, s0, ..."""
    assert isinstance(cl, int), f"causal length {cl!r} is not an integer"
    data = key_bytes(key)
    return leaf_of(data), digest(
        data,
        cl,
        cl_hlc if isinstance(cl_hlc, int) else None,
        site_of(cl_site) if isinstance(cl_site, int) else None,
        stamp_cells(stamps, site_of),
    )
