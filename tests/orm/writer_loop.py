"""The loop of an ORM writer process; copied into each site's project directory.

This file is not imported by the test suite: `rollout.py` copies it next to
the project's `writer.py` (Django or SQLAlchemy), which supplies the
ORM's insert, update and delete.  The writer writes until a stop file
appears, at most `writes_max` writes and `seconds_max` seconds, and
appends every committed write to its record (JSON lines), after the
commit: the record is what the writer knows it wrote, and the test checks
every site against it.  Each writer writes only rows it inserted, so the
record alone decides each row's expected values.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

Values = dict[str, object]
INSERT_RATIO = 0.5
DELETE_RATIO = 0.05


def own_rows(record_path: str, tables: list[str]) -> dict[str, list[str]]:
    """The live rows this site's writers inserted before (earlier runs), per table."""
    rows: dict[str, list[str]] = {table: [] for table in tables}
    if not os.path.exists(record_path):
        return rows
    with open(record_path, encoding="utf-8") as record:
        for line in record:
            entry = json.loads(line)
            keys = rows.get(entry["table"])
            if keys is None:
                continue
            if entry["op"] == "insert":
                keys.append(entry["id"])
            elif entry["op"] == "delete":
                keys.remove(entry["id"])
    return rows


def run(
    *,
    site: str,
    record_path: str,
    stop_path: str,
    schema: dict[str, dict[str, str]],
    insert: Callable[[str, Values], str],
    update: Callable[[str, str, Values], None],
    delete: Callable[[str, str], None],
    writes_max: int,
    seconds_max: float,
    pause_s: float,
) -> None:
    """Write to the tables of `schema` ({table: {value column: "int" | "text"}})."""
    rng = random.Random(f"{site}-{os.getpid()}")
    rows = own_rows(record_path, sorted(schema))
    deadline = time.monotonic() + seconds_max
    tag = f"{site}{os.getpid() % 10_000}"
    written = 0
    with open(record_path, "a", encoding="utf-8") as record:
        while written < writes_max and time.monotonic() < deadline:
            if os.path.exists(stop_path):
                break
            table = rng.choice(sorted(schema))
            columns = schema[table]
            keys = rows[table]

            def value(column: str, kind: str, serial: int = written) -> object:
                if kind == "int":
                    return rng.randrange(1_000_000)
                return f"{tag}-{serial}-{column}"

            roll = rng.random()
            if not keys or roll < INSERT_RATIO:
                values = {column: value(column, kind) for column, kind in columns.items()}
                key = insert(table, values)
                keys.append(key)
                entry: dict[str, object] = {"op": "insert", "id": key, "values": values}
            elif roll < 1 - DELETE_RATIO and columns:
                key = rng.choice(keys)
                chosen = rng.sample(sorted(columns), rng.randint(1, len(columns)))
                values = {column: value(column, columns[column]) for column in chosen}
                update(table, key, values)
                entry = {"op": "update", "id": key, "values": values}
            else:
                key = keys.pop(rng.randrange(len(keys)))
                delete(table, key)
                entry = {"op": "delete", "id": key}
            entry["table"] = table
            record.write(json.dumps(entry) + "\n")
            record.flush()
            written += 1
            time.sleep(pause_s)
    print(f"writer {site}: {written} writes", flush=True)
