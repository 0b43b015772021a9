"""The tickmpc wire protocol: messages between robot bridges and the controller, control
requests and telemetry records.

A message is a ZeroMQ multipart message: one UTF-8 JSON header frame, then one raw frame per
array, little-endian, C order, described in the header (``"arrays": [{"name", "dtype",
"shape"}]``). Nothing is unpickled; every field is checked against the schema below, so a
malformed message raises :class:`ProtocolError` with a machine-readable code and a reason, never
anything else. Control requests, their replies and telemetry records are single JSON objects,
checked the same way and versioned with the same PROTOCOL_VERSION. This module is pure (numpy
and the standard library only): bridges, the controller and tests share it, and
``docs/protocol.md`` is its authoritative description (a test checks that the two agree).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np

PROTOCOL = "tickmpc"
PROTOCOL_VERSION = 2
MAX_HEADER_BYTES = 16 * 1024
MAX_ARRAY_ELEMENTS = 4096
MAX_ROBOT_ID_BYTES = 32
MAX_TEXT_CHARS = 1024
ARRAY_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}
"""Array dtypes on the wire: float32 and float64, little-endian."""
BOUNDS_RTOL, BOUNDS_ATOL = 1e-5, 1e-8
"""How closely action bounds must agree with the served task's, element-wise."""
PERIOD_RTOL = 1e-3
"""How closely a control period must agree with the served task's."""

HELLO, WELCOME, STATE, ACTION = "HELLO", "WELCOME", "STATE", "ACTION"
EPISODE, HEARTBEAT, ERROR = "EPISODE", "HEARTBEAT", "ERROR"
DESCRIBE, SPEC = "DESCRIBE", "SPEC"

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
    "bad_setting": "a control request's setting was refused: unknown name or out of its range",
    "internal": "the controller failed on this message; it keeps serving",
}

# Field kinds are the keys of _VALUE_CHECKS (see the end of the module), or a tuple of the
# strings allowed.
_COMMON = {"seq": "uint", "time": "float", "robot": "robot_id", "episode": "uint"}
SPEC_FIELDS: dict[str, Any] = {
    "task": "str",
    "obs_dim": "uint>0",
    "act_dim": "uint>0",
    "control_period": "float>0",
    "episode_steps": "uint>0",
}
"""The served task's spec, what a bridge must match: WELCOME carries it, SPEC is it."""
SPEC_ARRAYS = {"action_low": True, "action_high": True}
FIELDS: dict[str, dict[str, Any]] = {
    HELLO: {
        "task": "str",
        "obs_dim": "uint>0",
        "act_dim": "uint>0",
        "control_period": "float>0",
        "mode": ("lockstep", "realtime"),
    },
    WELCOME: {
        "model_version": "uint",
        "planner": "str",
        "horizon": "uint",
        "budget_ms": "float",
        **SPEC_FIELDS,
    },
    STATE: {"step": "uint", "reward": "float?", "terminated": "bool", "truncated": "bool"},
    ACTION: {
        "answers": "uint",
        "planner": "str",
        "horizon": "uint",
        "iterations": "uint",
        "predicted_return": "float?",
        "plan_ms": "float",
        "model_version": "uint",
        "deadline_miss": "bool",
        "fallback": "bool",
        "nonfinite": "uint",
    },
    EPISODE: {"event": ("start", "end"), "steps": "uint", "return": "float?"},
    HEARTBEAT: {},
    ERROR: {"code": tuple(ERROR_CODES), "reason": "str", "answers": "int"},
    DESCRIBE: {},
    SPEC: dict(SPEC_FIELDS),
}
"""Type-specific header fields, all required (nullable ones may be null)."""

ARRAYS: dict[str, dict[str, bool]] = {
    HELLO: {"action_low": True, "action_high": True},
    WELCOME: dict(SPEC_ARRAYS),
    STATE: {"obs": True, "applied": False},
    ACTION: {"action": True},
    EPISODE: {},
    HEARTBEAT: {},
    ERROR: {},
    DESCRIBE: {},
    SPEC: dict(SPEC_ARRAYS),
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


def spec_of(msg: Message) -> dict[str, Any]:
    """The served task's spec that a WELCOME or SPEC carries: the SPEC_FIELDS, and the
    SPEC_ARRAYS as tuples of floats."""
    if msg.type not in (WELCOME, SPEC):
        raise ValueError(f"a {msg.type} carries no spec")
    spec = {name: msg.fields[name] for name in SPEC_FIELDS}
    return spec | {name: tuple(msg.arrays[name].tolist()) for name in SPEC_ARRAYS}


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
    header = _json_object(bytes(frames[0]), "header", MAX_HEADER_BYTES)
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
        time=time.time(),
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
        _check_value(f"{msg.type}.{name}", kind, getattr(msg, name))
    spec = FIELDS[msg.type]
    missing = sorted(set(spec) - set(msg.fields))
    extra = sorted(set(msg.fields) - set(spec))
    if missing or extra:
        raise ProtocolError("bad_field", f"{msg.type}: missing {missing}, unknown {extra}")
    for name, kind in spec.items():
        _check_value(f"{msg.type}.{name}", kind, msg.fields[name])
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


def robot_id_ok(robot: Any) -> TypeGuard[str]:
    """A robot id: 1-MAX_ROBOT_ID_BYTES bytes of printable UTF-8."""
    if not isinstance(robot, str) or not robot.isprintable():
        return False
    return 1 <= len(robot.encode("utf-8")) <= MAX_ROBOT_ID_BYTES


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


# --- control socket ----------------------------------------------------------------------------
CONTROL_COMMANDS = ("get", "set", "status", "model")
"""Control requests; "model" is the learner announcing that it published a model version."""
CONTROL_FIELDS: dict[str, dict[str, bool]] = {
    "get": {"robot": False},
    "set": {"changes": True, "robot": False},
    "status": {"robot": False},
    "model": {},
}
"""What a request may carry besides ``v`` and ``cmd`` (name -> required): ``changes`` a
non-empty object of settings, ``robot`` a robot id (for per-robot settings)."""
CONTROL_ERROR_CODES = (
    "bad_frame", "too_large", "bad_version", "unknown_type", "bad_field", "nonfinite",
    "bad_setting", "internal",
)  # fmt: skip
"""The ERROR_CODES a control reply may refuse a request with."""


def control_request(cmd: str, **fields: Any) -> bytes:
    """The frame of a control request, refused here (ProtocolError) as the service would."""
    body = _dumps({"v": PROTOCOL_VERSION, "cmd": cmd, **fields})
    parse_control_request(body)
    return body


def parse_control_request(body: bytes | memoryview) -> dict[str, Any]:
    """The request in ``body``, checked; raises ProtocolError with one of CONTROL_ERROR_CODES."""
    request = _json_object(bytes(body), "control request", MAX_HEADER_BYTES)
    _check_version(request.get("v"), "control request")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in CONTROL_COMMANDS:
        raise ProtocolError("unknown_type", f"cmd {cmd!r} is not one of {list(CONTROL_COMMANDS)}")
    allowed = CONTROL_FIELDS[cmd]
    extra = sorted(set(request) - {"v", "cmd"} - set(allowed))
    missing = sorted(name for name, required in allowed.items() if required and name not in request)
    if extra or missing:
        raise ProtocolError("bad_field", f"{cmd}: missing {missing}, unknown {extra}")
    if "changes" in request and not (isinstance(request["changes"], dict) and request["changes"]):
        raise ProtocolError("bad_field", f'{cmd}: "changes" must be a non-empty object')
    if "robot" in request:
        _check_value(f"{cmd}.robot", "robot_id", request["robot"])
    return request


def control_reply(**fields: Any) -> bytes:
    """The frame of a reply that carried out its request."""
    if "v" in fields or "ok" in fields:
        raise ValueError('a control reply sets "v" and "ok" itself')
    return _dumps({"v": PROTOCOL_VERSION, "ok": True, **fields})


def control_error(code: str, reason: str) -> bytes:
    """The frame of a reply refusing its request: ``code`` one of CONTROL_ERROR_CODES."""
    if code not in CONTROL_ERROR_CODES:
        raise ValueError(f"control code {code!r} is not one of {list(CONTROL_ERROR_CODES)}")
    return _dumps({"v": PROTOCOL_VERSION, "ok": False, "code": code,
                   "error": reason[:MAX_TEXT_CHARS]})  # fmt: skip


def parse_control_reply(body: bytes | memoryview) -> dict[str, Any]:
    """The reply in ``body`` if it says ``ok``; a refusal is raised as a ProtocolError with
    the reply's code and error, a malformed reply as one of its own."""
    reply = _json_object(bytes(body), "control reply", None)
    _check_version(reply.get("v"), "control reply")
    ok, code, reason = reply.get("ok"), reply.get("code"), reply.get("error")
    if ok is True:
        return reply
    if ok is not False:
        raise ProtocolError("bad_field", f'a control reply\'s "ok" must be true or false: {ok!r}')
    if not (isinstance(code, str) and code in CONTROL_ERROR_CODES and isinstance(reason, str)):
        raise ProtocolError("bad_field", f"a refusal needs a control code and text: {code!r}")
    raise ProtocolError(code, reason)


# --- telemetry ---------------------------------------------------------------------------------
TELEMETRY_TOPIC = b"tick"
TELEMETRY_FIELDS: dict[str, Any] = {
    "v": "uint",
    "robot": "robot_id",
    "seq": "uint",
    "episode": "uint",
    "step": "uint",
    "time": "float",
    "planner": "str",
    "horizon": "uint",
    "iterations": "uint",
    "plan_ms": "float",
    "predicted_return": "float?",
    "deadline_miss": "bool",
    "fallback": "bool",
    "nonfinite": "uint",
    "model_version": "uint",
    "dropped_stale": "uint",
    "action": "float[]",
    "reward": "float?",
    "reward_terms": "{str: float}?",
}
"""One record per ACTION sent, every field required (nullable ones may be null)."""


def telemetry_record(**fields: Any) -> list[bytes]:
    """The frames ``[TELEMETRY_TOPIC, record]`` of one record (``v`` is added); raises
    ProtocolError naming a missing, unknown or ill-typed field."""
    record = {"v": PROTOCOL_VERSION, **fields}
    _check_telemetry(record)
    return [TELEMETRY_TOPIC, _dumps(record)]


def parse_telemetry(frames: Sequence[bytes | memoryview]) -> dict[str, Any]:
    """The record in the frames a telemetry subscriber received, checked."""
    if len(frames) != 2 or bytes(frames[0]) != TELEMETRY_TOPIC:
        raise ProtocolError("bad_frame", f"telemetry is [{TELEMETRY_TOPIC!r}, record]")
    record = _json_object(bytes(frames[1]), "telemetry record", None)
    _check_telemetry(record)
    return record


def _check_telemetry(record: dict[str, Any]) -> None:
    _check_version(record.get("v"), "telemetry record")
    missing = sorted(set(TELEMETRY_FIELDS) - set(record))
    extra = sorted(set(record) - set(TELEMETRY_FIELDS))
    if missing or extra:
        raise ProtocolError("bad_field", f"telemetry: missing {missing}, unknown {extra}")
    for name, kind in TELEMETRY_FIELDS.items():
        _check_value(f"telemetry.{name}", kind, record[name])


# --- JSON and value checks shared by all three -------------------------------------------------
def _json_object(raw: bytes, what: str, max_bytes: int | None) -> dict[str, Any]:
    """``raw`` as one UTF-8 JSON object with no repeated key and no NaN or Infinity."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise ProtocolError("too_large", f"{what} is {len(raw)} bytes > {max_bytes}")
    try:
        obj = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except ProtocolError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_frame", f"{what} is not UTF-8 JSON: {exc}") from None
    except ValueError as exc:  # Python refuses integer literals of more than 4300 digits
        raise ProtocolError("too_large", f"{what} holds a huge number: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", f"{what} must be a JSON object")
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON allows a repeated key and Python keeps the last: two readers could disagree.
    obj = dict(pairs)
    if len(obj) < len(pairs):
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ProtocolError("bad_frame", f"a JSON object repeats the key(s) {repeated}")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ProtocolError("nonfinite", f"JSON holds {name}")


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        raise ProtocolError("nonfinite", f"cannot send {exc}") from None


def _check_version(version: Any, what: str) -> None:
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version", f'{what}: "v" is {version!r}, this side speaks {PROTOCOL_VERSION}'
        )


def _check_value(where: str, kind: Any, value: Any) -> None:
    """Raise ProtocolError (bad_field, or nonfinite) unless ``value`` is of ``kind``."""
    if isinstance(kind, tuple):
        if value not in kind:
            raise ProtocolError("bad_field", f"{where} is {value!r}; allowed: {list(kind)}")
    elif not _VALUE_CHECKS[kind](where, value):
        raise ProtocolError("bad_field", f"{where} must be {kind}, got {value!r}")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _integer(low: int | None) -> Callable[[str, Any], bool]:
    def check(where: str, value: Any) -> bool:
        if not (_is_int(value) and abs(value) < 2**63):
            return False
        if low is not None and value < low:
            raise ProtocolError("bad_field", f"{where} must be >= {low}, got {value}")
        return True

    return check


def _number(where: str, value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if not _finite(value):
        raise ProtocolError("nonfinite", f"{where} is not a finite number")
    return True


def _positive(where: str, value: Any) -> bool:
    ok = _number(where, value)
    if ok and value <= 0:
        raise ProtocolError("bad_field", f"{where} must be > 0, got {value}")
    return ok


def _robot_id(where: str, value: Any) -> bool:
    if not robot_id_ok(value):
        raise ProtocolError(
            "bad_field", f"{where}: a robot id is 1-{MAX_ROBOT_ID_BYTES} printable UTF-8 bytes"
        )
    return True


def _numbers(where: str, value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) <= MAX_ARRAY_ELEMENTS
        and all(_number(where, v) for v in value)
    )


def _named_numbers(where: str, value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, dict) and all(
        isinstance(name, str) and _number(f"{where}.{name}", v) for name, v in value.items()
    )


_VALUE_CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "int": _integer(None),
    "uint": _integer(0),
    "uint>0": _integer(1),
    "float": _number,
    "float>0": _positive,
    "float?": lambda where, value: value is None or _number(where, value),
    "bool": lambda where, value: isinstance(value, bool),
    "str": lambda where, value: isinstance(value, str) and len(value) <= MAX_TEXT_CHARS,
    "robot_id": _robot_id,
    "float[]": _numbers,
    "{str: float}?": _named_numbers,
}
"""Field kinds -> a check that says whether a value has the kind's JSON type (and raises
ProtocolError for a value of the type but out of its range or not finite)."""
VALUE_KINDS = tuple(_VALUE_CHECKS)
