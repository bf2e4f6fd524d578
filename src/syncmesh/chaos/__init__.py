"""The fault-injection harness: `syncmesh chaos`.

Real node processes on 127.0.0.1, one TCP proxy per link for network
faults, signals for process faults, a clock seam for clock faults, real
client processes writing the files, and checkers for the properties of
PROPERTIES.md.  docs/chaos.md tells how to run it and read its report.
"""

from syncmesh.chaos.adversarial import FEATURES, parse_features
from syncmesh.chaos.faults import (
    ALL_KINDS,
    FAULT_DESCRIPTIONS,
    FAULT_KINDS,
    NATS_ACCEPTED_KINDS,
    NATS_DEFAULT_KINDS,
    NATS_KINDS,
    TOPOLOGIES,
    TRANSPORTS,
)
from syncmesh.chaos.migrations import MIGRATION_PLANS, parse_plans
from syncmesh.chaos.report import json_report, reproduce_command, schedule_line, summary
from syncmesh.chaos.run import RunOptions, ScheduleResult, run_schedules

__all__ = [
    "ALL_KINDS",
    "FEATURES",
    "FAULT_DESCRIPTIONS",
    "FAULT_KINDS",
    "MIGRATION_PLANS",
    "NATS_ACCEPTED_KINDS",
    "NATS_DEFAULT_KINDS",
    "NATS_KINDS",
    "TOPOLOGIES",
    "TRANSPORTS",
    "RunOptions",
    "ScheduleResult",
    "json_report",
    "parse_features",
    "parse_plans",
    "reproduce_command",
    "run_schedules",
    "schedule_line",
    "summary",
]
