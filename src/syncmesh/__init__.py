"""syncmesh: multi-master sync of SQLite tables between servers.

Each node keeps an ordinary SQLite file; triggers capture every local write,
the node ships deltas to its peers over WebSocket sessions, and merges what it
receives with column-level last-writer-wins on hybrid logical clocks and
causal-length deletes, so every replica converges.
"""

__version__ = "0.1.0"
