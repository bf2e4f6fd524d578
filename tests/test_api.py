"""The HTTP API: described by its OpenAPI document, and servable on its own address."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp

from syncmesh.api import create_app, running_node
from syncmesh.api.http import websocket_connector
from syncmesh.api.openapi import openapi_document
from syncmesh.node import Node
from syncmesh.transport import SNAPSHOT_PATH, SYNC_PATH, VERIFY_PATH
from tests.helpers import wait_until
from tests.test_node import TIMEOUT_S, config, converged, execute, make_db


def _paths(app_routes: object) -> set[str]:
    return {resource.canonical for resource in app_routes}  # type: ignore[attr-defined]


async def test_the_openapi_document_describes_exactly_the_api_routes(tmp_path: Path) -> None:
    settings = config(make_db(tmp_path / "a.db"))
    node = Node(settings, connector=websocket_connector(settings))
    try:
        served = _paths(create_app(node).router.resources())
        api_only = _paths(create_app(node, sync=False).router.resources())
    finally:
        node.store.close()
        node.worker.shutdown()
    assert served - {SYNC_PATH} == set(openapi_document()["paths"])
    # The verify and snapshot routes are peer routes: on the node's listen address only.
    peer_routes = {VERIFY_PATH, SNAPSHOT_PATH, SNAPSHOT_PATH + "/{id}"}
    assert api_only == set(openapi_document()["paths"]) - peer_routes


async def test_the_api_can_listen_apart_from_the_sync_port(tmp_path: Path) -> None:
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    separate = dataclasses.replace(config(a), api_listen_host="127.0.0.1", api_listen_port=0)
    async with running_node(separate) as node_a, running_node(config(b, node_a)):
        assert node_a.api_listen != node_a.listen
        execute(a, "INSERT INTO items VALUES ('x', 'a', 1)")
        await wait_until(lambda: converged(a, b, rows=1), TIMEOUT_S, "sync via the sync port")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{node_a.api_listen}/v1/status") as response:
                assert response.status == 200
                assert (await response.json())["site_id"] == node_a.store.site_id
            async with http.get(f"http://{node_a.listen}/v1/status") as response:
                assert response.status == 404
            async with http.get(f"http://{node_a.listen}/v1/health") as response:
                assert response.status == 200
            async with http.get(f"http://{node_a.api_listen}/v1/quarantine") as response:
                assert await response.json() == []
            async with http.get(f"http://{node_a.api_listen}/v1/openapi.json") as response:
                assert (await response.json())["openapi"].startswith("3.1")


async def test_throughput_counts_captured_and_applied_rows(tmp_path: Path) -> None:
    """Goal: /v1/throughput shows a write where it was made and where it was applied."""
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    async with running_node(config(a)) as node_a, running_node(config(b, node_a)) as node_b:
        execute(a, "INSERT INTO items VALUES ('x', 'a', 1)")
        execute(a, "INSERT INTO items VALUES ('y', 'a', 2)")
        await wait_until(lambda: converged(a, b, rows=2), TIMEOUT_S, "the rows to reach b")

        async def totals(node: Node) -> tuple[int, int]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://{node.api_listen}/v1/throughput") as response,
            ):
                body = await response.json()
            assert body["interval_s"] == node.config.throughput_interval_s
            samples = body["samples"]
            assert 1 <= len(samples) <= node.config.throughput_samples_max
            return (
                sum(sample["captured_rows"] for sample in samples),
                sum(sample["applied_rows"] for sample in samples),
            )

        assert await totals(node_a) == (2, 0)
        assert await totals(node_b) == (0, 2)


async def test_the_dashboard_is_served_with_its_files_and_nothing_else(tmp_path: Path) -> None:
    """Goal: `/` and its scripts load from the node, typed, under a same-origin CSP."""
    node_config = config(make_db(tmp_path / "a.db"))
    async with running_node(node_config) as node, aiohttp.ClientSession() as http:
        base = f"http://{node.api_listen}"
        async with http.get(f"{base}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            page = await response.text()
        assert 'src="dashboard/app.js"' in page
        assert "http://" not in page  # no CDN, nothing from elsewhere
        assert "https://" not in page
        for name, content_type in (
            ("app.js", "text/javascript"),
            ("api.js", "text/javascript"),
            ("style.css", "text/css"),
        ):
            async with http.get(f"{base}/dashboard/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == content_type
        for missing in ("nope.js", "__init__.py", "..%2F__init__.py"):
            async with http.get(f"{base}/dashboard/{missing}") as response:
                assert response.status == 404, missing
