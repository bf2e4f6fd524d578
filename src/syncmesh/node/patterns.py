"""`[tables] track` patterns: tables a migration creates are tracked without a command.

`serve` tracks the named tables and every table a pattern (`"*"`,
`"app_*"`, fnmatch) matches; the node does it again whenever the set of
the database's tables changes (its capture loop, on the store thread), so
a table created by a migration on a running node starts syncing at once.
A table a pattern matches that cannot be tracked (no primary key, say) is
logged with the reason and skipped: one bad table never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from syncmesh.errors import SyncError
from syncmesh.node.config import tables_matching
from syncmesh.store import Store
from syncmesh.store.base import TrackProgress

log = logging.getLogger(__name__)


def track_matches(
    store: Store,
    patterns: Sequence[str],
    progress: TrackProgress | None = None,
    *,
    allow_integer_keys: Collection[str] = (),
) -> list[str]:
    """On the store thread: track every table that `patterns` match and that is untracked.

    Returns the tables it started tracking.  Each is tracked on its own, so
    one that is refused (no primary key; keys SQLite allocates per site,
    unless named in `allow_integer_keys`) does not keep the others from syncing.
    """
    if not patterns:
        return []
    tracked = {spec.name for spec in store.specs()}
    started = []
    for table in tables_matching(patterns, store.application_tables()):
        if table in tracked:
            continue
        try:
            warnings = store.track([table], progress, allow_integer_keys=allow_integer_keys)
        except SyncError as exc:
            log.warning(
                "table %s matches [tables] track %s but cannot be tracked: %s",
                table,
                list(patterns),
                exc,
            )
            continue
        for warning in warnings:
            log.warning("%s", warning)
        log.info("tracking table %s: it matches [tables] track %s", table, list(patterns))
        started.append(table)
    return started
