"""Plain data across the sandbox boundary: a JSON codec for tensors, numbers, strings, containers,
and the frame format both sides speak.

Learner code runs in a sandboxed process; only what this codec accepts comes back.
It never unpickles (a pickle from an untrusted process can run code in ours) and
rejects subclasses (a tensor subclass or an object with a custom ``__eq__`` could
lie to a comparison). Decoding is linear in its input: JSON objects are small and
checked before a dict is built, and the keys of a decoded dict are checked for
colliding hashes before the dict exists (colliding keys would make building it quadratic).
This file is imported on both sides, so it depends only on the standard library, numpy and torch.
"""

from __future__ import annotations

import base64
import json
import struct
from collections import Counter

import numpy as np
import torch

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_DEPTH = 32
# Every JSON object of the protocol has a handful of fields; learner dicts travel as lists of
# pairs (``{"__dict__": [[k, v], ...]}``). A larger object is malformed by construction.
MAX_OBJECT_KEYS = 8
# Keys of one decoded dict that share a hash value. Distinct keys of honest data almost never
# do (-1 and -2 are the classic pair); a forged reply needs thousands to hurt.
MAX_SHARED_HASH = 8

# A frame is an 8-byte big-endian body length, then a UTF-8 JSON body.
HEADER = struct.Struct(">Q")

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
              torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128)
}


class NotPlainData(TypeError):
    """A value that may not cross the boundary (its type is named in the message)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the raw 16-bit patterns
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def encode(value, depth: int = 0):
    """Turn ``value`` into JSON-ready data; raise NotPlainData for anything else."""
    if depth > MAX_DEPTH:
        raise NotPlainData("data nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is bytes:
        return {"__bytes__": _b64(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple or kind is torch.Size:
        return {"__tuple__": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"__dict__": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is torch.Tensor:
        if value.layout != torch.strided or str(value.dtype).removeprefix("torch.") not in _DTYPES:
            raise NotPlainData(f"a tensor with layout {value.layout} and dtype {value.dtype}")
        return {"__tensor__": {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                               "data": _b64(_tensor_bytes(value))}}
    if kind is np.ndarray:
        return encode(torch.from_numpy(np.ascontiguousarray(value)), depth)
    if isinstance(value, (np.integer, np.floating, np.bool_)) and kind.__module__ == "numpy":
        return value.item()
    if kind is torch.dtype:
        return {"__dtype__": str(value).removeprefix("torch.")}
    if kind is torch.Generator:
        return {"__generator__": _b64(value.get_state().numpy().tobytes())}
    raise NotPlainData(f"an object of type {kind.__module__}.{kind.__qualname__}")


_KEY_TYPES = (str, int, float, bool, bytes, tuple, type(None))


def _checked_keys(keys: list) -> list:
    """``keys`` if they may key a dict we build, else NotPlainData. Linear: the hash values are
    counted in a Counter keyed by those (int) values, which do not collide with one another."""
    for key in keys:
        if type(key) not in _KEY_TYPES:
            raise NotPlainData(f"a dict key of type {type(key).__name__}")
    try:
        hashes = Counter(hash(k) for k in keys)
    except TypeError:  # a tuple holding a list
        raise NotPlainData("an unhashable dict key") from None
    if hashes and max(hashes.values()) > MAX_SHARED_HASH:
        raise NotPlainData("dict keys whose hashes collide (a forged reply?)")
    return keys


def decode(data, depth: int = 0):
    """Inverse of :func:`encode`; validates every field (the other side may be hostile)."""
    if depth > MAX_DEPTH:
        raise NotPlainData("data nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v, depth + 1) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise NotPlainData("malformed data")
    (tag, body), = data.items()
    if tag == "__bytes__" and type(body) is str:
        return base64.b64decode(body, validate=True)
    if tag == "__tuple__" and type(body) is list:
        return tuple(decode(v, depth + 1) for v in body)
    if tag == "__dict__" and type(body) is list:
        if not all(type(pair) is list and len(pair) == 2 for pair in body):
            raise NotPlainData("malformed dict")
        keys = [decode(pair[0], depth + 1) for pair in body]
        keys = _checked_keys([tuple(k) if type(k) is list else k for k in keys])
        return dict(zip(keys, (decode(pair[1], depth + 1) for pair in body)))
    if tag == "__tensor__" and type(body) is dict:
        dtype = _DTYPES.get(body.get("dtype"))
        shape = body.get("shape")
        if dtype is None or type(shape) is not list or not all(type(s) is int and s >= 0 for s in shape):
            raise NotPlainData("malformed tensor")
        data_b64 = body.get("data", "")
        if type(data_b64) is not str:
            raise NotPlainData("malformed tensor")
        raw = bytearray(base64.b64decode(data_b64, validate=True))
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise NotPlainData("tensor data does not match its shape")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        if dtype == torch.bfloat16:
            return torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16).reshape(shape).clone()
        return torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()
    if tag == "__dtype__" and type(body) is str and body in _DTYPES:
        return _DTYPES[body]
    if tag == "__generator__" and type(body) is str:
        gen = torch.Generator()
        gen.set_state(torch.frombuffer(bytearray(base64.b64decode(body, validate=True)), dtype=torch.uint8).clone())
        return gen
    raise NotPlainData(f"unknown tag {str(tag)[:40]!r}")


def dumps(message: dict) -> bytes:
    return json.dumps(message, allow_nan=True).encode("utf-8")


def _small_object(pairs: list[tuple[str, object]]) -> dict:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise NotPlainData(f"a JSON object with {len(pairs)} fields (the protocol has at most {MAX_OBJECT_KEYS})")
    out = dict(pairs)
    if len(out) != len(pairs):
        raise NotPlainData("a JSON object with a duplicated field")
    return out


def loads(raw: bytes) -> dict:
    """Parse one message body; NotPlainData for anything that is not a well-formed message."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise NotPlainData(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(raw.decode("utf-8"), object_pairs_hook=_small_object)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        # ValueError also covers integers longer than Python's int-to-str digit limit.
        raise NotPlainData(f"unreadable message ({type(exc).__name__})") from None
    if type(message) is not dict:
        raise NotPlainData("malformed message")
    return message


def frame(message: dict) -> bytes:
    """``message`` as one frame: header and body."""
    body = dumps(message)
    return HEADER.pack(len(body)) + body


def body_length(header: bytes) -> int:
    """The body length announced by a frame header; NotPlainData when over the limit."""
    (length,) = HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise NotPlainData(f"a message of {length} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    return length
