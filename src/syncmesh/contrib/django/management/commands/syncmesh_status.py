"""`manage.py syncmesh_status`: `syncmesh status` for the project's synced database.

The live view of the node serving the file (found through its lock file),
or the file's bookkeeping when no node runs; exit status 2 when unhealthy,
as `syncmesh status` (docs/cli.md#status), so it works as a deploy check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncmesh.cli.status import UNHEALTHY_EXIT, status_of_file
from syncmesh.contrib.django.apps import synced_alias, synced_database_path
from syncmesh.contrib.recheck import is_in_memory


class Command(BaseCommand):
    help = "Show the syncmesh status of the synced database (SYNCMESH_DATABASE)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")
        parser.add_argument(
            "--max-lag",
            type=float,
            default=None,
            help="Exit 2 when a peer is more than this many seconds behind.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = synced_alias()
        path, problem = synced_database_path(alias)
        if path is None or is_in_memory(path):
            raise CommandError(problem or f"DATABASES[{alias!r}] is an in-memory database")
        if not Path(path).exists():
            raise CommandError(f"{path} does not exist (run `manage.py migrate` first)")
        try:
            problems = status_of_file(
                Path(path), as_json=options["json"], max_lag_s=options["max_lag"]
            )
        except click.ClickException as exc:
            raise CommandError(exc.message) from exc
        if problems:
            raise CommandError("unhealthy: " + "; ".join(problems), returncode=UNHEALTHY_EXIT)
