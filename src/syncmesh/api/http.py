"""HTTP routes of a node, and `running_node()` that serves them.

GET /sync/v1     the peer WebSocket (syncmesh.node.session)
GET /v1/status   this node: site, seq, tables, vector, peers (JSON)
GET /v1/health   200 when the node runs (for load balancers, systemd)
GET /metrics     the same statistics for Prometheus (syncmesh.api.metrics)
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from syncmesh.api.metrics import CONTENT_TYPE, render
from syncmesh.node import Node, NodeConfig, NodeStatistics
from syncmesh.transport import SYNC_PATH


def statistics_json(statistics: NodeStatistics) -> dict[str, Any]:
    return dataclasses.asdict(statistics)


def create_app(node: Node) -> web.Application:
    async def status(_request: web.Request) -> web.Response:
        return web.json_response(statistics_json(await node.statistics()))

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics(_request: web.Request) -> web.Response:
        body = render(await node.statistics())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get(SYNC_PATH, node.accept)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def running_node(config: NodeConfig) -> AsyncIterator[Node]:
    """A started node serving on `config.listen_host:listen_port` (port 0: any free port).

    The listening socket is bound before the node starts dialling, so its
    real address (`node.listen`) is known to the caller at once.
    """
    sock = socket.create_server((config.listen_host, config.listen_port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    node = Node(dataclasses.replace(config, listen_port=port))
    node.listen = f"{host}:{port}"
    app = create_app(node)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.SockSite(runner, sock)
    try:
        await node.start()
        await site.start()
        yield node
    finally:
        await node.close_sessions()
        await runner.cleanup()
        await node.stop()
