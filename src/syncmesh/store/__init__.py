"""The SQLite side: bookkeeping tables, capture, the change feed, applying batches."""

from syncmesh.store.records import ApplyResult, PeerCursor, StoreStatus
from syncmesh.store.sqlite import Store
from syncmesh.store.tracking import TrackProgress

__all__ = ["ApplyResult", "PeerCursor", "Store", "StoreStatus", "TrackProgress"]
