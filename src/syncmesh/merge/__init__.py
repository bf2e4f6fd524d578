"""The merge rules: pure functions on row states, no I/O."""

from syncmesh.merge.conflicts import (
    CellConflict,
    Knowledge,
    absorb,
    concurrent,
    knows,
    resolve_cells,
    same_value,
)
from syncmesh.merge.rows import (
    join_cells,
    join_rows,
    missing_rows,
    value_order_key,
)

__all__ = [
    "CellConflict",
    "Knowledge",
    "absorb",
    "concurrent",
    "join_cells",
    "join_rows",
    "knows",
    "missing_rows",
    "resolve_cells",
    "same_value",
    "value_order_key",
]
