"""Acting with a learned policy: the planner setting "policy", and the stand-in for a plan that
had no time to run.

A policy learner (``models.policy``, MBPO's SAC) publishes policy versions into the model
directory, which the service loads (:class:`~controller.service.model_watch.PolicyWatcher`).
With ``planner = "policy"`` the service sends the policy's action instead of a plan's, which
needs no dynamics model; with an optimizer as the planner, it sends the policy's mean action
where not even one optimizer iteration fitted the realtime budget, in place of the previous
plan shifted. :class:`PolicyActor` computes that action. It keeps no state between calls (the
random generator is the caller's, one per robot), so one actor serves every robot.

Shapes: S observation, A action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from controller.checks import check_bool

POLICY = "policy"
"""The planner setting under which the service acts with the policy."""
EDGE = 1e-6
"""How far inside (-1, 1) a squashed mean action is kept before atanh, so that a saturated one
maps to a finite pre-tanh mean."""


@dataclass(frozen=True)
class PolicySettings:
    """The options of planner "policy"."""

    explore: bool = True
    """Sample the action from the policy's squashed Gaussian, as MBPO collects its data; false:
    the mean action, for evaluation."""

    def __post_init__(self) -> None:
        check_bool("explore", self.explore)


class Policy(Protocol):
    """What the actor needs of a loaded policy (``models.policy.export.PolicyRuntime``)."""

    def predict(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """obs [S] -> (mean action [A] within the bounds, pre-tanh std [A], value [])."""
        ...


class PolicyActor:
    """A loaded policy bound to the action bounds ``low`` and ``high`` [A]."""

    def __init__(self, policy: Policy, low: np.ndarray, high: np.ndarray) -> None:
        self.policy = policy
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(high, np.float64)
        self.center = (self.low + self.high) / 2.0
        self.half_range = (self.high - self.low) / 2.0

    def act(
        self, obs: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, float | None]:
        """(action [A] float64 within the bounds, the critics' value of the mean action, None
        where not finite) for ``obs [S]``.

        With ``rng``, one draw from the policy's squashed Gaussian, tanh(u) scaled to the bounds
        with u ~ N(pre-tanh mean, std); without, the mean action. A non-finite action (an
        observation far from anything the policy saw can overflow it) raises
        FloatingPointError: it must never reach a robot.
        """
        mean, std, value = self.policy.predict(obs)
        action = np.asarray(mean, np.float64)
        if rng is not None:
            # The exported graph gives the squashed mean, not the pre-tanh one: invert the
            # squashing (the clip keeps a saturated mean finite) to draw around it.
            unit = np.clip((action - self.center) / self.half_range, -1.0 + EDGE, 1.0 - EDGE)
            u = np.arctanh(unit) + std * rng.standard_normal(len(action))
            action = self.center + self.half_range * np.tanh(u)
        action = np.clip(action, self.low, self.high)
        if not np.isfinite(action).all():
            raise FloatingPointError(f"the policy's action {action.tolist()} is not finite")
        v = float(value)
        return action, v if math.isfinite(v) else None
