"""The codec: decode inverts encode, and hostile bytes get a ProtocolError, never a crash."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from syncmesh.errors import ProtocolError, UnsupportedVersion
from syncmesh.model import Cell, ChangeBatch, Membership, RowChange, RowState, Stamp, TableRows
from syncmesh.protocol import (
    FRAME_BYTES_MAX,
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
    decode,
    encode,
)
from syncmesh.protocol.codec import DECODED_BYTES_MAX

sites = st.sampled_from(["a" * 32, "b" * 32, "c"])
hlcs = st.integers(0, (1 << 63) - 1)
stamps = st.builds(Stamp, hlcs, sites)
values = st.one_of(
    st.none(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
pasts = st.dictionaries(sites, hlcs, max_size=3).map(lambda known: tuple(sorted(known.items())))
cells = st.dictionaries(
    st.text(min_size=1, max_size=8), st.builds(Cell, values, stamps, pasts), max_size=4
)
states = st.builds(RowState, st.integers(1, 9), st.one_of(st.none(), stamps), cells)
rows = st.builds(RowChange, st.text(min_size=1, max_size=10), st.tuples(values), states)
vectors = st.dictionaries(sites, hlcs, max_size=3)


names = st.text(min_size=1, max_size=8)
former_names = st.lists(names, max_size=3).map(tuple)


@st.composite
def batches(draw: st.DrawFn) -> ChangeBatch:
    from_seq = draw(st.integers(0, 1000))
    to_seq = draw(st.integers(from_seq, from_seq + 1000))
    head_seq = draw(st.integers(to_seq, to_seq + 1000))
    batch = ChangeBatch.of_rows(
        draw(st.text(max_size=32)),
        from_seq,
        to_seq,
        head_seq,
        draw(st.one_of(st.none(), vectors)),
        draw(st.lists(rows, max_size=30)),
    )
    # Some tables carry their columns' former names (ADR 0013); the codec
    # writes them only when some column has one, and reads them back as ().
    tables = []
    for table in batch.tables:
        former = tuple(draw(former_names) for _ in table.columns)
        tables.append(dataclasses.replace(table, former=former if any(former) else ()))
    return dataclasses.replace(batch, tables=tuple(tables))


@st.composite
def table_schemas(draw: st.DrawFn) -> TableSchema:
    columns = tuple(draw(st.lists(names, min_size=1, max_size=4, unique=True)))
    return TableSchema(draw(former_names), columns, tuple(draw(former_names) for _ in columns))


memberships = st.builds(
    Membership,
    st.dictionaries(sites, vectors, max_size=3),
    st.lists(sites, max_size=2).map(tuple),
    st.integers(0, 1 << 40),
)

messages = st.one_of(
    st.builds(
        Hello,
        st.just(PROTOCOL_VERSION),
        sites,
        st.text(max_size=32),
        st.text(max_size=16),
        st.lists(st.text(max_size=8), max_size=3).map(tuple),
        st.integers(0, 1 << 40),
        vectors,
        schema=st.dictionaries(names, table_schemas(), max_size=3),
        membership=st.none() | memberships,
        held=vectors,
    ).flatmap(
        # The receive limits: both said, or neither (a peer from before them).
        lambda hello: st.one_of(
            st.just(hello),
            st.builds(
                dataclasses.replace,
                st.just(hello),
                rows_per_message_max=st.integers(1, 1 << 40),
                message_bytes_max=st.integers(1, 1 << 40),
            ),
        )
    ),
    st.builds(Refuse, st.text()),
    st.builds(Pull, st.text(max_size=32), st.integers(0, 1 << 40), vectors, st.booleans()),
    st.builds(Batch, batches()),
    st.builds(Ack, st.integers(0, 1 << 40), vectors),
    st.builds(Have, vectors),
    st.builds(Members, memberships),
)


@given(messages)
def test_decode_inverts_encode(message: Message) -> None:
    assert decode(encode(message)) == message


def test_storage_classes_survive_the_wire() -> None:
    cells = {
        "i": Cell(1, Stamp(1, "a")),
        "f": Cell(1.0, Stamp(1, "a")),
        "t": Cell("1", Stamp(1, "a")),
        "b": Cell(b"", Stamp(1, "a")),
        "n": Cell(None, Stamp(1, "a")),
        "big": Cell(-(1 << 63), Stamp(1, "a")),
    }
    batch = ChangeBatch.of_rows(
        "i", 0, 1, 1, None, [RowChange("t", ("k",), RowState(1, None, cells))]
    )
    decoded = decode(encode(Batch(batch)))
    assert isinstance(decoded, Batch)
    got = decoded.batch.rows[0].state.cells
    assert {name: type(cell.value) for name, cell in got.items()} == {
        "i": int,
        "f": float,
        "t": str,
        "b": bytes,
        "n": type(None),
        "big": int,
    }


def test_large_batches_are_compressed() -> None:
    rows_ = [
        RowChange(
            "items",
            (f"key-{index}",),
            RowState(
                1, Stamp(index, "a" * 32), {"name": Cell("same text " * 4, Stamp(index, "a" * 32))}
            ),
        )
        for index in range(500)
    ]
    frame = encode(Batch(ChangeBatch.of_rows("i", 0, 1, 1, None, rows_)))
    plain = msgpack.packb({"rows": [[row.table, list(row.pk)] for row in rows_]})
    assert frame[0] == 1  # the zstd flag
    assert len(frame) < len(plain)


def _batch_frame(
    *,
    from_: int = 0,
    to: int = 1,
    rows: list[list[object]] | None = None,
    sites: list[str] | None = None,
    key_count: int = 1,
    former: object = None,
) -> dict[str, object]:
    """A well-formed batch map with one table `t` (key `id`, value column `c`).

    `former`, if given, is the table entry's optional fifth element.
    """
    row = ["k", 1, 5, 0, 1, 5, 0, '{"1":4}']
    table = ["t", ["c"], key_count, rows if rows is not None else [row]]
    if former is not None:
        table.append(former)
    return {
        "t": "batch",
        "inc": "i",
        "from": from_,
        "to": to,
        "head": 9,
        "vv": None,
        "sites": sites if sites is not None else ["a", "b"],
        "tables": [table],
    }


def test_the_well_formed_batch_frame_decodes() -> None:
    decoded = decode(_frame(_batch_frame()))
    assert isinstance(decoded, Batch)
    [row] = decoded.batch.rows
    assert row.pk == ("k",)
    assert row.state.cells["c"] == Cell(1, Stamp(5, "a"), (("b", 4),))


def test_creation_stamps_of_columns_round_trip() -> None:
    """The optional sixth element of a table entry (ADR 0013), with or without former names."""
    for former in ((), (("old",),)):
        rows = TableRows("t", ("c",), 1, [["k", 1, 5, 0, 1, 5, 0, None]], former, (7,))
        batch = ChangeBatch("i", 0, 1, 9, None, ("a",), (rows,))
        decoded = decode(encode(Batch(batch)))
        assert isinstance(decoded, Batch)
        assert decoded.batch.tables[0].created == (7,)
        assert decoded.batch.tables[0].former == former


def test_column_generations_round_trip_in_a_field_older_peers_ignore() -> None:
    """The batch's optional `gen` field (ADR 0013): one entry per table entry, or none.

    Without generations the frame is what it was before them; with them,
    the table entries are unchanged (a decoder that ignores `gen`, as every
    older peer does with a field it does not know, reads the same rows).
    """
    plain = TableRows("t", ("c",), 1, [["k", 1, 5, 0, 1, 5, 0, None]])
    readded = TableRows("u", ("b", "c"), 1, [["k", 1, 5, 0, 1, 5, 0, None, 2, 5, 0, None]])
    readded = dataclasses.replace(readded, generations=(1, 0))
    batch = ChangeBatch("i", 0, 1, 9, None, ("a",), (plain, readded))
    decoded = decode(encode(Batch(batch)))
    assert isinstance(decoded, Batch)
    assert [table.generations for table in decoded.batch.tables] == [(), (1, 0)]
    unsaid = dataclasses.replace(readded, generations=())
    older = decode(encode(Batch(dataclasses.replace(batch, tables=(plain, unsaid)))))
    assert isinstance(older, Batch)
    assert "gen" not in msgpack.unpackb(encode(Batch(older.batch))[1:])
    assert [t.rows for t in older.batch.tables] == [t.rows for t in decoded.batch.tables]


def _frame(plain: object) -> bytes:
    return bytes([0]) + msgpack.packb(plain, use_bin_type=True)


def _hello(**extra: object) -> dict[str, object]:
    """A well-formed HELLO map, with `extra` fields."""
    return {
        "t": "hello",
        "v": PROTOCOL_VERSION,
        "site": "a",
        "inc": "i",
        "fp": "f",
        "tables": ["t"],
        "head": 0,
        "vv": {},
        **extra,
    }


def _plain(frame: bytes) -> dict[str, object]:
    """The msgpack map of a frame, decompressed if it is."""
    body = zstandard.ZstdDecompressor().decompress(frame[1:]) if frame[0] == 1 else frame[1:]
    plain: dict[str, object] = msgpack.unpackb(body)
    return plain


def test_a_batch_without_former_names_is_what_older_peers_send_and_read() -> None:
    """The fifth element is written only when some column has a former name, so
    a batch of a schema that was never renamed is byte for byte the old form."""
    decoded = decode(_frame(_batch_frame()))
    assert isinstance(decoded, Batch)
    [table] = decoded.batch.tables
    assert table.former == ()
    assert _plain(encode(decoded)) == _batch_frame()
    unrenamed = dataclasses.replace(table, former=((),))
    again = _plain(encode(Batch(dataclasses.replace(decoded.batch, tables=(unrenamed,)))))
    assert again == _batch_frame()


def test_former_names_travel_with_their_columns() -> None:
    decoded = decode(_frame(_batch_frame(former=[["b", "a"]])))
    assert isinstance(decoded, Batch)
    [table] = decoded.batch.tables
    assert table.columns == ("c",)
    assert table.former == (("b", "a"),)
    again = decode(encode(decoded))
    assert isinstance(again, Batch)
    assert again.batch.tables[0].former == (("b", "a"),)
    # Only empty lists: the same as none.
    empty = decode(_frame(_batch_frame(former=[[]])))
    assert isinstance(empty, Batch)
    assert empty.batch.tables[0].former == ()


def test_a_hello_without_schema_is_understood() -> None:
    """Peers before issue 14 send no `schema`: an empty one, not an error."""
    decoded = decode(_frame(_hello()))
    assert isinstance(decoded, Hello)
    assert decoded.schema == {}
    described = decode(_frame(_hello(schema={"t": [["old_t"], ["id", "c"], [[], ["b"]]]})))
    assert isinstance(described, Hello)
    assert described.schema == {"t": TableSchema(("old_t",), ("id", "c"), ((), ("b",)))}


def test_a_hello_without_limits_is_understood_and_limits_travel() -> None:
    """Peers before issue 12's limits send no `lim`: 0 (not said), not an error."""
    decoded = decode(_frame(_hello()))
    assert isinstance(decoded, Hello)
    assert (decoded.rows_per_message_max, decoded.message_bytes_max) == (0, 0)
    assert "lim" not in _plain(encode(decoded))
    limited = decode(_frame(_hello(lim={"rows": 10, "bytes": 4096})))
    assert isinstance(limited, Hello)
    assert (limited.rows_per_message_max, limited.message_bytes_max) == (10, 4096)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"", "empty frame"),
        (_frame(_hello(lim=[10, 4096])), "lim is not a map"),
        (_frame(_hello(lim={"rows": 10})), "lim is not a map"),
        (_frame(_hello(lim={"rows": 0, "bytes": 4096})), "lim 'rows' is 0"),
        (_frame(_hello(lim={"rows": 10, "bytes": True})), "lim 'bytes' is True"),
        (_frame(_hello(lim={"rows": 10, "bytes": -1})), "not a positive integer"),
        (bytes([7]) + b"x", "unknown frame flag"),
        (bytes([0]) + b"\xc1", "not valid msgpack"),
        (bytes([1]) + b"not zstd", "bad compressed frame"),
        (_frame([1, 2]), "not a map"),
        (_frame({"t": "nonsense"}), "unknown message type"),
        (_frame({"t": "pull", "inc": "x", "cursor": -1, "vv": {}, "own": False}), "negative"),
        (_frame({"t": "pull", "inc": "x", "cursor": True, "vv": {}, "own": False}), "not int"),
        (_frame({"t": "pull", "inc": "x", "cursor": 1, "vv": {}}), "'own' missing"),
        (_frame({"t": "ack", "to": 1, "vv": {"a": "x"}}), "version vector entry"),
        (_frame(_batch_frame(from_=5, to=2)), "out of order"),
        (_frame(_batch_frame(rows=[["k", 1, None, None, {"x": 1}, 1, 0, None]])), "SQL value"),
        (_frame(_batch_frame(rows=[["k", 1, None, None]])), "not a list of 8 fields"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0]])), "not a list of 8 fields"),
        (_frame(_batch_frame(rows=[["k", 0, None, None, 1, 1, 0, None]])), "causal length"),
        (_frame(_batch_frame(rows=[["k", 1, 5, None, 1, 1, 0, None]])), "site index"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 7, 1, 1, 0, None]])), "site index"),
        (_frame(_batch_frame(rows=[["k", 1, -5, 0, 1, 1, 0, None]])), "stamp"),
        (_frame(_batch_frame(rows=[[1 << 63, 1, 5, 0, 1, 1, 0, None]])), "64 bits"),
        (_frame(_batch_frame(sites=[""])), "site id"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, float("nan"), 1, 0, None]])), "NaN"),
        # A cell's past (protocol version 2): compact JSON of site index -> HLC.
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, ["1", 4]]])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, b'{"1":4}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1": 4}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":-4}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":4.5}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"x":4}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":{"1":4}}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":4}x']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"2":4}']])), "site index 2"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":4,"01":5}']])), "index 1"),
        (
            _frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":9223372036854775808}']])),
            "beyond 64 bits",
        ),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, "{" + "[" * 5000 + "}"]])), "past"),
        # Found by the apply fuzzer: JSON has no leading zeros, so such a past
        # passed the codec and then failed to parse in the merge.
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, '{"1":0002}']])), "past"),
        (_frame(_batch_frame(rows=[["k", 1, 5, 0, None, None, None, '{"1":4}']])), "or a past"),
        (_frame(_batch_frame(key_count=0)), "key count"),
        (_frame({**_batch_frame(), "tables": [["t", ["c"], 1]]}), "table entry"),
        (_frame({**_batch_frame(), "tables": [["t", ["c"], 1, [], [], 0, 0]]}), "table entry"),
        # Its optional creation stamps (ADR 0013): one HLC per column.
        (_frame({**_batch_frame(), "tables": [["t", ["c"], 1, [], [[]], 0]]}), "created stamps"),
        (_frame({**_batch_frame(), "tables": [["t", ["c"], 1, [], [[]], [1, 2]]]}), "created"),
        (_frame({**_batch_frame(), "tables": [["t", ["c"], 1, [], [[]], [-1]]]}), "created"),
        # The batch's optional generations (ADR 0013): per table entry, nil or one per column.
        (_frame({**_batch_frame(), "gen": {}}), "generations are not one entry per table"),
        (_frame({**_batch_frame(), "gen": [None, None]}), "one entry per table"),
        (_frame({**_batch_frame(), "gen": [[1, 2]]}), "generations are not one count per column"),
        (_frame({**_batch_frame(), "gen": [[-1]]}), "one count per column"),
        (_frame({**_batch_frame(), "gen": [["1"]]}), "one count per column"),
        # A table entry's optional former names (ADR 0013): one list of names per column.
        (_frame(_batch_frame(former=[])), "one list per column"),
        (_frame(_batch_frame(former=[["a"], ["b"]])), "one list per column"),
        (_frame(_batch_frame(former="old")), "one list per column"),
        (_frame(_batch_frame(former=[[""]])), "former names of column 'c'"),
        (_frame(_batch_frame(former=[[1]])), "former names of column 'c'"),
        (_frame(_batch_frame(former=[["x" * 1025]])), "former names of column 'c'"),
        (_frame(_batch_frame(former=[["old"] * 65])), "at most 64 names"),
        (_frame(_hello(schema=[])), "schema is not a map"),
        (_frame(_hello(schema={"": [[], ["id"], [[]]]})), "not a name"),
        (_frame(_hello(schema={"t": [[], ["id"]]})), "is not \\[former names"),
        (_frame(_hello(schema={"t": [None, ["id"], [[]]]})), "not lists of names"),
        (_frame(_hello(schema={"t": [[], ["id", 5], [[], []]]})), "not lists of names"),
        (_frame(_hello(schema={"t": [[], ["id", "c"], [[]]]})), "one list per column"),
        (_frame(_hello(schema={"t": [[], ["id"], [["x", b"y"]]]})), "former names of column"),
        # Membership gossip (ADR 0015): HELLO's optional `mem`, and MEMBERS.
        (_frame(_hello(mem=[])), "membership is not a map"),
        (_frame(_hello(mem={"seen": [], "gone": [], "clf": 0})), "seen is not a map"),
        (_frame(_hello(mem={"seen": {"": {}}, "gone": [], "clf": 0})), "not an id"),
        (_frame(_hello(mem={"seen": {"a": {"b": -1}}, "gone": [], "clf": 0})), "entry"),
        (_frame(_hello(mem={"seen": {}, "gone": "a", "clf": 0})), "gone is not a list"),
        (_frame(_hello(mem={"seen": {}, "gone": [5], "clf": 0})), "not a site id"),
        (_frame(_hello(mem={"seen": {}, "gone": [], "clf": -2})), "not a causal length"),
        (_frame(_hello(mem={"seen": {}, "gone": [], "clf": True})), "not a causal length"),
        (_frame({"t": "members"}), "members: membership is not a map"),
        (_frame({"t": "members", "mem": {"seen": {}, "gone": ["a"] * 1001, "clf": 0}}), "1000"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(frame: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode(frame)


def test_wrong_version_is_named() -> None:
    with pytest.raises(UnsupportedVersion, match="version 99"):
        decode(_frame({"t": "hello", "v": 99}))


def test_a_version_1_peer_is_refused_by_name() -> None:
    """Version 1 rows had no pasts: such a peer must be told, not misread."""
    assert PROTOCOL_VERSION == 2
    with pytest.raises(UnsupportedVersion, match="version 1"):
        decode(_frame({"t": "hello", "v": 1}))


def test_a_long_past_is_refused_before_it_is_parsed() -> None:
    past = "{" + ",".join(f'"0":{hlc}' for hlc in range(1000)) + "}"
    with pytest.raises(ProtocolError, match="past"):
        decode(_frame(_batch_frame(rows=[["k", 1, 5, 0, 1, 1, 0, past]])))


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(bytes(FRAME_BYTES_MAX + 1))


def test_zip_bomb_is_refused() -> None:
    bomb = bytes([1]) + zstandard.ZstdCompressor().compress(bytes(DECODED_BYTES_MAX + 1))
    assert len(bomb) < FRAME_BYTES_MAX
    with pytest.raises(ProtocolError, match="bad compressed frame"):
        decode(bomb)


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(frame)


def test_hello_held_claims_travel_and_are_optional() -> None:
    """HELLO's `held` (issue 12, ADR 0006 residual risk 4): a vector, absent from older peers."""
    decoded = decode(_frame(_hello()))
    assert isinstance(decoded, Hello)
    assert decoded.held == {}
    assert "held" not in _plain(encode(decoded))
    claimed = decode(_frame(_hello(held={"site-a": 7})))
    assert isinstance(claimed, Hello)
    assert claimed.held == {"site-a": 7}
    with pytest.raises(ProtocolError, match="hello's held: version vector entry"):
        decode(_frame(_hello(held={"site-a": -1})))
