"""How nodes reach each other: the seam (`base`) and the transports behind it.

`base` holds the Protocols the node is written against: `Connector` (dial a
peer, get a `Channel` carrying its verified site), `Listener` (hand each
incoming channel, with the peer's `PeerIdentity`, to a `ChannelHost`),
`VerifyExchange` and `VerifyHost` (verify's request and answer), and the
typed `Refusal`.  `websocket` is the transport a running node uses, and the
only module that knows aiohttp's WebSocket and client sides; `memory` is
the same over asyncio queues, for tests; `tls` builds the TLS contexts and
reads the site a certificate names.  See DESIGN.md in this package.
"""

from syncmesh.transport.base import (
    Channel,
    ChannelHost,
    ClosedError,
    Connector,
    Listener,
    PeerIdentity,
    Refusal,
    RefusalReason,
    SnapshotHost,
    SnapshotOffer,
    SnapshotSource,
    UnreachableError,
    VerifyAnswer,
    VerifyExchange,
    VerifyHost,
)
from syncmesh.transport.tls import (
    TlsFiles,
    client_context,
    client_context_for_site,
    server_context,
    site_name_of,
    valid_site_name,
)
from syncmesh.transport.websocket import (
    SNAPSHOT_PATH,
    SYNC_PATH,
    VERIFY_CONTENT_TYPE,
    VERIFY_PATH,
    HttpSnapshotSource,
    HttpVerifyExchange,
    WebSocketChannel,
    WebSocketConnector,
    WebSocketListener,
)

__all__ = [
    "SNAPSHOT_PATH",
    "HttpSnapshotSource",
    "SnapshotHost",
    "SnapshotOffer",
    "SnapshotSource",
    "SYNC_PATH",
    "VERIFY_CONTENT_TYPE",
    "VERIFY_PATH",
    "Channel",
    "ChannelHost",
    "ClosedError",
    "Connector",
    "HttpVerifyExchange",
    "Listener",
    "PeerIdentity",
    "Refusal",
    "RefusalReason",
    "TlsFiles",
    "UnreachableError",
    "VerifyAnswer",
    "VerifyExchange",
    "VerifyHost",
    "WebSocketChannel",
    "WebSocketConnector",
    "WebSocketListener",
    "client_context",
    "client_context_for_site",
    "server_context",
    "site_name_of",
    "valid_site_name",
]
