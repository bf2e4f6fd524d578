"""Python functions the SQLite backend registers on its connection, and their SQL names.

The capture upsert calls `syncmesh_capture_pasts` for rows whose cells
another site wrote; the hash tree's functions (`syncmesh_fold_digest`,
`syncmesh_row_digest`, `syncmesh_key_hash`) are registered by
`opening.register_functions`, as they close over the store's context.
The capture, the apply and the reconcile call `syncmesh_values_fp` for a
row's value fingerprint (`values_fingerprint`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from xxhash import xxh3_64_intdigest

from syncmesh.model import TEXT_ERRORS, SqlValue
from syncmesh.store.summary import DEFAULT_CELL_HLC, key_hash_of_bytes

CAPTURE_PASTS_FUNCTION = "syncmesh_capture_pasts"
FOLD_DIGEST_FUNCTION = "syncmesh_fold_digest"
ROW_DIGEST_FUNCTION = "syncmesh_row_digest"
KEY_HASH_FUNCTION = "syncmesh_key_hash"
TEXT_KEY_HASH_FUNCTION = "syncmesh_text_key_hash"
NEW_ROW_DIGEST_FUNCTION = "syncmesh_new_row_digest"
VALUES_FP_FUNCTION = "syncmesh_values_fp"


def values_fp_sql(cells: list[tuple[int, str, str]]) -> str:
    """SQL of a row's value fingerprint from (slot, stamp SQL, value SQL) per value column.

    The row's value fingerprint is kept in the shadow row (`vf`) by every
    write the engine stamps or applies, so that after a table rebuild the
    reconcile can tell a row the rebuild copied (same values) from one
    another connection updated before the triggers were back (reconcile.py,
    ADR 0013).  SQL builds one text of `slot:hex(value),` per cell, in slot
    order, and `values_fingerprint` hashes it: the per-cell work stays in
    SQLite's C, one Python call per row.  Left out: cells with the default
    stamp (HLC `DEFAULT_CELL_HLC`, a value ADD COLUMN filled in, which
    nobody wrote), so ADD COLUMN leaves every fingerprint true without a
    pass over the rows.  A value is taken by its text (`hex` of it), with
    an integral REAL as its INTEGER, so a rebuild that changes a column's
    type affinity (3 to '3' or 3.0) is no write; NULL is `-`.
    """
    parts = [
        f"CASE WHEN {hlc} IS NULL OR {hlc} = {DEFAULT_CELL_HLC} THEN ''"
        f" WHEN {value} IS NULL THEN '{slot}-,'"
        f" WHEN typeof({value}) = 'real' AND {value} = CAST({value} AS INTEGER)"
        f" THEN '{slot}:' || hex(CAST({value} AS INTEGER)) || ','"
        f" ELSE '{slot}:' || hex({value}) || ',' END"
        for slot, hlc, value in sorted(cells)
    ]
    return f"{VALUES_FP_FUNCTION}({_concatenated(parts) if parts else chr(39) * 2})"


def _concatenated(parts: list[str]) -> str:
    """`a || b || ...` as a balanced tree: a chain of 500 was deeper than SQLite allows (1,000)."""
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_concatenated(parts[:middle])}) || ({_concatenated(parts[middle:])})"


def values_fingerprint(text: str | None) -> int | None:
    """`syncmesh_values_fp(text)`: the 64-bit hash of the text `values_fp_sql` built."""
    if text is None:
        return None
    value = xxh3_64_intdigest(text.encode())
    return value - (1 << 64) if value >= 1 << 63 else value  # SQLite's integers are signed


def text_key_hash(*pairs: SqlValue) -> int:
    """`syncmesh_text_key_hash(is_text, value, ...)`: `summary.key_hash` of a key, from SQL.

    Per key column, whether its value is TEXT, then the value, TEXT cast to
    a BLOB: sqlite3 hands a function TEXT only if it is valid UTF-8, and a
    key may be any bytes (`model.TEXT_ERRORS`).  The hash is the one the
    rest of the store computes of the str its connection reads
    (`summary.key_hash_of_bytes`).  The set-based capture calls it for keys
    new here (`CaptureSql.fold_sql`).
    """
    return key_hash_of_bytes(pairs)


# SQLite allows a function call 127 arguments (SQLITE_MAX_FUNCTION_ARG), and
# the functions above take two per value column: a table with more than about
# 60 could not be tracked.  Their calls on wider tables pass those arguments in
# groups, each packed into one blob by `syncmesh_fields`, to the function's
# `_packed` twin, which unpacks them (`call_sql`, `register_packed`).
FIELDS_FUNCTION = "syncmesh_fields"
PACKED_SUFFIX = "_packed"
ARGUMENTS_MAX = 100


def call_sql(function: str, fixed: Sequence[str], per_column: Sequence[str]) -> str:
    """SQL calling `function(*fixed, *per_column)`, in packed groups if they are many."""
    if len(fixed) + len(per_column) <= ARGUMENTS_MAX:
        return f"{function}({', '.join([*fixed, *per_column])})"
    groups = [
        f"{FIELDS_FUNCTION}({', '.join(per_column[start : start + ARGUMENTS_MAX])})"
        for start in range(0, len(per_column), ARGUMENTS_MAX)
    ]
    # (SQLite's 2,000 columns a table make at most 40 groups.)
    assert len(fixed) + len(groups) <= ARGUMENTS_MAX, "more columns than SQLite allows"
    return f"{function}{PACKED_SUFFIX}({', '.join([*fixed, *groups])})"


def pack_fields(*fields: Any) -> bytes:
    """`syncmesh_fields(...)`: the arguments as one blob, for a `_packed` function."""
    return bytes(msgpack.packb(list(fields), unicode_errors=TEXT_ERRORS))


def register_packed(
    connection: sqlite3.Connection,
    name: str,
    function: Callable[..., Any],
    fixed: int,
    *,
    deterministic: bool = False,
) -> None:
    """Register `function` as `name`, and its twin taking packed groups after `fixed` arguments."""

    def unpacking(*arguments: Any) -> Any:
        fields = [
            field
            for group in arguments[fixed:]
            for field in msgpack.unpackb(group, raw=False, unicode_errors=TEXT_ERRORS)
        ]
        return function(*arguments[:fixed], *fields)

    connection.create_function(name, -1, function, deterministic=deterministic)
    connection.create_function(name + PACKED_SUFFIX, -1, unpacking, deterministic=deterministic)


def capture_pasts(text: str | None, mask: int | str, slots: str, *stamps: int | None) -> str | None:
    """`syncmesh_capture_pasts(pasts, mask, 'slot,...', s, h, ...)`: `pasts` after a capture.

    Registered on the store's connection (`opening.connect`) and called by the
    capture upsert only for rows that need it (`CaptureSql.next_pasts_sql`),
    with the value columns' slots (layout.py) as one text, then the site and
    stamp of each (one text, not an argument per slot: SQLite allows a
    function 127 arguments).
    Each value column whose slot is in `mask` gets a new past: everything the
    node knew of the cell (its past and knowledge, and the old value `(s, h)`
    unless it was ours), without our own ordinal 0; its knowledge is emptied.
    """
    mask = int(mask)  # beyond 62 slots, the whole mask comes as decimal text
    pasts = _loaded_pasts(text)
    for index, slot_text in enumerate(slots.split(",")):
        slot = int(slot_text)
        site, hlc = stamps[2 * index], stamps[2 * index + 1]
        if not (mask >> slot) & 1:
            continue
        entry = pasts.pop(str(slot), {})
        past = dict(_stamps_in(entry.get("p")))
        learned = [*_stamps_in(entry.get("k")).items()]
        if site is not None and hlc is not None:
            learned.append((str(site), hlc))
        for ordinal, known in learned:
            if past.get(ordinal, -1) < known:
                past[ordinal] = known
        past.pop("0", None)
        if past:
            pasts[str(slot)] = {"p": past}
    return json.dumps(pasts, separators=(",", ":")) if pasts else None


def _loaded_pasts(text: str | None) -> dict[str, dict[str, object]]:
    """A row's `pasts`, or {} for anything no store wrote (issue 12: one bad row).

    Another program may have written anything there; an exception would fail
    the whole capture, every time.  The capture then rewrites it whole, which
    heals the row (a past only feeds conflict detection, never the merge).
    """
    if text is None:
        return {}
    try:
        loaded = json.loads(text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {slot: entry for slot, entry in loaded.items() if isinstance(entry, dict)}


def _stamps_in(found: object) -> dict[str, int]:
    """A past's or knowledge's {site ordinal: hlc}, leaving out entries that are not."""
    if not isinstance(found, dict):
        return {}
    return {
        ordinal: hlc
        for ordinal, hlc in found.items()
        if type(hlc) is int and str(ordinal).isdigit()
    }
