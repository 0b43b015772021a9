"""The control socket's client side: ``tickmpc tune``, ``tickmpc status`` and the learner's
announcements.

Requests and replies are versioned JSON frames (``sim_bridge.protocol``: ``control_request``,
``parse_control_reply``; docs/protocol.md, "Control socket"): ``get``, ``status``,
``set`` with ``changes``, ``model``, ``history``. Every reply has ``"ok"``; a refused one
``"code"`` and ``"error"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

from controller.checks import parse_value
from sim_bridge import protocol as p
from sim_bridge.curve import CurveClient

WEIGHT_PREFIX = "weight."


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["horizon=30", "planner=icem", "weight.tip=2"]`` -> the changes of a ``set`` request.

    Values are read as JSON where they parse (numbers, true/false, null) and as strings
    otherwise; ``weight.NAME=V`` sets one task reward weight.
    """
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        value = parse_value(text)
        if name.startswith(WEIGHT_PREFIX):
            changes.setdefault("weights", {})[name[len(WEIGHT_PREFIX) :]] = value
        else:
            changes[name] = value
    return changes


def request(
    endpoint: str,
    cmd: str,
    timeout_s: float = 5.0,
    curve: CurveClient | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Send one request to the service's control socket and return its reply.

    ``curve``: the keys for a service that requires CurveZMQ. Raises TimeoutError when no
    reply comes within ``timeout_s`` (no service there, or one that refused the keys) and
    ``ProtocolError`` (a ValueError) when the reply is not a control reply of this version.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        if curve is not None:
            curve.apply(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(p.control_request(cmd, **fields))
        if not sock.poll(int(timeout_s * 1000)):
            why = " (with CurveZMQ keys: are they accepted?)" if curve is not None else ""
            raise TimeoutError(f"no reply from the control socket {endpoint} in {timeout_s} s{why}")
        return p.parse_control_reply(sock.recv())
