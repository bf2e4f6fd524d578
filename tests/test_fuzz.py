"""Hostile input at the trust boundary: the short, in-suite pass of the fuzzers.

The same targets and strategies as `python -m fuzz` (fuzz/), with few
examples: the decoder raises nothing but ProtocolError; a frame the store
refuses, or that does not decode, leaves the database as it was; a batch
that applies names nothing in SQL but our own tables and columns.  Plus the
limits: rows per message, message size, nesting, and msgpack headers that
announce more than they hold.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.strategies import frames
from fuzz.targets import ApplyTarget, decode_one, seed_frames
from syncmesh.errors import ProtocolError
from syncmesh.model import CELL_FIELDS, ChangeBatch, SqlValue, TableRows
from syncmesh.protocol import Batch, decode, encode
from syncmesh.protocol.codec import FRAME_BYTES_MAX

SHORT = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@given(frames)
@SHORT
def test_decode_raises_only_protocol_errors(frame: bytes) -> None:
    decode_one(frame)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApplyTarget]:
    applied = ApplyTarget(tmp_path_factory.mktemp("fuzz-apply"))
    yield applied
    applied.close()


def test_the_seed_batches_apply_and_quarantine(target: ApplyTarget) -> None:
    """The apply target is not vacuous: valid batches reach the merge, hostile names the
    quarantine, and replays the store's refusal."""
    before = (target.applied, target.refused)
    for frame in seed_frames():
        target(b"\x01" + frame)
        target(b"\x00" + frame)
    assert target.applied - before[0] >= 4
    assert target.refused - before[1] >= 1


@given(frames)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_rejected_frames_change_nothing_and_applied_ones_touch_only_our_tables(
    target: ApplyTarget, frame: bytes
) -> None:
    target(b"\x01" + frame)
    target(b"\x00" + frame)


def hostile_batch(from_seq: int = 0) -> ChangeBatch:
    now = 1_900_000_000_000 << 16
    return ChangeBatch(
        "inc",
        from_seq,
        from_seq + 5,
        from_seq + 5,
        None,
        ("a" * 32,),
        (
            TableRows(
                'items"; DROP TABLE items; --',
                ("name",),
                1,
                [["k", 1, now, 0, "v", now, 0, None]],
            ),
            TableRows(
                "items",
                ("name); DELETE FROM items; --", "qty"),
                1,
                [["k", 1, now, 0, "v", now, 0, None, 3, now, 0, None]],
            ),
            TableRows("sqlite_master", ("sql",), 1, [["k", 1, now, 0, "x", now, 0, None]]),
        ),
    )


def test_identifiers_from_the_wire_never_reach_sql(target: ApplyTarget) -> None:
    """Goal: table and column names that are not ours go to the quarantine as data."""
    store = target.store
    cursor = store.peer_cursor("fuzz-peer")
    assert cursor is not None
    batch = dataclasses.replace(hostile_batch(cursor.cursor), incarnation=cursor.incarnation)
    quarantined_before = store.status().quarantined_rows
    target(b"\x00" + encode(Batch(batch)))  # raises Finding if SQL named another table
    assert store.status().quarantined_rows == quarantined_before + 3
    names = {
        name
        for (name,) in store.connection.execute("SELECT name FROM sqlite_schema WHERE type='table'")
    }
    assert {"items", "pairs"} <= names


def test_a_batch_over_the_row_limit_is_refused() -> None:
    rows: list[list[SqlValue]] = [["k", 1, None, None, *[None] * CELL_FIELDS * 2]]
    table = TableRows("items", ("name", "qty"), 1, rows * 3)
    frame = encode(Batch(ChangeBatch("inc", 0, 1, 1, None, (), (table,))))
    assert isinstance(decode(frame, rows_max=3), Batch)
    with pytest.raises(ProtocolError, match="exceeds the limit of 2"):
        decode(frame, rows_max=2)


def test_a_message_over_the_size_limit_is_refused() -> None:
    frame = encode(Batch(ChangeBatch("inc", 0, 1, 1, None, (), ())))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(frame + b"\x00" * 2000, frame_bytes_max=1024)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b"\x00" * (FRAME_BYTES_MAX + 1))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xdd" + struct.pack(">I", 0xFFFFFFFF), "msgpack"),  # array of 4 G items, no items
        (b"\xdf" + struct.pack(">I", 0xFFFFFFFF), "msgpack"),  # map of 4 G pairs
        (b"\xdb" + struct.pack(">I", 0xFFFFFFFF) + b"x", "msgpack"),  # string of 4 GB
        (b"\x91" * 100_000 + b"\x90", "msgpack|not a map"),  # nested 100,000 deep
        (msgpack.packb({"t": "hello", "v": "9" * 10_000}), "unsupported protocol version"),
        (msgpack.packb({"t": "refuse", "reason": "x" * 5000}), "1-4096|0-4096"),
        (msgpack.packb({"t": "have", "vv": {"s" * 65: 1}}), "invalid"),
        (msgpack.packb({"t": "have", "vv": {f"s{i}": 1 for i in range(10_001)}}), "msgpack"),
    ],
    ids=["array-header", "map-header", "str-header", "deep", "version", "reason", "site", "vv"],
)
def test_announced_sizes_and_long_fields_are_refused(payload: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as caught:
        decode(b"\x00" + payload)
    assert len(str(caught.value)) < 300, "a peer's value is shown cut short"


def test_the_database_file_of_the_target_is_intact(target: ApplyTarget) -> None:
    store = target.store
    assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with sqlite3.connect(Path(target.directory) / "template.db") as template:
        assert template.execute("SELECT count(*) FROM items").fetchone()[0] == 20
