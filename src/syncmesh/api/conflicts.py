"""The conflict ledger as JSON, and the `since` filter people type.

Shared by `GET /v1/conflicts` and `syncmesh conflicts --json`, so both
print the same document:

    {"conflicts": [{"table", "key", "column",
                    "winner": {"value", "hlc", "site"},
                    "loser": {"value", "hlc", "site"},
                    "resolved_at"}, ...]}

Values keep what JSON can hold; a blob is {"$blob": "<hex>"} and an
infinite REAL {"$real": "inf"} (`model.json_safe`).  `resolved_at` is
ISO 8601 in UTC, to the millisecond.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from syncmesh.model import json_safe
from syncmesh.store import ConflictRecord, Version

LIMIT_DEFAULT = 100
LIMIT_MAX = 100_000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def since_ms(text: str, now_ms: int) -> int:
    """The wall-clock ms that `text` names: a duration back from now, or a time.

    `15m`, `2h`, `7d`, `90s`, `500ms`, `1w`; or ISO 8601 such as
    `2024-05-01`, `2024-05-01T12:00:00Z`, `2024-05-01T14:00+02:00` (UTC
    when no offset is given).  ValueError says what is wrong.
    """
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        return now_ms - int(float(duration[1]) * _UNIT_MS[duration[2]])
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (15m, 2h, 7d) nor an ISO 8601 time"
            " (2024-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def iso_time(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version(version: Version) -> dict[str, Any]:
    return {"value": json_safe(version.value), "hlc": version.hlc, "site": version.site_id}


def conflict_json(record: ConflictRecord) -> dict[str, Any]:
    return {
        "table": record.table,
        "key": [json_safe(value) for value in record.pk],
        "column": record.column,
        "winner": _version(record.winner),
        "loser": _version(record.loser),
        "resolved_at": iso_time(record.resolved_ms),
    }


def conflicts_document(records: list[ConflictRecord]) -> dict[str, Any]:
    return {"conflicts": [conflict_json(record) for record in records]}
