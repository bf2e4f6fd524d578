"""`syncmesh.contrib.django`: a Django app for projects whose SQLite database syncmesh syncs.

Add `"syncmesh.contrib.django"` to `INSTALLED_APPS` (extra `django`).  It does
two things, and changes nothing about how the project reads and writes:

- after every `manage.py migrate` of the synced database it re-checks the
  tracked tables (`apps.SyncmeshConfig`, on Django's `post_migrate` signal),
  and prints what syncmesh did and any problem left in the migration's
  output;
- `manage.py syncmesh_status` prints the status of the node serving the
  database, or of the file when no node runs (`syncmesh status FILE`).

Setting: `SYNCMESH_DATABASE`, the `DATABASES` alias that syncmesh syncs
(default `"default"`).  Use `UUIDField(primary_key=True, default=uuid.uuid4)`
keys for synced models (docs/schema.md, docs/keys.md).
"""

from __future__ import annotations

DATABASE_SETTING = "SYNCMESH_DATABASE"
DATABASE_DEFAULT = "default"
