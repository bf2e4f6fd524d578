"""The fleet seam: what a node needs from a shared, durable stream of changes.

A fleet transport (NATS JetStream, `transport.nats`) is not a channel to
one peer: every site publishes its own changes to its own subject of one
stream, and reads the other sites' subjects through a durable consumer
(docs/adr/0014-nats-stream-model.md).  The node (`node.fleet`) is written
against these Protocols and values only, so it never imports the client
library; `transport.nats` implements them.

Bytes in, bytes out, plus the few stream facts the node's exactly-once
and gap logic need: the stream sequence of each message, its headers,
the stream's first retained sequence, and the consumer's pending count.
Acks, redelivery and flow control stay the stream's: the node acks a
message after the transaction that applied it committed, and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from syncmesh.errors import TransportError


class FleetError(TransportError):
    """The fleet stream cannot be reached or refused a request; `reason` says which."""

    def __init__(self, where: str, reason: str, *, configuration: bool = False) -> None:
        super().__init__(where, reason)
        # TransportError words it "peer WHERE: ..."; the stream is no peer.
        self.args = (f"{where}: {reason}",)
        self.reason = reason
        # The servers refuse what this node's configuration asks (not an outage):
        # trying again will not help until someone changes it, so health says so
        # at once instead of after `health.peer_down_s_max`.
        self.configuration = configuration


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the stream holds it: its subject, sequence, headers and body."""

    subject: str
    stream_seq: int
    headers: Mapping[str, str]
    data: bytes


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """The stream's answer to a publish: where it stored it, and if it was a repeat.

    `duplicate` is True when the stream had the message id already (a
    retried publish): stored once, at `stream_seq`.
    """

    stream_seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """The stream's extent and this node's consumer on it, as last asked."""

    first_seq: int  # the oldest message the stream still retains
    last_seq: int
    messages: int
    consumer_pending: int  # messages not yet delivered to this node's consumer
    consumer_ack_pending: int  # delivered, not yet acknowledged
    consumer_redelivered: int
    consumer_ack_floor: int  # every message up to this stream sequence was acked by us
    subjects: tuple[str, ...]  # the subjects that have messages in the stream


class Delivery(Protocol):
    """One message delivered to the durable consumer; settle it exactly once."""

    @property
    def message(self) -> StoredMessage: ...

    @property
    def delivered_count(self) -> int:
        """How often the stream has delivered it (1: the first time)."""
        ...

    async def ack(self) -> None:
        """Processed for good (applied and committed, or refused on purpose)."""
        ...

    async def nak(self, delay_s: float) -> None:
        """Not processed now: the stream delivers it again after `delay_s`."""
        ...

    async def term(self) -> None:
        """Never deliverable (it cannot be decoded): the stream stops redelivering it."""
        ...


class FleetLink(Protocol):
    """A node's connection to the fleet stream of its cluster.

    `open(site_id)` connects, makes the stream if it does not exist and
    binds the node's durable consumer (named after its site) to every
    site's subject.  Raises FleetError when the servers cannot be reached.
    """

    @property
    def servers(self) -> tuple[str, ...]: ...

    @property
    def stream_name(self) -> str: ...

    @property
    def max_payload_bytes(self) -> int:
        """The largest message the servers accept (0 before `open`)."""
        ...

    def subject_of(self, site_id: str) -> str:
        """The subject a site publishes its changes on."""
        ...

    def site_of(self, subject: str) -> str | None:
        """The site whose subject this is; None for a subject not of this stream's form."""
        ...

    @property
    def connected(self) -> bool: ...

    async def open(self, site_id: str, *, fresh_consumer: bool = False) -> None:
        """Connect and bind; `fresh_consumer` deletes the durable consumer first (re-read all)."""
        ...

    async def publish(
        self, site_id: str, data: bytes, *, message_id: str, headers: Mapping[str, str]
    ) -> PublishReceipt: ...

    async def last_message(self, subject: str) -> StoredMessage | None:
        """The newest message on `subject`, or None if the stream holds none."""
        ...

    async def next_message(self, subject: str, from_seq: int) -> StoredMessage | None:
        """The first message on `subject` at or after stream sequence `from_seq`, or None."""
        ...

    async def fetch(self, messages_max: int, timeout_s: float) -> list[Delivery]:
        """Up to `messages_max` messages for this node's consumer; [] after `timeout_s`."""
        ...

    async def position(self) -> StreamPosition: ...

    # -- the compacted state stream (one message per site and row) -------------------

    @property
    def state_stream_name(self) -> str: ...

    async def publish_state(
        self, site_id: str, items: Sequence[tuple[str, bytes]], *, headers: Mapping[str, str]
    ) -> None:
        """Publish each (token, body) on the site's state subject for `token`; all acked.

        The state stream keeps one message per subject (the newest), so a
        token names one row of one table of one site.  Raises FleetError
        when any publish is not acknowledged: the caller publishes again.
        """
        ...

    async def last_state(self, site_id: str, token: str) -> StoredMessage | None:
        """The message the state stream holds on the site's subject for `token`, if any."""
        ...

    async def state_sites(self, token: str) -> tuple[str, ...]:
        """The sites that have a message for `token` in the state stream (their markers)."""
        ...

    async def read_state(self, site_id: str) -> list[StoredMessage]:
        """Every message the state stream holds on the site's subjects (one per token)."""
        ...

    async def close(self) -> None: ...
