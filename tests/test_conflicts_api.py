"""Conflicts end to end: two real nodes on loopback, then the API, the metric and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncmesh.api import running_node
from syncmesh.api.conflicts import iso_time, since_ms
from syncmesh.node import Node
from tests.helpers import run_cli, wait_until
from tests.test_node import TIMEOUT_S, config, converged, execute, make_db


async def _get(node: Node, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{node.listen}{path}") as got:
        body = await got.json() if got.content_type == "application/json" else await got.text()
        return got.status, body


async def _recorded(node: Node, count: int) -> bool:
    status, body = await _get(node, "/v1/conflicts")
    return status == 200 and len(body["conflicts"]) == count


async def test_a_conflict_shows_in_the_api_the_metric_and_the_cli(tmp_path: Path) -> None:
    """Goal: an operator sees a conflict a running node resolved, everywhere it is shown.

    Method: the same key is inserted with different values into both files
    before their nodes start (two writes neither node has seen: concurrent).
    Once the nodes hold the same row, the node whose values lost has
    resolved two conflicts (name and qty): GET /v1/conflicts with and
    without filters, the Prometheus counter, /v1/status, and
    `syncmesh conflicts` (text and --json) must all show them.
    """
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    execute(a, "INSERT INTO items VALUES ('k', 'from a', 1)")
    execute(b, "INSERT INTO items VALUES ('k', 'from b', 2)")
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)) as node_b:
        await wait_until(lambda: converged(a, b, rows=1), TIMEOUT_S, "the two nodes to agree")
        with contextlib.closing(sqlite3.connect(a)) as connection:
            (won,) = connection.execute("SELECT name FROM items").fetchone()
        # The node whose values lost held them when the winner came: it resolved both.
        node, path = (node_b, b) if won == "from a" else (node_a, a)
        lost = "from b" if won == "from a" else "from a"
        await wait_until(lambda: _recorded(node, 2), TIMEOUT_S, "the loser's node to record")

        status, body = await _get(node, "/v1/conflicts")
        assert status == 200
        by_column = {entry["column"]: entry for entry in body["conflicts"]}
        assert set(by_column) == {"name", "qty"}
        name = by_column["name"]
        assert (name["table"], name["key"]) == ("items", ["k"])
        assert (name["winner"]["value"], name["loser"]["value"]) == (won, lost)
        sites = {"from a": node_a.store.site_id, "from b": node_b.store.site_id}
        assert (name["winner"]["site"], name["loser"]["site"]) == (sites[won], sites[lost])
        assert name["winner"]["hlc"] > 0
        assert name["resolved_at"].endswith("Z")

        status, body = await _get(node, "/v1/conflicts?table=items&since=1h&limit=1")
        assert (status, len(body["conflicts"])) == (200, 1)
        status, body = await _get(node, "/v1/conflicts?table=other")
        assert (status, body) == (200, {"conflicts": []})
        status, body = await _get(node, "/v1/conflicts?since=2999-01-01T00:00:00Z")
        assert (status, body) == (200, {"conflicts": []})
        for bad in ("since=yesterday", "limit=0", "limit=x"):
            status, body = await _get(node, f"/v1/conflicts?{bad}")
            assert status == 400, bad
            assert body["error"] == "bad request"

        status, statistics = await _get(node, "/v1/status")
        assert statistics["store"]["conflicts"] == {"items": 2}
        status, text = await _get(node, "/metrics")
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples[("syncmesh_conflicts_total", (("table", "items"),))] == 2

        listed = await asyncio.to_thread(run_cli, "conflicts", str(path))
        assert listed.returncode == 0, listed.stderr
        assert f"'{won}' ({sites[won][:8]})" in listed.stdout
        assert f"'{lost}' ({sites[lost][:8]})" in listed.stdout
        assert "2 conflicts, newest first" in listed.stdout
        as_json = await asyncio.to_thread(run_cli, "conflicts", str(path), "--json")
        assert json.loads(as_json.stdout) == (await _get(node, "/v1/conflicts"))[1]
        filtered = await asyncio.to_thread(
            run_cli, "conflicts", str(path), "--table", "items", "--since", "1d", "--limit", "1"
        )
        assert filtered.stdout.count("items") == 1
        refused = await asyncio.to_thread(run_cli, "conflicts", str(path), "--since", "soon")
        assert refused.returncode == 2
        assert "neither a duration" in refused.stderr


def test_since_takes_durations_and_iso_times() -> None:
    now = 1_700_000_000_000
    assert since_ms("15m", now) == now - 15 * 60_000
    assert since_ms("1.5h", now) == now - 5_400_000
    assert since_ms("500ms", now) == now - 500
    assert since_ms("7d", now) == now - 7 * 86_400_000
    assert since_ms("2023-11-14T22:13:20Z", now) == now
    assert since_ms("2023-11-14T22:13:20", now) == now  # no offset: UTC
    assert since_ms("2023-11-15T00:13:20+02:00", now) == now
    assert iso_time(now + 5) == "2023-11-14T22:13:20.005Z"
    for wrong in ("", "soon", "-5m", "5 parsecs", "2023-13-01"):
        with pytest.raises(ValueError, match="neither a duration"):
            since_ms(wrong, now)
