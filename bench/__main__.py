"""`python -m bench [all | SCENARIO ...] [--quick] [--repeats N]`: see bench/__init__.py."""

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

from bench import bulk, capture, e2e, idle, large_row, latency, mixed
from bench.common import Figure, render_table

RESULTS = Path(__file__).resolve().parent / "results"
# `all` (and no scenario named) runs these, in this order; the others only when named.
ALL_SCENARIOS = ("capture", "e2e", "latency", "curve", "bootstrap", "wire", "mixed", "idle")
KNOWN = (
    *ALL_SCENARIOS,
    *("profile", "verify", "metadata", "fleet", "snapshot", "soak", "peers", "large_row"),
)
# The sizes are the defaults; --quick shrinks every one for a smoke run.
SIZES: dict[str, tuple[float, float]] = {  # option: (full, quick)
    "repeats": (3, 1),
    "capture_rows": (50_000, 5_000),
    "e2e_rows": (100_000, 10_000),
    "latency_writes": (200, 50),
    "bulk_rows": (1_000_000, 20_000),
    "mixed_seconds": (60.0, 5.0),
    "idle_seconds": (20.0, 3.0),
    "metadata_rows": (100_000, 5_000),
    "fleet_rows": (100_000, 2_000),
    "fleet_writes": (200, 20),
    "soak_minutes": (30.0, 0.5),
    "soak_sample_s": (60.0, 5.0),
    "soak_live_rows": (2_000, 200),
    "peer_writes": (20_000, 2_000),
}
# Fleet sizes of `fleet` (issue 15): N `serve` processes per layout, on 2 cores.
FLEET_SITES = ("3,10,30", "3")  # (full, quick)


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
        "curve_rates": list(arguments.curve_rates),
        "bulk_rows": arguments.bulk_rows,
        "wire_fraction": arguments.wire_fraction,
        "mixed_seconds": arguments.mixed_seconds,
        "mixed_rate_txns_per_s": arguments.mixed_rate,
        "mixed_ops_per_txn": arguments.mixed_ops,
        "idle_seconds": arguments.idle_seconds,
        "metadata_rows": arguments.metadata_rows,
        "fleet_sites": arguments.fleet_sites,
        "fleet_rows": arguments.fleet_rows,
        "fleet_writes": arguments.fleet_writes,
        "fleet_kill_server": arguments.fleet_kill_server,
        "soak_minutes": arguments.soak_minutes,
        "soak_rate_txns_per_s": arguments.soak_rate,
        "peer_writes": arguments.peer_writes,
        "quick": arguments.quick,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=(
            f"all (the default), {', '.join(KNOWN)};"
            " profile, verify, metadata, fleet, snapshot, soak and peers only when named"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 1 repeat (a smoke run, not figures); explicit options win",
    )
    parser.add_argument("--repeats", type=int, help="repeats per figure (median); default 3")
    parser.add_argument("--capture-rows", type=int, help="rows per capture phase (50,000)")
    parser.add_argument("--e2e-rows", type=int, help="rows per e2e run (100,000)")
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
    parser.add_argument("--latency-writes", type=int, help="paced writes per latency run (200)")
    parser.add_argument(
        "--curve-rates",
        type=_rates,
        default=latency.RATES,
        help="write rates of the latency curve, txn/s, comma-separated (1,10,50,100,200,500,1000)",
    )
    parser.add_argument(
        "--bulk-rows", type=int, help="rows of the bootstrap and wire table (1,000,000)"
    )
    parser.add_argument(
        "--bootstrap-timeout",
        type=float,
        default=bulk.BOOTSTRAP_TIMEOUT_S,
        help="seconds per bootstrap; a slower one is reported as it stands",
    )
    parser.add_argument(
        "--wire-fraction",
        type=float,
        default=bulk.WIRE_FRACTION,
        help="share of the rows updated in the wire scenario (0.01)",
    )
    parser.add_argument("--mixed-seconds", type=float, help="seconds of mixed load (60)")
    parser.add_argument(
        "--mixed-rate", type=float, default=50.0, help="transactions/s at each node (50)"
    )
    parser.add_argument(
        "--mixed-ops", type=int, default=10, help="operations per mixed transaction (10)"
    )
    parser.add_argument("--idle-seconds", type=float, help="seconds of idle CPU measured (20)")
    parser.add_argument(
        "--metadata-rows", type=int, help="rows per row size, metadata budget (100,000)"
    )
    parser.add_argument(
        "--fleet-sites",
        type=_sizes_list,
        help="fleet sizes N, comma-separated (3,10,30; --quick: 3)",
    )
    parser.add_argument("--fleet-rows", type=int, help="rows of the fleet bulk insert (100,000)")
    parser.add_argument(
        "--fleet-writes", type=int, help="paced writes of the fleet latency phase (200)"
    )
    parser.add_argument(
        "--fleet-kill-server",
        action="store_true",
        help="also run nats-kill: one nats-server killed halfway through the bulk insert",
    )
    parser.add_argument("--soak-minutes", type=float, help="minutes of the soak (30)")
    parser.add_argument(
        "--soak-rate", type=float, default=200.0, help="soak transactions/s, all nodes (200)"
    )
    parser.add_argument("--soak-sample-s", type=float, help="seconds between soak samples (60)")
    parser.add_argument(
        "--soak-live-rows", type=int, help="live rows each soak client keeps around (2,000)"
    )
    parser.add_argument("--soak-plot", type=Path, help="draw the soak as a PNG (matplotlib)")
    parser.add_argument(
        "--peer-writes", type=int, help="writes per system in the peers scenario (20,000)"
    )
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


def _sizes_list(text: str) -> list[int]:
    """`3,10,30` -> [3, 10, 30]; each a fleet of at least 2 sites."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"every fleet size must be at least 2: {text!r}")
    return sizes


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"rates must be at least 1 per second: {text!r}")
    return rates


def _sizes(arguments: argparse.Namespace) -> None:
    """Fill in every size left unset: the issue's, or the quick ones."""
    for option, (full, quick) in SIZES.items():
        if getattr(arguments, option) is None:
            value = quick if arguments.quick else full
            setattr(arguments, option, type(full)(value))
    if arguments.fleet_sites is None:
        arguments.fleet_sites = _sizes_list(FLEET_SITES[1] if arguments.quick else FLEET_SITES[0])


def scenarios_named(named: list[str]) -> list[str]:
    if not named or "all" in named:
        extra = [name for name in named if name not in ("all", *ALL_SCENARIOS)]
        named = [*ALL_SCENARIOS, *extra]
    unknown = sorted(set(named) - set(KNOWN))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}: use all, {', '.join(KNOWN)}")
    return list(dict.fromkeys(named))


def _run_scenario(
    scenario: str, arguments: argparse.Namespace, report: dict[str, Any], done: set[str]
) -> list[Figure]:
    """The figures of one scenario (bootstrap and wire share their runs)."""
    repeats = arguments.repeats
    if scenario == "capture":
        return capture.run(repeats, arguments.capture_rows, _log)
    if scenario == "e2e":
        profiles: dict[str, Any] = {}
        found = e2e.run(
            repeats,
            arguments.e2e_rows,
            _log,
            arguments.e2e_timeout,
            arguments.py_spy,
            profiles,
        )
        if profiles:
            report["scenarios"]["e2e_py_spy"] = profiles
        return found
    if scenario == "latency":
        return latency.run(repeats, arguments.latency_writes, _log)
    if scenario == "curve":  # issue 17: latency above the local floor at every write rate
        return latency.run_curve(repeats, _log, arguments.curve_rates)
    if scenario in ("bootstrap", "wire"):
        if scenario in done:
            return []
        wanted = {"bootstrap", "wire"} & set(arguments.scenarios_resolved)
        done.update(wanted)
        return bulk.run(
            repeats,
            arguments.bulk_rows,
            _log,
            bootstrap="bootstrap" in wanted,
            wire="wire" in wanted,
            fraction=arguments.wire_fraction,
            timeout_s=arguments.bootstrap_timeout,
        )
    if scenario == "mixed":
        return mixed.run(
            repeats, arguments.mixed_seconds, arguments.mixed_rate, arguments.mixed_ops, _log
        )
    if scenario == "idle":
        return idle.run(repeats, arguments.idle_seconds, _log)
    if scenario == "large_row":  # new-user report: a 30 MiB row and the sessions' heartbeats
        return large_row.run(repeats, _log)
    if scenario == "metadata":  # issue 16: bytes per row and per cell of the bookkeeping
        from bench import metadata

        return metadata.run(repeats, arguments.metadata_rows, _log)
    if scenario == "fleet":  # issue 15: N sites over NATS JetStream against a WebSocket star
        from bench import fleet

        return fleet.run(
            repeats,
            arguments.fleet_sites,
            arguments.fleet_rows,
            arguments.fleet_writes,
            _log,
            kill_server=arguments.fleet_kill_server,
        )
    if scenario == "snapshot":  # issue 16: snapshot bootstrap against the replay
        from bench import snapshot

        return snapshot.run(repeats, arguments.bulk_rows, _log)
    if scenario == "soak":  # issue 16: file size under churn, with tombstone collection
        from bench import soak

        return soak.run(
            arguments.soak_minutes,
            arguments.soak_rate,
            arguments.soak_sample_s,
            _log,
            live_rows=arguments.soak_live_rows,
            plot_path=arguments.soak_plot,
        )
    if scenario == "peers":  # issue 17: pysyncobj and NATS JetStream KV beside syncmesh
        from bench import peers

        return peers.run(repeats, arguments.peer_writes, _log)
    if scenario == "verify":  # issue 7: the hash trees' upkeep and the cost of a verify
        from bench import verify

        return verify.run(repeats, arguments.upkeep_rows, arguments.verify_rows, _log)
    from bench import profile

    report["scenarios"]["profile"] = profile.run(arguments.profile_rows, _log)
    return []


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    _sizes(arguments)
    if arguments.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    scenarios = scenarios_named(list(arguments.scenarios))
    arguments.scenarios_resolved = scenarios
    report: dict[str, Any] = {"meta": _meta(arguments), "scenarios": {}}
    figures: list[Figure] = []
    done: set[str] = set()
    for scenario in scenarios:
        if scenario in done:
            continue
        started = time.perf_counter()
        _log(f"{scenario} ...")
        found = _run_scenario(scenario, arguments, report, done)
        elapsed = time.perf_counter() - started
        figures += found
        for name in sorted({figure.scenario for figure in found}):
            report["scenarios"][name] = {
                "seconds": round(elapsed, 1),
                "figures": [figure.as_json() for figure in found if figure.scenario == name],
            }
    if figures:
        print(render_table(figures))
        failed = [f"{f.scenario}: {f.name}" for f in figures if f.target_met() is False]
        met = [f.name for f in figures if f.target_met()]
        print(f"\ntargets met: {len(met)}, not met: {len(failed)}")
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
