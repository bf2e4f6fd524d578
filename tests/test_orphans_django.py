"""Django's `migrate` after a concurrent delete and child insert: real nodes, real Django.

Issue 14, part 7: a book added at site B to an author that site A deleted
meanwhile leaves, once synced, a book whose author exists nowhere.
Django's schema editor on SQLite runs `PRAGMA foreign_key_check` when
any migration finishes and raises IntegrityError on any violation, so
the next `manage.py migrate` failed on every site.  Here two `syncmesh
serve` processes sync a Django app's tables; the writes go through the
Django ORM (with foreign keys enforced on its own connection, as Django
does); the next migration runs with `manage.py migrate`.

- Under the default policy (Django declares no ON DELETE action: cascade)
  the orphan is deleted at both sites and the migration succeeds.
- Under `keep` the orphan stays, `syncmesh status` names it and warns
  about Django's migrate, and the migration fails as it did before: so
  the first test can fail.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import wait_until_sync
from tests.nodeproc import Cluster, NodeProcess, run_cli

AUTHOR = uuid.UUID(int=1)
BOOK = uuid.UUID(int=2)
SYNC_TIMEOUT_S = 30.0
DJANGO_TIMEOUT_S = 120.0

SETTINGS = """\
import os

SECRET_KEY = "test-only"
INSTALLED_APPS = ["library"]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["LIBRARY_DB"]}
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

MODELS = """\
import uuid

from django.db import models


class Author(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=100)


class Book(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)


class Shelf(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    label = models.CharField(max_length=100)
"""

MIGRATION_1 = """\
import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Author",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=100)),
            ],
        ),
        migrations.CreateModel(
            name="Book",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ("title", models.CharField(max_length=100)),
                (
                    "author",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, to="library.author"
                    ),
                ),
            ],
        ),
    ]
"""

# The next release's migration: a new model.  It touches no synced table,
# yet Django checks every foreign key of the database when it finishes.
MIGRATION_2 = """\
import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("library", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Shelf",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ("label", models.CharField(max_length=100)),
            ],
        ),
    ]
"""

MANAGE = """\
import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
execute_from_command_line(sys.argv)
"""


def make_project(root: Path) -> Path:
    """A Django project with one app, `library`, and its two migrations."""
    files = {
        "manage.py": MANAGE,
        "project/__init__.py": "",
        "project/settings.py": SETTINGS,
        "library/__init__.py": "",
        "library/models.py": MODELS,
        "library/migrations/__init__.py": "",
        "library/migrations/0001_initial.py": MIGRATION_1,
        "library/migrations/0002_shelf.py": MIGRATION_2,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def manage(project: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python manage.py ARGS` for the site whose database is `db`."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env={"LIBRARY_DB": str(db), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=DJANGO_TIMEOUT_S,
        check=False,
    )


def orm(project: Path, db: Path, code: str) -> None:
    """Run Django ORM code at a site (`manage.py shell -c`)."""
    result = manage(
        project, db, "shell", "-c", f"from library.models import *; import uuid; {code}"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def make_site(project: Path, db: Path) -> Path:
    result = manage(project, db, "migrate", "library", "0001")
    assert result.returncode == 0, result.stdout + result.stderr
    run_cli("init", str(db))
    run_cli("track", str(db), "library_author", "library_book")
    return db


def books(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT id, author_id, title FROM library_book").fetchall()


def authors(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT id FROM library_author").fetchall()


def concurrent_delete_and_child(
    cluster: Cluster, project: Path, extra_args: Sequence[str] = ()
) -> tuple[NodeProcess, NodeProcess]:
    """Site a deletes an author while site b, cut off, adds a book to it; then they sync."""
    a_db = make_site(project, cluster.directory / "a.db")
    b_db = make_site(project, cluster.directory / "b.db")
    a = cluster.node("a", a_db, extra_args=extra_args)
    b = cluster.node("b", b_db, peers=[a], extra_args=extra_args)
    cluster.start(a, b)
    orm(project, a_db, f"Author.objects.create(id=uuid.UUID(int={AUTHOR.int}), name='Ann')")
    wait_until_sync(lambda: len(authors(b_db)) == 1, SYNC_TIMEOUT_S, "the author at b")
    a.stop()
    b.stop()
    # Neither site sees the other's write: a deletes the author (Django
    # deletes its books first: a has none), b adds a book to it.
    orm(project, a_db, f"Author.objects.get(id=uuid.UUID(int={AUTHOR.int})).delete()")
    orm(
        project,
        b_db,
        f"Book.objects.create(id=uuid.UUID(int={BOOK.int}),"
        f" author_id=uuid.UUID(int={AUTHOR.int}), title='concurrent')",
    )
    cluster.start(a, b)
    wait_until_sync(lambda: authors(b_db) == [], SYNC_TIMEOUT_S, "the delete at b")
    return a, b


def in_sync(a: NodeProcess, b: NodeProcess) -> bool:
    return books(a.db) == books(b.db) and authors(a.db) == authors(b.db) == []


@pytest.mark.multiprocess
def test_django_migrate_succeeds_after_a_concurrent_delete_under_the_default_policy(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    a, b = concurrent_delete_and_child(cluster, project)
    wait_until_sync(
        lambda: books(a.db) == books(b.db) == [], SYNC_TIMEOUT_S, "the orphan book deleted"
    )
    for node in (a, b):
        wait_until_sync(
            lambda node=node: node.status()["store"]["orphans"] == {},  # type: ignore[misc]
            SYNC_TIMEOUT_S,
            f"no orphans in {node.name}'s status",
        )
    a.stop()
    b.stop()
    for db in (a.db, b.db):
        result = manage(project, db, "migrate")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Applying library.0002_shelf... OK" in result.stdout
    assert cluster.internal_errors() == []


@pytest.mark.multiprocess
def test_django_migrate_fails_on_a_kept_orphan_and_status_says_so(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project")
    config = tmp_path / "syncmesh.toml"
    config.write_text('[tables.orphans]\ndefault = "keep"\n', encoding="utf-8")
    a, b = concurrent_delete_and_child(cluster, project, ["--config", str(config)])
    wait_until_sync(lambda: len(books(a.db)) == 1, SYNC_TIMEOUT_S, "b's book at a")
    assert books(a.db) == books(b.db)
    for node in (a, b):
        assert node.status()["store"]["orphans"] == {"library_book": 1}
    a.stop()
    b.stop()
    shown = run_cli("status", str(a.db))
    assert "library_book" in shown.stdout
    assert "Django's migrate" in shown.stdout
    as_json = json.loads(run_cli("status", str(a.db), "--json").stdout)
    assert as_json["orphans"] == {"library_book": 1}
    for db in (a.db, b.db):
        result = manage(project, db, "migrate")
        assert result.returncode != 0
        assert "IntegrityError" in result.stderr
        assert "does not have a corresponding value in library_author.id" in result.stderr
