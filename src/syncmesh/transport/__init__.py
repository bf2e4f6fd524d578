"""Frames over WebSockets: the only module that knows aiohttp's client side."""

from syncmesh.transport.tls import (
    TlsFiles,
    client_context,
    client_context_for_site,
    server_context,
    site_name_of,
    valid_site_name,
)
from syncmesh.transport.websocket import (
    SYNC_PATH,
    Channel,
    ClosedError,
    WebSocketChannel,
    accept,
    dial,
    peer_address,
    peer_site,
)

__all__ = [
    "SYNC_PATH",
    "Channel",
    "ClosedError",
    "TlsFiles",
    "WebSocketChannel",
    "accept",
    "client_context",
    "client_context_for_site",
    "dial",
    "peer_address",
    "peer_site",
    "server_context",
    "site_name_of",
    "valid_site_name",
]
