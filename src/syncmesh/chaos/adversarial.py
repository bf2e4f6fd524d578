"""The adversarial workload of `syncmesh chaos --adversarial` (issue 12).

The base workload writes tables the engine was designed for.  Users do
not: their tables have UNIQUE constraints, foreign keys with cascades and
their own triggers, and their values include TEXT that is not valid UTF-8
(any C program, or the shell's `CAST(X'E9' AS TEXT)`) and -0.0.  Each
feature can be switched on alone (`FEATURES`), so a violation can be
narrowed to one:

- `unique`: `adv_users.email` is UNIQUE, drawn from a small set shared by
  every node, so concurrent inserts at two nodes collide in the apply;
- `onconflict`: that constraint says `ON CONFLICT REPLACE` (issue 12
  defect 1), only where `track` accepts it;
- `nocase`: `adv_users.email` is `COLLATE NOCASE`, written in both
  cases (a NOCASE value column; `track` refuses NOCASE keys, issue 12
  defect 3);
- `fk`: `adv_children.parent` references `adv_parents(id)` with
  `ON DELETE CASCADE`; parents are deleted while other nodes add children;
- `trigger`: an application trigger on `adv_parents` rewrites the name the
  client inserted (its result is what the client records); it carries the
  apply guard that `track` asks for, so it runs for local writes only;
- `bytes`: `adv_users.note` is sometimes TEXT that is not valid UTF-8
  (defect 4);
- `negzero`: `adv_users.score` is sometimes -0.0 or 0.0 (defects 5, 6).

The tables exist whatever the features (so every schedule has the same
schema); the features decide their constraints and what is written.
Every value written is unique in the run (it names its write) except the
ones a feature needs shared: emails, and 0.0 / -0.0.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterable

from syncmesh.chaos.history import Write
from syncmesh.model import SqlValue, text_bytes, text_of_bytes

FEATURES = ("unique", "onconflict", "nocase", "fk", "trigger", "bytes", "negzero")
# What `all` switches on; each feature can still be named.  Which of them
# converge today, and what keeps each other one out of the CI subset: docs/chaos.md.
DEFAULT_FEATURES = ("unique", "fk", "trigger", "bytes", "negzero")
ADVERSARIAL_TABLES = ["adv_users", "adv_parents", "adv_children"]
# With `fk`: the child table, its foreign key column and the parent table (ON DELETE
# CASCADE), for the lost-write checker (a cascade deletes children with no client write).
ADVERSARIAL_CASCADES = {"adv_children": ("parent", "adv_parents")}
USERS = 20
PARENTS = 8
EMAILS = 6  # few: concurrent inserts at two nodes take the same one often
CHECKED_SUFFIX = " (checked)"
# An application's trigger: it rewrites what the client inserted.  Guarded
# as `track` tells a user to (docs/keys.md, "Application triggers"): it runs
# for local writes only; its effect is captured and syncs, and a peer's row,
# already rewritten where it was inserted, is not rewritten a second time.
_CHECKED_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS adv_parents_checked AFTER INSERT ON adv_parents"
    " WHEN (SELECT applying FROM _syncmesh_state) = 0 BEGIN"
    " UPDATE adv_parents SET name = NEW.name || ' (checked)' WHERE id = NEW.id; END;\n"
)


def parse_features(text: str) -> tuple[str, ...]:
    """`all`, `none`, or a comma-separated list of FEATURES; ValueError names a bad one."""
    if text in ("", "none"):
        return ()
    if text == "all":
        return DEFAULT_FEATURES
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [feature for feature in chosen if feature not in FEATURES]
    if unknown:
        raise ValueError(
            f"unknown adversarial feature {', '.join(unknown)}: choose from {', '.join(FEATURES)},"
            " all or none"
        )
    return chosen


def adversarial_ddl(features: Iterable[str]) -> str:
    """The adversarial tables (and trigger) with the constraints `features` switch on."""
    on = set(features)
    email = " COLLATE NOCASE" if "nocase" in on else ""
    if "unique" in on or "onconflict" in on:
        email += " UNIQUE ON CONFLICT REPLACE" if "onconflict" in on else " UNIQUE"
    references = " REFERENCES adv_parents(id) ON DELETE CASCADE" if "fk" in on else ""
    ddl = (
        f"CREATE TABLE IF NOT EXISTS adv_users"
        f" (id TEXT PRIMARY KEY, email TEXT{email}, score, note);\n"
        "CREATE TABLE IF NOT EXISTS adv_parents (id TEXT PRIMARY KEY, name TEXT);\n"
        f"CREATE TABLE IF NOT EXISTS adv_children"
        f" (id TEXT PRIMARY KEY, parent TEXT{references}, v INTEGER);\n"
    )
    if "trigger" in on:
        ddl += _CHECKED_TRIGGER
    return ddl


class AdversarialWriter:
    """One client's adversarial operations; each returns the writes it made, or []."""

    def __init__(
        self,
        db: sqlite3.Connection,
        rng: random.Random,
        node: str,
        site: str,
        features: tuple[str, ...],
    ) -> None:
        self.db = db
        self.rng = rng
        self.node = node
        self.site = site
        self.features = set(features)
        if "fk" in self.features:
            db.execute("PRAGMA foreign_keys = ON")

    def step(self, index: int, begin: Callable[[], int]) -> list[Write]:
        """One operation inside the client's transaction handling (`begin()` opens it)."""
        roll = self.rng.random()
        if roll < 0.45:
            return self._user(index, begin)
        if roll < 0.6:
            return self._parent(index, begin)
        if roll < 0.9:
            return self._child(index, begin)
        return self._delete_parent(index, begin)

    def _write(
        self, op: str, table: str, key: SqlValue, index: int, lo: int, **cells: SqlValue
    ) -> Write:
        return Write(op, self.node, self.site, table, [key], index, dict(cells), lo=lo)

    def _user(self, index: int, begin: Callable[[], int]) -> list[Write]:
        number = self.rng.randrange(USERS)
        user = f"u{number}"
        email = f"e{self.rng.randrange(EMAILS)}@example.org"
        if "nocase" in self.features and self.rng.random() < 0.5:
            email = email.upper()
        score: SqlValue = float(index) + 0.5
        if "negzero" in self.features and self.rng.random() < 0.4:
            score = self.rng.choice((0.0, -0.0))
        note = f"{self.node}.{index}.note"
        if "bytes" in self.features and self.rng.random() < 0.4:
            note = text_of_bytes(note.encode() + b"\xe9\xff")
        lo = begin()
        self.db.execute(
            "INSERT INTO adv_users (id, email, score, note) VALUES (?, ?, ?, CAST(? AS TEXT))"
            " ON CONFLICT (id) DO UPDATE SET email = excluded.email, score = excluded.score,"
            " note = excluded.note",
            (user, email, score, text_bytes(note)),
        )
        return [
            self._write("upsert", "adv_users", user, index, lo, email=email, score=score, note=note)
        ]

    def _parent(self, index: int, begin: Callable[[], int]) -> list[Write]:
        parent = f"p{self.rng.randrange(PARENTS)}"
        name = f"{self.node}.{index}.name"
        lo = begin()
        exists = self.db.execute("SELECT 1 FROM adv_parents WHERE id = ?", (parent,)).fetchone()
        if exists:
            self.db.execute("UPDATE adv_parents SET name = ? WHERE id = ?", (name, parent))
            return [self._write("update", "adv_parents", parent, index, lo, name=name)]
        self.db.execute("INSERT INTO adv_parents (id, name) VALUES (?, ?)", (parent, name))
        if "trigger" in self.features:
            name += CHECKED_SUFFIX  # what the application's trigger stored
        return [self._write("upsert", "adv_parents", parent, index, lo, name=name)]

    def _child(self, index: int, begin: Callable[[], int]) -> list[Write]:
        lo = begin()
        row = self.db.execute("SELECT id FROM adv_parents ORDER BY random() LIMIT 1").fetchone()
        parent = f"p{self.rng.randrange(PARENTS)}" if row is None else str(row[0])
        child = f"{self.node}.{index}.child"
        value = index
        # Without `fk`, a child of a missing parent is just a row.
        self.db.execute("INSERT INTO adv_children VALUES (?, ?, ?)", (child, parent, value))
        write = self._write("upsert", "adv_children", child, index, lo, parent=parent, v=value)
        if "fk" in self.features and row is not None:
            write.parent_cl = self._parent_life(parent)
        return [write]

    def _parent_life(self, parent: str) -> int | None:
        """The causal length of `parent`'s life here, alive (read in the writing transaction).

        A local insert the node has not captured yet has the life its
        capture will give it: one above a tombstone, or one above the cl
        floor for a key with no shadow row (store/sqlite/sql_capture.py).
        A delete and re-insert both still uncaptured read one life low,
        which only makes the checker more lenient, never wrong.  None before
        the node tracks the table (no shadow table yet): not known.
        """
        try:
            found = self.db.execute(
                "SELECT cl FROM _syncmesh_shadow_adv_parents WHERE k0 = ?", (parent,)
            ).fetchone()
            if found is None:
                (floor,) = self.db.execute(
                    "SELECT coalesce((SELECT cl_floor FROM _syncmesh_lifecycle), 0)"
                ).fetchone()
                return 1 + int(floor)
        except sqlite3.OperationalError:
            return None
        cl = int(found[0])
        return cl if cl % 2 == 1 else cl + 1

    def _delete_parent(self, index: int, begin: Callable[[], int]) -> list[Write]:
        parent = f"p{self.rng.randrange(PARENTS)}"
        lo = begin()
        children: list[str] = []
        if "fk" in self.features:
            children = [
                str(child)
                for (child,) in self.db.execute(
                    "SELECT id FROM adv_children WHERE parent = ?", (parent,)
                )
            ]
        if not self.db.execute("DELETE FROM adv_parents WHERE id = ?", (parent,)).rowcount:
            return []
        writes = [self._write("delete", "adv_parents", parent, index, lo)]
        writes.extend(self._write("delete", "adv_children", child, index, lo) for child in children)
        return writes
