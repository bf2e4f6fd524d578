"""The SQLite side: bookkeeping tables, capture, the change feed, applying batches."""

from syncmesh.store.records import ApplyResult, PeerCursor, StoreStatus
from syncmesh.store.sqlite import Store

__all__ = ["ApplyResult", "PeerCursor", "Store", "StoreStatus"]
