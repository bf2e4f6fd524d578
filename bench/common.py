"""What every scenario shares: the table schema, row data, SQLite connections, figures."""

from __future__ import annotations

import random
import sqlite3
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL)"
INSERT_SQL = "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)"
TXN_ROWS = 1_000  # rows per write transaction, everywhere
BUSY_TIMEOUT_MS = 10_000

Row = tuple[str, str, int, float]


def make_rows(count: int, seed: int) -> list[Row]:
    """`count` rows with random 32-hex-digit TEXT keys (what the README recommends)."""
    rng = random.Random(seed)
    return [(f"{rng.getrandbits(128):032x}", f"item {i}", i, i * 0.25) for i in range(count)]


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN/COMMIT), WAL, synchronous=NORMAL."""
    if read_only:
        connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        connection = sqlite3.connect(str(path), isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


@contextmanager
def connected(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    connection = connect(path, read_only=read_only)
    try:
        yield connection
    finally:
        connection.close()


def create_items(path: Path) -> None:
    """A fresh file holding the empty `items` table, in WAL mode."""
    with connected(path) as connection:
        connection.execute(SCHEMA)


def write_in_transactions(
    connection: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]
) -> None:
    """executemany `sql` over `rows`, TXN_ROWS rows per transaction."""
    for start in range(0, len(rows), TXN_ROWS):
        connection.execute("BEGIN")
        connection.executemany(sql, rows[start : start + TXN_ROWS])
        connection.execute("COMMIT")


# -- figures --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        assert samples, "no samples"
        return cls(statistics.median(samples), min(samples), max(samples))

    def as_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


@dataclass(slots=True)
class Figure:
    """One measured quantity: a sample per repeat, optionally paired with a baseline.

    `ratios` are computed per repeat (figure / baseline of the same repeat),
    so the noise common to both sides of one repeat cancels.
    """

    scenario: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    baseline_name: str = ""
    baseline: list[float] = field(default_factory=list)
    target: str = ""  # e.g. "ratio <= 1.6", "value >= 60000" (the targets)
    note: str = ""

    def add(self, value: float, baseline: float | None = None) -> None:
        self.samples.append(value)
        if baseline is not None:
            self.baseline.append(baseline)

    @property
    def ratios(self) -> list[float]:
        if not self.baseline or len(self.baseline) != len(self.samples):
            return []
        return [
            value / base for value, base in zip(self.samples, self.baseline, strict=True) if base
        ]

    def target_met(self) -> bool | None:
        """Whether the median meets the target; None without a target or samples."""
        if not self.target or not self.samples:
            return None
        subject, operator, limit_text = self.target.split()
        values = self.ratios if subject == "ratio" else self.samples
        if not values:
            return None
        median = statistics.median(values)
        limit = float(limit_text)
        return median <= limit if operator == "<=" else median >= limit

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "unit": self.unit, "samples": self.samples}
        if self.samples:
            out.update(Summary.of(self.samples).as_json())
        if self.baseline:
            out["baseline"] = {
                "name": self.baseline_name,
                "unit": self.unit,
                "samples": self.baseline,
                **Summary.of(self.baseline).as_json(),
            }
        if self.ratios:
            out["ratio"] = {"samples": self.ratios, **Summary.of(self.ratios).as_json()}
        if self.target:
            out["target"] = self.target
            out["target_met"] = self.target_met()
        if self.note:
            out["note"] = self.note
        return out


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(figures: Sequence[Figure]) -> str:
    headers = [
        "scenario",
        "figure",
        "median",
        "min..max",
        "unit",
        "baseline",
        "ratio (min..max)",
        "target",
    ]
    lines: list[list[str]] = []
    for figure in figures:
        if not figure.samples:
            lines.append(
                [figure.scenario, figure.name, "-", "-", figure.unit, "", "", figure.target]
            )
            continue
        summary = Summary.of(figure.samples)
        baseline = ""
        ratio = ""
        if figure.baseline:
            baseline = f"{figure.baseline_name} {_number(Summary.of(figure.baseline).median)}"
        if figure.ratios:
            ratios = Summary.of(figure.ratios)
            ratio = f"{ratios.median:.2f}x ({ratios.low:.2f}..{ratios.high:.2f})"
        target = ""
        if figure.target:
            met = figure.target_met()
            target = f"{figure.target}: {'met' if met else 'NOT met' if met is False else '?'}"
        lines.append(
            [
                figure.scenario,
                figure.name,
                _number(summary.median),
                f"{_number(summary.low)}..{_number(summary.high)}",
                figure.unit,
                baseline,
                ratio,
                target,
            ]
        )
    widths = [max(len(row[index]) for row in [headers, *lines]) for index in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(headers), rule, *(fmt(row) for row in lines)])
