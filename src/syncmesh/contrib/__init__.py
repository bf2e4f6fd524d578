"""Optional integrations with application frameworks, each behind its own extra.

Nothing here is imported by the rest of syncmesh, and importing this
package imports no framework: `syncmesh.contrib.django` needs the `django`
extra, `syncmesh.contrib.sqlalchemy` the `sqlalchemy` extra.  Both are thin:
after a migration they re-check the tracked tables of the synced file
(`recheck.recheck_tracked_tables`): the node serving it follows the change
itself, and with no node running the migrating process reconciles the
tables, so that capture triggers and bookkeeping follow the new schema
before the application writes again (docs/schema.md).
"""
