"""Site id <-> ordinal: shadow rows name sites by small integers, 0 being this node.

Ordinals are dense from 0, so they double as the site indexes of an
outgoing batch, and a cell's past (JSON in the row's `pasts`) is keyed by
them too.
"""

from __future__ import annotations

import sqlite3

from syncmesh.store.summary import SiteCodes


class SiteMap:
    """Site id <-> ordinal, cached; new sites are inserted on first sight."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        # Ordinal -> site code, for row digests (store.summary).
        self.codes = SiteCodes(self.site)
        self._by_ordinal: dict[int, str] = {}
        self._by_site: dict[str, int] = {}
        self._ordered: tuple[str, ...] = ()
        for ordinal, site_id in connection.execute("SELECT ordinal, site_id FROM _syncmesh_sites"):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal

    def site(self, ordinal: int) -> str:
        if ordinal not in self._by_ordinal:
            row = self._connection.execute(
                "SELECT site_id FROM _syncmesh_sites WHERE ordinal = ?", (ordinal,)
            ).fetchone()
            assert row is not None, f"site ordinal {ordinal} is not in _syncmesh_sites"
            self._by_ordinal[ordinal] = row[0]
            self._by_site[row[0]] = ordinal
        return self._by_ordinal[ordinal]

    def ordinal(self, site_id: str) -> int:
        """The ordinal of `site_id`; inserts it (inside the caller's transaction)."""
        found = self._by_site.get(site_id)
        if found is not None:
            return found
        row = self._connection.execute(
            "SELECT ordinal FROM _syncmesh_sites WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is None:
            cursor = self._connection.execute(
                "INSERT INTO _syncmesh_sites (site_id) VALUES (?)", (site_id,)
            )
            assert cursor.lastrowid is not None
            ordinal = int(cursor.lastrowid)
        else:
            ordinal = int(row[0])
        self._by_site[site_id] = ordinal
        self._by_ordinal[ordinal] = site_id
        return ordinal

    def all_sites(self) -> tuple[str, ...]:
        """Every known site id, indexed by ordinal (ordinals are dense from 0).

        Another process (`syncmesh quarantine retry`) may have added sites
        since we looked, and a row may name them, so newer ordinals are read.
        """
        for ordinal, site_id in self._connection.execute(
            "SELECT ordinal, site_id FROM _syncmesh_sites WHERE ordinal >= ?", (len(self._ordered),)
        ):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal
        if len(self._by_ordinal) != len(self._ordered):
            count = max(self._by_ordinal) + 1
            assert count == len(self._by_ordinal), "site ordinals are not dense"
            self._ordered = tuple(self._by_ordinal[ordinal] for ordinal in range(count))
        return self._ordered

    def forget_uncommitted(self) -> None:
        """Drop the cache after a rollback: inserted ordinals may not exist any more."""
        self._by_ordinal.clear()
        self.codes.clear()
        self._by_site.clear()
        self._ordered = ()
        for ordinal, site_id in self._connection.execute(
            "SELECT ordinal, site_id FROM _syncmesh_sites"
        ):
            self._by_ordinal[ordinal] = site_id
            self._by_site[site_id] = ordinal
