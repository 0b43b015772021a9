"""A message's ZeroMQ frames: a UTF-8 JSON header, then one raw little-endian C-order frame
per array, which the header describes (``"arrays": [{"name", "dtype", "shape"}]``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sim_bridge.protocol._json import _json_object
from sim_bridge.protocol.common import (
    MAX_ARRAY_ELEMENTS,
    MAX_HEADER_BYTES,
    PROTOCOL,
    PROTOCOL_VERSION,
    ProtocolError,
)
from sim_bridge.protocol.messages import _COMMON, FIELDS, Message, _check, _sealed
from sim_bridge.protocol.values import _is_int, robot_id_ok

ARRAY_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}
"""Array dtypes on the wire: float32 and float64, little-endian."""


def encode(msg: Message) -> list[bytes]:
    """The frames of ``msg``, after checking it like ``decode`` would (messages from ``make``
    and ``decode`` were checked when they were built and cannot have changed since)."""
    if not getattr(msg, "_sealed", False):
        _check(msg)
    header: dict[str, Any] = {
        "proto": PROTOCOL,
        "version": PROTOCOL_VERSION,
        "type": msg.type,
        "seq": msg.seq,
        "time": msg.time,
        "robot": msg.robot,
        "episode": msg.episode,
        **msg.fields,
    }
    arrays = [(name, _wire(a)) for name, a in msg.arrays.items()]
    header["arrays"] = [
        {"name": name, "dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays
    ]
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header is {len(head)} bytes > {MAX_HEADER_BYTES}")
    return [head, *(a.tobytes() for _, a in arrays)]


def decode(frames: Sequence[bytes | memoryview]) -> Message:
    """Parse and validate one message; raises ProtocolError naming what was wrong."""
    if not frames:
        raise ProtocolError("bad_frame", "empty message (no header frame)")
    header = _json_object(bytes(frames[0]), "header", MAX_HEADER_BYTES)
    # Only what an ERROR reply can carry: a bad seq or robot id must not break the reply too.
    seq, robot = header.get("seq"), header.get("robot")
    where_seq = seq if _is_int(seq) and 0 <= seq < 2**63 else -1
    where_robot = robot if robot_id_ok(robot) else ""
    try:
        return _decode_header(header, frames[1:])
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.reason, seq=where_seq, robot=where_robot) from None


def _decode_header(header: dict[str, Any], payload: Sequence[bytes | memoryview]) -> Message:
    version = header.get("version")
    if header.get("proto") != PROTOCOL or not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"got proto={header.get('proto')!r} version={header.get('version')!r}; "
            f"this side speaks {PROTOCOL!r} version {PROTOCOL_VERSION}",
        )
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise ProtocolError("unknown_type", f"type {kind!r} is not one of {sorted(FIELDS)}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(payload):
        n = len(specs) if isinstance(specs, list) else "?"
        raise ProtocolError("bad_frame", f"header lists {n} arrays but {len(payload)} follow")
    arrays = {}
    for spec, raw in zip(specs, payload, strict=True):
        name, arr = _read_array(spec, raw)
        if name in arrays:
            raise ProtocolError("bad_array", f"array {name!r} given twice")
        arrays[name] = arr
    known = set(FIELDS[kind]) | set(_COMMON) | {"proto", "version", "type", "arrays"}
    extra = sorted(set(header) - known)
    if extra:
        raise ProtocolError("bad_field", f"{kind} has no field(s) {extra}")
    absent = sorted(k for k in _COMMON if k not in header)
    if absent:
        raise ProtocolError("bad_field", f"{kind}: missing {absent}")
    common = {k: header[k] for k in _COMMON}
    fields = {k: header[k] for k in FIELDS[kind] if k in header}
    msg = Message(kind, common["robot"], common["seq"], common["time"], common["episode"],
                  fields, arrays)  # fmt: skip
    return _sealed(msg)


def _read_array(spec: Any, raw: bytes | memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise ProtocolError("bad_array", "an array spec must be {name, dtype, shape}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
        raise ProtocolError(
            "bad_array", f"array {name!r}: dtype {dtype!r} is not one of {sorted(ARRAY_DTYPES)}"
        )
    if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0]) and shape[0] >= 0):
        raise ProtocolError("bad_array", f"array {name!r}: shape {shape!r} must be [n], n >= 0")
    if shape[0] > MAX_ARRAY_ELEMENTS:
        raise ProtocolError("too_large", f"array {name!r}: {shape[0]} > {MAX_ARRAY_ELEMENTS}")
    dt = ARRAY_DTYPES[dtype]
    if len(raw) != shape[0] * dt.itemsize:
        raise ProtocolError(
            "bad_frame", f"array {name!r}: {len(raw)} bytes for shape {shape} of {dtype}"
        )
    return name, np.frombuffer(raw, dt).copy()


def _wire(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
