"""Bytes <-> messages.  Every field of a peer's message is checked here.

A frame is one flag byte and a msgpack map: flag 0 means the map follows
as is, flag 1 means it is zstd-compressed (used above COMPRESS_BYTES_MIN).
msgpack keeps SQLite's storage classes apart (int, float, str, bytes, nil),
which JSON cannot.  TEXT whose bytes are not valid UTF-8
(model.TEXT_ERRORS) travels as msgpack extension type 1 holding its exact
bytes, because a msgpack str must be UTF-8; every other value keeps its
plain msgpack form.  Decoding refuses anything malformed with a
ProtocolError that names the problem; it never trusts a size or a type.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import replace
from typing import Any, assert_never

import msgpack
import zstandard

from syncmesh.errors import ProtocolError, UnsupportedVersion
from syncmesh.model import (
    CELL_FIELDS,
    INT64_MAX,
    INT64_MIN,
    ChangeBatch,
    Membership,
    SqlValue,
    TableRows,
    is_utf8_text,
    text_bytes,
    text_of_bytes,
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

FRAME_BYTES_MAX = 64 << 20  # one frame on the wire, compressed or not
DECODED_BYTES_MAX = 256 << 20  # after decompression: a bound against zip bombs
COMPRESS_BYTES_MIN = 512
SITE_ID_CHARS_MAX = 64
KEY_COLUMNS_MAX = 64
TABLE_COLUMNS_MAX = 2_000  # SQLite's default SQLITE_MAX_COLUMN
ROWS_PER_MESSAGE_MAX = 100_000  # rows in one BATCH, all tables together (the default)
NAME_CHARS_MAX = 1_024  # a table or column name; an incarnation or fingerprint: 64
TOKEN_CHARS_MAX = 64  # incarnation ids and fingerprints
REASON_CHARS_MAX = 4_096  # a REFUSE's reason, which the receiver logs
VECTOR_SITES_MAX = 10_000  # entries of a version vector; tables named in a HELLO
MEMBERS_MAX = 1_000  # sites in a membership's `seen` and in its `gone` (ADR 0015)
FORMER_NAMES_MAX = 64  # former names of one table or column (renames kept, newest first)
# msgpack refuses longer arrays while it parses, before any rows are built:
# at least a row of SQLite's widest table (2000 columns, 3 fields each).
ARRAY_ITEMS_MIN = 8_192
PAST_ENTRY_CHARS_MAX = 32  # '"65535":9223372036854775807,' with room to spare
# A cell's past: a compact JSON object of site index -> HLC, as the store writes it.
# An HLC as JSON writes it: no leading zeros (JSON refuses them; found by the
# apply fuzzer, a past like {"1":0002} passed and then failed to parse).
_HLC_JSON = r"(?:0|[1-9]\d{0,18})"
_PAST = re.compile(rf'\{{(?:"\d{{1,9}}":{_HLC_JSON}(?:,"\d{{1,9}}":{_HLC_JSON})*)?\}}')
_PAST_ENTRY = re.compile(r'"(\d+)":(\d+)')
_SCALARS = (type(None), str, bytes)
# msgpack extension type of a TEXT value whose bytes are not valid UTF-8.
EXT_TEXT_NOT_UTF8 = 1
_RAW, _ZSTD = 0, 1
# Frames at least this large are packed and sealed, or decoded, off the
# event loop by a session (`pack` + `seal`, `decode`, in a thread): a 30 MB
# row took the loop for a quarter of a second each way, and a ping waiting
# that long missed its pong (new-user report).  Below it a thread hop costs
# more than it saves.
OFF_LOOP_BYTES = 1 << 20
# zstd contexts are not thread-safe: one pair per thread that codes frames.
_zstd = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_zstd, "compressor", None)
    if compressor is None:
        compressor = _zstd.compressor = zstandard.ZstdCompressor(level=3)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_zstd, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def encode(message: Message) -> bytes:
    """The frame of `message`: `seal(pack(message))`."""
    return seal(pack(message))


def pack(message: Message) -> bytes:
    """The message as msgpack, not yet framed (`seal` frames it, in any thread)."""
    plain = _to_plain(message)
    try:
        payload = msgpack.packb(plain, use_bin_type=True)
    except UnicodeEncodeError:
        # Rare: a TEXT value that is not valid UTF-8 (its str holds lone
        # surrogates).  Only then are the rows copied with such values as
        # extension type 1, so the common case costs nothing.
        if not isinstance(message, Batch):
            raise
        plain["tables"] = [
            # [name, columns, key count, rows, (former names)]: only the rows change.
            [*entry[:3], [[_wire_value(value) for value in row] for row in entry[3]], *entry[4:]]
            for entry in plain["tables"]
        ]
        payload = msgpack.packb(plain, use_bin_type=True)
    return payload


def seal(payload: bytes) -> bytes:
    """The frame of a packed message: flag byte, then the payload, compressed if it pays."""
    if len(payload) >= COMPRESS_BYTES_MIN:
        return bytes([_ZSTD]) + _compressor().compress(payload)
    return bytes([_RAW]) + payload


def _wire_value(value: SqlValue) -> object:
    if type(value) is str and not is_utf8_text(value):
        return msgpack.ExtType(EXT_TEXT_NOT_UTF8, text_bytes(value))
    return value


class _RawText(str):
    """A TEXT value that came as extension type 1; `_check_value` turns it into a plain str.

    A type of its own, so that names, site ids and every other field that
    must be UTF-8 refuse it (they test `type(x) is str`).
    """

    __slots__ = ()


def _ext_hook(code: int, data: bytes) -> object:
    if code != EXT_TEXT_NOT_UTF8:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return _RawText(text_of_bytes(data))
    # One value, one encoding: valid UTF-8 TEXT is a msgpack str.
    raise ProtocolError("a TEXT extension holds valid UTF-8 (it must be sent as str)")


def decode(
    frame: bytes,
    *,
    frame_bytes_max: int = FRAME_BYTES_MAX,
    rows_max: int = ROWS_PER_MESSAGE_MAX,
) -> Message:
    """The message in `frame`; ProtocolError if it is not a valid one.

    `frame_bytes_max` and `rows_max` are the receiver's limits (its
    `limits.message_bytes_max` and `limits.rows_per_message_max`); the
    frame's own claims about sizes are never trusted.
    """
    if not frame:
        raise ProtocolError("empty frame")
    limit = min(frame_bytes_max, FRAME_BYTES_MAX)
    if len(frame) > limit:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {limit}")
    flag, body = frame[0], frame[1:]
    if flag == _ZSTD:
        body = _decompress(body)
    elif flag != _RAW:
        raise ProtocolError(f"unknown frame flag {flag}")
    try:
        plain = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_array_len=max(rows_max, ARRAY_ITEMS_MIN),
            max_map_len=VECTOR_SITES_MAX,
            max_ext_len=DECODED_BYTES_MAX,
            ext_hook=_ext_hook,
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from exc
    except RecursionError as exc:  # arrays nested thousands deep
        raise ProtocolError("frame is not valid msgpack: nested too deeply") from exc
    message = _from_plain(plain)
    if isinstance(message, Batch) and message.batch.row_count > rows_max:
        raise ProtocolError(
            f"batch of {message.batch.row_count} rows exceeds the limit of {rows_max}"
        )
    return message


def _decompress(body: bytes) -> bytes:
    """Decompress at most DECODED_BYTES_MAX bytes: a peer's size claims are not trusted."""
    try:
        chunks: list[bytes] = []
        size = 0
        with _decompressor().stream_reader(io.BytesIO(body)) as reader:
            while size <= DECODED_BYTES_MAX:
                chunk = reader.read(DECODED_BYTES_MAX + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        plain = b"".join(chunks)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"bad compressed frame: {exc}") from exc
    if len(plain) > DECODED_BYTES_MAX:
        raise ProtocolError(f"bad compressed frame: expands beyond {DECODED_BYTES_MAX} bytes")
    return plain


def _to_plain(message: Message) -> dict[str, Any]:
    match message:
        case Hello():
            hello: dict[str, object] = {
                "t": "hello",
                "v": message.version,
                "site": message.site_id,
                "inc": message.incarnation,
                "fp": message.fingerprint,
                "tables": list(message.tables),
                "head": message.head_seq,
                "vv": message.vector,
            }
            if message.columns:
                hello["cols"] = {name: list(cols) for name, cols in message.columns.items()}
            if message.instance:
                hello["run"] = message.instance
            if message.rows_per_message_max or message.message_bytes_max:
                assert message.rows_per_message_max > 0, "both limits said, or neither"
                assert message.message_bytes_max > 0, "both limits said, or neither"
                hello["lim"] = {
                    "rows": message.rows_per_message_max,
                    "bytes": message.message_bytes_max,
                }
            if message.schema:
                hello["schema"] = {
                    name: [
                        list(table.former_names),
                        list(table.columns),
                        _former_plain(table.former),
                    ]
                    for name, table in message.schema.items()
                }
            if message.membership is not None:
                hello["mem"] = _membership_plain(message.membership)
            if message.held:
                hello["held"] = message.held
            return hello
        case Members():
            return {"t": "members", "mem": _membership_plain(message.membership)}
        case Refuse():
            return {"t": "refuse", "reason": message.reason}
        case Pull():
            return {
                "t": "pull",
                "inc": message.incarnation,
                "cursor": message.cursor,
                "vv": message.vector,
                "own": message.own_writes_wanted,
            }
        case Batch():
            batch = message.batch
            return {
                "t": "batch",
                "inc": batch.incarnation,
                "from": batch.from_seq,
                "to": batch.to_seq,
                "head": batch.head_seq,
                "vv": batch.vector,
                "sites": list(batch.sites),
                "tables": [_table_entry(table) for table in batch.tables],
                **_generations_plain(batch.tables),
            }
        case Ack():
            return {"t": "ack", "to": message.to_seq, "vv": message.vector}
        case Have():
            return {"t": "have", "vv": message.vector}
        case _:
            assert_never(message)


def _membership_plain(membership: Membership) -> dict[str, object]:
    return {
        "seen": membership.seen,
        "gone": list(membership.forgotten),
        "clf": membership.cl_floor,
        "hz": membership.horizon,
    }


def _membership(value: object, what: str) -> Membership:
    """A membership (HELLO's optional `mem`, a MEMBERS message): every field checked."""
    if type(value) is not dict:
        raise ProtocolError(f"{what}: membership is not a map")
    seen, gone, floor = value.get("seen"), value.get("gone"), value.get("clf")
    if type(seen) is not dict or len(seen) > MEMBERS_MAX:
        raise ProtocolError(
            f"{what}: membership's seen is not a map of at most {MEMBERS_MAX} sites"
        )
    vectors = {}
    for site, vector in seen.items():
        if type(site) is not str or not 0 < len(site) <= SITE_ID_CHARS_MAX:
            raise ProtocolError(f"{what}: membership names a site {_show(site)} that is not an id")
        vectors[site] = _vector(vector, f"{what}: membership of {site}")
    if type(gone) is not list or len(gone) > MEMBERS_MAX:
        raise ProtocolError(
            f"{what}: membership's gone is not a list of at most {MEMBERS_MAX} sites"
        )
    for site in gone:
        if type(site) is not str or not 0 < len(site) <= SITE_ID_CHARS_MAX:
            raise ProtocolError(f"{what}: membership's gone names {_show(site)}, not a site id")
    if type(floor) is not int or not 0 <= floor <= INT64_MAX:
        raise ProtocolError(f"{what}: membership's clf {_show(floor)} is not a causal length")
    horizon = _vector(value.get("hz", {}), f"{what}: membership's horizon")
    return Membership(vectors, tuple(gone), floor, horizon)


def _table_entry(table: TableRows) -> list[object]:
    """[name, columns, key count, rows(, former names(, created stamps))].

    The fifth and sixth elements are optional (ADR 0013): the columns'
    former names when some has one, their creation stamps when some is
    known; a batch with neither is byte for byte what peers before issue
    14 sent and read.
    """
    entry: list[object] = [table.table, list(table.columns), table.key_count, table.rows]
    if any(table.former) or any(table.created):
        entry.append(_former_plain(table.former or ((),) * len(table.columns)))
    if any(table.created):
        entry.append(list(table.created))
    return entry


def _generations_plain(tables: tuple[TableRows, ...]) -> dict[str, object]:
    """The batch's optional `gen` field: per table entry, its columns' generations or nil.

    Only when some column has a generation (a name dropped and added
    again: ADR 0013).  A field of its own, not an element of the table
    entries, so that peers from before it, which ignore fields they do not
    know, still read the batch.
    """
    if not any(any(table.generations) for table in tables):
        return {}
    return {
        "gen": [list(table.generations) if any(table.generations) else None for table in tables]
    }


def _former_plain(former: tuple[tuple[str, ...], ...]) -> list[list[str]]:
    return [list(names) for names in former]


def _field(plain: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = plain.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: field {key!r} missing or not {kind.__name__}")
    return value


def _seq(plain: dict[str, Any], key: str, what: str) -> int:
    value: int = _field(plain, key, int, what)
    if value < 0:
        raise ProtocolError(f"{what}: field {key!r} is negative")
    return value


def _text(plain: dict[str, Any], key: str, what: str, chars_max: int, *, chars_min: int = 0) -> str:
    value: str = _field(plain, key, str, what)
    if type(value) is not str:
        raise ProtocolError(f"{what}: field {key!r} is not UTF-8 text")
    if not chars_min <= len(value) <= chars_max:
        raise ProtocolError(f"{what}: field {key!r} is not {chars_min}-{chars_max} characters")
    return value


def _vector(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: version vector is not a map")
    if len(value) > VECTOR_SITES_MAX:
        raise ProtocolError(f"{what}: version vector of more than {VECTOR_SITES_MAX} sites")
    for site, hlc in value.items():
        if (
            type(site) is not str
            or not 0 < len(site) <= SITE_ID_CHARS_MAX
            or not isinstance(hlc, int)
            or isinstance(hlc, bool)
            or not 0 <= hlc < (1 << 63)
        ):
            raise ProtocolError(
                f"{what}: version vector entry {_show(site)}: {_show(hlc)} is invalid"
            )
    return dict(value)


def _columns(value: object) -> dict[str, tuple[str, ...]]:
    """HELLO's optional `cols`: {table: ["name TYPE", ...]}; absent from older peers."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > VECTOR_SITES_MAX:
        raise ProtocolError("hello: cols is not a map of tables")
    columns = {}
    for table, described in value.items():
        if (
            not isinstance(table, str)
            or len(table) > NAME_CHARS_MAX
            or not isinstance(described, list)
            or len(described) > TABLE_COLUMNS_MAX
            or not all(isinstance(c, str) and len(c) <= NAME_CHARS_MAX * 2 for c in described)
        ):
            raise ProtocolError(f"hello: cols of {_show(table)} are not a list of columns")
        columns[table] = tuple(described)
    return columns


def _limits(value: object) -> tuple[int, int]:
    """HELLO's optional `lim`: (rows, bytes) the sender takes per message; (0, 0) if absent."""
    if value is None:
        return 0, 0
    if not isinstance(value, dict) or set(value) != {"rows", "bytes"}:
        raise ProtocolError("hello: lim is not a map of 'rows' and 'bytes'")
    rows, size = value["rows"], value["bytes"]
    for key, limit in (("rows", rows), ("bytes", size)):
        if type(limit) is not int or not 0 < limit <= INT64_MAX:
            raise ProtocolError(f"hello: lim {key!r} is {_show(limit)}, not a positive integer")
    return rows, size


def _names(value: object, names_max: int) -> tuple[str, ...] | None:
    """A list of 1-1024-character names, at most `names_max` of them; None if not."""
    if type(value) is not list or len(value) > names_max:
        return None
    if not all(type(name) is str and 0 < len(name) <= NAME_CHARS_MAX for name in value):
        return None
    return tuple(value)


def _former(value: object, columns: tuple[str, ...], where: str) -> tuple[tuple[str, ...], ...]:
    """Former names aligned with `columns`: one list of names per column."""
    if type(value) is not list or len(value) != len(columns):
        raise ProtocolError(
            f"{where}: former names are not one list per column ({len(columns)} columns)"
        )
    former = []
    for column, names in zip(columns, value, strict=True):
        checked = _names(names, FORMER_NAMES_MAX)
        if checked is None:
            raise ProtocolError(
                f"{where}: former names of column {_show(column)} are not a list of at most"
                f" {FORMER_NAMES_MAX} names"
            )
        former.append(checked)
    return tuple(former)


def _schema(value: object) -> dict[str, TableSchema]:
    """HELLO's optional `schema`: {table: [former names, columns, former names per column]}."""
    if value is None:
        return {}
    if type(value) is not dict or len(value) > VECTOR_SITES_MAX:
        raise ProtocolError("hello: schema is not a map of tables")
    schema = {}
    for table, described in value.items():
        if type(table) is not str or not 0 < len(table) <= NAME_CHARS_MAX:
            raise ProtocolError(f"hello: schema names a table {_show(table)} that is not a name")
        where = f"hello: schema of {table!r}"
        if type(described) is not list or len(described) != 3:
            raise ProtocolError(f"{where} is not [former names, columns, former column names]")
        former_names = _names(described[0], FORMER_NAMES_MAX)
        columns = _names(described[1], TABLE_COLUMNS_MAX)
        if former_names is None or columns is None:
            raise ProtocolError(f"{where}: its former names or columns are not lists of names")
        schema[table] = TableSchema(former_names, columns, _former(described[2], columns, where))
    return schema


def _from_plain(plain: object) -> Message:
    if not isinstance(plain, dict):
        raise ProtocolError("frame is not a map")
    kind = plain.get("t")
    if kind == "hello":
        version = plain.get("v")
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersion(version if type(version) is int else _show(version))
        tables = _field(plain, "tables", list, "hello")
        if len(tables) > VECTOR_SITES_MAX or not all(
            type(table) is str and len(table) <= NAME_CHARS_MAX for table in tables
        ):
            raise ProtocolError("hello: table names are not a list of names")
        return Hello(
            version,
            _text(plain, "site", "hello", SITE_ID_CHARS_MAX, chars_min=1),
            _text(plain, "inc", "hello", TOKEN_CHARS_MAX),
            _text(plain, "fp", "hello", TOKEN_CHARS_MAX),
            tuple(tables),
            _seq(plain, "head", "hello"),
            _vector(plain.get("vv"), "hello"),
            _columns(plain.get("cols")),
            _text(plain, "run", "hello", TOKEN_CHARS_MAX) if "run" in plain else "",
            _schema(plain.get("schema")),
            _membership(plain["mem"], "hello") if "mem" in plain else None,
            *_limits(plain.get("lim")),
            held=_vector(plain["held"], "hello's held") if "held" in plain else {},
        )
    if kind == "refuse":
        return Refuse(_text(plain, "reason", "refuse", REASON_CHARS_MAX))
    if kind == "pull":
        return Pull(
            _text(plain, "inc", "pull", TOKEN_CHARS_MAX),
            _seq(plain, "cursor", "pull"),
            _vector(plain.get("vv"), "pull"),
            _field(plain, "own", bool, "pull"),
        )
    if kind == "batch":
        return Batch(_batch(plain))
    if kind == "ack":
        return Ack(_seq(plain, "to", "ack"), _vector(plain.get("vv"), "ack"))
    if kind == "have":
        return Have(_vector(plain.get("vv"), "have"))
    if kind == "members":
        return Members(_membership(plain.get("mem"), "members"))
    raise ProtocolError(f"unknown message type {_show(kind)}")


def _batch(plain: dict[str, Any]) -> ChangeBatch:
    from_seq, to_seq = _seq(plain, "from", "batch"), _seq(plain, "to", "batch")
    head_seq = _seq(plain, "head", "batch")
    if not from_seq <= to_seq <= head_seq:
        raise ProtocolError(
            f"batch: seqs out of order (from {from_seq}, to {to_seq}, head {head_seq})"
        )
    raw_vector = plain.get("vv")
    vector = None if raw_vector is None else _vector(raw_vector, "batch")
    sites = _field(plain, "sites", list, "batch")
    if len(sites) > VECTOR_SITES_MAX:
        raise ProtocolError(f"batch: site table of more than {VECTOR_SITES_MAX} sites")
    for site in sites:
        if type(site) is not str or not 0 < len(site) <= SITE_ID_CHARS_MAX:
            raise ProtocolError(f"batch: site id {_show(site)} is not a string of 1-64 characters")
    tables = tuple(
        _table_rows(table, len(sites)) for table in _field(plain, "tables", list, "batch")
    )
    if plain.get("gen") is not None:
        tables = _with_generations(tables, plain["gen"])
    return ChangeBatch(
        _text(plain, "inc", "batch", TOKEN_CHARS_MAX),
        from_seq,
        to_seq,
        head_seq,
        vector,
        tuple(sites),
        tables,
    )


def _table_rows(plain: object, sites_count: int) -> TableRows:
    """One table's positional rows, every field checked (this loop is the hot path)."""
    if type(plain) is not list or len(plain) not in (4, 5, 6):
        raise ProtocolError(
            "batch: a table entry is not [name, columns, key count, rows(, former names"
            "(, created stamps))]"
        )
    name, columns, key_count, rows = plain[:4]
    if type(name) is not str or not 0 < len(name) <= NAME_CHARS_MAX:
        raise ProtocolError(f"batch: table name is not a string of 1-{NAME_CHARS_MAX} characters")
    where = f"batch rows of {name!r}"
    if type(columns) is not list or not all(
        type(column) is str and 0 < len(column) <= NAME_CHARS_MAX for column in columns
    ):
        raise ProtocolError(f"{where}: columns are not a list of names")
    if type(key_count) is not int or not 0 < key_count <= KEY_COLUMNS_MAX:
        raise ProtocolError(f"{where}: key count {_show(key_count)} is invalid")
    if type(rows) is not list:
        raise ProtocolError(f"{where}: rows are not a list")
    width = key_count + 3 + CELL_FIELDS * len(columns)
    cells = range(key_count + 3, width, CELL_FIELDS)
    for row in rows:
        if type(row) is not list or len(row) != width:
            raise ProtocolError(f"{where}: a row is not a list of {width} fields")
        # The common case inline, without a call per field; anything unusual
        # goes through the full check, which names the problem.
        for at in range(key_count):
            if type(row[at]) is not str:
                row[at] = _check_value(row[at], where)
        cl, cl_hlc, cl_site = row[key_count], row[key_count + 1], row[key_count + 2]
        if type(cl) is not int or not 0 < cl <= INT64_MAX:
            raise ProtocolError(f"{where}: causal length {_show(cl)} is not a positive integer")
        if (
            type(cl_hlc) is not int
            or type(cl_site) is not int
            or not 0 <= cl_hlc <= INT64_MAX
            or not 0 <= cl_site < sites_count
        ):
            _check_stamp(cl_hlc, cl_site, sites_count, where)
        for at in cells:
            value, hlc, site, past = row[at], row[at + 1], row[at + 2], row[at + 3]
            kind = type(value)
            if kind is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    _check_value(value, where)
            elif kind is float:
                if value != value:
                    _check_value(value, where)
            elif kind not in _SCALARS:
                row[at] = _check_value(value, where)
            if hlc is None:
                if site is not None:
                    _check_stamp(hlc, site, sites_count, where)
                if value is not None or past is not None:
                    raise ProtocolError(
                        f"{where}: a cell without a stamp carries a value or a past"
                    )
                continue
            if (
                type(hlc) is not int
                or type(site) is not int
                or not 0 <= hlc <= INT64_MAX
                or not 0 <= site < sites_count
            ):
                _check_stamp(hlc, site, sites_count, where)
            if past is not None:
                _check_past(past, sites_count, where)
    former = () if len(plain) == 4 else _former(plain[4], tuple(columns), where)
    if not any(former):
        former = ()  # one form for "no former names", as the encoder writes it
    created: tuple[int, ...] = ()
    if len(plain) == 6:
        created = _created(plain[5], len(columns), where)
    return TableRows(name, tuple(columns), key_count, rows, former, created)


def _with_generations(tables: tuple[TableRows, ...], value: object) -> tuple[TableRows, ...]:
    """`tables` with the columns' generations of the batch's `gen` field (ADR 0013)."""
    if type(value) is not list or len(value) != len(tables):
        raise ProtocolError(f"batch: generations are not one entry per table ({len(tables)})")
    found = []
    for table, counts in zip(tables, value, strict=True):
        if counts is None:
            found.append(table)
            continue
        if (
            type(counts) is not list
            or len(counts) != len(table.columns)
            or not all(type(count) is int and 0 <= count <= INT64_MAX for count in counts)
        ):
            raise ProtocolError(
                f"batch rows of {table.table!r}: generations are not one count per column"
                f" ({len(table.columns)})"
            )
        found.append(replace(table, generations=tuple(counts) if any(counts) else ()))
    return tuple(found)


def _created(value: object, columns: int, where: str) -> tuple[int, ...]:
    """A table entry's creation stamps: one HLC per column."""
    if (
        type(value) is not list
        or len(value) != columns
        or not all(type(stamp) is int and 0 <= stamp <= INT64_MAX for stamp in value)
    ):
        raise ProtocolError(f"{where}: created stamps are not one HLC per column ({columns})")
    return tuple(value)


def _show(value: object) -> str:
    """A peer's value in an error message: cut short, so a reason stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(value: object, where: str) -> SqlValue:
    """`value` as an SQL value (TEXT that came as an extension becomes a str), or ProtocolError."""
    kind = type(value)
    if kind is _RawText:
        return str(value)
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
            raise ProtocolError(f"{where}: integer {value} does not fit SQLite's 64 bits")
    elif kind is float:
        if value != value:  # NaN: SQLite cannot store it (it would become NULL)
            raise ProtocolError(f"{where}: NaN is not an SQL value")
    elif kind not in _SCALARS:
        raise ProtocolError(f"{where}: value of type {kind.__name__} is not an SQL value")
    return value  # type: ignore[return-value]


def _check_past(past: object, sites_count: int, where: str) -> None:
    """A cell's past: `{"<site index>":<hlc>,...}`, compact, each index in the site table once."""
    if (
        type(past) is not str
        or len(past) > 2 + PAST_ENTRY_CHARS_MAX * sites_count
        or _PAST.fullmatch(past) is None
    ):
        raise ProtocolError(f"{where}: a cell's past {past!r:.80} is not a JSON object of stamps")
    seen: set[int] = set()
    for index_text, hlc_text in _PAST_ENTRY.findall(past):
        index, hlc = int(index_text), int(hlc_text)
        if index >= sites_count or index in seen:
            raise ProtocolError(f"{where}: a cell's past names site index {index} wrongly")
        if hlc > INT64_MAX:
            raise ProtocolError(f"{where}: a cell's past holds stamp {hlc}, beyond 64 bits")
        seen.add(index)


def _check_stamp(hlc: object, site: object, sites_count: int, where: str) -> None:
    if hlc is None and site is None:
        return
    if type(hlc) is not int or not 0 <= hlc <= INT64_MAX:
        raise ProtocolError(f"{where}: stamp {_show(hlc)} is not a non-negative 64-bit integer")
    if type(site) is not int or not 0 <= site < sites_count:
        raise ProtocolError(f"{where}: site index {_show(site)} is not in the batch's site table")
