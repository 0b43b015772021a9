"""Known dynamics models of real systems, written in torch and exported through the same ONNX
path as learned ensembles, so planner tests do not depend on learning."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
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
    return _write_atomically(path, _exported("pendulum", members))


class AnalyticCartpole(nn.Module):
    """The MJCF cartpole of sim_bridge (masses, inertia, damping and gear read from the asset)
    as exact Lagrangian dynamics integrated with RK4 like MuJoCo: 4 steps of 0.01 s.

    obs [E, B, 4] (x, theta, x_dot, theta_dot), act [E, B, 1] -> (mean, logvar) [E, B, 4].
    """

    def __init__(self, members: int = 5) -> None:
        import mujoco

        from sim_bridge.cartpole import ASSET_PATH, FRAME_SKIP

        super().__init__()
        self.config = EnsembleConfig(obs_dim=4, act_dim=1, members=members)
        m = mujoco.MjModel.from_xml_path(str(ASSET_PATH))
        self.cart_mass, self.pole_mass = float(m.body_mass[1]), float(m.body_mass[2])
        self.com = float(-m.body_ipos[2, 2])
        self.pole_inertia = float(m.body_inertia[2, 0]) + self.pole_mass * self.com**2
        self.damping = (float(m.dof_damping[0]), float(m.dof_damping[1]))
        self.gear, self.dt, self.substeps = float(m.actuator_gear[0, 0]), m.opt.timestep, FRAME_SKIP
        self.gravity = float(-m.opt.gravity[2])

    def _accel(self, q: torch.Tensor, force: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta, xd, thd = q[..., 1], q[..., 2], q[..., 3]
        mp, ml = self.pole_mass, self.pole_mass * self.com
        m11, m12, m22 = self.cart_mass + mp, -ml * torch.cos(theta), self.pole_inertia
        f1 = force - ml * torch.sin(theta) * thd**2 - self.damping[0] * xd
        f2 = -ml * self.gravity * torch.sin(theta) - self.damping[1] * thd
        det = m11 * m22 - m12**2
        return (m22 * f1 - m12 * f2) / det, (m11 * f2 - m12 * f1) / det

    def _deriv(self, q: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
        xdd, thdd = self._accel(q, force)
        return torch.stack([q[..., 2], q[..., 3], xdd, thdd], dim=-1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        force = self.gear * act[..., 0].clamp(-1.0, 1.0)
        q, h = obs, self.dt
        for _ in range(self.substeps):
            k1 = self._deriv(q, force)
            k2 = self._deriv(q + 0.5 * h * k1, force)
            k3 = self._deriv(q + 0.5 * h * k2, force)
            k4 = self._deriv(q + h * k3, force)
            q = q + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return q, torch.full_like(q, EXACT_LOGVAR)


def export_cartpole(path: Path, members: int = 5) -> Path:
    """Export the analytic cartpole as a member-batched model file at ``path``."""
    return _write_atomically(path, _exported("cartpole", members))


@functools.cache
def _exported(system: str, members: int) -> bytes:
    """The model file of ``system``, exported once per test process: an export traces and
    checks the graph (5-10 s for the cartpole's RK4), and the file is the same every time
    but for its creation time."""
    model = {"pendulum": AnalyticPendulum, "cartpole": AnalyticCartpole}[system](members)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{system}.onnx"
        export_ensemble(model, path, member_batched=True, extra={"kind": "analytic"})
        return path.read_bytes()


def _write_atomically(path: Path, data: bytes) -> Path:
    """``data`` at ``path`` as an export writes it: whole or not at all (a watcher may look)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def rotating_routing(
    n: int, h: int, members: int
) -> tuple[Callable[[int, int], int], np.ndarray, np.ndarray]:
    """A known member routing for routed-mode rollouts of ``n`` particle rows over ``h``
    steps: row i takes member (i + t) % members at step t. Returns that function and the
    graph's ``gather_idx`` and ``scatter_idx`` [h, n] for it."""

    def member(i: int, t: int) -> int:
        return (i + t) % members

    gather = np.stack(
        [np.concatenate([[i for i in range(n) if member(i, t) == k] for k in range(members)])
         for t in range(h)]
    ).astype(np.int64)  # fmt: skip
    return member, gather, np.argsort(gather, axis=1)
