"""One robot as the service sees it: what it said in HELLO, its planner (warm start, random
state), its current episode and last state, and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.planners import Planner, PlannerSettings
from controller.service.stats import RobotStats
from sim_bridge import protocol as p


@dataclass
class Pending:
    """The newest STATE not planned on yet."""

    msg: p.Message
    received: float
    """perf_counter() when it was read off the socket."""


@dataclass(eq=False)
class Transition:
    """One step a robot reported: ``obs`` and the ``act`` applied led to the STATE ``msg``."""

    session: RobotSession
    obs: np.ndarray
    act: np.ndarray
    msg: p.Message
    reward: float | None = None
    """Set when recorded: the STATE's reward, or the task's where the robot sent none."""
    terms: dict[str, float] | None = None
    """The task's unweighted reward terms of it, once computed."""

    @property
    def next_obs(self) -> np.ndarray:
        return np.asarray(self.msg["obs"])


@dataclass
class RobotSession:
    identity: bytes
    """The bridge's ZeroMQ routing identity (changes when the bridge reconnects)."""
    robot: str
    hello: p.Message
    lockstep: bool
    control_period: float
    settings: PlannerSettings
    """This robot's planner settings (the service's for every robot until tuned for it)."""
    planner: Planner | None
    """None until the first model version is loaded (actions are then random)."""
    rng: np.random.Generator
    """For exploration actions while there is no model."""
    stream: int = 0
    """This robot's random streams of a seed (from its id): robots with one seed draw apart."""
    episode: int = 0
    """The store's episode number of the robot's current episode (service-wide counter)."""
    bridge_episode: int = -1
    """The episode id the bridge uses for it."""
    last_state: p.Message | None = None
    last_heard: float = 0.0
    pending: Pending | None = None
    stats: RobotStats = field(default_factory=RobotStats)
    episode_return: float = 0.0
    last_transition: Transition | None = None
    """The newest recorded transition (its reward goes into the tick's telemetry)."""

    def reconnected(self, identity: bytes, hello: p.Message) -> None:
        """The robot said ``hello`` again from ``identity``: what it had queued or was in the
        middle of is forgotten (its next STATE or EPISODE ``start`` begins a new episode), its
        statistics and its planner stay."""
        self.identity, self.hello = identity, hello
        self.lockstep = hello["mode"] == "lockstep"
        self.control_period = float(hello["control_period"])
        self.pending, self.last_state, self.bridge_episode = None, None, -1

    @property
    def budget_ms(self) -> float | None:
        """The planning budget a realtime tick of this robot gets now, before the wait of its
        state is taken off (see ``PlannerSettings.budget_s``); None in lockstep, where a plan
        takes what it needs."""
        if self.lockstep:
            return None
        return 1000.0 * self.settings.budget_s(self.control_period, 0.0)
