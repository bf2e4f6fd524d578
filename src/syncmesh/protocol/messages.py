"""The messages of sync protocol version 2 (docs/protocol.md describes the session).

Both ends of a session speak the same messages: each is at once the sender
of its own change feed and the receiver of the peer's.

    HELLO   who I am: version, site id, incarnation, schema fingerprint,
            tracked tables (with their columns and former names), head seq,
            version vector
    REFUSE  the session cannot go on, and why (then the connection closes)
    PULL    send me your feed after `cursor` of your incarnation; my vector
            lets you leave out what I already hold, and so do my own writes
            unless I was restored from an old copy
    BATCH   a slice (from_seq, to_seq] of my feed; `vector` only when the
            slice reaches my head
    ACK     I applied your feed up to `to_seq`; my vector is now `vector`
            (flow control, and fresher filtering for relays)
    HAVE    my vector is now `vector`: a hint for your filter only, sent
            before relaying so that in a mesh two relays do not cross
    MEMBERS what I know of the cluster's sites (membership gossip, ADR 0015):
            sent only to peers whose HELLO carried `membership`
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncmesh.model import ChangeBatch, Membership

# 2: every cell of a batch carries its past (conflict detection); version 1
# rows had three fields per cell and cannot be decoded by this version.
PROTOCOL_VERSION = 2


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A tracked table as HELLO describes it, so that a peer can map names (ADR 0013).

    `columns` are all the table's columns in table order (key columns too),
    `former` their former names aligned with them (newest first; empty for
    a column never renamed), and `former_names` the table's own former
    names.  A peer maps its tables and columns to ours by name or by a
    former name, either way round.
    """

    former_names: tuple[str, ...]
    columns: tuple[str, ...]
    former: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        assert len(self.former) == len(self.columns), "former names align with columns"


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    site_id: str
    incarnation: str
    fingerprint: str
    tables: tuple[str, ...]
    head_seq: int
    vector: dict[str, int]
    # Per tracked table, its columns as "name TYPE" ("name TYPE key" for the
    # primary key's): only for naming what differs when fingerprints do.
    # Optional on the wire (peers before it send none), so no version bump.
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A random id per running process (per opening of the file): two live
    # copies of one file share site id and incarnation but never this, and a
    # restarted process differs from the process it replaces only in this.
    # Optional on the wire ("" from peers before it), so no version bump.
    instance: str = ""
    # Per tracked table, its columns and the former names of the table and
    # of its columns (ADR 0013: a schema difference never refuses a session;
    # this is how the node decides what to send and whose vector to adopt).
    # Optional on the wire (peers before issue 14 send none), so no version bump.
    schema: dict[str, TableSchema] = field(default_factory=dict)
    # What the sender knows of the cluster's sites: members' vectors, forgotten
    # sites, its cl floor (docs/adr/0015-membership-and-tombstone-gc.md).  None
    # from peers before issue 16, which then get no MEMBERS message either.
    # Optional on the wire, so no version bump.
    membership: Membership | None = None
    # What the sender takes in one message (its `limits.rows_per_message_max`
    # and `limits.message_bytes_max`): the peer never sends it a BATCH over
    # either, however its own limits are set (issue 12).  0: not said (peers
    # before it, which are sent batches within the sender's own limits).
    # Optional on the wire, so no version bump.
    rows_per_message_max: int = 0
    message_bytes_max: int = 0
    # Per site, the greatest of its writes the sender knows held: its vector,
    # raised where a row it holds only in quarantine caps the vector.  The
    # receiver checks its own entry for a restore (ADR 0006, residual risk
    # 4).  Optional on the wire (empty from peers before it), so no version bump.
    held: dict[str, int] = field(default_factory=dict)


# The reason text that starts a refusal of a second session between one pair
# (`Node.register`).  REFUSE carries only text on the wire, and that stays, so
# this prefix is the refusal's type: read here, with the rest of the message,
# so that the node tests a flag, not a text.
DUPLICATE_SESSION_PREFIX = "already in a session"
# The same for a refusal because two live database files share one site id
# (`Node.register`, issue 12 defect 7): both copies are told, with the fix.
SHARED_SITE_ID_PREFIX = "two live database files have site id"


def shared_site_id_reason(site_id: str) -> str:
    """The refusal sent to both copies of one file, with the fix."""
    return (
        f"{SHARED_SITE_ID_PREFIX} {site_id}: one is a copy of the other, and their writes"
        " would be mixed up under one identity; stop the copy and give it a new identity"
        " (`syncmesh init --new-site-id`) before syncing it again"
    )


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str

    @property
    def duplicate_session(self) -> bool:
        """The peer refused because the pair already has a session: not a fault."""
        return self.reason.startswith(DUPLICATE_SESSION_PREFIX)

    @property
    def shared_site_id(self) -> bool:
        """The peer found another live file with our site id (a copy): fix it."""
        return self.reason.startswith(SHARED_SITE_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class Pull:
    incarnation: str
    cursor: int
    vector: dict[str, int]
    # False (the normal case) lets the sender leave out every write of the
    # puller's own site: a node always holds its own writes, or what won over
    # them.  True only after a restore from an old copy lost some of them.
    own_writes_wanted: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    batch: ChangeBatch


@dataclass(frozen=True, slots=True)
class Ack:
    to_seq: int
    vector: dict[str, int]


@dataclass(frozen=True, slots=True)
class Have:
    vector: dict[str, int]


@dataclass(frozen=True, slots=True)
class Members:
    membership: Membership


Message = Hello | Refuse | Pull | Batch | Ack | Have | Members
