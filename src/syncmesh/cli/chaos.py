"""`syncmesh chaos`: the fault-injection harness from the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from syncmesh.chaos import (
    ALL_KINDS,
    FAULT_DESCRIPTIONS,
    FAULT_KINDS,
    FEATURES,
    MIGRATION_PLANS,
    NATS_ACCEPTED_KINDS,
    NATS_DEFAULT_KINDS,
    NATS_KINDS,
    TOPOLOGIES,
    TRANSPORTS,
    RunOptions,
    ScheduleResult,
    json_report,
    parse_features,
    parse_plans,
    run_schedules,
    schedule_line,
    summary,
)
from syncmesh.chaos.natsservers import NatsServerError, nats_server_binary

VIOLATIONS_SHOWN = 5


def _kinds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None  # the transport's default deck (_deck)
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in ALL_KINDS]
    if unknown or not kinds:
        raise click.BadParameter(
            f"unknown fault kind(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(ALL_KINDS)}"
        )
    if "restore" in kinds and "migrate" in kinds:
        # A copy from before a node's migration would take it back under its
        # client, which writes the new shape already (docs/chaos.md).
        raise click.BadParameter("restore and migrate cannot be combined: run them separately")
    return kinds


def _deck(kinds: list[str] | None, transport: str) -> list[str]:
    """The kinds to deal: the transport's default, or the ones named if they fit it.

    Over NATS the nodes have no WebSocket links, so the link faults
    (isolate, halves, oneway, flap, delay, bandwidth, reset, lossy,
    duplicate, reorder) have nothing to act on; the clock, redelivery,
    lifecycle and migration faults are not run over the stream
    yet (`restore` is, opt-in).  Each is refused by name, not silently left out.  The NATS faults
    need a NATS cluster to act on.
    """
    if kinds is None:
        return list(NATS_DEFAULT_KINDS if transport == "nats" else FAULT_KINDS)
    if transport == "nats":
        refused = [kind for kind in kinds if kind not in NATS_ACCEPTED_KINDS]
        if refused:
            raise click.BadParameter(
                f"{', '.join(refused)} cannot run with --transport nats (no WebSocket links,"
                f" or not supported over the stream yet); choose from"
                f" {', '.join(NATS_ACCEPTED_KINDS)}",
                param_hint="'--faults'",
            )
        return kinds
    needing = [kind for kind in kinds if kind in NATS_KINDS]
    if needing:
        raise click.BadParameter(
            f"{', '.join(needing)} strike(s) nats-servers: add --transport nats",
            param_hint="'--faults'",
        )
    return kinds


def _check_nats_installed() -> None:
    """--transport nats needs the client and a server binary: say so before any schedule."""
    if importlib.util.find_spec("nats") is None:
        raise click.UsageError("--transport nats needs nats-py: pip install 'syncmesh[nats]'")
    try:
        nats_server_binary()
    except NatsServerError as exc:
        raise click.UsageError(str(exc)) from None


def _features(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_features(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _plans(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_plans(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every schedule.")
@click.option(
    "--nodes", type=click.IntRange(2, 9), default=5, show_default=True, help="Node processes."
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(2, 3600),
    default=10.0,
    show_default=True,
    help="Seconds of workload and faults per schedule (then heal and check).",
)
@click.option(
    "--schedules",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="How many schedules to run, one after another.",
)
@click.option(
    "--only",
    type=click.IntRange(min=0),
    default=None,
    help="Run just this schedule index (reproduce a failure from its seed).",
)
@click.option(
    "--topology",
    type=click.Choice(TOPOLOGIES),
    default="mesh",
    show_default=True,
    help="Which links exist: every pair, a hub (node 0), or a line.",
)
@click.option(
    "--faults",
    "kinds",
    default=None,
    callback=_kinds,
    help="Comma-separated fault kinds to draw from (default: all but the opt-in ones, or with"
    " --transport nats: " + ",".join(NATS_DEFAULT_KINDS) + "; see docs/chaos.md).",
)
@click.option(
    "--transport",
    type=click.Choice(TRANSPORTS),
    default="websocket",
    show_default=True,
    help="How the nodes sync: WebSocket links through proxies (--topology), or a fleet stream"
    " on a 3-server NATS JetStream cluster the run starts (needs nats-py and nats-server).",
)
@click.option(
    "--adversarial",
    default="none",
    callback=_features,
    help="Adversarial workload features: all, none, or some of "
    + ",".join(FEATURES)
    + " (docs/chaos.md).",
)
@click.option(
    "--migrations",
    "plans",
    default="default",
    callback=_plans,
    help="Plans the `migrate` fault deals: default (all but the opt-in drop+readd,"
    " rebuild-rename and rebuild-drop), all, or"
    " some of " + ",".join(MIGRATION_PLANS) + " (docs/chaos.md).",
)
@click.option(
    "--faults-per-schedule",
    type=click.IntRange(0, 50),
    default=4,
    show_default=True,
    help="Faults drawn for each schedule.",
)
@click.option(
    "--max-clock-drift",
    "drift_s",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="The nodes' drift limit, seconds (clock faults are drawn around it).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the nodes' files go (default: a temporary directory).",
)
@click.option("--keep", is_flag=True, help="Keep the files of passing schedules too.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to this file.",
)
@click.option("--list-faults", is_flag=True, help="Describe the fault kinds and exit.")
def chaos(
    seed: int,
    nodes: int,
    duration_s: float,
    schedules: int,
    only: int | None,
    topology: str,
    kinds: list[str] | None,
    transport: str,
    faults_per_schedule: int,
    drift_s: float,
    workdir: Path | None,
    keep: bool,
    json_path: Path | None,
    list_faults: bool,
    adversarial: tuple[str, ...],
    plans: tuple[str, ...],
) -> None:
    """Run nodes under injected faults and check that nothing is lost.

    Starts NODES real node processes on 127.0.0.1 with a TCP proxy on every
    link (with --transport nats: a 3-server JetStream cluster, and a proxy
    between each node and each server), writes from one client process per
    node, injects faults drawn from the seed, heals, waits until the nodes
    are quiet and checks convergence, lost writes, torn transactions, resurrections, echo and
    clock health.  Exit status 1 on any violation; the report gives the
    command that reproduces each failing schedule.
    """
    if list_faults:
        for kind in ALL_KINDS:
            click.echo(f"{kind:<14} {FAULT_DESCRIPTIONS[kind]}")
        return
    deck = _deck(kinds, transport)
    if transport == "nats":
        _check_nats_installed()
    options = RunOptions(
        seed=seed,
        nodes=nodes,
        duration_s=duration_s,
        schedules=1 if only is not None else schedules,
        first=only or 0,
        topology=topology,
        kinds=deck,
        transport=transport,
        faults_per_schedule=faults_per_schedule,
        drift_ms=round(drift_s * 1000),
        workdir=workdir,
        keep=keep,
        adversarial=adversarial,
        plans=plans,
    )

    def report(result: ScheduleResult) -> None:
        click.echo(schedule_line(result))
        for violation in result.violations[:VIOLATIONS_SHOWN]:  # at once, not only at the end
            click.echo(f"    {violation.checker}: {violation.message}")

    results = run_schedules(options, report)
    click.echo(summary(options, results))
    if json_path is not None:
        json_path.write_text(json.dumps(json_report(options, results), indent=2) + "\n")
    sys.exit(1 if any(result.violations for result in results) else 0)
