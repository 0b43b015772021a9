"""The wire codec: every type round-trips, each malformed message is refused with the right
code (and garbage with some code, never another exception), and docs/protocol.md agrees with
the code."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim_bridge import protocol as p
from tests.sim_bridge.protocol_doc import doc_section, doc_table, doc_text, kind_text

ROBOT = "arm-2"
SAMPLE: dict[str, Any] = {
    "int": 7, "uint": 7, "uint>0": 7, "uint?": 7, "float": 0.25, "float>0": 0.25, "float?": None,
    "bool": True, "str": "cem", "robot_id": ROBOT, "float[]": [0.5, -1.0],
    "{str: float}?": {"tip": 0.5},
}  # fmt: skip
"""A valid value per field kind (enum kinds take their first choice)."""


def sample(kind: str, *, dtype: Any = np.float64, **override: Any) -> p.Message:
    """A valid message of ``kind`` with every optional array, overridden by ``override``."""
    values = {
        name: k[0] if isinstance(k, tuple) else SAMPLE[k] for name, k in p.FIELDS[kind].items()
    }
    values |= {name: np.array([0.5, -1.0, 3e30], dtype) for name in p.ARRAYS[kind]}
    return p.make(kind, ROBOT, seq=9, time=12.5, episode=2, **(values | override))


def wire(msg: p.Message) -> tuple[dict[str, Any], list[bytes]]:
    """The header of ``msg`` as a dict (to corrupt) and its array frames."""
    head, *payload = p.encode(msg)
    return json.loads(head), payload


def frames(header: dict[str, Any], payload: list[bytes]) -> list[bytes]:
    return [json.dumps(header, separators=(",", ":")).encode(), *payload]


def refused(raw: list[bytes]) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(raw)
    return info.value


def assert_same(a: p.Message, b: p.Message) -> None:
    def common(m: p.Message) -> tuple[Any, ...]:
        return m.type, m.robot, m.seq, m.time, m.episode

    assert common(a) == common(b)
    assert dict(a.fields) == dict(b.fields)
    assert list(a.arrays) == list(b.arrays)
    for name, arr in a.arrays.items():
        assert b.arrays[name].dtype.str == arr.dtype.newbyteorder("<").str
        np.testing.assert_array_equal(b.arrays[name], arr)


def decode_or_refuse(raw: list[bytes]) -> p.Message | p.ProtocolError:
    """decode's outcome; any exception but ProtocolError fails the test. A refusal must name a
    known code and make a valid ERROR reply."""
    try:
        return p.decode(raw)
    except p.ProtocolError as exc:
        assert exc.code in p.ERROR_CODES
        reply = p.decode(p.encode(p.error_reply(exc)))
        assert reply["code"] == exc.code and reply["answers"] == exc.seq
        return exc


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(p.FIELDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_type_round_trips(kind: str, dtype: Any) -> None:
    msg = sample(kind, dtype=dtype)
    raw = p.encode(msg)
    assert len(raw) == 1 + len(p.ARRAYS[kind])
    back = p.decode(raw)
    assert_same(msg, back)
    for name in p.ARRAYS[kind]:
        assert back[name].dtype == np.dtype(dtype) and back[name].tolist() == msg[name].tolist()


def test_optional_array_may_be_absent_and_big_endian_input_goes_little_endian() -> None:
    msg = p.make(p.STATE, ROBOT, step=0, reward=None, terminated=False, truncated=False,
                 obs=np.array([1.5, -2.0], ">f4"))  # fmt: skip
    header, payload = wire(msg)
    assert header["arrays"] == [{"name": "obs", "dtype": "<f4", "shape": [2]}]
    assert payload == [np.array([1.5, -2.0], "<f4").tobytes()]
    back = p.decode(p.encode(msg))
    assert "applied" not in back.arrays and back["obs"].tolist() == [1.5, -2.0]


def test_header_names_the_protocol_and_version() -> None:
    header, _ = wire(sample(p.HEARTBEAT))
    assert (header["proto"], header["version"], header["type"]) == (
        "tickmpc",
        p.PROTOCOL_VERSION,
        "HEARTBEAT",
    )


def test_welcome_and_spec_share_the_spec() -> None:
    spec: dict[str, Any] = {"task": "pendulum", "obs_dim": 3, "act_dim": 1, "control_period": 0.05,
            "episode_steps": 200, "learns_reward": False,
            "action_low": (-2.0,), "action_high": (2.0,)}  # fmt: skip
    served = p.make(p.SPEC, ROBOT, **spec)
    welcome = p.make(p.WELCOME, ROBOT, model_version=0, planner="cem", horizon=20,
                     budget_ms=45.0, **spec)  # fmt: skip
    assert p.spec_of(p.decode(p.encode(served))) == spec == p.spec_of(welcome)
    assert set(p.FIELDS[p.SPEC]) == set(p.SPEC_FIELDS) <= set(p.FIELDS[p.WELCOME])
    assert p.ARRAYS[p.SPEC] == p.SPEC_ARRAYS == p.ARRAYS[p.WELCOME]
    with pytest.raises(ValueError, match="carries no spec"):
        p.spec_of(sample(p.HELLO))


# --- refusals, each with its code ------------------------------------------------------------
def corrupt(kind: str = p.STATE, *, drop: str = "", **header_changes: Any) -> list[bytes]:
    header, payload = wire(sample(kind))
    header.pop(drop, None)
    return frames(header | header_changes, payload)


@pytest.mark.parametrize(
    ("changes", "drop"),
    [({"version": p.PROTOCOL_VERSION + 1}, ""), ({"version": p.PROTOCOL_VERSION - 1}, ""),
     ({"version": float(p.PROTOCOL_VERSION)}, ""), ({"version": True}, ""), ({}, "version"),
     ({"proto": "zmqmpc"}, ""), ({}, "proto")],
)  # fmt: skip
def test_wrong_version_or_protocol(changes: dict[str, Any], drop: str) -> None:
    assert refused(corrupt(drop=drop, **changes)).code == "bad_version"


@pytest.mark.parametrize("kind", ["RESET", "state", None, ["STATE"]])
def test_unknown_type(kind: Any) -> None:
    assert refused(corrupt(type=kind)).code == "unknown_type"


@pytest.mark.parametrize(
    ("spec", "nbytes", "code"),
    [
        ({"dtype": "<i4"}, 12, "bad_array"),
        ({"dtype": ">f4"}, 12, "bad_array"),
        ({"dtype": "float32"}, 12, "bad_array"),
        ({"dtype": ["<f8"]}, 24, "bad_array"),
        ({"shape": [3, 1]}, 24, "bad_array"),
        ({"shape": []}, 24, "bad_array"),
        ({"shape": [3.0]}, 24, "bad_array"),
        ({"shape": [-1]}, 0, "bad_array"),
        ({"shape": [p.MAX_ARRAY_ELEMENTS + 1]}, 8 * (p.MAX_ARRAY_ELEMENTS + 1), "too_large"),
        ({}, 23, "bad_frame"),
        ({}, 32, "bad_frame"),
        ({"extra": 1}, 24, "bad_array"),
        ({"name": "action"}, 24, "bad_array"),
    ],
)
def test_bad_array_specs_and_frames(spec: dict[str, Any], nbytes: int, code: str) -> None:
    header, payload = wire(sample(p.STATE))
    header["arrays"][0] |= spec
    payload[0] = bytes(nbytes)
    assert refused(frames(header, payload)).code == code


def test_frame_count_must_match_the_specs() -> None:
    header, payload = wire(sample(p.STATE))
    assert refused(frames(header, payload[:1])).code == "bad_frame"
    assert refused(frames(header, [*payload, b""])).code == "bad_frame"
    assert refused([]).code == "bad_frame"


def test_arrays_missing_or_repeated() -> None:
    header, payload = wire(sample(p.STATE))
    header["arrays"][1] = header["arrays"][0]
    assert refused(frames(header, [payload[0], payload[0]])).code == "bad_array"
    header, payload = wire(sample(p.ACTION))
    assert refused(frames(header | {"arrays": []}, [])).code == "bad_array"


def test_the_largest_array_is_accepted() -> None:
    obs = np.zeros(p.MAX_ARRAY_ELEMENTS, np.float32)
    assert len(p.decode(p.encode(sample(p.STATE, obs=obs)))["obs"]) == p.MAX_ARRAY_ELEMENTS
    with pytest.raises(p.ProtocolError) as info:
        sample(p.STATE, obs=np.zeros(p.MAX_ARRAY_ELEMENTS + 1))
    assert info.value.code == "too_large"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_array_elements(bad: float) -> None:
    header, payload = wire(sample(p.STATE))
    payload[0] = np.array([0.0, bad, 1.0], "<f8").tobytes()
    assert refused(frames(header, payload)).code == "nonfinite"
    with pytest.raises(p.ProtocolError) as info:
        sample(p.STATE, obs=[0.0, bad])
    assert info.value.code == "nonfinite"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_nonfinite_numbers_in_the_header(literal: str) -> None:
    raw = corrupt(p.STATE)
    raw[0] = raw[0].replace(b'"reward":null', b'"reward":' + literal.encode())
    assert literal.encode() in raw[0]
    assert refused(raw).code == "nonfinite"


def test_nan_anywhere_in_the_header_is_refused() -> None:
    raw = corrupt(p.STATE, note=[1, {"x": float("nan")}])
    assert refused(raw).code == "nonfinite"


def test_header_size_limit() -> None:
    raw = corrupt(p.HEARTBEAT)
    head = raw[0]
    exact = head[:-1] + b" " * (p.MAX_HEADER_BYTES - len(head)) + b"}"
    assert len(exact) == p.MAX_HEADER_BYTES and p.decode([exact]).type == p.HEARTBEAT
    assert refused([exact[:-1] + b" }"]).code == "too_large"


def test_number_too_long_to_parse() -> None:
    raw = corrupt(p.STATE)
    raw[0] = raw[0].replace(b'"step":7', b'"step":' + b"9" * 5000)
    assert refused(raw).code == "too_large"


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe{}", b'{"robot": "\xc3"}', b"not json", b"[1, 2]", b'"STATE"', b"", b"[" * 5000],
)
def test_header_not_a_utf8_json_object(raw: bytes) -> None:
    assert refused([raw]).code == "bad_frame"


@pytest.mark.parametrize(
    ("kind", "changes", "drop"),
    [
        (p.STATE, {}, "step"),
        (p.STATE, {}, "seq"),
        (p.STATE, {}, "robot"),
        (p.STATE, {"extra": 1}, ""),
        (p.STATE, {"action": [1.0]}, ""),
        (p.STATE, {"step": True}, ""),
        (p.STATE, {"step": 1.0}, ""),
        (p.STATE, {"seq": -1}, ""),
        (p.STATE, {"step": -1}, ""),
        (p.STATE, {"episode": -1}, ""),
        (p.STATE, {"episode": 2**63}, ""),
        (p.ACTION, {"iterations": -3}, ""),
        (p.ACTION, {"nonfinite": -1}, ""),
        (p.ACTION, {"fallback": 0}, ""),
        (p.ACTION, {"answers": -1}, ""),
        (p.WELCOME, {"horizon": -1}, ""),
        (p.WELCOME, {"act_dim": 0}, ""),
        (p.WELCOME, {"control_period": -0.05}, ""),
        (p.SPEC, {"episode_steps": 0}, ""),
        (p.SPEC, {}, "task"),
        (p.HELLO, {"obs_dim": 0}, ""),
        (p.HELLO, {"control_period": 0}, ""),
        (p.EPISODE, {"steps": -1}, ""),
        (p.STATE, {"terminated": 1}, ""),
        (p.STATE, {"reward": "0.5"}, ""),
        (p.STATE, {"time": None}, ""),
        (p.HELLO, {"mode": "turbo"}, ""),
        (p.HELLO, {"task": "x" * (p.MAX_TEXT_CHARS + 1)}, ""),
        (p.EPISODE, {"event": ["start"]}, ""),
        (p.ERROR, {"code": "oops"}, ""),
    ],
)
def test_bad_fields(kind: str, changes: dict[str, Any], drop: str) -> None:
    assert refused(corrupt(kind, drop=drop, **changes)).code == "bad_field"


@pytest.mark.parametrize("robot", ["", "r" * 33, "é" * 17, "a\nb", "\u200b", 7])
def test_bad_robot_ids(robot: Any) -> None:
    exc = refused(corrupt(p.HEARTBEAT, robot=robot))
    assert exc.code == "bad_field" and exc.robot == ""
    assert p.error_reply(exc).robot == "?"


@pytest.mark.parametrize("robot", ["r" * 32, "é" * 16, "arm 2", "机械臂"])
def test_robot_ids_at_the_limit(robot: str) -> None:
    assert p.decode(corrupt(p.HEARTBEAT, robot=robot)).robot == robot


def test_error_names_the_offending_message() -> None:
    exc = refused(corrupt(p.STATE, seq=41, robot="arm-7", step="three"))
    assert (exc.code, exc.seq, exc.robot) == ("bad_field", 41, "arm-7")
    assert "step" in exc.reason
    unreadable = refused(corrupt(p.STATE, seq=2**70, step="three"))
    assert unreadable.seq == -1 and unreadable.robot == ROBOT
    assert refused([b"{"]).seq == -1


def test_error_reply() -> None:
    exc = refused(corrupt(p.STATE, seq=41, robot="arm-7", version=p.PROTOCOL_VERSION + 1))
    before = time.time()
    reply = p.error_reply(exc, seq=4)
    assert before <= reply.time <= time.time()
    assert (reply.type, reply.robot, reply.seq) == (p.ERROR, "arm-7", 4)
    assert (reply["code"], reply["answers"], reply["reason"]) == ("bad_version", 41, exc.reason)
    assert p.error_reply(exc, "other").robot == "other"
    long = p.error_reply(p.ProtocolError("internal", "x" * 5000))
    assert len(long["reason"]) == p.MAX_TEXT_CHARS and long["answers"] == -1
    assert_same(reply, p.decode(p.encode(reply)))


# --- properties --------------------------------------------------------------------------------
FINITE = st.floats(allow_nan=False, allow_infinity=False)
ROBOTS = st.text(min_size=1, max_size=12).filter(
    lambda r: r.isprintable() and len(r.encode()) <= p.MAX_ROBOT_ID_BYTES
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-(2**63) + 1, 2**63 - 1),
    "uint": st.integers(0, 2**63 - 1),
    "uint>0": st.integers(1, 2**63 - 1),
    "uint?": st.none() | st.integers(0, 2**63 - 1),
    "float": FINITE,
    "float>0": st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    "float?": st.none() | FINITE,
    "bool": st.booleans(),
    "str": st.text(max_size=40),
    "robot_id": ROBOTS,
    "float[]": st.lists(FINITE, max_size=5),
    "{str: float}?": st.none() | st.dictionaries(st.text(max_size=8), FINITE, max_size=3),
}
"""Valid values of each field kind."""


def finite_arrays(dtype: str) -> st.SearchStrategy[np.ndarray]:
    elements = st.floats(width=32 if dtype == "<f4" else 64, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.dtype(dtype), st.integers(0, 6), elements=elements)


ARRAYS = st.sampled_from(sorted(p.ARRAY_DTYPES)).flatmap(finite_arrays)
LEAVES = st.sampled_from([2**63, 10**400, 1e308, "<f4", ">f4", "STATE", "tickmpc", [3], [3, 1]])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def messages(draw: st.DrawFn) -> p.Message:
    kind = draw(st.sampled_from(sorted(p.FIELDS)))
    values = {
        name: draw(st.sampled_from(k) if isinstance(k, tuple) else VALUES[k])
        for name, k in p.FIELDS[kind].items()
    }
    for name, required in p.ARRAYS[kind].items():
        if required or draw(st.booleans()):
            values[name] = draw(ARRAYS)
    return p.make(kind, draw(ROBOTS), seq=draw(st.integers(0, 2**63 - 1)), time=draw(FINITE),
                  episode=draw(st.integers(0, 2**63 - 1)), **values)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid message's frames after one to three corruptions."""
    header, payload = wire(draw(messages()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "retype", "add", "spec", "frame"]))
        if op in ("drop", "retype") and header:
            key = draw(st.sampled_from(sorted(header)))
            if op == "drop":
                del header[key]
            else:
                header[key] = draw(JSON)
        elif op == "add":
            header[draw(st.text(max_size=10))] = draw(JSON)
        elif op == "spec" and isinstance(header.get("arrays"), list) and header["arrays"]:
            spec = draw(st.sampled_from(header["arrays"]))
            if isinstance(spec, dict):
                spec[draw(st.sampled_from(["name", "dtype", "shape", "extra"]))] = draw(JSON)
        elif op == "frame":
            i = draw(st.integers(0, len(payload)))
            replacement = draw(st.lists(st.binary(max_size=40), max_size=2))
            payload = [*payload[:i], *replacement, *payload[i + 1 :]]
    return frames(header, payload)


@settings(max_examples=200)
@given(messages())
def test_valid_messages_round_trip_byte_for_byte(msg: p.Message) -> None:
    raw = p.encode(msg)
    back = p.decode(raw)
    assert_same(msg, back)
    assert p.encode(back) == raw


@settings(max_examples=300)
@given(mutated())
def test_corrupted_messages_decode_or_are_refused(raw: list[bytes]) -> None:
    outcome = decode_or_refuse(raw)
    if isinstance(outcome, p.Message):
        assert_same(outcome, p.decode(p.encode(outcome)))


@settings(max_examples=200)
@given(
    st.lists(
        st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()), min_size=0, max_size=4
    )
)
def test_garbage_frames_are_refused(raw: list[bytes]) -> None:
    assert isinstance(decode_or_refuse(raw), p.ProtocolError)


@settings(max_examples=100)
@given(messages(), st.data())
def test_a_repeated_header_key_is_refused(msg: p.Message, data: st.DataObject) -> None:
    head, *payload = p.encode(msg)
    key = data.draw(st.sampled_from(sorted(json.loads(head))))
    again = json.dumps({key: json.loads(head)[key]}, separators=(",", ":"))[1:-1].encode()
    assert refused([head[:-1] + b"," + again + b"}", *payload]).code == "bad_frame"


@settings(max_examples=100)
@given(st.data())
def test_every_counter_refuses_negatives(data: st.DataObject) -> None:
    counters = [(k, n) for k in p.FIELDS for n, kind in p.FIELDS[k].items() if kind == "uint"]
    kind, name = data.draw(st.sampled_from(sorted(counters)))
    negative: dict[str, Any] = {name: data.draw(st.integers(-(2**63) + 1, -1))}
    exc = refused(corrupt(kind, **negative))
    assert exc.code == "bad_field" and name in exc.reason


# --- one example per rule of the document's "Refusals" table ----------------------------------
def replaced(kind: str, old: bytes, new: bytes) -> list[bytes]:
    raw = corrupt(kind)
    assert old in raw[0]
    return [raw[0].replace(old, new), *raw[1:]]


def array_changed(spec: dict[str, Any], nbytes: int = 24) -> list[bytes]:
    header, payload = wire(sample(p.STATE))
    header["arrays"][0] |= spec
    return frames(header, [bytes(nbytes), *payload[1:]])


def state_arrays(specs: list[int], payload: list[int]) -> list[bytes]:
    """A STATE whose array specs and frames are those of its arrays at these indices."""
    header, frames_ = wire(sample(p.STATE))
    header["arrays"] = [header["arrays"][i] for i in specs]
    return frames(header, [frames_[i] for i in payload])


def nan_obs() -> list[bytes]:
    header, payload = wire(sample(p.STATE))
    return frames(header, [np.array([0.0, np.nan, 1.0]).tobytes(), payload[1]])


MESSAGE_RULES: dict[str, Callable[[], list[bytes]]] = {
    "no_frames": lambda: [],
    "header_size": lambda: [b"{" + b" " * p.MAX_HEADER_BYTES + b"}"],
    "not_json": lambda: [b"\xff{}"],
    "not_object": lambda: [b"[1, 2]"],
    "repeated_key": lambda: replaced(p.STATE, b'"step":7', b'"step":7,"step":8'),
    "nonfinite_literal": lambda: replaced(p.STATE, b'"reward":null', b'"reward":NaN'),
    "huge_number": lambda: replaced(p.STATE, b'"step":7', b'"step":' + b"9" * 5000),
    "version": lambda: corrupt(version=1),
    "type": lambda: corrupt(type="RESET"),
    "frame_count": lambda: state_arrays([0, 1], [0]),
    "array_spec": lambda: array_changed({"dtype": "<i8"}),
    "array_elements": lambda: array_changed({"shape": [4097]}, 8 * 4097),
    "frame_bytes": lambda: array_changed({}, 23),
    "array_repeated": lambda: state_arrays([0, 0], [0, 0]),
    "unknown_key": lambda: corrupt(note="hi"),
    "missing_key": lambda: corrupt(drop="terminated"),
    "wrong_type": lambda: corrupt(step=7.0),
    "negative_counter": lambda: corrupt(step=-1),
    "zero_dimension": lambda: corrupt(p.HELLO, act_dim=0),
    "nonpositive_period": lambda: corrupt(p.SPEC, control_period=0.0),
    "robot_id": lambda: corrupt(robot="a\tb"),
    "long_text": lambda: corrupt(p.HELLO, task="x" * (p.MAX_TEXT_CHARS + 1)),
    "nonfinite_number": lambda: replaced(p.STATE, b'"reward":null', b'"reward":1e400'),
    "array_missing": lambda: state_arrays([1], [1]),
    "nonfinite_array": nan_obs,
}
"""Rule name of the document -> a message broken by that rule alone."""


# --- the document agrees with the code ---------------------------------------------------------
def test_doc_states_the_code_version() -> None:
    text = doc_text()
    versions = re.findall(r"^Protocol version: \*\*(\d+)\*\*$", text, re.MULTILINE)
    assert versions == [str(p.PROTOCOL_VERSION)]
    quoted = re.findall(r'"v": (\d+)|the integer (\d+)|"version", (\d+)', text)
    assert quoted and {n for groups in quoted for n in groups if n} == {str(p.PROTOCOL_VERSION)}


@pytest.mark.parametrize("kind", sorted(p.FIELDS))
def test_doc_tables_match_fields_and_arrays(kind: str) -> None:
    section = doc_section(kind)
    fields = doc_table(section, "field")
    assert set(fields) == set(p.FIELDS[kind])
    for name, k in p.FIELDS[kind].items():
        if k == tuple(p.ERROR_CODES):
            assert "error codes" in fields[name][0]
        else:
            assert fields[name][0] == kind_text(k), name
    arrays = doc_table(section, "array")
    assert set(arrays) == set(p.ARRAYS[kind])
    for name, required in p.ARRAYS[kind].items():
        assert arrays[name][0] == ("yes" if required else "no"), name


def test_doc_header_table_lists_the_encoded_keys() -> None:
    header, _ = wire(sample(p.HEARTBEAT))
    rows = doc_table(doc_section("Header"), "key")
    assert set(rows) == set(header)
    for name, kind in p._COMMON.items():
        assert rows[name][0] == kind_text(kind), name
    assert all(f"`{kind}`" in rows["type"][1] for kind in p.FIELDS)


def test_doc_lists_every_value_type() -> None:
    rows = doc_table(doc_section("Value types"), "type")
    assert set(rows) == {*p.VALUE_KINDS, '"a" \\| "b"'}
    for name, k in SAMPLE.items():
        p._check_value(name, name, k)  # the sample of each kind is one of its values


def test_doc_lists_every_error_code_and_limit() -> None:
    text = doc_text()
    assert set(doc_table(doc_section("Error codes"), "code")) == set(p.ERROR_CODES)
    for code in p.ERROR_CODES:
        assert f"`{code}`" in text
    limits = ("MAX_HEADER_BYTES", "MAX_ARRAY_ELEMENTS", "MAX_ROBOT_ID_BYTES", "MAX_TEXT_CHARS",
              "BOUNDS_RTOL", "BOUNDS_ATOL", "PERIOD_RTOL")  # fmt: skip
    for name in limits:
        assert f"`{name}` = {getattr(p, name)}" in text
    for dtype in p.ARRAY_DTYPES:
        assert f'`"{dtype}"`' in text


def test_doc_message_types_table_lists_every_type() -> None:
    assert set(doc_table(doc_section("Message types"), "type")) == set(p.FIELDS)


def test_doc_refusal_rules_give_the_code_the_codec_gives() -> None:
    rules = doc_table(doc_section("Refusals"), "rule")
    assert set(rules) == set(MESSAGE_RULES)
    for rule, broken in MESSAGE_RULES.items():
        code = rules[rule][0].strip("`")
        assert code in p.ERROR_CODES, rule
        outcome = decode_or_refuse(broken())
        assert isinstance(outcome, p.ProtocolError) and outcome.code == code, rule


def test_doc_worked_example_decodes() -> None:
    section = doc_section("Worked example")
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)
    head = blocks[0][1].strip().encode()
    payload = [bytes.fromhex(body.replace("\n", " ")) for _, body in blocks[1:]]
    msg = p.decode([head, *payload])
    assert msg.type == p.STATE and f"({len(head)} bytes" in section
    assert msg["obs"].tolist() == np.array([0.1, -0.25, 3.0, 0.0], np.float32).tolist()
    assert msg["applied"].tolist() == [-1.5]
    assert p.encode(msg) == [head, *payload]


@pytest.mark.parametrize(
    ("bullet", "names"),
    [("- `status` keys:", p.STATUS_FIELDS), ("- `robots` maps", p.ROBOT_STATUS_FIELDS)],
)
def test_doc_lists_the_status_keys(bullet: str, names: tuple[str, ...]) -> None:
    text = doc_text().split(bullet, 1)[1].split("\n- ", 1)[0].split(". ", 1)[0]
    listed = re.findall(r"`([a-z_0-9]+)`", text)
    assert listed == list(names)


def test_doc_history_table_is_the_history_fields() -> None:
    """One row per key of a ``history`` reply, then one per key of each list's entries."""
    rows = doc_table(doc_section("History"), "key")
    expected = []
    for name, kind in p.HISTORY_FIELDS.items():
        if isinstance(kind, dict):  # a list of objects with these keys
            expected.append((name, "list"))
            expected += [(f"{name}[].{key}", kind_text(k)) for key, k in kind.items()]
        else:
            expected.append((name, kind_text(kind)))
    assert [(name, cells[0]) for name, cells in rows.items()] == expected
    assert "history" in p.CONTROL_COMMANDS and p.CONTROL_FIELDS["history"] == {}
