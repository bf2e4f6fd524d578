"""The text and JSON reports of a chaos run."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from syncmesh.chaos.faults import ALL_KINDS, FAULT_KINDS, NATS_DEFAULT_KINDS
from syncmesh.chaos.migrations import DEFAULT_PLANS
from syncmesh.chaos.run import RunOptions, ScheduleResult


def schedule_line(result: ScheduleResult) -> str:
    schedule = result.schedule
    verdict = "ok" if not result.violations else f"{len(result.violations)} VIOLATION(S)"
    kinds = ",".join(fault.kind for fault in schedule.faults) or "-"
    quiesce = "-" if result.quiesce_s is None else f"{result.quiesce_s:.1f}s"
    layout = "nats" if schedule.transport == "nats" else schedule.topology
    return (
        f"schedule {schedule.index:>4} {layout:<5} faults {kinds:<36}"
        f" writes {result.writes:>5} exact {result.tally.exact:>5}"
        f" quiesce {quiesce:>6} {result.elapsed_s:5.1f}s  {verdict}"
    )


def reproduce_command(options: RunOptions, result: ScheduleResult) -> str:
    schedule = result.schedule
    default = NATS_DEFAULT_KINDS if options.transport == "nats" else FAULT_KINDS
    kinds = "" if options.kinds == list(default) else f" --faults {','.join(options.kinds)}"
    layout = f" --topology {schedule.topology}"
    if options.transport == "nats":
        layout = " --transport nats"
    extra = f" --adversarial {','.join(options.adversarial)}" if options.adversarial else ""
    if "migrate" in options.kinds and options.plans != DEFAULT_PLANS:
        extra += f" --migrations {','.join(options.plans)}"
    return (
        f"syncmesh chaos --seed {schedule.seed} --only {schedule.index}"
        f" --nodes {schedule.nodes}{layout}"
        f" --duration {schedule.duration_s:g} --faults-per-schedule"
        f" {options.faults_per_schedule}{kinds}{extra}"
    )


def summary(options: RunOptions, results: list[ScheduleResult]) -> str:
    faults: Counter[str] = Counter(
        fault.kind for result in results for fault in result.schedule.faults
    )
    writes = sum(r.writes for r in results)
    exact = sum(r.tally.exact for r in results)
    superseded = sum(r.tally.superseded_life for r in results)
    unverified = sum(r.tally.unverified for r in results)
    orders = sum(r.tally.orders for r in results)
    collected = sum(r.tally.collected for r in results)
    failed = sum(r.failed_writes for r in results)
    restore_exempt = sum(r.writes_restore_exempt for r in results)
    held_at_restore = sum(r.rows_held_at_restore for r in results)
    quarantined = sum(r.writes_quarantined for r in results)
    wire = sum(r.bytes_on_wire for r in results)
    applied = sum(r.changes_applied for r in results)
    quiesce = [r.quiesce_s for r in results if r.quiesce_s is not None]
    lines = [
        "",
        f"chaos run: seed {options.seed}, {len(results)} schedule(s), {options.nodes} nodes,"
        f" {'a NATS JetStream fleet' if options.transport == 'nats' else options.topology},"
        f" {options.duration_s:g} s of faults each",
        f"operations: {writes} acknowledged writes ({orders} order transactions),"
        f" {failed} refused (a node held the lock, or a constraint said no)",
        f"  stamps read back and checked exactly: {exact}; superseded by a later delete or"
        f" re-insert: {superseded}; replaced before the stamp could be read: {unverified}"
        + (
            f"; taken back by a restore or a re-join before anyone held them: {restore_exempt}"
            if restore_exempt
            else ""
        )
        + (
            f"; rows another node held that a restore took back (to be recovered):"
            f" {held_at_restore}"
            if held_at_restore
            else ""
        )
        + (
            f"; turned away by a constraint, held in a quarantine: {quarantined}"
            if quarantined
            else ""
        )
        + (f"; keys deleted and their tombstone collected: {collected}" if collected else ""),
        *(
            [
                f"  forgotten {sum(r.forgotten for r in results)}, refused on return"
                f" {sum(r.refused for r in results)}, re-joined from a snapshot"
                f" {sum(r.rejoined for r in results)}"
            ]
            if any(r.forgotten for r in results)
            else []
        ),
        "faults: "
        + (", ".join(f"{kind} {faults[kind]}" for kind in ALL_KINDS if faults[kind]) or "none"),
        *(
            [
                "  nats-servers restarted after a kill:"
                f" {sum(r.nats_server_restarts for r in results)}"
            ]
            if options.transport == "nats"
            else []
        ),
        f"  connection resets {sum(r.resets for r in results)}, frames duplicated"
        f" {sum(r.frames_duplicated for r in results)}, reordered"
        f" {sum(r.frames_reordered for r in results)}, far stamps refused"
        f" {sum(r.drift_refusals for r in results)}",
        *(
            [
                "  rows a feed missed, found and merged by the periodic verify:"
                f" {sum(r.rows_repaired for r in results)}, in "
                + ", ".join(r.schedule.name for r in results if r.rows_repaired)
            ]
            if any(r.rows_repaired for r in results)
            else []
        ),
        f"wire: {wire} bytes for {applied} applied changes"
        + (f" ({wire / applied:.0f} bytes per change)" if applied else ""),
        "quiescence after healing: "
        + (
            f"median {statistics.median(quiesce):.1f} s, max {max(quiesce):.1f} s"
            if quiesce
            else "-"
        ),
    ]
    failures = [r for r in results if r.violations]
    if not failures:
        lines.append("violations: none")
        return "\n".join(lines)
    lines.append(
        f"violations: {sum(len(r.violations) for r in failures)} in {len(failures)} schedule(s)"
    )
    for result in failures:
        lines.append(f"  {result.schedule.name} (files kept in {result.directory}):")
        for fault in result.schedule.faults:
            lines.append(f"      fault {fault.describe(result.schedule.links)}")
        for violation in result.violations[:20]:
            lines.append(f"    {violation.checker}: {violation.message}")
        if len(result.violations) > 20:
            lines.append(f"    ... and {len(result.violations) - 20} more")
        lines.append(f"    reproduce: {reproduce_command(options, result)}")
    return "\n".join(lines)


def json_report(options: RunOptions, results: list[ScheduleResult]) -> dict[str, Any]:
    return {
        "seed": options.seed,
        "nodes": options.nodes,
        "topology": options.topology,
        "transport": options.transport,
        "duration_s": options.duration_s,
        "faults_per_schedule": options.faults_per_schedule,
        "kinds": options.kinds,
        "adversarial": list(options.adversarial),
        "migrations": list(options.plans),
        "schedules": [result.as_json() for result in results],
        "violations": sum(len(result.violations) for result in results),
    }
