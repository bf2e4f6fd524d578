"""A small SQLAlchemy application with Alembic migrations, written into a site's directory.

Version 1 creates `items` (a `sqlalchemy.Uuid` key); version 2 is one more
revision, an `AlembicChange`: a plain `op.add_column`, a batch-mode table
rebuild, `op.alter_column(new_column_name=...)`, the same rename in batch
mode (a rebuild) or `op.drop_column`.  The
`env.py` is the one docs/schema.md shows: `render_as_batch=True`, and
`syncmesh.contrib.sqlalchemy.recheck_tracked_tables` after the migration.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.orm.rollout import FinalSchema, run_command

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations

[loggers]
keys = root,alembic

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s %(name)s: %(message)s
"""

ENV_PY = """\
import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from syncmesh.contrib.sqlalchemy import recheck_tracked_tables

fileConfig(context.config.config_file_name)
engine = sa.create_engine(
    f"sqlite:///{os.environ['SITE_DB']}",
    connect_args={"timeout": 30},  # the node may hold the write lock for a moment
    poolclass=sa.pool.NullPool,
)
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
recheck_tracked_tables(engine)
"""

WRITER_PY = """\
\"\"\"The application's writer: SQLAlchemy writes `items` (writer_loop.py).\"\"\"

import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlalchemy as sa

from writer_loop import run

engine = sa.create_engine(f"sqlite:///{os.environ['SITE_DB']}", connect_args={"timeout": 30})
metadata = sa.MetaData()
KEY = "id"
TABLES = {
    name: sa.Table(
        name, metadata, sa.Column(KEY, sa.Uuid(), primary_key=True), autoload_with=engine
    )
    for name in sys.argv[1:]
}


def kind(column):
    return "int" if isinstance(column.type, sa.Integer) else "text"


def insert(table, values):
    key = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(TABLES[table].insert().values(id=key, **values))
    return key.hex


def update(table, key, values):
    rows = TABLES[table]
    with engine.begin() as connection:
        result = connection.execute(
            rows.update().where(rows.c.id == uuid.UUID(key)).values(**values)
        )
    assert result.rowcount == 1, (table, key)


def delete(table, key):
    rows = TABLES[table]
    with engine.begin() as connection:
        result = connection.execute(rows.delete().where(rows.c.id == uuid.UUID(key)))
    assert result.rowcount == 1, (table, key)


run(
    site=os.environ["SITE_NAME"],
    record_path=os.environ["SITE_RECORD"],
    stop_path=os.environ["SITE_STOP"],
    schema={
        # (a Computed column is the database's to compute)
        name: {c.name: kind(c) for c in table.columns if not c.primary_key and c.computed is None}
        for name, table in TABLES.items()
    },
    insert=insert,
    update=update,
    delete=delete,
    writes_max=int(os.environ["SITE_WRITES_MAX"]),
    seconds_max=float(os.environ["SITE_WRITER_SECONDS_MAX"]),
    pause_s=float(os.environ["SITE_WRITER_PAUSE_S"]),
)
"""

ITEM_COLUMNS = [
    'sa.Column("title", sa.String(100), nullable=False)',
    'sa.Column("qty", sa.Integer(), nullable=False)',
]
NOTE = 'sa.Column("note", sa.String(100), nullable=True)'


@dataclass(frozen=True)
class AlembicChange:
    """Revision 2: its `upgrade()` body."""

    name: str
    upgrade: str
    columns_v1: list[str] = field(default_factory=lambda: list(ITEM_COLUMNS))
    final: FinalSchema = field(default_factory=FinalSchema)


CHANGES = [
    AlembicChange(
        "add_column",
        f'op.add_column("items", {NOTE})',
        final=FinalSchema(defaults={"items": {"note": None}}),
    ),
    AlembicChange(
        "batch_rebuild",
        'with op.batch_alter_table("items", recreate="always") as batch:\n'
        '        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False,'
        ' server_default="0"))',
        final=FinalSchema(defaults={"items": {"priority": 0}}),
    ),
    AlembicChange(
        "alter_column_rename",
        'op.alter_column("items", "title", new_column_name="name")',
        final=FinalSchema(renames={"items": {"title": "name"}}),
    ),
    AlembicChange(
        # A rename in batch mode rebuilds the table: told by the column's values.
        "batch_rename",
        'with op.batch_alter_table("items", recreate="always") as batch:\n'
        '        batch.alter_column("title", new_column_name="name")',
        final=FinalSchema(renames={"items": {"title": "name"}}),
    ),
    AlembicChange(
        "drop_column",
        'op.drop_column("items", "note")',
        columns_v1=[*ITEM_COLUMNS, NOTE],
        final=FinalSchema(dropped={"items": frozenset({"note"})}),
    ),
    AlembicChange(
        "computed_column",
        'op.add_column("items", sa.Column("double_qty", sa.Integer(), sa.Computed("qty * 2")))',
        final=FinalSchema(generated={"items": {"double_qty": lambda row: 2 * row["qty"]}}),
    ),
]

# No DDL at all: the harness itself passes on any commit.
NO_DDL = AlembicChange("no_ddl", 'op.execute("SELECT 1")')


def revision(number: int, down: int | None, upgrade: str) -> str:
    return (
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{number:04d}"\n'
        f"down_revision = {None if down is None else repr(f'{down:04d}')}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n    {upgrade}\n"
    )


class AlembicProject:
    """The application at version 1 or 2 of `change` (rollout.Project)."""

    def __init__(self, change: AlembicChange) -> None:
        self.change = change

    def write(self, directory: Path, version: int) -> None:
        versions = directory / "migrations" / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        columns = ", ".join(
            ['sa.Column("id", sa.Uuid(), primary_key=True)', *self.change.columns_v1]
        )
        files = {
            "alembic.ini": ALEMBIC_INI,
            "writer.py": WRITER_PY,
            "migrations/env.py": ENV_PY,
            "migrations/script.py.mako": "",
            "migrations/versions/0001_items.py": revision(
                1, None, f'op.create_table("items", {columns})'
            ),
        }
        if version >= 2:
            files[f"migrations/versions/0002_{self.change.name}.py"] = revision(
                2, 1, self.change.upgrade
            )
        for name, text in files.items():
            (directory / name).write_text(text)

    def migrate(self, directory: Path, db: Path) -> str:
        result = run_command(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            directory,
            {"SITE_DB": str(db)},
            f"alembic upgrade head in {directory.name}",
        )
        return result.stdout + result.stderr

    def writer_command(self, directory: Path) -> list[str]:
        return [sys.executable, "writer.py", "items"]

    def tables(self, version: int) -> list[str]:
        return ["items"]
