"""The SQLite side: bookkeeping tables, capture, the change feed, applying batches."""

from syncmesh.store.records import (
    ApplyResult,
    ConflictRecord,
    PeerCursor,
    StoreStatus,
    Version,
)
from syncmesh.store.sqlite import Store
from syncmesh.store.tracking import TrackProgress

__all__ = [
    "ApplyResult",
    "ConflictRecord",
    "PeerCursor",
    "Store",
    "StoreStatus",
    "TrackProgress",
    "Version",
]
