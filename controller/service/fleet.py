"""The robots a service serves: their sessions by routing identity and by robot id, the planner
settings a new robot starts with, and live changes to them.

``apply(changes)`` changes every robot's settings and the ones new robots start with,
``apply(changes, robot)`` one robot's; validated whole, nothing changes on a refusal. A robot
that reconnects (HELLO from a new routing identity) keeps its session. A robot silent past
``stale_after_s`` is forgotten: it leaves the fleet, but what it did is kept by robot id, so
that when it says HELLO again it goes on counting its episodes, ticks and misses (its settings
start again from the ones new robots start with).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from controller.planners import Planner, PlannerSettings
from controller.rollout.evaluator import RolloutEvaluator
from controller.service.session import RobotSession
from sim_bridge import protocol as p

log = logging.getLogger(__name__)
FORGOTTEN_KEPT = 1000
"""Forgotten robots whose sessions are kept for their return: the longest silent go first."""


class NotConnected(KeyError):
    """A robot named by an operator is not connected."""

    def __init__(self, robot: str, known: list[str]) -> None:
        super().__init__(f"robot {robot!r} is not connected (robots: {known})")
        self.message = str(self.args[0])

    def __str__(self) -> str:  # KeyError's own repr-quotes the message
        return self.message


class Fleet:
    """Every connected robot's session, and the settings new robots start with.

    ``check(settings)`` refuses (ValueError) settings the served task cannot take, such as
    weights of terms it does not have; it is asked before any change is made."""

    def __init__(self, defaults: PlannerSettings, check: Callable[[PlannerSettings], None]) -> None:
        self.defaults = defaults
        """The settings a new robot starts with (``apply`` without a robot changes these and
        every robot's)."""
        self._check = check
        self._sessions: dict[bytes, RobotSession] = {}
        self._forgotten: dict[str, RobotSession] = {}
        """Robot id -> its session when it went silent, kept for its return."""
        self.forgotten = 0
        """Robots dropped after going silent."""

    # --- lookups -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[RobotSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def by_identity(self, identity: bytes) -> RobotSession | None:
        return self._sessions.get(identity)

    def named(self, robot: str) -> RobotSession:
        """The session of robot id ``robot`` (NotConnected: no such robot)."""
        for session in self._sessions.values():
            if session.robot == robot:
                return session
        raise NotConnected(robot, self.names())

    def names(self) -> list[str]:
        return sorted(session.robot for session in self._sessions.values())

    # --- robots coming and going -------------------------------------------------------------
    def connect(
        self, identity: bytes, hello: p.Message, evaluator: RolloutEvaluator | None
    ) -> RobotSession:
        """The session of a robot that said ``hello`` from ``identity``: the one it has, its
        old one moved to the new identity (a reconnect), the one it had when it was forgotten,
        or a new one (planning over ``evaluator``, None: no model yet)."""
        session = self._sessions.get(identity)
        if session is not None and session.robot == hello.robot:
            return session
        old = next((k for k, s in self._sessions.items() if s.robot == hello.robot), None)
        if old is not None:
            session = self._sessions.pop(old)
            log.info("robot %s reconnected", hello.robot)
            session.reconnected(identity, hello)
        elif (session := self._forgotten.pop(hello.robot, None)) is not None:
            log.info("robot %s is back", hello.robot)
            session.reconnected(identity, hello)
            # As a new robot starts, but for what it did: its counts and episode numbers.
            session.settings = self.defaults
            session.planner = self._planner(evaluator, session.stream)
            session.rng = np.random.default_rng([self.defaults.seed, session.stream])
        else:
            stream = zlib.crc32(hello.robot.encode())
            session = RobotSession(
                identity=identity,
                robot=hello.robot,
                hello=hello,
                lockstep=hello["mode"] == "lockstep",
                control_period=float(hello["control_period"]),
                settings=self.defaults,
                planner=self._planner(evaluator, stream),
                rng=np.random.default_rng([self.defaults.seed, stream]),
                stream=stream,
            )
            log.info("robot %s connected (%s)", hello.robot, hello["mode"])
        self._sessions[identity] = session
        return session

    def forget_silent(self, now: float, stale_after_s: float) -> None:
        """Forget the robots not heard from for ``stale_after_s`` by ``now`` (monotonic)."""
        for identity, session in list(self._sessions.items()):
            if now - session.last_heard > stale_after_s:
                log.warning("robot %s silent for %.1f s: forgotten", session.robot,
                            now - session.last_heard)  # fmt: skip
                del self._sessions[identity]
                # What it did is kept, not what planning for it holds (the planner keeps its
                # model version's ONNX sessions alive): it comes back as a new robot would.
                session.pending = session.last_state = session.last_transition = None
                session.planner = None
                self._forgotten[session.robot] = session
                self.forgotten += 1
                if len(self._forgotten) > FORGOTTEN_KEPT:
                    del self._forgotten[next(iter(self._forgotten))]

    def serve_model(self, evaluator: RolloutEvaluator) -> None:
        """Plan over ``evaluator`` from each robot's next plan on (a new model version)."""
        for session in self._sessions.values():
            if session.planner is None:
                session.planner = Planner(evaluator, session.settings, session.stream)
            else:
                session.planner.set_evaluator(evaluator)

    def _planner(self, evaluator: RolloutEvaluator | None, stream: int) -> Planner | None:
        """A planner with the default settings (None before the first model: it explores)."""
        return None if evaluator is None else Planner(evaluator, self.defaults, stream)

    # --- live settings -----------------------------------------------------------------------
    def apply(self, changes: dict[str, Any], robot: str | None = None) -> PlannerSettings:
        """Validate ``changes`` (flat planner settings) and swap them in at the next tick of
        ``robot``, or of every robot (and into the settings new robots start with) when
        ``robot`` is None; returns the new settings (the default ones when ``robot`` is None).
        ValueError (naming the robot), and nothing changes, when one robot's changed settings
        are invalid; NotConnected when ``robot`` is not connected. A ``seed`` in the changes
        reseeds those robots' planners and exploration, even to the seed they had. Without a
        robot, each robot's settings change only in the names given: what was tuned for one
        robot alone stays."""
        targets = list(self._sessions.values()) if robot is None else [self.named(robot)]
        # The settings new robots start with first: an invalid change is refused as such.
        default = self._checked(self.defaults, changes) if robot is None else None
        new = {}
        for session in targets:
            try:
                new[id(session)] = self._checked(session.settings, changes)
            except ValueError as exc:  # fine for the others, not for a robot's own settings
                if robot is not None:
                    raise
                raise ValueError(f"robot {session.robot}: {exc}") from None
        for session in targets:
            self._tune(session, new[id(session)], reseed="seed" in changes)
        log.info("settings changed for %s: %s", robot or "every robot", changes)
        if default is None:
            return new[id(targets[0])]
        self.defaults = default
        return default

    def settings_of(self, robot: str | None) -> PlannerSettings:
        """``robot``'s settings, or the ones new robots start with (NotConnected: no such
        robot)."""
        return self.defaults if robot is None else self.named(robot).settings

    def _checked(self, settings: PlannerSettings, changes: dict[str, Any]) -> PlannerSettings:
        new = settings.changed(changes)
        self._check(new)
        return new

    @staticmethod
    def _tune(session: RobotSession, settings: PlannerSettings, reseed: bool) -> None:
        session.settings = settings
        if session.planner is not None:
            session.planner.use(settings, reseed)
        if reseed:
            session.rng = np.random.default_rng([settings.seed, session.stream])
