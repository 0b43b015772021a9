"""gymnasium's Pendulum-v1 swing-up: the small classic-control task planners are first tried on
(pytorch_mppi's example), and whose exact dynamics fit in a few lines of torch.

Pendulum-v1 charges its cost on the state before the step: -(theta^2 + 0.1 thdot^2 + 0.001 u^2)
with theta wrapped to [-pi, pi), recovered here from the observation (cos, sin, thdot).
"""

from __future__ import annotations

import torch

from controller.tasks.base import Task

MAX_TORQUE = 2.0


def _pendulum_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    theta = torch.atan2(obs[..., 1], obs[..., 0])
    torque = act.clamp(-MAX_TORQUE, MAX_TORQUE)
    return {
        "angle": -(theta**2),
        "speed": -(obs[..., 2] ** 2),
        "ctrl": -(torque**2).sum(-1),
    }


PENDULUM = Task(
    name="pendulum",
    env_id="Pendulum-v1",
    obs_dim=3,
    act_dim=1,
    action_low=(-MAX_TORQUE,),
    action_high=(MAX_TORQUE,),
    control_period=0.05,
    episode_steps=200,
    terms=_pendulum_terms,
    weights={"angle": 1.0, "speed": 0.1, "ctrl": 0.001},
)
