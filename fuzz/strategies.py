"""Hypothesis strategies for hostile frames: random bytes, mutated valid frames, and
well-formed msgpack maps whose fields are wrong in every way a peer could make them."""

from __future__ import annotations

import msgpack
import zstandard
from hypothesis import strategies as st

from fuzz.targets import seed_frames

INT64 = 1 << 63
SEEDS = seed_frames()

# Values a hostile peer puts where the protocol wants something else.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),  # what msgpack can carry
    st.sampled_from([0, -1, 1, INT64 - 1, INT64, -INT64, (1 << 64) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
    st.sampled_from(
        ["items", "pairs", 'items"; DROP TABLE items; --', "_syncmesh_state", "sqlite_master"]
    ),
    st.binary(max_size=70),
)
plain_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(["t", "v", "vv"])), inner, max_size=6
        ),
    ),
    max_leaves=40,
)
KINDS = ["hello", "refuse", "pull", "batch", "ack", "have", "nope"]
FIELDS = [
    "t",
    "v",
    "site",
    "inc",
    "fp",
    "tables",
    "head",
    "vv",
    "reason",
    "cursor",
    "own",
    "from",
    "to",
    "sites",
    "schema",
]


@st.composite
def table_entries(draw: st.DrawFn) -> list[object]:
    """[name, columns, key_count, rows(, former)]: rows about the right width, values any."""
    name = draw(st.sampled_from(["items", "pairs", "other", 'x"y', ""]))
    columns = draw(
        st.one_of(
            st.sampled_from([["name", "qty"], ["v"], ["qty", "name"], ["name; --"]]),
            st.lists(st.text(max_size=6), max_size=3),
        )
    )
    key_count = draw(st.one_of(st.sampled_from([1, 2]), st.integers(-2, 70)))
    width = max(0, key_count) + 3 + 3 * len(columns)
    row = st.lists(
        st.one_of(scalars, st.integers(0, 3)),
        min_size=max(0, width - draw(st.integers(0, 1))),
        max_size=width + draw(st.integers(0, 1)),
    )
    entry = [name, columns, key_count, draw(st.lists(row, max_size=4))]
    if draw(st.booleans()):
        # The optional former names (ADR 0013): one list per column, or not quite.
        names = st.lists(st.one_of(st.sampled_from(["old", "title"]), scalars), max_size=2)
        entry.append(
            draw(
                st.one_of(
                    st.lists(names, min_size=len(columns), max_size=len(columns)),
                    plain_values,
                )
            )
        )
    return entry


@st.composite
def structured_maps(draw: st.DrawFn) -> dict[object, object]:
    """A message map: the right keys with hostile values, or hostile keys."""
    plain: dict[object, object] = {"t": draw(st.sampled_from(KINDS))}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=10)):
        plain[key] = draw(plain_values)
    if plain["t"] == "batch" and draw(st.booleans()):
        plain.update(
            {
                "inc": "inc",
                "from": draw(st.integers(0, 20)),
                "to": draw(st.integers(0, 40)),
                "head": draw(st.integers(0, 60)),
                "vv": draw(
                    st.one_of(st.none(), st.dictionaries(st.text(max_size=70), scalars, max_size=3))
                ),
                "sites": draw(st.lists(st.one_of(st.text(max_size=70), scalars), max_size=3)),
                "tables": draw(st.lists(table_entries(), max_size=3)),
            }
        )
    if plain["t"] == "hello" and draw(st.booleans()):
        # HELLO's optional schema (ADR 0013): [former names, columns, former per column].
        names = st.lists(st.one_of(st.sampled_from(["id", "name", "old"]), scalars), max_size=3)
        plain["schema"] = draw(
            st.dictionaries(
                st.one_of(st.sampled_from(["items", ""]), scalars),
                st.one_of(st.tuples(names, names, st.lists(names, max_size=3)).map(list), scalars),
                max_size=2,
            )
        )
    if draw(st.booleans()):
        plain["v"] = 1
    return plain


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, cut, inserted or its flag changed."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.integers(0, 3))
        at = draw(st.integers(0, max(0, len(frame) - 1)))
        if operation == 0 and frame:
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == 1:
            del frame[at:]
        elif operation == 2:
            frame[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            frame[0:1] = bytes([draw(st.integers(0, 255))])
    return bytes(frame)


def _frame(plain: object, compressed: bool) -> bytes:
    payload = msgpack.packb(plain, use_bin_type=True)
    if compressed:
        return b"\x01" + zstandard.ZstdCompressor().compress(payload)
    return b"\x00" + payload


frames = st.one_of(
    st.binary(max_size=200),
    mutated_seeds(),
    st.builds(_frame, structured_maps(), st.booleans()),
    st.builds(_frame, plain_values, st.booleans()),
)
