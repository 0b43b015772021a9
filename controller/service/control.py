"""The control socket's client side: ``tickmpc tune`` and ``tickmpc status``.

Requests and replies are single JSON frames (see docs/protocol.md, "Control socket"):
``{"cmd": "get"}``, ``{"cmd": "status"}``, ``{"cmd": "set", "changes": {...}}``; every reply has
``"ok"``, and ``"error"`` when it is false.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import zmq

WEIGHT_PREFIX = "weight."


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["horizon=30", "planner=icem", "weight.tip=2"]`` -> changes for ``{"cmd": "set"}``.

    Values are read as JSON where they parse (numbers, true/false, null) and as strings
    otherwise; ``weight.NAME=V`` sets one task reward weight.
    """
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if name.startswith(WEIGHT_PREFIX):
            changes.setdefault("weights", {})[name[len(WEIGHT_PREFIX) :]] = value
        else:
            changes[name] = value
    return changes


def request(endpoint: str, payload: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request to the service's control socket and return its reply.

    Raises TimeoutError when no reply comes within ``timeout_s`` (no service there).
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(json.dumps(payload).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply from the control socket {endpoint} in {timeout_s} s")
        reply = json.loads(sock.recv().decode())
    if not isinstance(reply, dict):
        raise ValueError(f"malformed reply from {endpoint}: {reply!r}")
    return reply
