"""The codec at the sandbox boundary stays linear in its input, whatever a forged reply holds (#15 item 5)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from autograder import wire

MODULUS = sys.hash_info.modulus  # hash(i) == hash(i + k * MODULUS) for every int i


def _colliding_dict(n: int) -> dict:
    """A reply's dict whose n int keys all share one hash: building it naively is O(n²)."""
    return {"__dict__": [[1 + k * MODULUS, 0] for k in range(n)]}


def test_colliding_dict_keys_are_refused_before_the_dict_is_built():
    assert hash(1) == hash(1 + MODULUS)
    # Refused from a count of the keys' hash values (a Counter keyed by ints, which do not collide
    # with one another): the dict itself, whose building would be quadratic, is never made.
    with pytest.raises(wire.NotPlainData, match="collide"):
        wire.decode(_colliding_dict(20_000))


def _refuse(data) -> None:
    with pytest.raises(wire.NotPlainData):
        wire.decode(data)


def test_honest_dicts_with_tuple_and_negative_keys_still_decode():
    merges = {(i, i + 1): 256 + i for i in range(500)}
    assert wire.decode(wire.encode(merges)) == merges
    assert wire.decode(wire.encode({-1: "a", -2: "b", 1.0: "c", "x": None})) == {-1: "a", -2: "b", 1.0: "c", "x": None}


@pytest.mark.parametrize("raw, why", [
    (b'{"event": "result", "event": "error"}', "duplicated"),
    (json.dumps({f"k{i}": i for i in range(100)}).encode(), "fields"),
    (b"[" * 100_000 + b"]" * 100_000, "unreadable"),
    (b'{"value": ' + b"9" * 100_000 + b"}", "unreadable"),
    (b"\xff\xfe", "unreadable"),
    (b"[1, 2]", "malformed"),
])
def test_malformed_messages_are_refused(raw, why):
    with pytest.raises(wire.NotPlainData, match=why):
        wire.loads(raw)


def test_frames_round_trip_and_oversized_frames_are_refused():
    message = {"event": "result", "value": wire.encode(torch.arange(6.0).reshape(2, 3))}
    frame = wire.frame(message)
    length = wire.body_length(frame[: wire.HEADER.size])
    assert wire.loads(frame[wire.HEADER.size:][:length]) == message
    with pytest.raises(wire.NotPlainData, match="limit"):
        wire.body_length(wire.HEADER.pack(wire.MAX_MESSAGE_BYTES + 1))


def test_unhashable_and_foreign_keys_are_refused():
    _refuse({"__dict__": [[{"__tuple__": [[1]]}, 0]]})  # a tuple holding a list
    _refuse({"__dict__": [[{"__tensor__": {"dtype": "float32", "shape": [], "data": "AAAAAA=="}}, 0]]})
