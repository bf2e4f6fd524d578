"""The SQLite store backend: `SqliteStore` and the modules behind it.

Only the registration point (`syncmesh.store.open`) imports this package
in `src/`; tests may use it directly.  import-linter keeps it so
(pyproject.toml).
"""

from syncmesh.store.sqlite.snapshot import install_snapshot, write_snapshot
from syncmesh.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore", "install_snapshot", "write_snapshot"]
