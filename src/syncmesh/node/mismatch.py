"""What differs between two nodes' tracked tables, named column by column.

A schema mismatch refuses the session (fingerprints differ).  The
fingerprint alone does not say what differs; HELLO's optional `columns`
(each table's columns as "name TYPE", "key" on the primary key's) lets the
refusal name the columns, so an operator need not compare two databases by
hand.  A peer from before sends none, and the message then names only the
tables and fingerprints, as it did.
"""

from __future__ import annotations

from syncmesh.model import TableSpec
from syncmesh.protocol import Hello


def describe_columns(spec: TableSpec) -> tuple[str, ...]:
    """A table's columns as HELLO names them: "name TYPE", and "key" on the primary key's."""
    described = []
    for column, declared in zip(spec.columns, spec.declared_types, strict=True):
        parts = [column, declared.upper()] if declared else [column]
        if column in spec.pk:
            parts.append("key")
        described.append(" ".join(parts))
    return tuple(described)


def column_differences(ours: Hello, theirs: Hello) -> str:
    """What differs, table by table, in words; "" if the peer sent no columns."""
    if not theirs.columns or not ours.columns:
        return ""
    parts = []
    for table in sorted(set(ours.columns) | set(theirs.columns)):
        here, there = ours.columns.get(table), theirs.columns.get(table)
        if here is None:
            parts.append(f"table {table!r} is tracked only at site {theirs.site_id}")
        elif there is None:
            parts.append(f"table {table!r} is tracked only here")
        elif here != there:
            only_here = [column for column in here if column not in there]
            only_there = [column for column in there if column not in here]
            if only_here or only_there:
                parts.append(f"table {table!r} has {only_here} only here, {only_there} only there")
            else:
                parts.append(f"table {table!r} has its columns in another order")
    return "; ".join(parts)
