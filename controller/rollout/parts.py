"""What the rollout graph is composed from: the parts of a dynamics model file and of a policy
file it needs, and its two modes (see docs/planning.md, "The rollout graph")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx

Mode = Literal["routed", "mixed"]
"""routed: each particle row through one member (TS1, TS-infinity); mixed: every member sees
every row (expectation, a disagreement penalty, pessimism about a learned reward)."""
MODES: tuple[Mode, ...] = ("routed", "mixed")


@dataclass(frozen=True)
class ModelGraph:
    """The parts of a dynamics model file the rollout needs."""

    proto: onnx.ModelProto
    members: int
    obs_dim: int
    act_dim: int
    member_batched: bool
    """Inputs are [E, B, ...] (each member its own rows) rather than [B, ...] shared."""
    predicts_reward: bool = False
    """The graph has ``reward_mean [E, B, 1]``: the step reward where the task has none."""
    predicts_done: bool = False
    """The graph has ``done_prob [E, B, 1]`` and the rollout takes it as the termination where
    the task has no termination function (False: the model's is not used, e.g. for a task
    whose episodes never end)."""


@dataclass(frozen=True)
class PolicyParts:
    """The parts of an exported policy file (:mod:`models.policy.export`) the rollout needs:
    its graph (``obs [B, S]`` -> ``action [B, A]`` within the bounds, ``value [B]``) and the
    action bounds its proposals are clipped to."""

    proto: onnx.ModelProto
    low: np.ndarray
    high: np.ndarray
