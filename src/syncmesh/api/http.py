"""HTTP routes of a node, and `running_node()` that serves them.

GET /sync/v1     the peer WebSocket (syncmesh.node.session)
GET /v1/status   this node: site, seq, tables, vector, peers (JSON)
GET /v1/health   200 when the node runs (for load balancers, systemd)
GET /metrics     the same statistics for Prometheus (syncmesh.api.metrics)
GET /v1/quarantine    rows from peers that could not be applied
GET /v1/throughput    rows captured and applied per interval, the last minutes
GET /v1/openapi.json  the OpenAPI description of these routes
GET /                 the operator dashboard (syncmesh.api.dashboard), which
GET /dashboard/NAME   polls the JSON routes above from the browser

With an API listen address configured, the API routes are served there and
the node's listen address keeps only the peer WebSocket (and /v1/health).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from syncmesh.api.dashboard import add_dashboard
from syncmesh.api.metrics import CONTENT_TYPE, render
from syncmesh.api.openapi import openapi_document
from syncmesh.clock import PhysicalClock
from syncmesh.node import Node, NodeConfig, NodeStatistics
from syncmesh.transport import SYNC_PATH


def statistics_json(statistics: NodeStatistics) -> dict[str, Any]:
    return dataclasses.asdict(statistics)


def throughput_json(node: Node) -> dict[str, Any]:
    return {
        # The node's clock, so that a browser on another machine can tell ages.
        "now_ms": time.time_ns() // 1_000_000,
        "interval_s": node.config.throughput_interval_s,
        "window_s": node.config.throughput_interval_s * node.config.throughput_samples_max,
        "samples": [dataclasses.asdict(sample) for sample in node.throughput_samples()],
    }


def create_app(node: Node, *, sync: bool = True, api: bool = True) -> web.Application:
    """The node's routes: the peer WebSocket (`sync`) and the HTTP API (`api`)."""

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(statistics_json(await node.statistics()))

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics(_request: web.Request) -> web.Response:
        body = render(await node.statistics())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def quarantined(_request: web.Request) -> web.Response:
        return web.json_response(await node.worker.call(node.store.quarantine))

    async def throughput(_request: web.Request) -> web.Response:
        return web.json_response(throughput_json(node))

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    app = web.Application()
    if sync:
        app.router.add_get(SYNC_PATH, node.accept)
    app.router.add_get("/v1/health", health)
    if api:
        app.router.add_get("/v1/status", status)
        app.router.add_get("/v1/quarantine", quarantined)
        app.router.add_get("/v1/throughput", throughput)
        app.router.add_get("/v1/openapi.json", openapi)
        app.router.add_get("/metrics", metrics)
        add_dashboard(app)
    return app


@asynccontextmanager
async def running_node(
    config: NodeConfig, *, physical_clock: PhysicalClock | None = None
) -> AsyncIterator[Node]:
    """A started node serving on `config.listen_host:listen_port` (port 0: any free port).

    The listening socket is bound before the node starts dialling, so its
    real address (`node.listen`) is known to the caller at once.
    """
    sock = socket.create_server((config.listen_host, config.listen_port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    node = Node(dataclasses.replace(config, listen_port=port), physical_clock=physical_clock)
    node.listen = f"{host}:{port}"
    separate_api = config.api_listen_host is not None
    runners = [_runner(create_app(node, api=not separate_api))]
    sockets = [sock]
    if separate_api:
        assert config.api_listen_host is not None
        api_sock = socket.create_server((config.api_listen_host, config.api_listen_port))
        api_host, api_port = api_sock.getsockname()[:2]
        node.api_listen = f"{api_host}:{api_port}"
        runners.append(_runner(create_app(node, sync=False)))
        sockets.append(api_sock)
    else:
        node.api_listen = node.listen
    sites = []
    for runner, bound in zip(runners, sockets, strict=True):
        await runner.setup()
        sites.append(web.SockSite(runner, bound))
    try:
        await node.start()
        for site in sites:
            await site.start()
        yield node
    finally:
        await node.close_sessions()
        for runner in runners:
            await runner.cleanup()
        await node.stop()


def _runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
