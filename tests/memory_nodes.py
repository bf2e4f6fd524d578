"""Nodes in one process on an in-memory network (syncmesh.transport.memory).

`Node` is the same class a real node runs; only its connector and listener
differ.  For tests of the node's logic where real sockets add nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from syncmesh.clock import PhysicalClock
from syncmesh.node import Node, NodeConfig
from syncmesh.transport import Listener
from syncmesh.transport.memory import MemoryNetwork


def memory_url(name: str) -> str:
    return f"memory://{name}"


def memory_config(path: Path, *dials: str, **overrides: Any) -> NodeConfig:
    """A node's configuration that dials the nodes named `dials` on the network."""
    settings: dict[str, Any] = {"heartbeat_s": 1.0, "backoff_max_s": 0.5}
    settings.update(overrides)
    return NodeConfig(
        database_path=str(path),
        peer_urls=tuple(memory_url(name) for name in dials),
        **settings,
    )


@contextlib.asynccontextmanager
async def memory_nodes(
    network: MemoryNetwork,
    configs: dict[str, NodeConfig],
    *,
    physical_clock: PhysicalClock | None = None,
) -> AsyncIterator[dict[str, Node]]:
    """Started nodes, each listening at `memory://NAME`; stopped on exit."""
    nodes: dict[str, Node] = {}
    try:
        for name, config in configs.items():
            node = Node(config, connector=network.connector(), physical_clock=physical_clock)
            listener: Listener = network.listener(memory_url(name))
            listener.serve(node, node.verify_server)
            nodes[name] = node
        for node in nodes.values():
            await node.start()
        yield nodes
    finally:
        for name, node in nodes.items():
            network.unlisten(memory_url(name))
            await node.stop()
