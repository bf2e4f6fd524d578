"""The app config: re-check the synced database's tracked tables after `migrate`.

Django on SQLite rebuilds a table for many changes (create a new table,
copy, drop the old one, rename): that drops syncmesh's capture triggers.
The serving node notices and reconciles within its capture loop; the
re-check here does it in the migrating process as soon as `migrate` is done
and prints the result, so the operator rolling out the migration sees it.

Django sends `post_migrate` once per installed app with models, with the
same arguments; the re-check runs at the last of them, after every app's
own handlers (contenttypes, permissions) have written their rows.
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.db import connections
from django.db.models.signals import post_migrate

from syncmesh.contrib.django import DATABASE_DEFAULT, DATABASE_SETTING
from syncmesh.contrib.recheck import Recheck, recheck_tracked_tables, report

log = logging.getLogger(__name__)

SQLITE_ENGINE = "django.db.backends.sqlite3"


class SyncmeshConfig(AppConfig):
    name = "syncmesh.contrib.django"
    label = "syncmesh"
    verbose_name = "syncmesh"

    def ready(self) -> None:
        post_migrate.connect(recheck_after_migrate, dispatch_uid="syncmesh.recheck_after_migrate")


def synced_alias() -> str:
    alias = getattr(settings, DATABASE_SETTING, DATABASE_DEFAULT)
    assert isinstance(alias, str), f"{DATABASE_SETTING} must be a DATABASES alias (a string)"
    return alias


def synced_database_path(alias: str) -> tuple[str | None, str | None]:
    """(the SQLite file of `alias`, None), or (None, why syncmesh cannot sync it)."""
    if alias not in connections.settings:
        return None, f"{DATABASE_SETTING} = {alias!r} is not in DATABASES"
    settings_dict = connections[alias].settings_dict
    engine = settings_dict.get("ENGINE", "")
    if engine != SQLITE_ENGINE:
        return None, f"DATABASES[{alias!r}] uses {engine}; syncmesh syncs SQLite files only"
    return str(settings_dict.get("NAME") or ""), None


def recheck_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """`post_migrate` receiver: re-check the tracked tables of the synced database, once."""
    if using != synced_alias() or sender is not last_app_with_models():
        return
    path, problem = synced_database_path(using)
    if path is None:
        result = Recheck(using, problems=[problem or "not a SQLite file"], synced=False)
    else:
        result = recheck_tracked_tables(path)
    verbosity = int(kwargs.get("verbosity", 1))
    report(result, log, kwargs.get("stdout") if verbosity >= 1 else None)


def last_app_with_models() -> AppConfig | None:
    """The app whose `post_migrate` Django sends last (it skips apps without models)."""
    with_models = [config for config in apps.get_app_configs() if config.models_module]
    return with_models[-1] if with_models else None
