"""The store: capture, the change feed, applying batches; behind one interface.

`syncmesh.store.base` holds the interface (`Store`, `VerifyStore`,
`ChangeNotifier`), `records` and `summary` the types that cross it, and
`syncmesh.store.open.open_store` picks the backend.  The SQLite backend is
`syncmesh.store.sqlite`; nothing here imports it, so importing this
package never pulls a backend in (docs/adr/0011-store-seam.md).
"""

from syncmesh.store.base import ChangeNotifier, Store, TrackProgress, VerifyStore
from syncmesh.store.records import (
    ApplyResult,
    ConflictRecord,
    LifecycleStatus,
    OrphanPolicy,
    PeerCursor,
    StoreStatus,
    Version,
    null_key_problem,
    null_key_problems,
)

__all__ = [
    "ApplyResult",
    "ChangeNotifier",
    "ConflictRecord",
    "LifecycleStatus",
    "OrphanPolicy",
    "PeerCursor",
    "Store",
    "StoreStatus",
    "TrackProgress",
    "Version",
    "VerifyStore",
    "null_key_problem",
    "null_key_problems",
]
