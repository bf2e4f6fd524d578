"""`python -m bench [capture|e2e|latency|profile ...] [--repeats N]`: see bench/__init__.py."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import capture, e2e, latency
from bench.common import Figure, render_table

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SCENARIOS = ("capture", "e2e", "latency")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _meta(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_src": bool(_git("status", "--porcelain", "--", "src")),
        "repeats": arguments.repeats,
        "capture_rows": arguments.capture_rows,
        "e2e_rows": arguments.e2e_rows,
        "e2e_timeout_s": arguments.e2e_timeout,
        "latency_writes": arguments.latency_writes,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="capture, e2e, latency, profile (default: capture e2e latency; profile only"
        " when named)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (median)")
    parser.add_argument("--capture-rows", type=int, default=50_000)
    parser.add_argument("--e2e-rows", type=int, default=100_000)
    parser.add_argument(
        "--e2e-timeout",
        type=float,
        default=e2e.RUN_TIMEOUT_S,
        help="seconds per e2e run; a slower run reports rows visible by then (a lower bound)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="a py-spy binary: sample every node during each topology's first e2e repeat",
    )
    parser.add_argument("--latency-writes", type=int, default=200)
    parser.add_argument("--profile-rows", type=int, default=10_000)
    parser.add_argument(
        "--upkeep-rows", type=int, default=50_000, help="rows per phase, verify's tree upkeep"
    )
    parser.add_argument(
        "--verify-rows", type=int, default=1_000_000, help="rows of the verified table"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "latest.json", help="where to write the JSON"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    scenarios: list[str] = list(arguments.scenarios) or list(DEFAULT_SCENARIOS)
    unknown = sorted(set(scenarios) - {*DEFAULT_SCENARIOS, "profile", "verify"})
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown)}: use capture, e2e, latency, profile, verify"
        )
    report: dict[str, Any] = {"meta": _meta(arguments), "scenarios": {}}
    figures: list[Figure] = []
    for scenario in scenarios:
        started = time.perf_counter()
        _log(f"{scenario} ...")
        found: list[Figure]
        if scenario == "capture":
            found = capture.run(arguments.repeats, arguments.capture_rows, _log)
        elif scenario == "e2e":
            profiles: dict[str, Any] = {}
            found = e2e.run(
                arguments.repeats,
                arguments.e2e_rows,
                _log,
                arguments.e2e_timeout,
                arguments.py_spy,
                profiles,
            )
            if profiles:
                report["scenarios"]["e2e_py_spy"] = profiles
        elif scenario == "latency":
            found = latency.run(arguments.repeats, arguments.latency_writes, _log)
        elif scenario == "verify":
            from bench import verify

            found = verify.run(
                arguments.repeats, arguments.upkeep_rows, arguments.verify_rows, _log
            )
        else:
            from bench import profile

            report["scenarios"]["profile"] = profile.run(arguments.profile_rows, _log)
            continue
        elapsed = time.perf_counter() - started
        figures += found
        report["scenarios"][scenario] = {
            "seconds": round(elapsed, 1),
            "figures": [figure.as_json() for figure in found],
        }
    if figures:
        print(render_table(figures))
        failed = [f.name for f in figures if f.floor_met() is False]
        met = [f.name for f in figures if f.floor_met()]
        print(f"\nfloors met: {len(met)}, not met: {len(failed)}")
        for name in failed:
            print(f"  NOT met: {name}")
        for figure in figures:
            if figure.note:
                print(f"note: {figure.scenario} {figure.name}: {figure.note}")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {arguments.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
