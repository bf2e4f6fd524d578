"""`syncmesh.contrib.sqlalchemy`: the Alembic hook for projects whose SQLite file syncmesh syncs.

Call `recheck_tracked_tables(connection)` in Alembic's `env.py` after the
migrations' transaction has committed (docs/schema.md shows the whole
`env.py`).  It re-checks the tracked tables of the file the connection is
bound to: the node's triggers and bookkeeping follow the new schema at
once, and what syncmesh did and any problem left are printed in
`alembic upgrade`'s output.  A migration that succeeded is never made to
fail by it.

Configure Alembic with `render_as_batch=True` on SQLite: batch mode
rebuilds a table (create, copy, drop, rename) for what `ALTER TABLE` cannot
do, and syncmesh recognises the rebuild.  Plain `op.add_column`,
`op.alter_column(..., new_column_name=...)` and `op.drop_column` are
`ALTER TABLE` statements (batch mode on SQLite 3.35+ turns a rename or a
drop into one too).  `sqlalchemy.Uuid` primary keys (stored as 32 hex
characters on SQLite) merge across sites; integer keys do not
(docs/keys.md).
"""

from __future__ import annotations

import logging
import sys

from sqlalchemy.engine import Connection, Engine

from syncmesh.contrib.recheck import Recheck, Writer, report
from syncmesh.contrib.recheck import recheck_tracked_tables as recheck_file

log = logging.getLogger(__name__)


def database_of(bind: Engine | Connection) -> str | None:
    """The SQLite file of `bind`, or None if it is not a SQLite file."""
    url = bind.engine.url
    if url.get_backend_name() != "sqlite":
        return None
    return url.database or ""


def recheck_tracked_tables(
    bind: Engine | Connection, *, stdout: Writer | None = None, quiet: bool = False
) -> Recheck:
    """Re-check the tracked tables of `bind`'s SQLite file; print the result.

    The lines go to `stdout` (default: `sys.stdout`), or, with `quiet`,
    only to the log (logger `syncmesh.contrib.sqlalchemy`).

    Run it after the migration's transaction committed: on a connection
    still in a transaction, the re-check would wait for that transaction's
    write lock (SQLite lets one writer in at a time).
    """
    database = database_of(bind)
    if database is None:
        result = Recheck(
            str(bind.engine.url.render_as_string(hide_password=True)),
            problems=["syncmesh syncs SQLite files only"],
            synced=False,
        )
    else:
        result = recheck_file(database)
    report(result, log, None if quiet else (stdout or sys.stdout))
    return result
