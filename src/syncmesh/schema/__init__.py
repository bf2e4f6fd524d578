"""Reading table definitions; the SQL text of shadow tables, logs and triggers."""

from syncmesh.schema.ddl import (
    ALL_COLUMNS,
    BOOKKEEPING_DDL,
    CONFLICT_LEDGER_DDL,
    OP_CHECK,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE,
    PASTS_COLUMN,
    capture_triggers,
    drop_trigger_statements,
    log_ddl,
    log_name,
    quote_identifier,
    shadow_columns,
    shadow_ddl,
    shadow_name,
)
from syncmesh.schema.introspect import (
    fingerprint,
    read_table_spec,
    table_warnings,
    unique_column_sets,
)

__all__ = [
    "ALL_COLUMNS",
    "BOOKKEEPING_DDL",
    "CONFLICT_LEDGER_DDL",
    "OP_CHECK",
    "OP_DELETE",
    "OP_INSERT",
    "OP_UPDATE",
    "PASTS_COLUMN",
    "capture_triggers",
    "drop_trigger_statements",
    "fingerprint",
    "log_ddl",
    "log_name",
    "quote_identifier",
    "read_table_spec",
    "shadow_columns",
    "shadow_ddl",
    "shadow_name",
    "table_warnings",
    "unique_column_sets",
]
