"""What a robot is to the controller: the spec its HELLO announces (:class:`RobotSpec`), and
how a served task's spec differs from it."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim_bridge import protocol as p


@dataclass(frozen=True)
class RobotSpec:
    """What a bridge tells the controller in HELLO."""

    robot: str
    """Robot id, unique among the controller's robots (1-32 UTF-8 bytes)."""
    task: str
    """Task name the controller must serve (e.g. "cartpole-swingup")."""
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period: float
    """Seconds per tick."""
    reward: bool = False
    """The robot reports each step's reward in its STATEs (required by a controller that
    learns the reward)."""

    def __post_init__(self) -> None:
        if not p.robot_id_ok(self.robot):
            raise ValueError(f"robot id {self.robot!r} must be 1-32 printable UTF-8 bytes")
        if not self.task or self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError("a robot needs a task name and obs_dim, act_dim >= 1")
        low, high = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if low.shape != (self.act_dim,) or high.shape != (self.act_dim,):
            raise ValueError(f"action bounds need {self.act_dim} values each")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError("action bounds must be finite with every low below its high")
        if not (np.isfinite(self.control_period) and self.control_period > 0):
            raise ValueError(f"control_period must be > 0 seconds, got {self.control_period}")

    def differences(self, served: Mapping[str, Any]) -> list[str]:
        """How the served task's spec (SPEC_FIELDS and SPEC_ARRAYS, as from
        :func:`describe` or a WELCOME) differs from this robot, one phrase per difference,
        within the tolerances the controller allows a HELLO. The task name is not compared:
        the controller names its task its own way, and accepts aliases (the gym id)."""
        found = []
        if (served["obs_dim"], served["act_dim"]) != (self.obs_dim, self.act_dim):
            found.append(f"dims obs {served['obs_dim']}, act {served['act_dim']} "
                         f"(this robot: obs {self.obs_dim}, act {self.act_dim})")  # fmt: skip
        for name in p.SPEC_ARRAYS:
            mine, theirs = np.asarray(getattr(self, name)), np.asarray(served[name])
            if mine.shape != theirs.shape or not np.allclose(
                theirs, mine, rtol=p.BOUNDS_RTOL, atol=p.BOUNDS_ATOL
            ):
                found.append(f"{name} {theirs.tolist()} (this robot: {mine.tolist()})")
        if not math.isclose(served["control_period"], self.control_period, rel_tol=p.PERIOD_RTOL):
            found.append(f"control period {served['control_period']} s "
                         f"(this robot: {self.control_period} s)")  # fmt: skip
        if served.get("learns_reward") and not self.reward:
            found.append("the controller learns the reward from the robots' STATEs, and this "
                         "robot reports none (RobotSpec.reward is false)")  # fmt: skip
        return found

    def hello(self, mode: str) -> p.Message:
        return p.make(
            p.HELLO,
            self.robot,
            time=time.time(),
            task=self.task,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            control_period=self.control_period,
            mode=mode,
            reward=self.reward,
            action_low=np.asarray(self.action_low, np.float64),
            action_high=np.asarray(self.action_high, np.float64),
        )
