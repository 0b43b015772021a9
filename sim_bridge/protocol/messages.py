"""The messages between robot bridges and the controller: their types, the schema of each
(FIELDS, ARRAYS), the Message that holds one, and building and checking them. Their frames
are in ``frames``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from sim_bridge.protocol.common import (
    ERROR_CODES,
    MAX_ARRAY_ELEMENTS,
    MAX_TEXT_CHARS,
    ProtocolError,
)
from sim_bridge.protocol.values import _check_value, robot_id_ok

BOUNDS_RTOL, BOUNDS_ATOL = 1e-5, 1e-8
"""How closely action bounds must agree with the served task's, element-wise."""
PERIOD_RTOL = 1e-3
"""How closely a control period must agree with the served task's."""

HELLO, WELCOME, STATE, ACTION = "HELLO", "WELCOME", "STATE", "ACTION"
EPISODE, HEARTBEAT, ERROR = "EPISODE", "HEARTBEAT", "ERROR"
DESCRIBE, SPEC = "DESCRIBE", "SPEC"

# Field kinds are the VALUE_KINDS of ``values``, or a tuple of the strings allowed.
_COMMON = {"seq": "uint", "time": "float", "robot": "robot_id", "episode": "uint"}
SPEC_FIELDS: dict[str, Any] = {
    "task": "str",
    "obs_dim": "uint>0",
    "act_dim": "uint>0",
    "control_period": "float>0",
    "episode_steps": "uint>0",
    "learns_reward": "bool",
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
        "reward": "bool",
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


def _as_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 4:  # float32 of either byte order
        return arr.copy()  # sealed read-only: the caller's array stays theirs
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ProtocolError("bad_array", f"{name} is not numeric") from None
