"""The merge rules: pure functions on row states, no I/O."""

from syncmesh.merge.rows import (
    join_cells,
    join_rows,
    missing_rows,
    value_order_key,
)

__all__ = ["join_cells", "join_rows", "missing_rows", "value_order_key"]
