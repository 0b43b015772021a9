"""What the service sends to robots on its robot socket: messages, and refusals (ERROR), which
are counted and logged."""

from __future__ import annotations

import logging

import zmq

from controller.service.session import RobotSession
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


class Outbox:
    """The robot socket's sending side (the service's ROUTER)."""

    def __init__(self, router: zmq.Socket[bytes]) -> None:
        self._router = router
        self.refused = 0
        """Messages refused with ERROR (any robot)."""

    def send(self, identity: bytes, msg: p.Message) -> None:
        self._router.send_multipart([identity, *p.encode(msg)])

    def refuse(self, identity: bytes, exc: p.ProtocolError, session: RobotSession | None) -> None:
        """Answer ``identity`` (``session``'s robot, if it has one) with the ERROR of ``exc``."""
        self.refused += 1
        if session is not None:
            session.stats.errors += 1
        robot = session.robot if session is not None else exc.robot
        log.warning("refused a message from %s: %s", robot or identity.hex(), exc)
        self.send(identity, p.error_reply(exc, robot, seq=0))
