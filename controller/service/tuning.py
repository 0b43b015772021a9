"""Live settings per robot (a mixin of :class:`~controller.service.server.MPCService`, which
provides what it declares): ``apply(changes)`` changes every robot's settings and the ones new
robots start with, ``apply(changes, robot)`` one robot's; validated whole, nothing changes on a
refusal."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from controller.planners import PlannerSettings
from controller.service.session import RobotSession
from controller.tasks import Task

log = logging.getLogger(__name__)


class Tuning:
    """Each robot's planner settings, and the ones a new robot starts with."""

    sessions: dict[bytes, RobotSession]
    planner_settings: PlannerSettings
    task: Task | None

    def apply(self, changes: dict[str, Any], robot: str | None = None) -> PlannerSettings:
        """Validate ``changes`` (flat planner settings) and swap them in at the next tick of
        ``robot``, or of every robot (and into the settings new robots start with) when
        ``robot`` is None; returns the new settings (the default ones when ``robot`` is None).
        ValueError (naming the robot), and nothing changes, when one robot's changed settings
        are invalid; KeyError when ``robot`` is not connected. A ``seed`` in the changes
        reseeds those robots' planners and exploration, even to the seed they had. Without a
        robot, each robot's settings change only in the names given: what was tuned for one
        robot alone stays. A robot that is forgotten (silent past ``stale_after_s``) and comes
        back starts again from the settings new robots start with."""
        if robot is None:
            targets = list(self.sessions.values())
        else:
            targets = [s for s in self.sessions.values() if s.robot == robot]
            if not targets:
                known = sorted(s.robot for s in self.sessions.values())
                raise KeyError(f"robot {robot!r} is not connected (robots: {known})")
        # The settings new robots start with first: an invalid change is refused as such.
        default = self._checked(self.planner_settings, changes) if robot is None else None
        new = {}
        for session in targets:
            try:
                new[id(session)] = self._checked(session.settings, changes)
            except ValueError as exc:  # fine for the others, not for a robot's own settings
                if robot is not None:
                    raise
                raise ValueError(f"robot {session.robot}: {exc}") from None
        reseed = "seed" in changes
        for session in targets:
            session.settings = new[id(session)]
            if session.planner is not None:
                session.planner.use(session.settings, reseed)
            if reseed:
                session.rng = np.random.default_rng([session.settings.seed, session.stream])
        log.info("settings changed for %s: %s", robot or "every robot", changes)
        if default is None:
            return new[id(targets[0])]
        self.planner_settings = default
        return default

    def _checked(self, settings: PlannerSettings, changes: dict[str, Any]) -> PlannerSettings:
        """``settings`` with ``changes``, validated against the served task (ValueError)."""
        new = settings.changed(changes)
        if self.task is not None:
            self.task.validated_weights(new.weights)
        elif new.weights:  # task auto learns its reward: there will be no terms to weigh
            raise ValueError(
                "this controller takes its task from the first robot's HELLO and "
                "learns its reward: there are no reward terms to weigh"
            )
        return new

    def settings_of(self, robot: str | None) -> PlannerSettings:
        """``robot``'s settings, or the ones new robots start with (KeyError: no such
        robot)."""
        if robot is None:
            return self.planner_settings
        for session in self.sessions.values():
            if session.robot == robot:
                return session.settings
        known = sorted(s.robot for s in self.sessions.values())
        raise KeyError(f"robot {robot!r} is not connected (robots: {known})")
