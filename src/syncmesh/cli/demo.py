"""`syncmesh demo`: three (or more) real nodes on loopback, converging before your eyes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import click

from syncmesh.api import running_node
from syncmesh.node import Node, NodeConfig
from syncmesh.store.open import open_store

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, note BLOB)"
CONVERGE_TIMEOUT_S = 60.0


def _rows_table(rows: list[tuple[object, ...]]) -> list[str]:
    """Rows of `_table` as aligned text: id, name, qty and the note's size (not tuples)."""
    lines = [("id", "name", "qty", "note")]
    for row_id, name, qty, _type, note in rows:
        size = "" if note is None else f"{len(note) if isinstance(note, bytes) else note} bytes"
        lines.append((str(row_id), str(name), str(qty), size))
    widths = [max(len(line[column]) for line in lines) for column in range(4)]
    id_width, name_width, qty_width, _ = widths
    return [
        f"{row_id:<{id_width}}  {name:<{name_width}}  {qty:>{qty_width}}  {note}".rstrip()
        for row_id, name, qty, note in lines
    ]


def _table(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(
            "SELECT id, name, qty, typeof(qty), note FROM items ORDER BY id"
        ).fetchall()


def _prepare(directory: Path, names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        path = directory / f"{name}.db"
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute(SCHEMA)
            connection.execute("INSERT INTO items VALUES ('shared', 'shared row', 0, NULL)")
            connection.execute("INSERT INTO items VALUES ('doomed', 'deleted by b', 0, NULL)")
            connection.commit()
        store = open_store(path)
        try:
            store.init()
            store.track(["items"])
        finally:
            store.close()
        paths.append(path)
    return paths


def _write(path: Path, name: str, rows: int, index: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [
                (uuid.uuid4().hex, f"{name} row {i}", i, bytes([index, i % 256]))
                for i in range(rows)
            ],
        )
        connection.execute(
            "UPDATE items SET name = ?, qty = ? WHERE id = 'shared'", (f"written by {name}", index)
        )
        if index == 2:
            connection.execute("DELETE FROM items WHERE id = 'doomed'")


async def run_demo(count: int, rows: int, *, keep: bool) -> int:
    names = [chr(ord("a") + index) for index in range(count)]
    directory = Path(tempfile.mkdtemp(prefix="syncmesh-demo-"))
    click.echo(f"demo: {count} nodes in {directory}")
    paths = _prepare(directory, names)
    try:
        async with contextlib.AsyncExitStack() as stack:
            nodes: list[Node] = []
            for path in paths:
                # Each node dials every node started before it: a full mesh.
                peers = tuple(f"http://{node.listen}" for node in nodes)
                config = NodeConfig(database_path=str(path), listen_port=0, peer_urls=peers)
                node = await stack.enter_async_context(running_node(config))
                click.echo(
                    f"  node {path.stem}: listening on {node.listen},"
                    f" dialling {list(peers) or 'nobody (others dial it)'}"
                )
                nodes.append(node)
            started = time.monotonic()
            tables: list[list[tuple[object, ...]]] = []
            for index, (name, path) in enumerate(zip(names, paths, strict=True)):
                await asyncio.to_thread(_write, path, name, rows, index + 1)
            click.echo(
                f"  each node inserted {rows} rows and updated row 'shared' at once;"
                " node b deleted row 'doomed'"
            )
            deadline = started + CONVERGE_TIMEOUT_S
            while time.monotonic() < deadline:
                tables = [await asyncio.to_thread(_table, path) for path in paths]
                if (
                    all(table == tables[0] for table in tables)
                    and len(tables[0]) == 1 + rows * count
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                click.echo("demo: the nodes did not converge in time", err=True)
                return 1
            elapsed_ms = (time.monotonic() - started) * 1000
            recorded = [
                len(await node.worker.call(node.store.conflicts, table="items", limit=1_000))
                for node in nodes
            ]
        shared = next(row for row in tables[0] if row[0] == "shared")
        click.echo(
            f"converged: {len(tables[0])} identical rows on all {count} nodes"
            f" in {elapsed_ms:.0f} ms"
        )
        click.echo(
            f"  the concurrent updates of 'shared' resolved everywhere to: {shared[1]!r},"
            f" qty {shared[2]} (last writer wins, per column)"
        )
        counts = ", ".join(f"{name} {count}" for name, count in zip(names, recorded, strict=True))
        click.echo(
            f"  conflicts each node resolved (syncmesh conflicts FILE): {counts}"
            " (an update made after another had arrived is no conflict)"
        )
        gone = all(row[0] != "doomed" for row in tables[0])
        click.echo(f"  row 'doomed' is {'gone on every node' if gone else 'STILL THERE'}")
        click.echo(f"  the first {min(5, len(tables[0]))} rows, the same on every node:")
        for line in _rows_table(tables[0][:5]):
            click.echo(f"    {line}")
        return 0
    finally:
        if keep:
            click.echo(f"files kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
