"""Wiring: the store worker, peer sessions, dialers, the capture loop, lifecycle."""

from syncmesh.node.config import NodeConfig
from syncmesh.node.node import LAG_CHANGES_MAX, Node, NodeStatistics, PeerStatistics

__all__ = ["LAG_CHANGES_MAX", "Node", "NodeConfig", "NodeStatistics", "PeerStatistics"]
