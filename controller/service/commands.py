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
from typing import TYPE_CHECKING, Any

from sim_bridge import protocol as p

if TYPE_CHECKING:
    from controller.service.server import MPCService

log = logging.getLogger(__name__)


class ControlHandler:
    """Answers control requests for one service, in the service's own thread."""

    def __init__(self, service: MPCService) -> None:
        self.service = service

    def answer(self, body: bytes) -> bytes:
        """The reply frame to one request frame."""
        try:
            request = p.parse_control_request(body)
            if request["cmd"] == "history":  # the learning curve and what was refused on the way
                return self._history()
            return p.control_reply(**self._dispatch(request))
        except p.ProtocolError as exc:
            return p.control_error(exc.code, exc.reason)
        except Exception as exc:  # a bug must cost one request, not the service
            log.exception("internal error on a control request")
            return p.control_error("internal", repr(exc)[:500])

    def _history(self) -> bytes:
        service, task = self.service, self.service.task
        return service.history.encoded(
            service.task_name,
            task.reference_return if task is not None else None,
            dict(task.weights) if task is not None else {},
            {"model": service.watcher, "policy": service.policy_watcher},
        )

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        service, cmd, robot = self.service, request["cmd"], request.get("robot")
        if cmd == "model":  # a learner announces a new model or policy version
            for watcher in service.watchers:
                watcher.poke()
            return {"model_version": service.model_version}
        known = sorted(session.robot for session in service.sessions.values())
        if robot is not None and robot not in known:
            raise p.ProtocolError("bad_field", f"robot {robot!r} is not connected "
                                  f"(robots: {known})")  # fmt: skip
        if cmd == "status":
            status = service.status()
            if robot is not None:
                status["robots"] = {robot: status["robots"][robot]}
            return status
        if cmd == "set":
            try:
                return {"settings": service.apply(request["changes"], robot).to_dict()}
            except ValueError as exc:
                raise p.ProtocolError("bad_setting", str(exc)) from None
        return {"settings": service.settings_of(robot).to_dict()}
