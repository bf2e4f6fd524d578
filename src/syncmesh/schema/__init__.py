"""Reading table definitions; the SQL text of shadow tables and triggers."""

from syncmesh.schema.ddl import (
    BOOKKEEPING_DDL,
    capture_triggers,
    drop_trigger_statements,
    quote_identifier,
    shadow_columns,
    shadow_ddl,
    shadow_name,
)
from syncmesh.schema.introspect import fingerprint, read_table_spec, table_warnings

__all__ = [
    "BOOKKEEPING_DDL",
    "capture_triggers",
    "drop_trigger_statements",
    "fingerprint",
    "quote_identifier",
    "read_table_spec",
    "shadow_columns",
    "shadow_ddl",
    "shadow_name",
    "table_warnings",
]
