"""The headers of a site's chain of messages on a fleet stream (ADR 0014).

Each message a site publishes on its own subject covers the slice
(from, to] of its feed after its previous message; the headers repeat
the site, incarnation, slice and the feed's head for readers that do not
decode the body.  Shared by the publish and consume loops (node/fleet.py)
and the restore check of a site's own subject (node/fleet_restore.py).
"""

from __future__ import annotations

from collections.abc import Mapping

HEADER_SITE = "Syncmesh-Site"
HEADER_INCARNATION = "Syncmesh-Incarnation"
HEADER_FROM = "Syncmesh-From"
HEADER_TO = "Syncmesh-To"
HEADER_HEAD = "Syncmesh-Head"


def header_int(headers: Mapping[str, str], name: str) -> int:
    """A header's non-negative integer; 0 if missing or not a number (never trusted further)."""
    try:
        return max(0, int(headers.get(name, "0")))
    except ValueError:
        return 0
