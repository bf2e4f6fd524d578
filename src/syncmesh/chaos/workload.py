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
  with cascades, application triggers, non-UTF-8 TEXT, -0.0).

Every value written is unique in the whole run, so a value names its write.
A write that fails (the node holds the lock while it is paused) is not
acknowledged and not recorded, as an application would retry it.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from pathlib import Path

from syncmesh.chaos.adversarial import AdversarialWriter, parse_features
from syncmesh.chaos.history import Write
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


class Client:
    def __init__(
        self,
        database: Path,
        node: str,
        node_index: int,
        seed: int,
        adversarial: tuple[str, ...] = (),
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

    def _begin(self) -> int:
        self.db.execute("BEGIN IMMEDIATE")
        return int(self.db.execute("SELECT hlc FROM _syncmesh_state").fetchone()[0])

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
        columns = self.rng.sample(KV_COLUMNS, self.rng.choice((1, 1, 2)))
        cells: dict[str, SqlValue] = {column: self._value(column) for column in columns}
        lo = self._begin()
        sets = ", ".join(f"{column} = ?" for column in columns)
        changed = self.db.execute(
            f"UPDATE kv SET {sets} WHERE k = ?",  # noqa: S608
            [*cells.values(), key],
        ).rowcount
        if not changed:
            self.db.execute("ROLLBACK")
            return
        write = Write("update", self.node, self.site, "kv", [key], self.index, cells, lo=lo)
        self._commit(write, "_syncmesh_log_kv")

    def _upsert(self, key: int) -> None:
        cells: dict[str, SqlValue] = {column: self._value(column) for column in KV_COLUMNS}
        lo = self._begin()
        self.db.execute(
            "INSERT INTO kv (k, a, b, n) VALUES (?, ?, ?, ?) ON CONFLICT (k) DO UPDATE SET"
            " a = excluded.a, b = excluded.b, n = excluded.n",
            [key, *cells.values()],
        )
        write = Write("upsert", self.node, self.site, "kv", [key], self.index, cells, lo=lo)
        self._commit(write, "_syncmesh_log_kv")

    def _delete(self, key: int) -> None:
        lo = self._begin()
        if not self.db.execute("DELETE FROM kv WHERE k = ?", [key]).rowcount:
            self.db.execute("ROLLBACK")
            return
        write = Write("delete", self.node, self.site, "kv", [key], self.index, lo=lo)
        self._commit(write, "_syncmesh_log_kv")

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
                "SELECT 1 FROM _syncmesh_log_kv WHERE id <= ? LIMIT 1", [last_entry]
            ).fetchone():
                return False
            key = write.key[0]
            row = self.db.execute("SELECT a, b, n FROM kv WHERE k = ?", [key]).fetchone()
            shadow = self.db.execute(
                "SELECT cl, cl_hlc, cl_site, h0, s0, h1, s1, h2, s2"
                " FROM _syncmesh_shadow_kv WHERE k0 = ?",
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
        for index, column in enumerate(KV_COLUMNS):
            hlc, site = shadow[3 + 2 * index], shadow[4 + 2 * index]
            if column in write.cells and row[index] == write.cells[column] and site == 0:
                write.stamp, write.cl = hlc, shadow[0]
                break
        return True


def run(args: argparse.Namespace) -> None:
    client = Client(
        args.database, args.node, args.node_index, args.seed, parse_features(args.adversarial)
    )
    deadline = time.monotonic() + args.duration_s
    while time.monotonic() < deadline and client.index < OPS_MAX:
        client.step()
        client.resolve(RESOLVE_WAIT_S)
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
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
