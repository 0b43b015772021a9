"""Known dynamics models of real systems, written in torch and exported through the same ONNX
path as learned ensembles, so planner tests do not depend on learning."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.ensemble import EnsembleConfig
from models.export import export_ensemble

# gymnasium Pendulum-v1 constants.
GRAVITY, MASS, LENGTH, DT, MAX_SPEED, MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0
EXACT_LOGVAR = -30.0
"""The model is exact: a tiny predicted variance makes sampling follow the mean."""


class AnalyticPendulum(nn.Module):
    """Pendulum-v1's dynamics as an "ensemble" of identical exact members.

    Same contract as GaussianEnsemble with member-batched inputs: obs [E, B, 3] (cos, sin,
    thdot), act [E, B, 1] -> (next_obs_mean [E, B, 3], next_obs_logvar [E, B, 3]).
    """

    def __init__(self, members: int = 5) -> None:
        super().__init__()
        self.config = EnsembleConfig(obs_dim=3, act_dim=1, members=members)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.atan2(obs[..., 1], obs[..., 0])
        u = act[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
        accel = 3.0 * GRAVITY / (2.0 * LENGTH) * torch.sin(theta) + 3.0 / (MASS * LENGTH**2) * u
        speed = (obs[..., 2] + accel * DT).clamp(-MAX_SPEED, MAX_SPEED)
        theta = theta + speed * DT
        mean = torch.stack([torch.cos(theta), torch.sin(theta), speed], dim=-1)
        return mean, torch.full_like(mean, EXACT_LOGVAR)


def export_pendulum(path: Path, members: int = 5) -> Path:
    """Export the analytic pendulum as a member-batched model file at ``path``."""
    export_ensemble(
        AnalyticPendulum(members), path, member_batched=True, extra={"kind": "analytic"}
    )
    return path
