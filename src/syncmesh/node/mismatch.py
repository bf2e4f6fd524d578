"""How two nodes' tracked tables compare: what to send, whose vector to trust, what to tell.

A schema difference never refuses a session (docs/adr/0013-schema-evolution.md):
during a rolling deploy one site has a table, a column or a new name that
another does not have yet, and every table they share must keep syncing.
From the two HELLOs, `compare` decides three things:

- which of our tables the peer tracks (`peer_tables`, for
  `Store.read_batch(tables=...)`): its table names and their former names,
  so that a table renamed at one site is still sent to the other;
- whether we adopt the vector claims of the peer's batches
  (`adopt_vector`): only when its tables and columns cover ours, matching by
  name or former name either way round.  A peer without one of our tables
  or columns cannot have relayed writes to it, so its claims about them are
  no evidence, and adopting them would let us tell a third node that we
  hold writes we never got;
- what differs, in words naming the table and the columns (`differences`),
  logged once per session at INFO and shown in status per peer: never as a
  refusal.

A peer from before issue 14 sends no `schema`: equal fingerprints then mean
the same tables and columns (it covers ours); otherwise it does not, and
its HELLO's optional `cols` name the differing columns if it sent them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from syncmesh.model import TableSpec
from syncmesh.protocol import Hello, TableSchema


@dataclass(frozen=True, slots=True)
class SchemaComparison:
    """What a session does about the peer's tables (see the module docstring)."""

    peer_tables: frozenset[str]  # names (and former names) of the tables the peer tracks
    adopt_vector: bool  # the peer's tables and columns cover ours
    differences: tuple[str, ...]  # what differs, per table, in words


def describe_columns(spec: TableSpec) -> tuple[str, ...]:
    """A table's columns as HELLO names them: "name TYPE", and "key" on the primary key's."""
    described = []
    for column, declared in zip(spec.columns, spec.declared_types, strict=True):
        parts = [column, declared.upper()] if declared else [column]
        if column in spec.pk:
            parts.append("key")
        described.append(" ".join(parts))
    return tuple(described)


def table_schema(spec: TableSpec) -> TableSchema:
    """A tracked table as HELLO's `schema` describes it: columns and former names."""
    former = spec.former or tuple(() for _ in spec.columns)
    return TableSchema(spec.former_names, spec.columns, former)


def compare(ours: Hello, theirs: Hello) -> SchemaComparison:
    """What to send the peer that sent `theirs`, whether to adopt its vector, what differs."""
    if not theirs.schema or not ours.schema:
        return _compare_without_schema(ours, theirs)
    peer_tables = set(theirs.schema)
    for table in theirs.schema.values():
        peer_tables.update(table.former_names)
    differences: list[str] = []
    covered = True
    matched: set[str] = set()
    for name, here in sorted(ours.schema.items()):
        there_name = _match_table(name, here, theirs.schema)
        if there_name is None:
            covered = False
            differences.append(f"table {name!r} is tracked here, not at site {theirs.site_id}")
            continue
        matched.add(there_name)
        there = theirs.schema[there_name]
        only_here = [
            column
            for column, former in zip(here.columns, here.former, strict=True)
            if not _has_column(there, column, former)
        ]
        only_there = [
            column
            for column, former in zip(there.columns, there.former, strict=True)
            if not _has_column(here, column, former)
        ]
        covered = covered and not only_here
        if only_here or only_there:
            renamed = f" (named {there_name!r} there)" if there_name != name else ""
            phrases = _columns_phrase(only_here, "here") + _columns_phrase(
                only_there, f"at site {theirs.site_id}"
            )
            differences.append(f"table {name!r}{renamed}: " + "; ".join(phrases))
    for name in sorted(set(theirs.schema) - matched):
        differences.append(f"table {name!r} is tracked at site {theirs.site_id}, not here")
    return SchemaComparison(frozenset(peer_tables), covered, tuple(differences))


def _compare_without_schema(ours: Hello, theirs: Hello) -> SchemaComparison:
    """A peer from before issue 14 (no `schema`): only names and the fingerprint to go by."""
    peer_tables = frozenset(theirs.tables)
    if theirs.fingerprint == ours.fingerprint:
        return SchemaComparison(peer_tables, True, ())
    differences = column_differences(ours, theirs)
    if not differences:
        differences = (
            f"tracked tables differ (fingerprint {ours.fingerprint}, tables"
            f" {list(ours.tables)} here; {theirs.fingerprint}, tables {list(theirs.tables)}"
            f" at site {theirs.site_id})"
        )
    return SchemaComparison(peer_tables, False, (differences,))


def _match_table(name: str, here: TableSchema, theirs: dict[str, TableSchema]) -> str | None:
    """The peer's name for our table `name`: the same, or a former name either way round."""
    if name in theirs:
        return name
    for there_name, there in theirs.items():
        if name in there.former_names or there_name in here.former_names:
            return there_name
    return None


def _has_column(table: TableSchema, column: str, former: Iterable[str]) -> bool:
    """True if `table` has `column`: by name, by one of its former names, or one of ours."""
    known = set(former)
    for name, names in zip(table.columns, table.former, strict=True):
        if name == column or column in names or name in known:
            return True
    return False


def _columns_phrase(columns: list[str], where: str) -> list[str]:
    """["columns 'a', 'b' only here"], or [] for no columns."""
    if not columns:
        return []
    listed = ", ".join(repr(column) for column in columns)
    return [f"column{'s' if len(columns) > 1 else ''} {listed} only {where}"]


def column_differences(ours: Hello, theirs: Hello) -> str:
    """What differs by HELLO's `cols`, table by table, in words; "" if the peer sent none."""
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
