"""Backend-neutral schema helpers: quoting an SQL identifier.

The SQLite-specific schema code (the DDL of shadow tables, logs and
triggers; reading a table's definition) lives with the SQLite backend,
in `syncmesh.store.sqlite.ddl` and `syncmesh.store.sqlite.introspect`
(docs/adr/0011-store-seam.md).  What stays here is what code outside the
store needs too: the chaos checkers and the tests read SQLite files with
their own queries.
"""


def quote_identifier(name: str) -> str:
    """`name` as an SQL identifier in double quotes (SQL standard; SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


__all__ = ["quote_identifier"]
