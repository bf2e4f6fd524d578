"""The sync protocol's messages and their encoding: pure, no I/O."""

from syncmesh.protocol.codec import (
    FRAME_BYTES_MAX,
    OFF_LOOP_BYTES,
    ROWS_PER_MESSAGE_MAX,
    decode,
    encode,
    pack,
    seal,
)
from syncmesh.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Have,
    Hello,
    Members,
    Message,
    Pull,
    Refuse,
    TableSchema,
)

__all__ = [
    "FRAME_BYTES_MAX",
    "OFF_LOOP_BYTES",
    "PROTOCOL_VERSION",
    "ROWS_PER_MESSAGE_MAX",
    "Ack",
    "Batch",
    "Have",
    "Hello",
    "Members",
    "Message",
    "Pull",
    "Refuse",
    "TableSchema",
    "decode",
    "encode",
    "pack",
    "seal",
]
