"""The SQLite side: bookkeeping tables, capture, the change feed, applying batches."""

from syncmesh.store.sqlite import ApplyResult, PeerCursor, Store, StoreStatus

__all__ = ["ApplyResult", "PeerCursor", "Store", "StoreStatus"]
