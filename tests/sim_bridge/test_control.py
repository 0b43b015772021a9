"""Control requests and replies: each command round-trips, each rule of the document's "Control
refusals" table gives its code, garbage is refused with a control code and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_bridge import protocol as p
from tests.sim_bridge.protocol_doc import doc_section, doc_table

V = p.PROTOCOL_VERSION


def body(**request: Any) -> bytes:
    return json.dumps({"v": V} | request).encode()


def refused(raw: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_control_request(raw)
    assert info.value.code in p.CONTROL_ERROR_CODES
    return info.value


@pytest.mark.parametrize(
    ("cmd", "fields"),
    [("get", {}), ("get", {"robot": "arm-1"}), ("status", {}), ("model", {}),
     ("set", {"changes": {"horizon": 30, "weights": {"tip": 2.0}}}),
     ("set", {"changes": {"planner": "icem"}, "robot": "机械臂"})],
)  # fmt: skip
def test_every_command_round_trips(cmd: str, fields: dict[str, Any]) -> None:
    raw = p.control_request(cmd, **fields)
    assert json.loads(raw) == {"v": V, "cmd": cmd, **fields}
    assert p.parse_control_request(raw) == {"v": V, "cmd": cmd, **fields}
    assert p.parse_control_request(memoryview(raw))["cmd"] == cmd


@pytest.mark.parametrize(
    ("cmd", "fields", "code"),
    [("reboot", {}, "unknown_type"), ("set", {}, "bad_field"),
     ("set", {"changes": {}}, "bad_field"), ("model", {"robot": "arm-1"}, "bad_field"),
     ("get", {"robot": ""}, "bad_field"), ("status", {"verbose": True}, "bad_field"),
     ("set", {"changes": {"margin_ms": float("nan")}}, "nonfinite")],
)  # fmt: skip
def test_a_client_cannot_send_what_the_service_refuses(
    cmd: str, fields: dict[str, Any], code: str
) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.control_request(cmd, **fields)
    assert info.value.code == code


CONTROL_RULES: dict[str, bytes] = {
    "request_size": body(cmd="set", changes={"note": "x" * p.MAX_HEADER_BYTES}),
    "not_json": b'{"v": 3, "cmd": "get"',
    "repeated_key": f'{{"v": {V}, "cmd": "get", "cmd": "set"}}'.encode(),
    "nonfinite_literal": f'{{"v": {V}, "cmd": "set", "changes": {{"margin_ms": NaN}}}}'.encode(),
    "version": json.dumps({"cmd": "get"}).encode(),
    "command": body(cmd="tune"),
    "fields": body(cmd="set"),
    "changes": body(cmd="set", changes=[["horizon", 30]]),
    "robot_id": body(cmd="status", robot="a\nb"),
}
"""Rule name of the document -> a request broken by that rule alone."""
SERVICE_RULES = {"setting", "internal"}
"""Rules the service applies after the codec accepted a request."""


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"[1]", b'"get"', b"", b"{" * 5000, json.dumps({"v": V, "cmd": 7}).encode(),
     json.dumps({"v": V, "cmd": ["get"]}).encode(), json.dumps({"v": True, "cmd": "get"}).encode(),
     json.dumps({"v": float(V), "cmd": "get"}).encode(), body(cmd="get", changes={"x": 1})],
)  # fmt: skip
def test_malformed_requests_are_refused(raw: bytes) -> None:
    refused(raw)


def test_replies_round_trip_and_refusals_raise_their_code() -> None:
    settings_ = {"horizon": 30, "weights": {"tip": 2.0}}
    reply = p.parse_control_reply(p.control_reply(settings=settings_))
    assert reply == {"v": V, "ok": True, "settings": settings_}
    with pytest.raises(p.ProtocolError) as info:
        p.parse_control_reply(p.control_error("bad_setting", "horizon must be >= 1"))
    assert (info.value.code, info.value.reason) == ("bad_setting", "horizon must be >= 1")
    long = json.loads(p.control_error("internal", "x" * 5000))
    assert long["ok"] is False and len(long["error"]) == p.MAX_TEXT_CHARS


def test_reply_builders_refuse_what_no_client_could_read() -> None:
    with pytest.raises(ValueError, match='"v" and "ok"'):
        p.control_reply(ok=False)
    with pytest.raises(p.ProtocolError) as info:
        p.control_reply(tick_hz=float("inf"))
    assert info.value.code == "nonfinite"
    with pytest.raises(ValueError, match="control code"):
        p.control_error("unknown_robot", "a robot-socket code")


@pytest.mark.parametrize(
    ("reply", "code"),
    [(b"nope", "bad_frame"), (b"[true]", "bad_frame"),
     (json.dumps({"v": V + 1, "ok": True}).encode(), "bad_version"),
     (json.dumps({"ok": True}).encode(), "bad_version"),
     (json.dumps({"v": V}).encode(), "bad_field"),
     (json.dumps({"v": V, "ok": 1}).encode(), "bad_field"),
     (json.dumps({"v": V, "ok": False, "error": "no code"}).encode(), "bad_field"),
     (json.dumps({"v": V, "ok": False, "code": ["x"], "error": "e"}).encode(), "bad_field"),
     (json.dumps({"v": V, "ok": False, "code": "oops", "error": "e"}).encode(), "bad_field"),
     (json.dumps({"v": V, "ok": False, "code": "mismatch", "error": "e"}).encode(), "bad_field"),
     (f'{{"v": {V}, "ok": true, "ok": false}}'.encode(), "bad_frame")],
)  # fmt: skip
def test_malformed_replies_are_refused(reply: bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_control_reply(reply)
    assert info.value.code == code


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([V, V - 1, str(V)]) | JSON,
        "cmd": st.sampled_from(p.CONTROL_COMMANDS) | JSON,
        "changes": st.dictionaries(st.text(max_size=8), JSON, max_size=2) | JSON,
        "robot": st.sampled_from(["arm-1", ""]) | JSON,
    },
)


@settings(max_examples=300)
@given(REQUESTS | JSON | st.binary(max_size=40))
def test_any_request_is_accepted_as_is_or_refused_with_a_control_code(request: Any) -> None:
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    try:
        parsed = p.parse_control_request(raw)
    except p.ProtocolError as exc:
        assert exc.code in p.CONTROL_ERROR_CODES
        with pytest.raises(p.ProtocolError) as answered:  # the service can always say why
            p.parse_control_reply(p.control_error(exc.code, exc.reason))
        assert answered.value.code == exc.code
        return
    assert parsed == json.loads(raw) and parsed["cmd"] in p.CONTROL_COMMANDS


# --- the document agrees with the code ---------------------------------------------------------
def test_doc_lists_the_commands_and_their_fields() -> None:
    rows = doc_table(doc_section("Commands"), "command")
    assert list(rows) == list(p.CONTROL_COMMANDS)
    for cmd, fields in p.CONTROL_FIELDS.items():
        said = rows[cmd][0]
        for name, required in fields.items():
            assert f"`{name}` ({'required' if required else 'optional'})" in said, cmd
        assert fields or said == "none", cmd


def test_doc_control_rules_give_the_code_the_codec_gives() -> None:
    section = doc_section("Control refusals")
    rules = doc_table(section, "rule")
    assert set(rules) == set(CONTROL_RULES) | SERVICE_RULES
    assert {cells[0].strip("`") for cells in rules.values()} == set(p.CONTROL_ERROR_CODES)
    assert all(f"`{code}`" in section.split("|")[0] for code in p.CONTROL_ERROR_CODES)
    for rule, raw in CONTROL_RULES.items():
        assert refused(raw).code == rules[rule][0].strip("`"), rule
    assert set(p.CONTROL_ERROR_CODES) <= set(p.ERROR_CODES)
