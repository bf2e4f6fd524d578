"""A small Django project ("shop"), written into a site's directory at a version.

Version 1 is the initial schema; version 2 is one migration of a
`DjangoChange` (a field with a default, a nullable field, a rename, a new
model, a dropped field), written as `makemigrations` would write it.  Keys
are `UUIDField(primary_key=True, default=uuid.uuid4)`: random keys merge
across sites, integer keys do not (docs/keys.md).  The app
`syncmesh.contrib.django` is installed, as docs/schema.md tells users to.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.orm.rollout import FinalSchema, run_command

MANAGE_PY = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

APPS = ["shop", "syncmesh.contrib.django"]
SETTINGS_PY = """\
import os

SECRET_KEY = "not-secret: a test project"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = {apps!r}
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["SITE_DB"],
        # A node applies peers' batches to the same file: wait for its write
        # lock, and take ours at BEGIN (no lock upgrade that could fail).
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SYNCMESH_DATABASE = "default"
"""

WRITER_PY = """\
\"\"\"The shop's writer: Django's ORM writes every model of the app (writer_loop.py).\"\"\"

import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

import django

django.setup()

from django.apps import apps
from django.db import models

from writer_loop import run

MODELS = {model._meta.db_table: model for model in apps.get_app_config("shop").get_models()}
FIELDS = {
    table: {
        f.column: f
        for f in model._meta.concrete_fields
        if not f.primary_key and not f.generated  # the database computes a GeneratedField
    }
    for table, model in MODELS.items()
}


def kind(field):
    return "int" if isinstance(field, models.IntegerField) else "text"


def attributes(table, values):
    return {FIELDS[table][column].attname: value for column, value in values.items()}


def insert(table, values):
    row = MODELS[table](**attributes(table, values))
    row.save(force_insert=True)
    return row.pk.hex


def update(table, key, values):
    changed = MODELS[table].objects.filter(pk=uuid.UUID(key)).update(**attributes(table, values))
    assert changed == 1, (table, key)


def delete(table, key):
    deleted, _ = MODELS[table].objects.filter(pk=uuid.UUID(key)).delete()
    assert deleted == 1, (table, key)


run(
    site=os.environ["SITE_NAME"],
    record_path=os.environ["SITE_RECORD"],
    stop_path=os.environ["SITE_STOP"],
    schema={table: {c: kind(f) for c, f in fields.items()} for table, fields in FIELDS.items()},
    insert=insert,
    update=update,
    delete=delete,
    writes_max=int(os.environ["SITE_WRITES_MAX"]),
    seconds_max=float(os.environ["SITE_WRITER_SECONDS_MAX"]),
    pause_s=float(os.environ["SITE_WRITER_PAUSE_S"]),
)
"""

UUID_KEY = "models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, serialize=False)"
ITEM_FIELDS = {"title": "models.CharField(max_length=100)", "qty": "models.IntegerField()"}
NOTE = "models.CharField(max_length=100, null=True)"
CODE = "models.CharField(max_length=20, null=True, db_index=True)"
DOUBLE_QTY = (
    'models.GeneratedField(expression=models.F("qty") * 2,'
    " output_field=models.IntegerField(), db_persist=True)"
)


@dataclass(frozen=True)
class DjangoChange:
    """Version 2 of the shop: its models and the migration that gets there from version 1."""

    name: str
    operations: str  # the migration's `operations` list, as makemigrations writes it
    item_v1: dict[str, str] = field(default_factory=lambda: dict(ITEM_FIELDS))
    item_v2: dict[str, str] = field(default_factory=lambda: dict(ITEM_FIELDS))
    tag_v2: dict[str, str] | None = None  # a new model Tag in version 2
    final: FinalSchema = field(default_factory=FinalSchema)


CHANGES = [
    DjangoChange(
        "field_with_default",
        'migrations.AddField("item", "priority", models.IntegerField(db_default=0, default=0))',
        item_v2={**ITEM_FIELDS, "priority": "models.IntegerField(db_default=0, default=0)"},
        final=FinalSchema(defaults={"shop_item": {"priority": 0}}),
    ),
    DjangoChange(
        "nullable_field",
        f'migrations.AddField("item", "note", {NOTE})',
        item_v2={**ITEM_FIELDS, "note": NOTE},
        final=FinalSchema(defaults={"shop_item": {"note": None}}),
    ),
    DjangoChange(
        "renamed_field",
        'migrations.RenameField("item", "title", "name")',
        item_v2={"name": ITEM_FIELDS["title"], "qty": ITEM_FIELDS["qty"]},
        final=FinalSchema(renames={"shop_item": {"title": "name"}}),
    ),
    DjangoChange(
        "new_model",
        'migrations.CreateModel("Tag", fields=[("id", ' + UUID_KEY + '), ("label", '
        "models.CharField(max_length=50))])",
        tag_v2={"label": "models.CharField(max_length=50)"},
    ),
    DjangoChange(
        "dropped_field",
        'migrations.RemoveField("item", "note")',
        item_v1={**ITEM_FIELDS, "note": NOTE},
        final=FinalSchema(dropped={"shop_item": frozenset({"note"})}),
    ),
    DjangoChange(
        # An indexed field: Django removes it by rebuilding the table (a rebuild that drops
        # a column: the other cells are told by their fingerprints).
        "dropped_indexed_field",
        'migrations.RemoveField("item", "code")',
        item_v1={**ITEM_FIELDS, "code": CODE},
        final=FinalSchema(dropped={"shop_item": frozenset({"code"})}),
    ),
    DjangoChange(
        "generated_field",
        f'migrations.AddField("item", "double_qty", {DOUBLE_QTY})',
        item_v2={**ITEM_FIELDS, "double_qty": DOUBLE_QTY},
        final=FinalSchema(generated={"shop_item": {"double_qty": lambda row: 2 * row["qty"]}}),
    ),
]
# No DDL at all (model options only): the harness itself passes on any commit.
NO_DDL = DjangoChange(
    "model_options_only",
    'migrations.AlterModelOptions(name="item", options={"ordering": ["qty"]})',
)


def model_source(name: str, fields: dict[str, str], meta: str = "") -> str:
    lines = [f"class {name}(models.Model):", f"    id = {UUID_KEY}"]
    lines += [f"    {column} = {definition}" for column, definition in fields.items()]
    if meta:
        lines += ["", "    class Meta:", f"        {meta}"]
    return "\n".join(lines) + "\n"


def migration_source(dependencies: str, operations: str, initial: bool = False) -> str:
    return (
        "import uuid\n\nfrom django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    initial = {initial}\n"
        f"    dependencies = [{dependencies}]\n"
        f"    operations = [\n        {operations},\n    ]\n"
    )


class DjangoProject:
    """The shop project at version 1 or 2 of `change` (rollout.Project)."""

    def __init__(self, change: DjangoChange, apps: list[str] | None = None) -> None:
        self.change = change
        self.apps = APPS if apps is None else apps

    def write(self, directory: Path, version: int) -> None:
        change = self.change
        (directory / "proj").mkdir(exist_ok=True)
        (directory / "shop" / "migrations").mkdir(parents=True, exist_ok=True)
        files = {
            "manage.py": MANAGE_PY,
            "writer.py": WRITER_PY,
            "proj/__init__.py": "",
            "proj/settings.py": SETTINGS_PY.replace("{apps!r}", repr(self.apps)),
            "shop/__init__.py": "",
            "shop/migrations/__init__.py": "",
            "shop/migrations/0001_initial.py": migration_source(
                "",
                'migrations.CreateModel("Item", fields=[("id", '
                + UUID_KEY
                + "), "
                + ", ".join(f'("{c}", {d})' for c, d in change.item_v1.items())
                + "])",
                initial=True,
            ),
        }
        models = ["import uuid", "", "from django.db import models", "", ""]
        if version == 1:
            models.append(model_source("Item", change.item_v1))
        else:
            meta = 'ordering = ["qty"]' if change is NO_DDL else ""
            models.append(model_source("Item", change.item_v2, meta))
            if change.tag_v2 is not None:
                models += ["", model_source("Tag", change.tag_v2)]
            files[f"shop/migrations/0002_{change.name}.py"] = migration_source(
                '("shop", "0001_initial")', change.operations
            )
        files["shop/models.py"] = "\n".join(models)
        for name, text in files.items():
            (directory / name).write_text(text)

    def migrate(self, directory: Path, db: Path) -> str:
        result = run_command(
            [sys.executable, "manage.py", "migrate", "--no-input"],
            directory,
            {"SITE_DB": str(db)},
            f"manage.py migrate in {directory.name}",
        )
        return result.stdout + result.stderr

    def writer_command(self, directory: Path) -> list[str]:
        return [sys.executable, "writer.py"]

    def tables(self, version: int) -> list[str]:
        if version >= 2 and self.change.tag_v2 is not None:
            return ["shop_item", "shop_tag"]
        return ["shop_item"]

    def manage(self, directory: Path, db: Path, *args: str) -> str:
        result = run_command(
            [sys.executable, "manage.py", *args],
            directory,
            {"SITE_DB": str(db)},
            f"manage.py {' '.join(args)} in {directory.name}",
        )
        return result.stdout + result.stderr
