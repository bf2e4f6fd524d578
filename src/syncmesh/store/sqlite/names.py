"""The quoted names of one tracked table's SQLite objects, shared by the SQL builders.

Identifiers are quoted once, here (`quote_identifier`): the ruff `S608`
exemption for this package relies on every identifier in a statement
coming from this module or from `ddl`.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncmesh.model import TableSpec
from syncmesh.store.sqlite.ddl import PASTS_COLUMN, log_name, quote_identifier, shadow_name
from syncmesh.store.sqlite.layout import TableLayout

# What the feed reads as a cell's past when the row's `pasts` is not JSON.
MALFORMED_PASTS = "(the pasts column is not valid JSON)"


@dataclass(frozen=True, slots=True)
class TableNames:
    """One table's names and the column lists every statement of it repeats."""

    spec: TableSpec
    layout: TableLayout
    table: str  # the user table, quoted
    shadow: str  # its shadow table, quoted
    log: str  # its log table, quoted
    key_count: int
    values: tuple[str, ...]  # the value columns, in order
    slots: tuple[int, ...]  # per value column: its shadow slot (h{slot}, s{slot}, mask bit)
    shadow_keys: str  # "k0, k1, ...": the shadow (and log) table's key columns
    keys_where: str  # "k0 = ? AND k1 = ? ...": a shadow row by key
    user_keys_where: str  # the same on the user table's own key columns
    join: str  # the shadow `s` joined to its user table `t` on the key
    # Selected as `model.TableRows` lays a row out (sites as local ordinals):
    # keys, cl and its stamp, then (value, hlc, site, past) per value column.
    selected: str

    @classmethod
    def of(cls, layout: TableLayout) -> TableNames:
        spec = layout.spec
        key_count = len(spec.pk)
        values = spec.value_columns
        keys = [f"s.k{index}" for index in range(key_count)]
        # A cell's past comes out of the row's `pasts` (NULL for nearly every
        # row, and then no JSON is looked at).  JSON that another program
        # broke reads as a text the feed's row check refuses (feed.py): a
        # json_extract error would fail every read of the feed (issue 12).
        cells = [
            f"t.{quote_identifier(column)}, s.h{slot}, s.s{slot},"
            f" CASE WHEN s.{PASTS_COLUMN} IS NULL THEN NULL"
            f" WHEN json_valid(s.{PASTS_COLUMN})"
            f" THEN json_extract(s.{PASTS_COLUMN}, '$.\"{slot}\".p')"
            f" ELSE '{MALFORMED_PASTS}' END"
            for column, slot in zip(values, layout.slots, strict=True)
        ]
        return cls(
            spec=spec,
            layout=layout,
            table=quote_identifier(spec.name),
            shadow=quote_identifier(shadow_name(spec.name)),
            log=quote_identifier(log_name(spec.name)),
            key_count=key_count,
            values=values,
            slots=layout.slots,
            shadow_keys=", ".join(f"k{index}" for index in range(key_count)),
            keys_where=" AND ".join(f"k{index} = ?" for index in range(key_count)),
            user_keys_where=" AND ".join(f"{quote_identifier(column)} = ?" for column in spec.pk),
            join=" AND ".join(
                f"t.{quote_identifier(column)} = s.k{index}" for index, column in enumerate(spec.pk)
            ),
            selected=", ".join([*keys, "s.cl", "s.cl_hlc", "s.cl_site", *cells]),
        )

    @property
    def select(self) -> str:
        """The shadow rows joined with their values, in the positional layout."""
        return (
            f"SELECT {self.selected} FROM {self.shadow} s LEFT JOIN {self.table} t ON {self.join}"
        )
