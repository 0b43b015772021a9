"""The PETS cartpole swing-up (Chua et al. 2018) as a planning task.

reward = exp(-|tip - (0, 0.6)|^2 / 0.6^2) - 0.01 |a|^2 on the state after the step, with
tip = (x - 0.6 sin(theta), -0.6 cos(theta)); the model sees the angle as (sin, cos).
The simulated robot is sim_bridge/cartpole.py (its numpy reward is checked against this one).
"""

from __future__ import annotations

import torch

from controller.tasks.base import Task
from sim_bridge import cartpole as sim


def _cartpole_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    x, theta = next_obs[..., 0], next_obs[..., 1]
    length = sim.POLE_LENGTH
    tip_x = x - length * torch.sin(theta)
    tip_y = -length * torch.cos(theta)
    target_x, target_y = sim.TIP_TARGET
    dist2 = (tip_x - target_x) ** 2 + (tip_y - target_y) ** 2
    return {"tip": torch.exp(-dist2 / length**2), "ctrl": -(act**2).sum(-1)}


CARTPOLE_SWINGUP = Task(
    name="cartpole-swingup",
    env_id=sim.ENV_ID,
    obs_dim=4,
    act_dim=1,
    action_low=(-sim.ACTION_LIMIT,),
    action_high=(sim.ACTION_LIMIT,),
    control_period=sim.CONTROL_PERIOD,
    episode_steps=sim.EPISODE_STEPS,
    terms=_cartpole_terms,
    weights={"tip": 1.0, "ctrl": sim.CTRL_COST_WEIGHT},
    preprocess={"kind": "sincos", "angle_indices": [1]},
    reference_return=170.0,  # PETS' target on this task (Chua et al. 2018)
)
