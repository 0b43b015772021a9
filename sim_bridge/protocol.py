"""The tickmpc wire protocol: messages between robot bridges and the controller.

A message is a ZeroMQ multipart message: one UTF-8 JSON header frame, then one raw frame per
array, little-endian, C order, described in the header (``"arrays": [{"name", "dtype",
"shape"}]``). Nothing is unpickled; every field is checked against the schema below, so a
malformed message raises :class:`ProtocolError` with a machine-readable code and a reason, never
anything else. This module is pure (numpy and the standard library only): bridges, the
controller and tests share it, and ``docs/protocol.md`` is its authoritative description (a test
checks that the two agree).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np

PROTOCOL = "tickmpc"
PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024
MAX_ARRAY_ELEMENTS = 4096
MAX_ROBOT_ID_BYTES = 32
MAX_TEXT_CHARS = 1024
ARRAY_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}
"""Array dtypes on the wire: float32 and float64, little-endian."""

HELLO, WELCOME, STATE, ACTION = "HELLO", "WELCOME", "STATE", "ACTION"
EPISODE, HEARTBEAT, ERROR = "EPISODE", "HEARTBEAT", "ERROR"

ERROR_CODES = {
    "bad_frame": "a frame is not valid UTF-8 JSON, or frames and header disagree",
    "too_large": "a header or array exceeds the size limits",
    "bad_version": "the protocol name or version is not this one",
    "unknown_type": "the message type is not one of the protocol's",
    "bad_field": "a header field is missing, of the wrong type or out of range",
    "bad_array": "an array is missing, unexpected, or has the wrong dtype or shape",
    "nonfinite": "a number is NaN or infinite",
    "unknown_robot": "the robot has not said HELLO (or was forgotten): send HELLO again",
    "mismatch": "HELLO does not match what the controller serves (task, dims, bounds, period)",
    "unexpected": "a valid message that makes no sense now (e.g. ACTION sent to the controller)",
    "internal": "the controller failed on this message; it keeps serving",
}

# field kinds: int, float, bool, str, "float?" (a float or null), or a tuple of allowed strings
_COMMON = {"seq": "int", "time": "float", "robot": "str", "episode": "int"}
FIELDS: dict[str, dict[str, Any]] = {
    HELLO: {
        "task": "str",
        "obs_dim": "int",
        "act_dim": "int",
        "control_period": "float",
        "mode": ("lockstep", "realtime"),
    },
    WELCOME: {"model_version": "int", "planner": "str", "horizon": "int", "budget_ms": "float"},
    STATE: {"step": "int", "reward": "float?", "terminated": "bool", "truncated": "bool"},
    ACTION: {
        "answers": "int",
        "planner": "str",
        "horizon": "int",
        "iterations": "int",
        "predicted_return": "float?",
        "plan_ms": "float",
        "model_version": "int",
        "deadline_miss": "bool",
    },
    EPISODE: {"event": ("start", "end"), "steps": "int", "return": "float?"},
    HEARTBEAT: {},
    ERROR: {"code": tuple(ERROR_CODES), "reason": "str", "answers": "int"},
}
"""Type-specific header fields, all required (nullable ones may be null)."""

ARRAYS: dict[str, dict[str, bool]] = {
    HELLO: {"action_low": True, "action_high": True},
    WELCOME: {},
    STATE: {"obs": True, "applied": False},
    ACTION: {"action": True},
    EPISODE: {},
    HEARTBEAT: {},
    ERROR: {},
}
"""Arrays per type (name -> required), all 1-D; their lengths are checked by the receiver,
which knows the dims from HELLO."""


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is one of ERROR_CODES; ``seq`` and ``robot``
    are what could be read of the offending message (for the ERROR reply), or -1 and ""."""

    def __init__(self, code: str, reason: str, *, seq: int = -1, robot: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.seq, self.robot = code, reason, seq, robot


@dataclass(frozen=True)
class Message:
    """One decoded (or to-be-encoded) message. ``fields`` holds the type-specific header
    fields of FIELDS[type]; ``arrays`` the 1-D arrays of ARRAYS[type]."""

    type: str
    robot: str
    seq: int = 0
    time: float = 0.0
    episode: int = 0
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """A type-specific field or array by name."""
        if name in self.arrays:
            return self.arrays[name]
        return self.fields[name]


def make(
    type: str,
    robot: str,
    *,
    seq: int = 0,
    time: float = 0.0,
    episode: int = 0,
    **values: Any,
) -> Message:
    """A validated message: ``values`` are its fields and arrays (arrays as anything numpy
    accepts; they are sent as float64 unless given as float32 arrays)."""
    arrays = {k: _as_array(k, values.pop(k)) for k in list(values) if k in ARRAYS.get(type, {})}
    return _sealed(Message(type, robot, seq, time, episode, values, arrays))


def _sealed(msg: Message) -> Message:
    """``msg`` checked and made immutable (read-only mappings and arrays), so ``encode`` can
    trust it without checking again: the check is a third of a message's encode cost."""
    for arr in msg.arrays.values():
        arr.setflags(write=False)
    object.__setattr__(msg, "fields", MappingProxyType(dict(msg.fields)))
    object.__setattr__(msg, "arrays", MappingProxyType(dict(msg.arrays)))
    _check(msg)
    object.__setattr__(msg, "_sealed", True)
    return msg


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
    head = bytes(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header is {len(head)} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(head.decode("utf-8"), parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_frame", f"header is not UTF-8 JSON: {exc}") from None
    except ValueError as exc:  # Python refuses integer literals of more than 4300 digits
        raise ProtocolError("too_large", f"header holds a huge number: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_frame", "header must be a JSON object")
    # Only what an ERROR reply can carry: a bad seq or robot id must not break the reply too.
    seq, robot = header.get("seq"), header.get("robot")
    where_seq = seq if _is_int(seq) and 0 <= seq < 2**63 else -1
    where_robot = robot if robot_id_ok(robot) else ""
    try:
        return _decode_header(header, frames[1:])
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.reason, seq=where_seq, robot=where_robot) from None


def error_reply(exc: ProtocolError, robot: str = "", *, seq: int = 0) -> Message:
    """The ERROR message answering a refused message (``robot`` and ``exc.robot`` are used
    when they are valid robot ids, else "?"; ``answers`` is -1 when the seq was unreadable)."""
    return make(
        ERROR,
        next((r for r in (robot, exc.robot) if robot_id_ok(r)), "?"),
        seq=seq,
        code=exc.code,
        reason=exc.reason[:MAX_TEXT_CHARS],
        answers=exc.seq if 0 <= exc.seq < 2**63 else -1,
    )


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


def _check(msg: Message) -> None:
    """Everything ``decode`` requires of a message, on the decoded form."""
    if msg.type not in FIELDS:
        raise ProtocolError("unknown_type", f"type {msg.type!r} is not one of {sorted(FIELDS)}")
    for name, kind in _COMMON.items():
        _check_value(msg.type, name, kind, getattr(msg, name))
    if not robot_id_ok(msg.robot):
        raise ProtocolError(
            "bad_field", f"robot id must be 1-{MAX_ROBOT_ID_BYTES} printable UTF-8 bytes"
        )
    if msg.seq < 0 or msg.episode < 0:
        raise ProtocolError("bad_field", f"{msg.type}: seq and episode must be >= 0")
    spec = FIELDS[msg.type]
    missing = sorted(set(spec) - set(msg.fields))
    extra = sorted(set(msg.fields) - set(spec))
    if missing or extra:
        raise ProtocolError("bad_field", f"{msg.type}: missing {missing}, unknown {extra}")
    for name, kind in spec.items():
        _check_value(msg.type, name, kind, msg.fields[name])
    wanted = ARRAYS[msg.type]
    absent = sorted(n for n, required in wanted.items() if required and n not in msg.arrays)
    unknown = sorted(set(msg.arrays) - set(wanted))
    if absent or unknown:
        raise ProtocolError("bad_array", f"{msg.type}: missing arrays {absent}, unknown {unknown}")
    for name, arr in msg.arrays.items():
        if arr.ndim != 1 or arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
            raise ProtocolError("bad_array", f"{msg.type}.{name} must be a 1-D float32/64 array")
        if len(arr) > MAX_ARRAY_ELEMENTS:
            raise ProtocolError("too_large", f"{msg.type}.{name}: {len(arr)} elements")
        if not np.isfinite(arr).all():
            raise ProtocolError("nonfinite", f"{msg.type}.{name} holds NaN or infinity")


def _check_value(kind_of: str, name: str, kind: Any, value: Any) -> None:
    where = f"{kind_of}.{name}"
    if kind == "int":
        ok = _is_int(value) and abs(value) < 2**63
    elif kind == "float" or kind == "float?":
        if value is None and kind == "float?":
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not _finite(value):
            raise ProtocolError("nonfinite", f"{where} is not a finite float")
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str) and len(value) <= MAX_TEXT_CHARS
    else:
        ok = value in kind
        if not ok:
            raise ProtocolError("bad_field", f"{where} is {value!r}; allowed: {list(kind)}")
    if not ok:
        raise ProtocolError("bad_field", f"{where} must be {kind}, got {value!r}")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def robot_id_ok(robot: Any) -> TypeGuard[str]:
    """A robot id: 1-MAX_ROBOT_ID_BYTES bytes of printable UTF-8."""
    if not isinstance(robot, str) or not robot.isprintable():
        return False
    return 1 <= len(robot.encode("utf-8")) <= MAX_ROBOT_ID_BYTES


def _refuse_constant(name: str) -> Any:
    raise ProtocolError("nonfinite", f"header holds {name}")


def _as_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 4:  # float32 of either byte order
        return arr.copy()  # sealed read-only: the caller's array stays theirs
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ProtocolError("bad_array", f"{name} is not numeric") from None


def _wire(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
