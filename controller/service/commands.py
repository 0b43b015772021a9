"""The service's side of the control socket: ``get``, ``set``, ``status``, ``model`` and
``history``.

Requests and replies are versioned JSON frames defined in ``sim_bridge.protocol`` and described
in docs/protocol.md ("Control socket"). A request that does not parse is answered with its
protocol error code; a setting refused by validation with ``bad_setting`` and the reason; a
request naming a ``robot`` that is not connected with ``bad_field``; a failure of the service
itself with ``internal``. ``get``, ``set`` and ``status`` take an optional ``robot``: that
robot's settings (``set``: that robot's alone); without it, ``set`` changes every robot's and
the ones new robots start with, and ``get`` returns the latter. Nothing a client sends stops
the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.service.fleet import Fleet, NotConnected
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


class ControlCommands:
    """Answers control requests, in the service's own thread: settings through ``fleet``;
    ``status()`` and ``history()`` (the encoded reply frame) as the service builds them;
    ``announced()``, told that a learner published a version, returns the model version
    serving."""

    def __init__(
        self,
        fleet: Fleet,
        status: Callable[[], dict[str, Any]],
        history: Callable[[], bytes],
        announced: Callable[[], int],
    ) -> None:
        self.fleet, self.status, self.history, self.announced = fleet, status, history, announced

    def answer(self, body: bytes) -> bytes:
        """The reply frame to one request frame."""
        try:
            request = p.parse_control_request(body)
            if request["cmd"] == "history":  # the learning curve and what was refused on the way
                return self.history()
            return p.control_reply(**self._dispatch(request))
        except p.ProtocolError as exc:
            return p.control_error(exc.code, exc.reason)
        except NotConnected as exc:
            return p.control_error("bad_field", str(exc))
        except Exception as exc:  # a bug must cost one request, not the service
            log.exception("internal error on a control request")
            return p.control_error("internal", repr(exc)[:500])

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd, robot = request["cmd"], request.get("robot")
        if cmd == "model":  # a learner announces a new model or policy version
            return {"model_version": self.announced()}
        if robot is not None:
            self.fleet.named(robot)  # NotConnected: bad_field
        if cmd == "status":
            status = self.status()
            if robot is not None:
                status["robots"] = {robot: status["robots"][robot]}
            return status
        if cmd == "set":
            try:
                return {"settings": self.fleet.apply(request["changes"], robot).to_dict()}
            except ValueError as exc:
                raise p.ProtocolError("bad_setting", str(exc)) from None
        return {"settings": self.fleet.settings_of(robot).to_dict()}
