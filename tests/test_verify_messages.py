"""Typed verify messages (protocol.verify): the bytes of the untyped maps, checked on decode."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from syncmesh.model import ChangeBatch
from syncmesh.node.verify import lacking
from syncmesh.protocol import Batch, encode
from syncmesh.protocol.verify import (
    BRANCH_ARRAY,
    LEAF_ARRAY,
    VERIFY_VERSION,
    DigestsAnswer,
    DigestsRequest,
    FetchRequest,
    LeafRows,
    LeavesAnswer,
    LeavesRequest,
    PushAnswer,
    PushRequest,
    RootsAnswer,
    RootsRequest,
    VerifyAnswerError,
    VerifyRefusal,
    VerifyRequest,
    VerifyRequestError,
    decode_digests_answer,
    decode_leaves_answer,
    decode_push_answer,
    decode_request,
    decode_roots_answer,
    encode_answer,
    encode_request,
)

FRAME_BYTES_MAX = 1 << 20
LEAVES = LEAF_ARRAY.pack(*range(256))
EMPTY_BATCH = ChangeBatch("inc", 0, 1, 1, None, (), ())


def _packed(message: dict[str, Any]) -> bytes:
    """A map packed as the verify code packed its dicts before the types existed."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("request_", "untyped"),
    [
        (
            RootsRequest({"items": 7}, True, "s1"),
            {"v": 1, "op": "roots", "tables": {"items": 7}, "deep": True, "session": "s1"},
        ),
        (
            LeavesRequest({"items": {3: LEAVES}}, False, "s1"),
            {
                "v": 1,
                "op": "leaves",
                "tables": {"items": {3: LEAVES}},
                "deep": False,
                "session": "s1",
            },
        ),
        (
            DigestsRequest({"items": [("k", 1), (None, b"x")]}, False),
            {"v": 1, "op": "digests", "tables": {"items": [["k", 1], [None, b"x"]]}, "deep": False},
        ),
        (FetchRequest({"items": [(1.5,)]}), {"v": 1, "op": "fetch", "tables": {"items": [[1.5]]}}),
    ],
)
def test_a_request_has_the_bytes_of_its_untyped_map_and_decodes_back(
    request_: VerifyRequest, untyped: dict[str, Any]
) -> None:
    assert encode_request(request_) == _packed(untyped)
    decoded = decode_request(encode_request(request_), frame_bytes_max=FRAME_BYTES_MAX)
    if isinstance(request_, RootsRequest | LeavesRequest) and not request_.deep:
        # Without `deep` the session is not read: it names deep trees only.
        assert decoded == type(request_)(request_.tables, False, "")  # type: ignore[arg-type]
    else:
        assert decoded == request_


def test_a_push_carries_a_batch_frame_and_the_asker_site() -> None:
    body = encode_request(PushRequest(EMPTY_BATCH, "site-a"))
    untyped = {"v": 1, "op": "push", "batch": encode(Batch(EMPTY_BATCH)), "site": "site-a"}
    assert body == _packed(untyped)
    assert decode_request(body, frame_bytes_max=FRAME_BYTES_MAX) == PushRequest(
        EMPTY_BATCH, "site-a"
    )


@pytest.mark.parametrize(
    ("untyped", "named"),
    [
        ({"v": 1, "op": "roots", "tables": {"items": "x"}}, "root of 'items' is not an integer"),
        ({"v": 1, "op": "roots", "tables": {"items": 1}, "deep": True}, "'session'"),
        (
            {"v": 1, "op": "leaves", "tables": {"items": {999: LEAVES}}},
            "branch 999 is out of range",
        ),
        ({"v": 1, "op": "leaves", "tables": {"items": {1: b"short"}}}, "is not 256 hashes"),
        ({"v": 1, "op": "leaves", "tables": {"items": [1]}}, "branches of 'items' are not a map"),
        ({"v": 1, "op": "fetch", "tables": {"items": [[]]}}, "not a non-empty list"),
        ({"v": 1, "op": "fetch", "tables": {7: []}}, "table 7 is not shared"),
        ({"v": 1, "op": "push", "batch": encode(Batch(EMPTY_BATCH))[:3]}, "push:"),
        ({"v": 1, "op": True}, "'op' is missing"),
    ],
)
def test_a_malformed_request_is_refused_with_its_problem_named(
    untyped: dict[Any, Any], named: str
) -> None:
    with pytest.raises(VerifyRequestError) as caught:
        decode_request(_packed(untyped), frame_bytes_max=FRAME_BYTES_MAX)
    assert named in str(caught.value)


def test_answers_have_the_bytes_of_their_untyped_maps_and_decode_back() -> None:
    branches = BRANCH_ARRAY.pack(*range(256))
    roots = RootsAnswer("site-b", {"items": None, "notes": branches}, ["gone"])
    assert encode_answer(roots) == _packed(
        {
            "site": "site-b",
            "tables": {"items": {"same": True}, "notes": {"same": False, "branches": branches}},
            "not_shared": ["gone"],
        }
    )
    assert decode_roots_answer(encode_answer(roots)) == roots
    leaves = LeavesAnswer({"items": LeafRows([4, 9], [(("k",), 11)])})
    assert encode_answer(leaves) == _packed(
        {"tables": {"items": {"leaves": [4, 9], "rows": [[["k"], 11]]}}}
    )
    assert decode_leaves_answer(encode_answer(leaves)) == leaves
    digests = DigestsAnswer({"items": [5, None]})
    assert decode_digests_answer(encode_answer(digests)) == digests
    assert decode_push_answer(encode_answer(PushAnswer(3, 1))) == PushAnswer(3, 1)
    assert encode_answer(VerifyRefusal("no")) == _packed({"error": "bad request", "detail": "no"})


def test_the_columns_of_a_roots_exchange_travel_and_a_bad_map_is_named() -> None:
    """The asker's columns per table, and the tables whose columns differ at the node,
    round-trip; an older asker or node sends neither and reads as none."""
    request = RootsRequest({"items": 7}, False, "", {"items": ["name", "qty"]})
    assert decode_request(encode_request(request), frame_bytes_max=1 << 20) == request
    older = RootsRequest({"items": 7}, False, "")
    assert decode_request(encode_request(older), frame_bytes_max=1 << 20) == older
    answer = RootsAnswer("site-b", {}, [], {"items": ["name", "qty", "extra"]})
    assert decode_roots_answer(encode_answer(answer)) == answer
    bad = _packed({"v": VERIFY_VERSION, "op": "roots", "tables": {}, "columns": {"items": [1]}})
    with pytest.raises(VerifyRequestError, match="columns: not a map of table names"):
        decode_request(bad, frame_bytes_max=1 << 20)
    with pytest.raises(VerifyAnswerError, match="other_columns: not a map"):
        decode_roots_answer(_packed({"site": "b", "tables": {}, "other_columns": ["items"]}))


def test_the_held_stamps_of_a_roots_answer_travel_and_a_bad_map_is_named() -> None:
    """`held` (per origin site, the greatest stamp the node holds) round-trips with
    the feed's head; a node from before sends neither and reads as None; a map
    that is not site ids to integer stamps is a named error, not a crash later."""
    answer = RootsAnswer("site-b", {}, [], {}, 42, {"site-a": 7, "site-b": 1 << 60})
    assert decode_roots_answer(encode_answer(answer)) == answer
    assert _packed({"site": "site-b", "tables": {}, "not_shared": []}) == encode_answer(
        RootsAnswer("site-b", {}, [])
    )
    assert decode_roots_answer(encode_answer(RootsAnswer("site-b", {}, []))).held is None
    for bad in ({"site-a": "7"}, {"site-a": True}, {1: 7}, ["site-a"]):
        with pytest.raises(VerifyAnswerError, match="held: not a map of site ids to stamps"):
            decode_roots_answer(_packed({"site": "b", "tables": {}, "held": bad}))


def test_lacking_names_the_origins_a_side_holds_less_of() -> None:
    """The fleet's caught-up test (node.verify_server): an origin counts when the
    holder's greatest stamp is below the other side's, absent meaning none."""
    assert lacking({"a": 5, "b": 3}, {"a": 5, "b": 2}) == []
    assert lacking({"a": 4, "b": 3}, {"a": 5, "c": 1, "b": 3}) == ["a", "c"]
    assert lacking({}, {}) == []


def test_an_answer_of_the_wrong_shape_is_a_named_error() -> None:
    with pytest.raises(VerifyAnswerError, match="unpack requires"):
        decode_roots_answer(_packed({"tables": {"items": {"same": False, "branches": b"x"}}}))
    with pytest.raises(VerifyAnswerError, match="KeyError"):
        decode_leaves_answer(_packed({"tables": {"items": {"rows": []}}}))
