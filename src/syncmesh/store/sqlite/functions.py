"""Python functions the SQLite backend registers on its connection, and their SQL names.

The capture upsert calls `syncmesh_capture_pasts` for rows whose cells
another site wrote; the hash tree's functions (`syncmesh_fold_digest`,
`syncmesh_row_digest`, `syncmesh_key_hash`) are registered by
`opening.register_functions`, as they close over the store's context.
The capture, the apply and the reconcile call `syncmesh_values_fp` for a
row's value fingerprints (`values_fingerprint`), and the reconcile after a
table rebuild `syncmesh_values_fp_changes` (`fingerprint_changes`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from xxhash import xxh3_64_intdigest, xxh32_digest

from syncmesh.model import TEXT_ERRORS, SqlValue
from syncmesh.store.sqlite.ddl import ALL_COLUMNS, MASK_COLUMNS_MAX
from syncmesh.store.summary import DEFAULT_CELL_HLC, key_hash_of_bytes

CAPTURE_PASTS_FUNCTION = "syncmesh_capture_pasts"
FOLD_DIGEST_FUNCTION = "syncmesh_fold_digest"
ROW_DIGEST_FUNCTION = "syncmesh_row_digest"
KEY_HASH_FUNCTION = "syncmesh_key_hash"
TEXT_KEY_HASH_FUNCTION = "syncmesh_text_key_hash"
NEW_ROW_DIGEST_FUNCTION = "syncmesh_new_row_digest"
VALUES_FP_FUNCTION = "syncmesh_values_fp"
VALUES_FP_CHANGES_FUNCTION = "syncmesh_values_fp_changes"
CELL_FP_FUNCTION = "syncmesh_cell_fp"


def values_fp_sql(cells: list[tuple[int, str, str]]) -> str:
    """SQL of a row's value fingerprints from (slot, stamp SQL, value SQL) per value column.

    The row's value fingerprints are kept in the shadow row (`vf`) by every
    write the engine stamps or applies, so that after a table rebuild the
    reconcile can tell a row the rebuild copied (same values) from one
    another connection updated before the triggers were back, and which
    of its cells (reconcile.py, ADR 0013).  SQL builds one text of a
    segment per slot, from slot 0 to the last one in `cells`, separated by
    commas (`cells_text_sql`), and `values_fingerprint` hashes each
    segment: the per-cell work on values stays in SQLite's C, one Python
    call per row.
    """
    return f"{VALUES_FP_FUNCTION}({cells_text_sql(cells)})"


def cells_text_sql(cells: list[tuple[int, str, str]]) -> str:
    """SQL of the text a row's value fingerprints are made of: one segment per slot.

    Slot s's segment is `:` and the hex of its value, `-` for NULL, and
    empty where there is no cell to compare: a slot not in `cells` (retired,
    or a column the caller leaves out) and a cell with the default stamp
    (HLC `DEFAULT_CELL_HLC`, a value ADD COLUMN filled in, which nobody
    wrote, so ADD COLUMN leaves every fingerprint true without a pass over
    the rows).  A value is taken by its text (`hex` of it), with an
    integral REAL as its INTEGER, so a rebuild that changes a column's type
    affinity (3 to '3' or 3.0) is no write.  The segment does not name its
    slot, so equal values hash alike in any column.
    """
    by_slot = {slot: (hlc, value) for slot, hlc, value in cells}
    parts = []
    for slot in range(max(by_slot, default=-1) + 1):
        if slot not in by_slot:
            parts.append("''")
            continue
        hlc, value = by_slot[slot]
        parts.append(
            f"CASE WHEN {hlc} IS NULL OR {hlc} = {DEFAULT_CELL_HLC} THEN ''"
            f" ELSE {cell_segment_sql(value)} END"
        )
    if not parts:
        return "''"
    separated = [f"{part} || ','" for part in parts[:-1]] + parts[-1:]
    return _concatenated(separated)


def cell_segment_sql(value: str) -> str:
    """SQL of one cell's segment of `cells_text_sql`: `:hex(value)`, or `-` for NULL."""
    return (
        f"CASE WHEN {value} IS NULL THEN '-'"
        f" WHEN typeof({value}) = 'real' AND {value} = CAST({value} AS INTEGER)"
        f" THEN ':' || hex(CAST({value} AS INTEGER))"
        f" ELSE ':' || hex({value}) END"
    )


def cell_fingerprint(segment: str) -> bytes:
    """`syncmesh_cell_fp(segment)`: one cell's fingerprint, as `values_fingerprint` stores it.

    The reconcile compares a column a rebuild added with the fingerprints
    of one it dropped, to recognise a rename (reconcile.recognise_renames).
    """
    return xxh32_digest(segment.encode())


def whole_row_text_sql(cells: list[tuple[int, str, str]]) -> str:
    """SQL of the text that syncmesh hashed whole into `vf` before per-cell fingerprints.

    `slot:hex(value),` per cell in slot order (`slot-,` for NULL), cells
    with the default stamp left out: kept to compare rows last written
    before the change (`fingerprint_changes`).
    """
    parts = [
        f"CASE WHEN {hlc} IS NULL OR {hlc} = {DEFAULT_CELL_HLC} THEN ''"
        f" WHEN {value} IS NULL THEN '{slot}-,'"
        f" WHEN typeof({value}) = 'real' AND {value} = CAST({value} AS INTEGER)"
        f" THEN '{slot}:' || hex(CAST({value} AS INTEGER)) || ','"
        f" ELSE '{slot}:' || hex({value}) || ',' END"
        for slot, hlc, value in sorted(cells)
    ]
    return _concatenated(parts) if parts else chr(39) * 2


def _concatenated(parts: list[str]) -> str:
    """`a || b || ...` as a balanced tree: a chain of 500 was deeper than SQLite allows (1,000)."""
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_concatenated(parts[:middle])}) || ({_concatenated(parts[middle:])})"


# A cell's fingerprint: 32 bits of XXH32 of its segment, at offset 4 * slot.
# Four zero bytes mean "no cell here"; a value whose hash is 0 therefore goes
# uncompared, as rarely (2^-32) as one whose change the hash cannot see.
CELL_FP_BYTES = 4
_NO_CELL = bytes(CELL_FP_BYTES)


def values_fingerprint(text: str | None) -> bytes | None:
    """`syncmesh_values_fp(text)`: the row's fingerprints, 4 bytes per slot, from `cells_text_sql`.

    One per cell, not one per row, so that after a rebuild that also
    dropped a column the cells that are left can still be compared (the
    dropped slot's entry is ignored), and the reconcile logs just the cells
    that changed.  Trailing slots without a cell are left out; slots before
    the last cell that hold none (a retired slot below a live one, a
    default-stamped cell) cost their 4 zero bytes.
    """
    if text is None:
        return None
    text = text.rstrip(",")
    if not text:
        return b""
    return b"".join(
        [xxh32_digest(part) if part else _NO_CELL for part in text.encode().split(b",")]
    )


def fingerprint_changes(stored: bytes | int | None, text: str | None, whole: str | None) -> int:
    """`syncmesh_values_fp_changes(vf, text, whole)`: the log mask of the cells that changed.

    `stored` is a row's kept fingerprints, `text` what `cells_text_sql`
    builds from the row now over the table's live slots.  A cell changed
    when both have an entry for its slot and they differ; a slot only one
    side has (a dropped column, a column the rebuild added, a
    default-stamped cell) is not compared.  0 when nothing changed, else
    the union of the changed slots' masks (ALL_COLUMNS if one is beyond the
    mask's bits, `ddl.slot_mask`).  An INTEGER `stored` is a whole-row hash
    from before per-cell fingerprints: compared with the hash of `whole`
    (`whole_row_text_sql`; ALL_COLUMNS if it differs), or not at all when
    `whole` is NULL (a column was dropped: it cannot be compared).
    """
    if stored is None:
        return 0
    if isinstance(stored, int):
        if whole is None:
            return 0
        value = xxh3_64_intdigest(whole.encode())
        return 0 if value - ((value >> 63) << 64) == stored else ALL_COLUMNS
    if text is None:
        return 0
    mask = 0
    for slot, part in enumerate(text.encode().split(b",")):
        kept = stored[CELL_FP_BYTES * slot : CELL_FP_BYTES * (slot + 1)]
        if not part or len(kept) < CELL_FP_BYTES or kept in (_NO_CELL, xxh32_digest(part)):
            continue
        if slot >= MASK_COLUMNS_MAX:
            return ALL_COLUMNS
        mask |= 1 << slot
    return mask


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
