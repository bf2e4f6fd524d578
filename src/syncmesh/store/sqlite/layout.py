"""A tracked table's stored layout: which shadow slot holds each value column's stamps.

Each value column has a *slot* `i`: the number of its shadow columns
`h{i}`/`s{i}`, of its bit in the log's change mask and of its entry in the
row's `pasts` (docs/adr/0013-schema-evolution.md).  Slots are never
reused, so the stamps of a column stay with it through a RENAME COLUMN, a
dropped column's stamps are never read again, and a column re-added under
a dropped name starts empty.  Files from before slots have slot `i` for the
`i`th value column, so nothing is rewritten when they are opened.

The layout is kept as JSON in `_syncmesh_tables.spec`, beside the columns,
types and key that were always there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from syncmesh.model import TableSpec


@dataclass(frozen=True, slots=True)
class DroppedColumn:
    """A value column dropped here: its name, its retired slot, and when it was noticed."""

    name: str
    slot: int
    dropped_hlc: int  # the stamp of the moment the drop was noticed


@dataclass(frozen=True, slots=True)
class TableLayout:
    """One tracked table: its spec, and per value column its slot and creation stamp.

    `born[i]` is the stale threshold of value column i: 0 for a name never
    dropped here, otherwise the stamp of its last drop here.  Cells of that
    name stamped at or below it belong to the older column of that name (one
    dropped and re-added) and are not applied to it: that is what keeps a
    dropped column's values from coming back (schema-mixed applies the rule).

    `created[i]` is the stamp of the moment column i got its slot here: when
    the table was tracked, or its ADD COLUMN (or a rebuild that added it) was
    noticed; 0 in files from before it was kept.  It goes on the wire with
    the column, so that a receiver that dropped the name can tell a column
    added again after its drop from the old one (`apply.column_is_newer`).

    `defaults[i]` is the DEFAULT (SQL text, None for none) value column i had
    when it got its slot here: the value its default-stamped cells stand for
    (a row that existed when ADD COLUMN filled it in).  A rebuild may change
    or drop the DEFAULT later; a row new here whose cell of that column was
    never written still takes this one (`apply._recorded_defaults`), as every
    site holding the row from before has it.  None in files from before it
    was kept (the table's DEFAULT then stands).
    """

    spec: TableSpec
    slots: tuple[int, ...]  # per value column (spec.value_columns), in table order
    born: tuple[int, ...]  # per value column
    dropped: tuple[DroppedColumn, ...] = ()
    next_slot: int = 0  # the slot the next added column gets
    # Fields of the stored spec that other modules own (integer_keys.py), as
    # JSON: kept as they are whenever the layout is written back.
    others_json: str = "{}"
    created: tuple[int, ...] = ()  # per value column; () in files from before: all 0
    defaults: tuple[str | None, ...] | None = None  # per value column; None: not known

    def __post_init__(self) -> None:
        assert len(self.slots) == len(self.spec.value_columns) == len(self.born)
        assert self.defaults is None or len(self.defaults) == len(self.slots)
        if not self.created:
            object.__setattr__(self, "created", (0,) * len(self.slots))
        assert len(self.created) == len(self.slots)
        assert len(set(self.slots)) == len(self.slots)
        assert all(slot < self.next_slot for slot in self.slots)

    @classmethod
    def fresh(cls, spec: TableSpec, created: int = 0) -> TableLayout:
        """The layout of a table tracked now (at stamp `created`): slot i for the ith column."""
        count = len(spec.value_columns)
        return cls(spec, tuple(range(count)), (0,) * count, (), count, created=(created,) * count)

    @property
    def name(self) -> str:
        return self.spec.name

    def slot_of(self, column: str) -> int:
        return self.slots[self.spec.value_columns.index(column)]

    def born_of(self, column: str) -> int:
        """The stamp of the moment `column` got its slot here (0: tracked with the table)."""
        return self.born[self.spec.value_columns.index(column)]

    def recorded_defaults(self) -> dict[str, str | None] | None:
        """Each value column's DEFAULT when it got its slot (see the class); None: not known."""
        if self.defaults is None:
            return None
        return dict(zip(self.spec.value_columns, self.defaults, strict=True))

    def column_of_slot(self, slot: int) -> str | None:
        """The live value column holding `slot`, or None (retired or never used)."""
        if slot in self.slots:
            return self.spec.value_columns[self.slots.index(slot)]
        return None

    def generation_of(self, name: str) -> int:
        """How many times a value column named `name` was dropped here (ADR 0013).

        A column added under a name dropped here n times is generation n:
        it goes on the wire with the column (`TableRows.generations`), and
        a receiver compares it with its own count for the name.
        """
        return sum(1 for entry in self.dropped if entry.name == name)

    def dropped_names(self) -> frozenset[str]:
        """Names of value columns dropped here that no live column has now."""
        live = set(self.spec.columns)
        return frozenset(entry.name for entry in self.dropped if entry.name not in live)

    def renamed(self, name: str) -> TableLayout:
        """The layout of this table after RENAME TABLE to `name` (the old name kept)."""
        spec = replace(self.spec, name=name, former_names=(self.spec.name, *self.spec.former_names))
        return replace(self, spec=spec)

    def to_json(self) -> str:
        spec = self.spec
        return json.dumps(
            {
                **json.loads(self.others_json),
                "columns": spec.columns,
                "types": spec.declared_types,
                "pk": spec.pk,
                "former": spec.former,
                "former_names": spec.former_names,
                "slots": self.slots,
                "born": self.born,
                "created": self.created,
                **({} if self.defaults is None else {"defaults": self.defaults}),
                "dropped": [[d.name, d.slot, d.dropped_hlc] for d in self.dropped],
                "next_slot": self.next_slot,
            }
        )

    @classmethod
    def from_json(cls, name: str, text: str) -> TableLayout:
        """The layout stored for table `name`; a file from before slots gets slot i = index i."""
        decoded = json.loads(text)
        others = json.dumps({k: v for k, v in decoded.items() if k not in _LAYOUT_FIELDS})
        spec = TableSpec(
            name,
            tuple(decoded["columns"]),
            tuple(decoded["types"]),
            tuple(decoded["pk"]),
            tuple(tuple(names) for names in decoded.get("former", ())),
            tuple(decoded.get("former_names", ())),
        )
        if "slots" not in decoded:
            return replace(cls.fresh(spec), others_json=others)
        return cls(
            spec,
            tuple(decoded["slots"]),
            tuple(decoded["born"]),
            tuple(DroppedColumn(n, s, h) for n, s, h in decoded["dropped"]),
            int(decoded["next_slot"]),
            others,
            tuple(decoded.get("created", ())),
            None if "defaults" not in decoded else tuple(decoded["defaults"]),
        )


_LAYOUT_FIELDS = frozenset(
    {
        "columns",
        "types",
        "pk",
        "former",
        "former_names",
        "slots",
        "born",
        "created",
        "defaults",
        "dropped",
        "next_slot",
    }
)
