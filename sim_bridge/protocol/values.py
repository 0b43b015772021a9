"""The value kinds of header fields, control fields and telemetry fields ("uint", "float?",
"robot_id", ...), each with the check that a value is of it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

from sim_bridge.protocol.common import (
    MAX_ARRAY_ELEMENTS,
    MAX_ROBOT_ID_BYTES,
    MAX_TEXT_CHARS,
    ProtocolError,
)


def robot_id_ok(robot: Any) -> TypeGuard[str]:
    """A robot id: 1-MAX_ROBOT_ID_BYTES bytes of printable UTF-8."""
    if not isinstance(robot, str) or not robot.isprintable():
        return False
    return 1 <= len(robot.encode("utf-8")) <= MAX_ROBOT_ID_BYTES


def _check_value(where: str, kind: Any, value: Any) -> None:
    """Raise ProtocolError (bad_field, or nonfinite) unless ``value`` is of ``kind``: a key of
    _VALUE_CHECKS, or a tuple of the strings allowed."""
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
    "uint?": lambda where, value: value is None or _integer(0)(where, value),
    "float": _number,
    "float>0": _positive,
    "float?": lambda where, value: value is None or _number(where, value),
    "bool": lambda where, value: isinstance(value, bool),
    "str": lambda where, value: isinstance(value, str) and len(value) <= MAX_TEXT_CHARS,
    "robot_id": _robot_id,
    "float[]": _numbers,
    "{str: float}": lambda where, value: value is not None and _named_numbers(where, value),
    "{str: float}?": _named_numbers,
}
"""Field kinds -> a check that says whether a value has the kind's JSON type (and raises
ProtocolError for a value of the type but out of its range or not finite)."""
VALUE_KINDS = tuple(_VALUE_CHECKS)
