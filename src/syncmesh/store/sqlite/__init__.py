"""The SQLite store backend: `SqliteStore` and the modules behind it.

Only the registration point (`syncmesh.store.open`) imports this package
in `src/`; tests may use it directly.  import-linter keeps it so
(pyproject.toml).
"""

from syncmesh.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
