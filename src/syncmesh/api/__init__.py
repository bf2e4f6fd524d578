"""The node's HTTP side: the sync WebSocket endpoint and the status API."""

from syncmesh.api.http import create_app, running_node, statistics_json

__all__ = ["create_app", "running_node", "statistics_json"]
