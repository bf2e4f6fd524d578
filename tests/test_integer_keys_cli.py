"""Issue 14, part 5 where users meet it: `track`, `config check`, `serve`, `status`, ORMs.

A key SQLite allocates (INTEGER PRIMARY KEY, the default of Django and
SQLAlchemy models) is refused by the real command line with the reason,
the UUID fix and the opt-in; the opt-in tracks it; a table tracked before
the refusal is named by a running node's log, `/v1/status` and `syncmesh
status`, live and from the file, until the opt-in is recorded.  The
tables come from a real Django `migrate` and a real SQLAlchemy
`create_all`.  The store-level rules are in tests/test_integer_keys.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, String, Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from syncmesh.store.sqlite.integer_keys import SPEC_FIELD
from tests.helpers import run_cli
from tests.helpers import sqlite3_shell as shell
from tests.nodeproc import Cluster

CLI_TIMEOUT_S = 60
BOOKS = "CREATE TABLE books (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT)"
NOTES = "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"
UUID_FIX = "UUIDField(primary_key=True, default=uuid.uuid4, editable=False)"


def make_file(path: Path, *ddl: str) -> Path:
    shell(path, ";".join(ddl))
    return path


def spec_of(db: Path, table: str) -> dict[str, object]:
    text = shell(db, f"SELECT spec FROM _syncmesh_tables WHERE name = '{table}'")
    decoded: dict[str, object] = json.loads(text)
    return decoded


def test_track_refuses_an_integer_key_and_the_opt_in_tracks_it(tmp_path: Path) -> None:
    db = make_file(tmp_path / "app.db", BOOKS, NOTES)
    refused = run_cli("track", str(db), "books", timeout_s=CLI_TIMEOUT_S)
    assert refused.returncode == 1, refused.stdout
    assert "Traceback" not in refused.stderr
    assert refused.stderr.startswith(
        "Error: table 'books': its primary key 'id' is an INTEGER PRIMARY KEY AUTOINCREMENT"
    ), refused.stderr
    assert UUID_FIX in refused.stderr
    assert f"syncmesh track {db} books --allow-integer-keys" in refused.stderr
    # The file is as it was: nothing tracked, no triggers.
    assert shell(db, "SELECT count(*) FROM _syncmesh_tables") == "0\n"
    assert shell(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'") == "0\n"

    allowed = run_cli(
        "track", str(db), "books", "notes", "--allow-integer-keys", timeout_s=CLI_TIMEOUT_S
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == f"{db}: tracking books, notes"
    assert spec_of(db, "books")[SPEC_FIELD] is True
    assert SPEC_FIELD not in spec_of(db, "notes")  # a TEXT key needs no opt-in


def test_config_check_and_serve_refuse_an_integer_key_unless_allowed(tmp_path: Path) -> None:
    db = make_file(tmp_path / "app.db", BOOKS, NOTES)
    assert run_cli("init", str(db), timeout_s=CLI_TIMEOUT_S).returncode == 0
    config = tmp_path / "syncmesh.toml"
    tables = '[tables]\ntrack = ["notes", "books"]\n'
    config.write_text(f'[node]\ndatabase = "{db.as_posix()}"\nlisten = "127.0.0.1:0"\n{tables}')
    checked = run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S)
    assert checked.returncode == 1
    assert checked.stderr.startswith(
        "Error: tables.track: table 'books': its primary key 'id' is an INTEGER PRIMARY KEY"
    ), checked.stderr
    assert "'notes'" not in checked.stderr
    served = run_cli("serve", "--config", str(config), timeout_s=CLI_TIMEOUT_S)
    assert served.returncode == 1
    assert "Error: table 'books': its primary key 'id'" in served.stderr, served.stderr
    assert UUID_FIX in served.stderr
    assert shell(db, "SELECT count(*) FROM _syncmesh_tables") == "0\n"

    config.write_text(config.read_text() + 'allow_integer_keys = ["books"]\n')
    checked = run_cli("config", "check", str(config), timeout_s=CLI_TIMEOUT_S)
    assert checked.returncode == 0, checked.stderr
    assert 'allow_integer_keys = ["books"]' in checked.stdout


@pytest.mark.multiprocess
def test_a_table_tracked_before_the_refusal_is_named_by_serve_and_status(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Goal: an operator whose file was tracked by an older version hears of the risky key.

    Method: books is tracked with the opt-in and the opt-in is removed with
    the sqlite3 shell, which leaves the file as an older version wrote it.
    A real node serving it must log the warning and show it in /v1/status;
    `syncmesh status` must print it from the live view and from the file,
    without calling the node unhealthy.  After `track --allow-integer-keys`
    of the tracked table, status is quiet.
    """
    db = make_file(tmp_path / "a.db", BOOKS)
    assert run_cli("track", str(db), "books", "--allow-integer-keys").returncode == 0
    shell(db, f"UPDATE _syncmesh_tables SET spec = json_remove(spec, '$.{SPEC_FIELD}')")
    node = cluster.node("a", db)
    cluster.start(node)
    node.wait_for_log("tracked table 'books': its primary key 'id' is an INTEGER PRIMARY KEY")
    warnings = node.status()["store"]["warnings"]
    assert len(warnings) == 1, warnings
    assert "It was tracked before syncmesh refused such keys and keeps syncing" in warnings[0]
    assert node.status()["health"]["ok"] is True
    shell(db, "INSERT INTO books (title) VALUES ('still synced')")

    live = run_cli("status", str(db), timeout_s=CLI_TIMEOUT_S)
    assert live.returncode == 0, live.stderr
    assert "its live view" in live.stderr
    assert "warning" in live.stdout
    assert "INTEGER PRIMARY KEY" in " ".join(live.stdout.split())
    node.stop()

    from_file = run_cli("status", str(db), "--json", timeout_s=CLI_TIMEOUT_S)
    assert from_file.returncode == 0, from_file.stderr
    assert "no node is running" in from_file.stderr
    document = json.loads(from_file.stdout)
    assert len(document["warnings"]) == 1
    assert document["warnings"][0].startswith("table 'books': its primary key 'id'")

    again = run_cli("track", str(db), "books", "--allow-integer-keys", timeout_s=CLI_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    quiet = run_cli("status", str(db), "--json", timeout_s=CLI_TIMEOUT_S)
    assert json.loads(quiet.stdout)["warnings"] == []
    assert "INTEGER PRIMARY KEY" not in quiet.stderr  # the open logs nothing either
    assert cluster.internal_errors() == []


DJANGO_MODELS = """
import uuid

from django.db import models


class Author(models.Model):  # the default key: an AutoField (BigAutoField here)
    name = models.CharField(max_length=100)


class Book(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, null=True)
"""

DJANGO_MIGRATE = """
import sys

import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}},
    INSTALLED_APPS=["library"],
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",  # as `startproject` sets it
    USE_TZ=True,
)
django.setup()

from django.core.management import call_command

call_command("makemigrations", "library", verbosity=0)
call_command("migrate", verbosity=0)
"""


def test_a_django_model_with_the_default_key_is_refused_with_the_uuidfield_fix(
    tmp_path: Path,
) -> None:
    app = tmp_path / "library"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(textwrap.dedent(DJANGO_MODELS))
    (tmp_path / "migrate.py").write_text(textwrap.dedent(DJANGO_MIGRATE))
    db = tmp_path / "site.db"
    migrated = subprocess.run(
        [sys.executable, "migrate.py", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr

    refused = run_cli("track", str(db), "library_author", timeout_s=CLI_TIMEOUT_S)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.startswith(
        "Error: table 'library_author': its primary key 'id' is an INTEGER PRIMARY KEY"
    ), refused.stderr
    assert UUID_FIX in refused.stderr
    # The model with the UUIDField key is tracked (its foreign key only warns).
    tracked = run_cli("track", str(db), "library_book", timeout_s=CLI_TIMEOUT_S)
    assert tracked.returncode == 0, tracked.stderr
    assert "INTEGER PRIMARY KEY" not in tracked.stderr
    assert tracked.stdout.strip() == f"{db}: tracking library_book"


class SqlAlchemyBase(DeclarativeBase):
    pass


class SqlAlchemyAuthor(SqlAlchemyBase):  # the default key: `int`, an INTEGER PRIMARY KEY
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class SqlAlchemyBook(SqlAlchemyBase):
    __tablename__ = "books"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("authors.id"))


class SqlAlchemyShelf(SqlAlchemyBase):
    __tablename__ = "shelves"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))


def test_a_sqlalchemy_model_with_an_int_key_is_refused_and_uuid_keys_are_tracked(
    tmp_path: Path,
) -> None:
    db = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{db}")
    SqlAlchemyBase.metadata.create_all(engine)
    engine.dispose()

    refused = run_cli("track", str(db), "authors", timeout_s=CLI_TIMEOUT_S)
    assert refused.returncode == 1, refused.stdout
    assert "table 'authors': its primary key 'id' is an INTEGER PRIMARY KEY," in refused.stderr
    assert "mapped_column(Uuid, primary_key=True, default=uuid.uuid4)" in refused.stderr
    tracked = run_cli("track", str(db), "books", "shelves", timeout_s=CLI_TIMEOUT_S)
    assert tracked.returncode == 0, tracked.stderr
    assert tracked.stdout.strip() == f"{db}: tracking books, shelves"
