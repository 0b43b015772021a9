"""The control socket's frames: a request is one JSON object (``v``, ``cmd`` and the fields of
CONTROL_FIELDS[cmd]); its reply one JSON object that says ``ok``, or refuses with a code."""

from __future__ import annotations

from typing import Any

from sim_bridge.protocol._json import _check_version, _dumps, _json_object
from sim_bridge.protocol.common import (
    MAX_HEADER_BYTES,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
    ProtocolError,
)
from sim_bridge.protocol.values import _check_value

CONTROL_COMMANDS = ("get", "set", "status", "model", "history")
"""Control requests; "model" is a learner announcing that it published a model or policy
version; "history" asks for the learning history (HISTORY_FIELDS)."""
CONTROL_FIELDS: dict[str, dict[str, bool]] = {
    "get": {"robot": False},
    "set": {"changes": True, "robot": False},
    "status": {"robot": False},
    "model": {},
    "history": {},
}
"""What a request may carry besides ``v`` and ``cmd`` (name -> required): ``changes`` a
non-empty object of settings, ``robot`` a robot id (for per-robot settings)."""
CONTROL_ERROR_CODES = (
    "bad_frame", "too_large", "bad_version", "unknown_type", "bad_field", "nonfinite",
    "bad_setting", "internal",
)  # fmt: skip
"""The ERROR_CODES a control reply may refuse a request with."""
STATUS_FIELDS = (
    "task", "uptime_s", "model_version", "rejected_models", "policy_version",
    "rollout_policy_version", "rejected_policies", "refused_messages", "refused_clients",
    "forgotten_robots",
    "transitions", "store_errors", "durable", "endpoints", "settings", "robots",
)  # fmt: skip
"""The keys of a ``status`` reply besides ``v`` and ``ok``."""
ROBOT_STATUS_FIELDS = (
    "ticks", "tick_hz", "plan_ms_p50", "plan_ms_p99", "deadline_misses", "fallbacks",
    "nonfinite", "dropped_stale", "errors", "transitions", "episodes", "last_return", "mode",
    "period_ms", "budget_ms", "episode", "model_version", "settings",
)  # fmt: skip
"""The keys of each robot's entry in a ``status`` reply's ``robots``."""
HISTORY_FIELDS: dict[str, Any] = {
    "task": "str",
    "reference_return": "float?",
    "task_weights": "{str: float}",
    "episodes": {"robot": "robot_id", "episode": "uint", "return": "float?", "steps": "uint",
                 "time": "float"},
    "models": {"version": "uint", "time": "float", "holdout_mse": "float?",
               "holdout_nll": "float?", "train_rows": "uint?"},
    "policies": {"version": "uint", "time": "float"},
    "rejected": {"what": ("candidate", "model", "policy"), "version": "uint?", "reason": "str",
                 "time": "float?"},
}  # fmt: skip
"""The keys of a ``history`` reply besides ``v`` and ``ok``, with their kinds; a dict is a list
of objects with those keys (docs/protocol.md, "History")."""


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
