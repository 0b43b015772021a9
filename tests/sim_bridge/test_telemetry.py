"""Telemetry records: a full record round-trips, every field is required and typed, and the
document's telemetry table is TELEMETRY_FIELDS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_bridge import protocol as p
from tests.sim_bridge.protocol_doc import doc_section, doc_table, kind_text
from tests.sim_bridge.test_protocol import VALUES

TICK: dict[str, Any] = {
    "robot": "sim-0", "seq": 42, "episode": 3, "step": 17, "time": 1700000000.25,
    "planner": "icem", "horizon": 30, "iterations": 4, "rows": 90000, "batch": 3, "plan_ms": 12.5,
    "predicted_return": 61.0, "deadline_miss": False, "fallback": False, "nonfinite": 0,
    "model_version": 2, "policy_version": 1, "dropped_stale": 1, "action": [0.25, -1.0],
    "reward": 0.5, "reward_terms": {"reward_tip": 0.51, "reward_ctrl": -0.01},
}  # fmt: skip
"""One tick's record, every field set (``v`` is added by telemetry_record)."""
WRONG: dict[str, Any] = {
    "uint": 1.5, "float": "1", "float?": "1", "bool": 1, "str": 5, "robot_id": "",
    "float[]": [True], "{str: float}?": {"tip": "1"},
}  # fmt: skip
"""A value of the wrong type (or range) per kind the telemetry uses."""


def refused(**fields: Any) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.telemetry_record(**fields)
    return info.value


def test_a_record_round_trips() -> None:
    topic, body = p.telemetry_record(**TICK)
    assert topic == p.TELEMETRY_TOPIC == b"tick"
    assert json.loads(body) == {"v": p.PROTOCOL_VERSION, **TICK}
    assert p.parse_telemetry([topic, memoryview(body)]) == {"v": p.PROTOCOL_VERSION, **TICK}


def test_nulls_where_nothing_is_known() -> None:
    first = TICK | {"reward": None, "reward_terms": None, "predicted_return": None}
    assert p.parse_telemetry(p.telemetry_record(**first))["reward"] is None


@pytest.mark.parametrize("name", sorted(TICK))
def test_every_field_is_required(name: str) -> None:
    exc = refused(**{k: v for k, v in TICK.items() if k != name})
    assert exc.code == "bad_field" and name in exc.reason


@pytest.mark.parametrize("name", sorted(TICK))
def test_every_field_is_typed(name: str) -> None:
    exc = refused(**TICK | {name: WRONG[p.TELEMETRY_FIELDS[name]]})
    assert exc.code == "bad_field" and name in exc.reason


def test_no_other_field() -> None:
    exc = refused(**TICK, plan_us=12500)
    assert exc.code == "bad_field" and "plan_us" in exc.reason


@pytest.mark.parametrize(
    "change",
    [{"reward": float("nan")}, {"plan_ms": float("inf")}, {"action": [0.0, float("-inf")]},
     {"reward_terms": {"reward_tip": float("nan")}}],
)  # fmt: skip
def test_nonfinite_numbers_are_refused(change: dict[str, Any]) -> None:
    assert refused(**TICK | change).code == "nonfinite"


def test_counters_are_not_negative() -> None:
    for name in ("seq", "episode", "step", "iterations", "nonfinite", "dropped_stale"):
        exc = refused(**TICK | {name: -1})
        assert exc.code == "bad_field" and name in exc.reason


def test_the_version_is_checked() -> None:
    assert refused(**TICK, v=p.PROTOCOL_VERSION - 1).code == "bad_version"
    assert p.telemetry_record(**TICK, v=p.PROTOCOL_VERSION) == p.telemetry_record(**TICK)
    _, body = p.telemetry_record(**TICK)
    for v in (p.PROTOCOL_VERSION + 1, None, float(p.PROTOCOL_VERSION)):
        newer = json.dumps(json.loads(body) | {"v": v}).encode()
        with pytest.raises(p.ProtocolError) as info:
            p.parse_telemetry([b"tick", newer])
        assert info.value.code == "bad_version"


@pytest.mark.parametrize(
    "frames",
    [[b"tick"], [b"ticks", b"{}"], [b"tick", b"{}", b""], [b"tick", b"[]"], [b"tick", b"\xff"],
     [b"tick", b'{"v": 3, "v": 3}']],
)  # fmt: skip
def test_malformed_frames_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_telemetry(frames)
    assert info.value.code == "bad_frame"


@settings(max_examples=200)
@given(st.fixed_dictionaries({n: VALUES[k] for n, k in p.TELEMETRY_FIELDS.items() if n != "v"}))
def test_any_valid_record_round_trips(record: dict[str, Any]) -> None:
    back = p.parse_telemetry(p.telemetry_record(**record))
    assert back == {"v": p.PROTOCOL_VERSION, **record}


# --- the document agrees with the code ---------------------------------------------------------
def test_doc_table_is_the_telemetry_fields() -> None:
    rows = doc_table(doc_section("Telemetry"), "key")
    assert list(rows) == list(p.TELEMETRY_FIELDS)
    for name, kind in p.TELEMETRY_FIELDS.items():
        assert rows[name][0] == kind_text(kind), name
    assert f'`b"{p.TELEMETRY_TOPIC.decode()}"`' in doc_section("Telemetry")
