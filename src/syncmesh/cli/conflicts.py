"""`syncmesh conflicts`: the conflict ledger as a table people read, or as JSON.

The JSON is the document `GET /v1/conflicts` serves (`api.conflicts`).  The
table shows values as SQL literals, so 1, 1.0, '1' and x'31' stay apart,
cut to `VALUE_CHARS_MAX` characters, and sites by their first 8 characters.
"""

from __future__ import annotations

import json

import click

from syncmesh.api.conflicts import conflicts_document, iso_time
from syncmesh.model import SqlValue
from syncmesh.store import ConflictRecord, Version

VALUE_CHARS_MAX = 40
SITE_CHARS = 8
HEADERS = ("RESOLVED (UTC)", "TABLE", "KEY", "COLUMN", "WINNER", "LOSER")


def sql_literal(value: SqlValue) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        text = f"x'{value.hex()}'"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''") + "'"
    else:
        text = repr(value)
    return text if len(text) <= VALUE_CHARS_MAX else text[: VALUE_CHARS_MAX - 3] + "..."


def _version(version: Version) -> str:
    return f"{sql_literal(version.value)} ({version.site_id[:SITE_CHARS]})"


def report(records: list[ConflictRecord], *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(conflicts_document(records), indent=2))
        return
    if not records:
        click.echo("no conflicts recorded")
        return
    lines = [
        (
            iso_time(record.resolved_ms).replace("T", " ").removesuffix("Z"),
            record.table,
            ", ".join(sql_literal(value) for value in record.pk),
            record.column,
            _version(record.winner),
            _version(record.loser),
        )
        for record in records
    ]
    widths = [max(len(line[index]) for line in [HEADERS, *lines]) for index in range(len(HEADERS))]
    for line in [HEADERS, *lines]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    click.echo(f"{len(records)} conflicts, newest first (winner: the value every node kept)")
