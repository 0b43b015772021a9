"""Rewards and terminations of gymnasium's MuJoCo v5 environments, in torch.

Each is written from the observation and action as gymnasium 1.x defines the v5 environment
(rewards computed after the simulation step, i.e. on ``next_obs``) and checked against the real
environment's reward in tests/controller/test_tasks.py.
"""

from __future__ import annotations

import torch

from controller.tasks.base import Task

HALF_CHEETAH_DT = 0.05
"""Seconds per HalfCheetah-v5 step (timestep 0.01 x frame skip 5)."""


def _ctrl(act: torch.Tensor) -> torch.Tensor:
    return -(act**2).sum(-1)


def _inverted_pendulum_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {"survive": (~_inverted_pendulum_terminated(next_obs)).to(next_obs.dtype)}


def _inverted_pendulum_terminated(next_obs: torch.Tensor) -> torch.Tensor:
    # gymnasium: not finite, or the pole angle beyond 0.2 rad.
    finite = torch.isfinite(next_obs).all(-1)
    return ~finite | (next_obs[..., 1].abs() > 0.2)


def _reacher_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    # obs[8:10] is fingertip - target in the plane; both bodies sit at the same height.
    return {"dist": -next_obs[..., 8:10].norm(dim=-1), "ctrl": _ctrl(act)}


def _half_cheetah_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    # The task keeps the x position in the observation (index 0, hidden from the network by
    # preprocessing), so the forward term is gymnasium's own finite difference over the step.
    return {"forward": (next_obs[..., 0] - obs[..., 0]) / HALF_CHEETAH_DT, "ctrl": _ctrl(act)}


def _pusher_terms(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> dict[str, torch.Tensor]:
    tips, obj, goal = next_obs[..., 14:17], next_obs[..., 17:20], next_obs[..., 20:23]
    return {
        "near": -(obj - tips).norm(dim=-1),
        "dist": -(obj - goal).norm(dim=-1),
        "ctrl": _ctrl(act),
    }


INVERTED_PENDULUM = Task(
    name="inverted-pendulum",
    env_id="InvertedPendulum-v5",
    obs_dim=4,
    act_dim=1,
    action_low=(-3.0,),
    action_high=(3.0,),
    control_period=0.04,
    episode_steps=1000,
    terms=_inverted_pendulum_terms,
    weights={"survive": 1.0},
    terminated=_inverted_pendulum_terminated,
)

REACHER = Task(
    name="reacher",
    env_id="Reacher-v5",
    obs_dim=10,
    act_dim=2,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
    control_period=0.02,
    episode_steps=50,
    terms=_reacher_terms,
    weights={"dist": 1.0, "ctrl": 1.0},
)

HALF_CHEETAH = Task(
    name="half-cheetah",
    env_id="HalfCheetah-v5",
    env_kwargs={"exclude_current_positions_from_observation": False},
    obs_dim=18,
    act_dim=6,
    action_low=(-1.0,) * 6,
    action_high=(1.0,) * 6,
    control_period=HALF_CHEETAH_DT,
    episode_steps=1000,
    terms=_half_cheetah_terms,
    weights={"forward": 1.0, "ctrl": 0.1},
    preprocess={"kind": "drop", "drop_indices": [0]},
    notes="runs HalfCheetah-v5 with the x position kept in the observation (obs[0]), as PETS "
    "does, so the forward reward is exact; the model does not see x",
)

PUSHER = Task(
    name="pusher",
    env_id="Pusher-v5",
    obs_dim=23,
    act_dim=7,
    action_low=(-2.0,) * 7,
    action_high=(2.0,) * 7,
    control_period=0.05,
    episode_steps=100,
    terms=_pusher_terms,
    weights={"near": 0.5, "dist": 1.0, "ctrl": 0.1},
)
