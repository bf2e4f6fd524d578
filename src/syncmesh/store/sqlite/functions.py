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

from syncmesh.model import SqlValue
from syncmesh.store.summary import DEFAULT_CELL_HLC, key_hash

CAPTURE_PASTS_FUNCTION = "syncmesh_capture_pasts"
FOLD_DIGEST_FUNCTION = "syncmesh_fold_digest"
ROW_DIGEST_FUNCTION = "syncmesh_row_digest"
KEY_HASH_FUNCTION = "syncmesh_key_hash"
VALUES_FP_FUNCTION = "syncmesh_values_fp"
# SQLite allows a function 127 arguments: the slots' text, then a stamp and
# a value per column.  A wider table keeps no fingerprints (NULL: unknown).
VALUES_FP_COLUMNS_MAX = 63


def values_fp_sql(cells: list[tuple[int, str, str]]) -> str:
    """SQL of a row's value fingerprint from (slot, stamp SQL, value SQL) per value column.

    NULL (unknown, never compared) for a table wider than a function's
    arguments allow.
    """
    if len(cells) > VALUES_FP_COLUMNS_MAX:
        return "NULL"
    slots = ",".join(str(slot) for slot, _hlc, _value in cells)
    # Text goes as its bytes: sqlite3 decodes a function's TEXT arguments as
    # strict UTF-8 and fails the call on anything else (model.TEXT_ERRORS).
    arguments = "".join(
        f", {hlc}, CASE typeof({value}) WHEN 'text' THEN CAST({value} AS BLOB) ELSE {value} END"
        for _slot, hlc, value in cells
    )
    return f"{VALUES_FP_FUNCTION}('{slots}'{arguments})"


def values_fingerprint(slots: str, *stamps_and_values: SqlValue) -> int | None:
    """`syncmesh_values_fp('slot,...', h, value, ...)`: a row's value fingerprint.

    Kept in the shadow row (`vf`) by every write the engine stamps or
    applies, so that after a table rebuild the reconcile can tell a row the
    rebuild copied (same values) from one another connection updated
    before the triggers were back (reconcile.py, ADR 0013).  It is the XOR
    of a 64-bit hash of (slot, value) per cell, leaving out cells with the
    default stamp (HLC `DEFAULT_CELL_HLC`: a value ADD COLUMN filled in,
    which nobody wrote), so ADD COLUMN leaves every fingerprint true
    without a pass over the rows.  Values are compared as their text
    (`_comparable`): a rebuild that changes a column's type affinity
    turns 3 into '3' or 3.0, which is no write.
    """
    fingerprint = 0
    if not slots:
        return fingerprint
    try:
        for index, slot in enumerate(slots.split(",")):
            hlc = stamps_and_values[2 * index]
            if hlc is None or hlc == DEFAULT_CELL_HLC:
                continue
            fingerprint ^= key_hash((int(slot), _comparable(stamps_and_values[2 * index + 1])))
    except (ValueError, TypeError, IndexError):
        # A shadow row another program wrote (a stamp that is text): unknown,
        # never compared.  An exception would fail the whole capture (issue 12).
        return None
    return fingerprint


def _comparable(value: SqlValue) -> SqlValue:
    """`value` as the fingerprint sees it: numbers and numeric text alike by their text.

    Text arrives as its bytes (`values_fp_sql`), so a BLOB and a TEXT of
    the same bytes are alike too.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return value


def capture_pasts(text: str | None, mask: int, slots: str, *stamps: int | None) -> str | None:
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
