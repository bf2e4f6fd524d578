"""Frames over WebSockets: the only module that knows aiohttp's client side."""

from syncmesh.transport.websocket import (
    SYNC_PATH,
    Channel,
    ClosedError,
    WebSocketChannel,
    accept,
    dial,
)

__all__ = ["SYNC_PATH", "Channel", "ClosedError", "WebSocketChannel", "accept", "dial"]
