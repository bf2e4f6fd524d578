"""HTTP routes of a node, and `running_node()` that serves them.

GET /sync/v1     the peer WebSocket (syncmesh.node.session)
POST /sync/v1/verify  hash trees and rows for verify and repair (syncmesh.node.verify)
POST /sync/v1/snapshot, GET /sync/v1/snapshot/ID  a snapshot for a joining node (node.bootstrap)
GET /v1/status   this node: site, seq, tables, vector, peers (JSON)
GET /v1/health   200 when the node is well, 503 with the reasons (syncmesh.node.health)
GET /metrics     the same statistics for Prometheus (syncmesh.api.metrics)
GET /v1/quarantine    rows from peers that could not be applied
GET /v1/throughput    rows captured and applied per interval, the last minutes
GET /v1/conflicts     conflicts this node's merges resolved (?table=&since=&limit=)
GET /v1/openapi.json  the OpenAPI description of these routes
GET /                 the operator dashboard (syncmesh.api.dashboard), which
GET /dashboard/NAME   polls the JSON routes above from the browser

With an API listen address configured, the API routes are served there and
the node's listen address keeps only the peer WebSocket (and /v1/health).

Off loopback (or with `api_require_token`) every API route but /v1/health
and the dashboard's static files asks for `Authorization: Bearer TOKEN`,
compared in constant time and never logged.  With TLS the node's listen
address requires a client certificate of the cluster CA; an API on its own
non-loopback address is served over TLS with the site's certificate.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from syncmesh.api.conflicts import LIMIT_DEFAULT, LIMIT_MAX, conflicts_document, since_ms
from syncmesh.api.dashboard import add_dashboard
from syncmesh.api.metrics import CONTENT_TYPE, render
from syncmesh.api.openapi import openapi_document
from syncmesh.clock import PhysicalClock
from syncmesh.errors import ConfigError, StoreError
from syncmesh.node import Node, NodeConfig, NodeStatistics
from syncmesh.node.config import FleetConfig, Secret, is_loopback
from syncmesh.node.health import assess
from syncmesh.transport import (
    SNAPSHOT_PATH,
    SYNC_PATH,
    VERIFY_PATH,
    Listener,
    WebSocketConnector,
    WebSocketListener,
    server_context,
)
from syncmesh.transport.base import FleetVerifyAsker, FleetVerifyResponder
from syncmesh.transport.stream import FleetLink

if TYPE_CHECKING:
    from syncmesh.transport.nats import NatsAuth

log = logging.getLogger(__name__)

# Served without the token: a health probe, and the dashboard's static page
# and modules, which hold no data (the page sends the token with each request).
PUBLIC_PATHS = frozenset({"/v1/health", "/"})
PUBLIC_PREFIXES = ("/dashboard/",)
PEER_PATHS = frozenset({SYNC_PATH, VERIFY_PATH})


def statistics_json(statistics: NodeStatistics) -> dict[str, Any]:
    return dataclasses.asdict(statistics)


def throughput_json(node: Node) -> dict[str, Any]:
    return {
        # The node's clock, so that a browser on another machine can tell ages.
        "now_ms": node.clock.now_ms(),
        "interval_s": node.config.throughput_interval_s,
        "window_s": node.config.throughput_interval_s * node.config.throughput_samples_max,
        "samples": [dataclasses.asdict(sample) for sample in node.throughput_samples()],
    }


def create_app(node: Node, *, sync: bool = True, api: bool = True) -> web.Application:
    """The node's routes: the peer WebSocket (`sync`) and the HTTP API (`api`)."""

    async def status(_request: web.Request) -> web.Response:
        try:
            statistics = await node.statistics()
        except StoreError as exc:
            reason = f"the store cannot be read: {exc}"
            health_json = {"ok": False, "reasons": [reason]}
            return web.json_response({"error": reason, "health": health_json}, status=503)
        document = statistics_json(statistics)
        # The dashboard's "degraded" and `syncmesh status` read this verdict.
        document["health"] = assess(statistics, node.health, node.config).as_json()
        return web.json_response(document)

    async def health(_request: web.Request) -> web.Response:
        try:
            statistics = await node.statistics()
        except StoreError as exc:
            # Health must answer whatever state the file is in: a store it
            # cannot read is the reason, not a 500.
            reason = f"the store cannot be read: {exc}"
            return web.json_response({"ok": False, "reasons": [reason]}, status=503)
        verdict = assess(statistics, node.health, node.config)
        return web.json_response(verdict.as_json(), status=200 if verdict.ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        body = render(await node.statistics(), now_ms=node.clock.now_ms())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def quarantined(_request: web.Request) -> web.Response:
        return web.json_response(await node.worker.call(node.store.quarantine))

    async def throughput(_request: web.Request) -> web.Response:
        return web.json_response(throughput_json(node))

    async def conflicts(request: web.Request) -> web.Response:
        try:
            table, since, limit = _conflict_filters(request.query, node.clock.now_ms())
        except ValueError as exc:
            return web.json_response({"error": "bad request", "detail": str(exc)}, status=400)
        records = await node.worker.call(
            node.store.conflicts, table=table, since_ms=since, limit=limit
        )
        return web.json_response(conflicts_document(records))

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    middlewares = []
    if api and node.config.token_required():
        assert node.config.api_token is not None, "NodeConfig.check_exposure() refuses this"
        middlewares.append(bearer_token_middleware(node.config.api_token))
    # A verify request may carry a whole branch of leaf hashes per table.
    app = web.Application(middlewares=middlewares, client_max_size=node.config.message_bytes_max)
    if sync:
        # The peer routes: the WebSocket transport hands channels and verify
        # requests to the node through the transport seam's host Protocols.
        websocket = WebSocketListener(
            app, heartbeat_s=node.config.heartbeat_s, frame_bytes_max=node.config.frame_bytes_max
        )
        listener: Listener = websocket
        listener.serve(node, node.verify_server)
        websocket.serve_snapshots(node.snapshot_server)
    app.router.add_get("/v1/health", health)
    if api:
        app.router.add_get("/v1/status", status)
        app.router.add_get("/v1/quarantine", quarantined)
        app.router.add_get("/v1/throughput", throughput)
        app.router.add_get("/v1/conflicts", conflicts)
        app.router.add_get("/v1/openapi.json", openapi)
        app.router.add_get("/metrics", metrics)
        add_dashboard(app)
    return app


def bearer_token_middleware(token: Secret) -> Middleware:
    """401 for an API request without `Authorization: Bearer <token>`."""
    expected = token.reveal().encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        # The peer routes admit by certificate (TLS), not by the API token.
        if (
            path in PUBLIC_PATHS
            or path.startswith(PUBLIC_PREFIXES)
            or path in PEER_PATHS
            or path.startswith(SNAPSHOT_PATH)
        ):
            return await handler(request)
        if not token_matches(request.headers.get("Authorization", ""), expected):
            # The header is never logged: a wrong token may be a right one misplaced.
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <api token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="syncmesh"'},
            )
        return await handler(request)

    return check_token


def token_matches(header: str, expected: bytes) -> bool:
    """True if `header` is `Bearer <expected>`; constant time in the token's content."""
    scheme, _, offered = header.partition(" ")
    # compare_digest runs even for a wrong scheme, so timing tells nothing either way.
    same = hmac.compare_digest(offered.strip().encode(), expected)
    return same and scheme.lower() == "bearer"


def _conflict_filters(query: Mapping[str, str], now_ms: int) -> tuple[str | None, int | None, int]:
    """(table, since in ms, limit) from the query string; ValueError names a bad one."""
    since = query.get("since")
    limit_text = query.get("limit", str(LIMIT_DEFAULT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= LIMIT_MAX:
        raise ValueError(f"limit {limit_text!r} is not a number in 1..{LIMIT_MAX}")
    return (
        query.get("table") or None,
        None if since is None else since_ms(since, now_ms),
        int(limit_text),
    )


@asynccontextmanager
async def running_node(
    config: NodeConfig, *, physical_clock: PhysicalClock | None = None
) -> AsyncIterator[Node]:
    """A started node serving on `config.listen_host:listen_port` (port 0: any free port).

    The listening socket is bound before the node starts dialling, so its
    real address (`node.listen`) is known to the caller at once.  A config
    that would expose the node is refused first (ConfigError), before
    anything is bound.
    """
    for warning in config.check_exposure():
        log.warning("%s", warning)
    sock = socket.create_server((config.listen_host, config.listen_port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    node = Node(
        dataclasses.replace(config, listen_port=port),
        physical_clock=physical_clock,
        connector=websocket_connector(config),
        fleet_link=None if config.fleet is None else fleet_link(config.fleet),
        fleet_verify=None if config.fleet is None else fleet_verify_responder(config),
        fleet_verify_asker=None if config.fleet is None else fleet_verify_asker(config),
    )
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
    contexts: list[ssl.SSLContext | None] = [node.server_ssl]
    if separate_api:
        api_tls = config.tls is not None and not is_loopback(config.api_host())
        contexts.append(
            server_context(config.tls, require_client_cert=False)
            if api_tls and config.tls is not None
            else None
        )
    sites = []
    for runner, bound, context in zip(runners, sockets, contexts, strict=True):
        await runner.setup()
        sites.append(web.SockSite(runner, bound, ssl_context=context))
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


def websocket_connector(config: NodeConfig) -> WebSocketConnector:
    """The transport a running node dials with: WebSockets, with TLS from `config.tls`."""
    return WebSocketConnector(
        heartbeat_s=config.heartbeat_s,
        frame_bytes_max=config.frame_bytes_max,
        connect_timeout_s=config.connect_timeout_s,
        tls=config.tls,
    )


def fleet_link(fleet: FleetConfig) -> FleetLink:
    """The fleet transport of `[transport.nats]`: NATS JetStream (the `nats` extra)."""
    try:
        from syncmesh.transport.nats import JetStreamLink
    except ImportError as exc:
        raise _without_nats(exc) from exc
    return JetStreamLink(
        fleet.servers, fleet.cluster, auth=_nats_auth(fleet), replicas=fleet.replicas
    )


def fleet_verify_responder(config: NodeConfig) -> FleetVerifyResponder:
    """What answers fleet sites' verify requests: NATS request/reply (transport.nats_verify)."""
    fleet = config.fleet
    assert fleet is not None
    try:
        from syncmesh.transport.nats_verify import NatsVerifyResponder
    except ImportError as exc:
        raise _without_nats(exc) from exc
    return NatsVerifyResponder(
        fleet.servers,
        fleet.cluster,
        auth=_nats_auth(fleet),
        frame_bytes_max=config.message_bytes_max,
    )


def fleet_verify_asker(config: NodeConfig) -> FleetVerifyAsker:
    """What the periodic verify asks fleet sites through: NATS request/reply."""
    fleet = config.fleet
    assert fleet is not None
    try:
        from syncmesh.transport.nats_verify import NatsVerifyAsker
    except ImportError as exc:
        raise _without_nats(exc) from exc
    return NatsVerifyAsker(fleet.servers, fleet.cluster, auth=_nats_auth(fleet))


def _without_nats(exc: ImportError) -> ConfigError:
    return ConfigError(
        "transport.nats",
        f"the NATS transport needs nats-py: pip install 'syncmesh[nats]' ({exc})",
    )


def _nats_auth(fleet: FleetConfig) -> NatsAuth:
    """The NATS credentials and TLS files of `[transport.nats]` (nats-py imported lazily)."""
    from syncmesh.transport.nats import NatsAuth

    return NatsAuth(
        credentials=fleet.credentials,
        tls_ca=fleet.tls_ca,
        tls_cert=fleet.tls_cert,
        tls_key=fleet.tls_key,
    )


def _runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
