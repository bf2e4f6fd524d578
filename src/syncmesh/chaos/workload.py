"""A chaos client: writes to one node's SQLite file as an application would.

    python -m syncmesh.chaos.workload DATABASE --node NAME --seed S
        --duration-s D --settle-s T --out HISTORY.jsonl

It writes with its own `sqlite3` connection (the node captures through its
triggers) and records every write whose COMMIT returned, with the stamp the
node gave it (read back from the shadow table after the capture: see
`syncmesh.chaos.history.Write`).  Operations, on a small key space so that
nodes conflict often:

- upsert: insert a key, or overwrite every column of it;
- update: one column of an existing row;
- delete: an existing row;
- order: an order row and its lines in one transaction (never changed
  again: the torn-transaction and lost-insert checks read them);
- with `--adversarial FEATURES`, a share of operations on the adversarial
  tables (`syncmesh.chaos.adversarial`: UNIQUE constraints, foreign keys
  with cascades, application triggers, non-UTF-8 TEXT, -0.0);
- with `--migrate PLAN --migrate-at-s S1,S2` (the `migrate` fault), the
  client runs each step of that plan of schema changes of `kv`
  (`syncmesh.chaos.migrations`) at its time (seconds in), each in one
  transaction, as the application's migration would; it stops writing
  until the node has reconciled the table, then writes the new shape (new
  columns, the new name of a renamed column or table, no dropped column),
  and records with each write how many steps it had run (`Write.schema`).

Every value written is unique in the whole run, so a value names its write.
A write that fails (the node holds the lock while it is paused) is not
acknowledged and not recorded, as an application would retry it.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from pathlib import Path

from syncmesh.chaos.adversarial import AdversarialWriter, parse_features
from syncmesh.chaos.history import Write
from syncmesh.chaos.migrations import PLANS, MigrationPlan
from syncmesh.model import SqlValue

WORKLOAD_DDL = """
CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, a TEXT, b TEXT, n INTEGER);
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, node TEXT NOT NULL, lines INTEGER);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL, line INTEGER NOT NULL, amount INTEGER,
    PRIMARY KEY (order_id, line)
);
"""
WORKLOAD_TABLES = ["kv", "orders", "order_lines"]
# kv's keys are names the workload picks (0 to KEYS - 1), the same entry at
# every node on purpose, so that nodes write the same rows concurrently;
# SQLite never allocates them.  That is what `track`'s opt-in for an
# INTEGER PRIMARY KEY is for (docs/keys.md, "Integer keys").
WORKLOAD_INTEGER_KEY_TABLES = ["kv"]
KV_COLUMNS = ("a", "b", "n")
KEYS = 60
BUSY_TIMEOUT_S = 0.5
OP_INTERVAL_S = 0.01  # about 100 operations a second per client
RESOLVE_WAIT_S = 0.1  # how long one write waits for its capture before going on
RESOLVE_POLL_S = 0.005
ORDER_LINES_MAX = 5
OPS_MAX = 100_000  # a hard bound on top of the duration
ADVERSARIAL_SHARE = 0.3  # of operations, when adversarial features are on
RECONCILE_WAIT_S = 30.0  # after a migration: how long to wait for the node's reconcile
RECONCILE_POLL_S = 0.02
MIGRATE_LATE_S = 30.0  # a migration not done by the end (locks) is retried this long


class Client:
    def __init__(
        self,
        database: Path,
        node: str,
        node_index: int,
        seed: int,
        adversarial: tuple[str, ...] = (),
        plan: MigrationPlan | None = None,
    ) -> None:
        self.node = node
        self.node_index = node_index
        self.rng = random.Random(seed)
        self.db = sqlite3.connect(database, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        self.site = str(self.db.execute("SELECT site_id FROM _syncmesh_state").fetchone()[0])
        self.index = 0
        self.writes: list[Write] = []
        self.pending: list[tuple[Write, int]] = []  # (write, its last log entry id)
        self.failed = 0
        self.adversarial = (
            AdversarialWriter(self.db, self.rng, node, self.site, adversarial)
            if adversarial
            else None
        )
        self.plan = plan
        self.steps_done = 0  # steps of the plan this client has run
        # kv's name and value columns as this node's schema has them.
        self.kv_table = "kv"
        self.kv_columns: tuple[str, ...] = KV_COLUMNS

    @property
    def migrated(self) -> bool:
        """True once every step of the plan ran (or there is none)."""
        return self.plan is None or self.steps_done == len(self.plan.steps)

    # -- migrating ---------------------------------------------------------------------

    def migrate(self) -> bool:
        """Run the plan's next step in one transaction; True once it committed.

        Pending stamps are read first (with the old names), as an
        application stops its writers before its migration; after the
        COMMIT it waits for the node to reconcile the table before writing
        again (docs/schema.md, "Rolling out a migration").
        """
        assert self.plan is not None
        step = self.plan.steps[self.steps_done]
        self.resolve(RESOLVE_WAIT_S * 10)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for statement in step.sql(self.kv_table, self.kv_columns):
                self.db.execute(statement)
            self.db.execute("COMMIT")
        except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
            # The node holds the lock: try again later.  (An IntegrityError, a UNIQUE
            # index on values that are not unique, would mean a value was copied to
            # another row: the `migrate` checker then reports the missing index.)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            print(f"migration step {step.name} not run yet: {exc}", file=sys.stderr)
            return False
        self.steps_done += 1
        self.kv_table = step.table_after(self.kv_table)
        self.kv_columns = step.columns_after(self.kv_columns)
        self._wait_for_reconcile()
        return True

    def _wait_for_reconcile(self) -> None:
        """Until the node's stored spec of the table (by its name now) lists its columns."""
        deadline = time.monotonic() + RECONCILE_WAIT_S
        while time.monotonic() < deadline:
            try:
                slots = self._slots()
            except sqlite3.OperationalError:
                slots = None
            if slots is not None and tuple(slots) == self.kv_columns:
                return
            time.sleep(RECONCILE_POLL_S)
        print(
            f"{self.kv_table} not reconciled {RECONCILE_WAIT_S} s after the migration",
            file=sys.stderr,
        )

    def _slots(self) -> dict[str, int] | None:
        """The node's stored slot of each value column of the table, by its name now.

        None while the node has not reconciled a RENAME TABLE (no spec under
        the new name yet).
        """
        stored = self.db.execute(
            "SELECT spec FROM _syncmesh_tables WHERE name = ?", [self.kv_table]
        ).fetchone()
        if stored is None:
            return None
        spec = json.loads(stored[0])
        values = [column for column in spec["columns"] if column not in spec["pk"]]
        slots = spec.get("slots", list(range(len(values))))
        return {column: int(slot) for column, slot in zip(values, slots, strict=True)}

    # -- writing --------------------------------------------------------------------

    def step(self) -> None:
        self.index += 1
        roll = self.rng.random()
        key = self.rng.randrange(KEYS)
        try:
            if self.adversarial is not None and self.rng.random() < ADVERSARIAL_SHARE:
                self._adversarial(self.adversarial)
            elif roll < 0.45:
                self._update(key)
            elif roll < 0.65:
                self._upsert(key)
            elif roll < 0.71:
                self._delete(key)
            else:
                self._order()
        except (sqlite3.OperationalError, sqlite3.IntegrityError):
            # Not acknowledged: locked by a paused node, or a constraint said no.
            self.failed += 1
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _value(self, column: str) -> str | int:
        if column == "n":
            return self.node_index * 1_000_000_000 + self.index
        return f"{self.node}.{self.index}.{column}"

    @property
    def _log_table(self) -> str:
        return f"_syncmesh_log_{self.kv_table}"

    def _write(self, op: str, key: int, cells: dict[str, SqlValue], lo: int) -> Write:
        """The record of a write of kv, under the table's name now and the steps run so far."""
        return Write(
            op,
            self.node,
            self.site,
            self.kv_table,
            [key],
            self.index,
            cells,
            lo=lo,
            schema=self.steps_done,
        )

    def _begin(self) -> int:
        """BEGIN; the node's clock floor.  The site is read again too: a node that
        re-joined from a snapshot (the `forget` and `sleep` faults) has a new one."""
        self.db.execute("BEGIN IMMEDIATE")
        hlc, site = self.db.execute("SELECT hlc, site_id FROM _syncmesh_state").fetchone()
        self.site = str(site)
        if self.adversarial is not None:
            self.adversarial.site = self.site
        return int(hlc)

    def _commit(self, write: Write, log_table: str | None) -> None:
        last_entry = 0
        if log_table is not None:
            row = self.db.execute(f"SELECT max(id) FROM {log_table}").fetchone()  # noqa: S608
            last_entry = int(row[0] or 0)
        self.db.execute("COMMIT")
        self.writes.append(write)
        if log_table is not None:
            self.pending.append((write, last_entry))

    def _adversarial(self, writer: AdversarialWriter) -> None:
        writes = writer.step(self.index, self._begin)
        if not writes:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return
        self.db.execute("COMMIT")
        self.writes.extend(writes)  # stamps are not read back: judged by value, not stamp

    def _update(self, key: int) -> None:
        columns = self.rng.sample(self.kv_columns, self.rng.choice((1, 1, 2)))
        cells: dict[str, SqlValue] = {column: self._value(column) for column in columns}
        lo = self._begin()
        sets = ", ".join(f"{column} = ?" for column in columns)
        changed = self.db.execute(
            f"UPDATE {self.kv_table} SET {sets} WHERE k = ?",  # noqa: S608
            [*cells.values(), key],
        ).rowcount
        if not changed:
            self.db.execute("ROLLBACK")
            return
        write = self._write("update", key, cells, lo)
        self._commit(write, self._log_table)

    def _upsert(self, key: int) -> None:
        cells: dict[str, SqlValue] = {column: self._value(column) for column in self.kv_columns}
        lo = self._begin()
        names = ", ".join(cells)
        marks = ", ".join("?" for _ in cells)
        sets = ", ".join(f"{column} = excluded.{column}" for column in cells)
        self.db.execute(
            f"INSERT INTO {self.kv_table} (k, {names}) VALUES (?, {marks})"  # noqa: S608
            f" ON CONFLICT (k) DO UPDATE SET {sets}",
            [key, *cells.values()],
        )
        write = self._write("upsert", key, cells, lo)
        self._commit(write, self._log_table)

    def _delete(self, key: int) -> None:
        lo = self._begin()
        if not self.db.execute(f"DELETE FROM {self.kv_table} WHERE k = ?", [key]).rowcount:  # noqa: S608
            self.db.execute("ROLLBACK")
            return
        write = self._write("delete", key, {}, lo)
        self._commit(write, self._log_table)

    def _order(self) -> None:
        order_id = f"{self.node}-{self.index}"
        lines = self.rng.randint(1, ORDER_LINES_MAX)
        lo = self._begin()
        self.db.execute("INSERT INTO orders VALUES (?, ?, ?)", [order_id, self.node, lines])
        self.db.executemany(
            "INSERT INTO order_lines VALUES (?, ?, ?)",
            [(order_id, line, self.rng.randint(1, 1000)) for line in range(lines)],
        )
        write = Write(
            "order", self.node, self.site, "orders", [order_id], self.index, lines=lines, lo=lo
        )
        self._commit(write, None)

    # -- reading stamps back --------------------------------------------------------------

    def resolve(self, wait_s: float) -> None:
        """Read back the stamps of captured writes; wait up to `wait_s` for captures."""
        deadline = time.monotonic() + wait_s
        while self.pending:
            try:
                self.pending = [item for item in self.pending if not self._resolve(*item)]
            except sqlite3.OperationalError:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            if not self.pending or time.monotonic() >= deadline:
                return
            time.sleep(RESOLVE_POLL_S)

    def _resolve(self, write: Write, last_entry: int) -> bool:
        """True once the node has captured `write` (its stamp is then read if still there)."""
        self.db.execute("BEGIN")
        try:
            if self.db.execute(
                f"SELECT 1 FROM {self._log_table} WHERE id <= ? LIMIT 1",  # noqa: S608
                [last_entry],
            ).fetchone():
                return False
            slots = self._slots()
            if slots is None:
                return False  # a RENAME TABLE not reconciled yet: look again later
            # Columns the node has not reconciled yet have no slot: not read.
            columns = [column for column in self.kv_columns if column in slots]
            key = write.key[0]
            names = ", ".join(["k", *columns])
            row = self.db.execute(
                f"SELECT {names} FROM {self.kv_table} WHERE k = ?",  # noqa: S608
                [key],
            ).fetchone()
            cells = "".join(f", h{slots[column]}, s{slots[column]}" for column in columns)
            shadow = self.db.execute(
                f"SELECT cl, cl_hlc, cl_site{cells} FROM _syncmesh_shadow_{self.kv_table}"  # noqa: S608
                " WHERE k0 = ?",
                [key],
            ).fetchone()
            write.hi = int(self.db.execute("SELECT hlc FROM _syncmesh_state").fetchone()[0])
        finally:
            self.db.execute("COMMIT")
        if shadow is None:
            return True
        if write.op == "delete":
            if row is None and shadow[0] % 2 == 0 and shadow[2] == 0:
                write.stamp, write.cl = shadow[1], shadow[0]
            return True
        if row is None:
            return True
        for index, column in enumerate(columns):
            hlc, site = shadow[3 + 2 * index], shadow[4 + 2 * index]
            if (
                column in write.cells
                and self._same_column(write, column)
                and row[1 + index] == write.cells[column]
                and site == 0
            ):
                write.stamp, write.cl = hlc, shadow[0]
                break
        return True

    def _same_column(self, write: Write, column: str) -> bool:
        """Whether `column` now is the column `write` wrote under that name.

        Not if a step run since the write renamed, dropped or (re-)added a
        column of that name: its cell is then another column's (a write left
        pending across a migration, when the node was paused or killed).
        """
        if self.plan is None:
            return True
        for step in self.plan.steps[write.schema : self.steps_done]:
            if column in step.renames or column in step.renames.values():
                return False
            if column in step.dropped or column in step.added:
                return False
        return True


def run(args: argparse.Namespace) -> None:
    plan = PLANS[args.migrate] if args.migrate else None
    step_times = [float(at) for at in args.migrate_at_s.split(",")] if plan else []
    if plan is not None and len(step_times) != len(plan.steps):
        raise SystemExit(f"--migrate-at-s: {len(plan.steps)} times needed for plan {plan.name}")
    client = Client(
        args.database,
        args.node,
        args.node_index,
        args.seed,
        parse_features(args.adversarial),
        plan,
    )
    started = time.monotonic()
    deadline = started + args.duration_s
    while time.monotonic() < deadline and client.index < OPS_MAX:
        due = not client.migrated and time.monotonic() - started >= step_times[client.steps_done]
        if due:
            client.migrate()
        client.step()
        client.resolve(RESOLVE_WAIT_S)
        time.sleep(OP_INTERVAL_S)
    late = time.monotonic() + MIGRATE_LATE_S
    while not client.migrated and time.monotonic() < late:
        if not client.migrate():
            time.sleep(OP_INTERVAL_S)
    client.resolve(args.settle_s)
    with args.out.open("w") as out:
        for write in client.writes:
            out.write(write.to_json() + "\n")
    args.out.with_suffix(".failed").write_text(f"{client.failed}\n")
    client.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m syncmesh.chaos.workload")
    parser.add_argument("database", type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-index", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--settle-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--adversarial", default="none", help="features, comma-separated")
    parser.add_argument("--migrate", choices=sorted(PLANS), help="a plan of schema changes of kv")
    parser.add_argument(
        "--migrate-at-s", default="0", help="when to run each step (seconds, comma-separated)"
    )
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
