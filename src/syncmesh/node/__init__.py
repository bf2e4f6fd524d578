"""Wiring: the store worker, peer sessions, dialers, the capture loop, lifecycle."""

from syncmesh.node.config import NodeConfig
from syncmesh.node.node import Node, NodeStatistics, PeerStatistics

__all__ = ["Node", "NodeConfig", "NodeStatistics", "PeerStatistics"]
