"""What the peers' cursor table holds besides peers: fleet positions and restore check marks.

The store keeps one table of cursors (`Store.peer_cursor`, the rows of
`StoreStatus.peers`), a row that commits with what it describes and is
restored with the file.  A fleet node keeps two more kinds of row there:

- a **position** per site on the stream (`nats/<cluster>/<site id>`,
  node/fleet.py): the site's chain as applied here in `cursor`, and the
  stream sequence of the message that carried it in `head_seq`;
- the **restore check's mark** (`nats-own/<cluster>/<site id>`,
  node/fleet_restore.py): our own subject checked up to the stream
  sequence in `head_seq`.

Neither is a peer.  Read as one, a file's status gave a position a lag
computed from a chain seq and a stream sequence (meaningless), and
`--max-lag` judged the file by it (new-user reports); so everything that
shows a file's cursors splits them here first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from syncmesh.store import PeerCursor

POSITION_PREFIX = "nats/"  # cursor keys: nats/<cluster>/<site id>
# The store cursor key of the check's mark: our subject was checked (or published by
# this file) up to the stream sequence kept in its `head_seq`.  Not a position on a
# chain ("nats/" keys), never reset by a restore (keys with a "/").
MARK_PREFIX = "nats-own/"


def position_key(cluster: str, site_id: str) -> str:
    """The store cursor key under which a site's chain position on the stream is kept."""
    return f"{POSITION_PREFIX}{cluster}/{site_id}"


@dataclass(frozen=True, slots=True)
class RestoreCheckMark:
    """A file's restore check mark: its own fleet subject checked up to `stream_seq`."""

    cluster: str
    site_id: str
    subject: str
    stream_seq: int


@dataclass(frozen=True, slots=True)
class FleetPosition:
    """How far a fleet site's chain is applied in this file (as of its last message here)."""

    cluster: str
    site_id: str
    subject: str
    chain_seq: int  # the site's own seq its chain is applied up to
    stream_seq: int  # the stream sequence of the message that carried it
    applied_rows: int
    last_applied_ms: int


@dataclass(frozen=True, slots=True)
class FileCursors:
    """A file's cursors, by kind."""

    peers: list[PeerCursor]
    positions: list[FleetPosition]
    marks: list[RestoreCheckMark]


def split_cursors(cursors: Iterable[PeerCursor]) -> FileCursors:
    """The peers' cursors, and apart from them the fleet positions and restore check marks."""
    peers: list[PeerCursor] = []
    positions: list[FleetPosition] = []
    marks: list[RestoreCheckMark] = []
    for cursor in cursors:
        if cursor.site_id.startswith(MARK_PREFIX):
            cluster, _slash, site = cursor.site_id[len(MARK_PREFIX) :].rpartition("/")
            marks.append(RestoreCheckMark(cluster, site, cursor.address, cursor.head_seq))
        elif cursor.site_id.startswith(POSITION_PREFIX):
            cluster, _slash, site = cursor.site_id[len(POSITION_PREFIX) :].rpartition("/")
            positions.append(
                FleetPosition(
                    cluster,
                    site,
                    cursor.address,
                    cursor.cursor,
                    cursor.head_seq,
                    cursor.applied_rows,
                    cursor.last_applied_ms,
                )
            )
        else:
            peers.append(cursor)
    return FileCursors(peers, positions, marks)
