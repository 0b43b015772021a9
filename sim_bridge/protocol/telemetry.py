"""Telemetry: one record per ACTION sent, published as the frames ``[TELEMETRY_TOPIC,
record]``, the record one JSON object of TELEMETRY_FIELDS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim_bridge.protocol._json import _check_version, _dumps, _json_object
from sim_bridge.protocol.common import PROTOCOL_VERSION, ProtocolError
from sim_bridge.protocol.values import _check_value

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
    "rows": "uint",
    "batch": "uint",
    "plan_ms": "float",
    "predicted_return": "float?",
    "deadline_miss": "bool",
    "fallback": "bool",
    "nonfinite": "uint",
    "model_version": "uint",
    "policy_version": "uint",
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
