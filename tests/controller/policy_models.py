"""Exact models, SAC agents with visible actions and values, and torch references for the tests
of planning with a policy (test_rollout_policy.py, test_planner_policy.py).

Shapes: N candidates, H horizon, S state, A action.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from controller.tasks import get_task
from controller.tasks.base import Task
from models.ensemble import EnsembleConfig
from models.export import export_ensemble
from models.policy.export import export_policy
from models.policy.sac import SAC, SACConfig
from tests.controller.known_models import EXACT_LOGVAR, AnalyticPendulum, export_pendulum

PENDULUM = get_task("pendulum")
INVERTED = get_task("inverted-pendulum")
OBS = np.array([np.cos(2.5), np.sin(2.5), 0.3], np.float32)
WEIGHTS = np.array([1.0, 0.1, 0.5], np.float32)
"""Pendulum's angle, speed, ctrl weights with a heavy control cost: the returns then show
which actions the reward saw."""
IP_DT = 0.04


class LinearInvertedPendulum(nn.Module):
    """Exact linearized cart-pole for the inverted-pendulum task, Euler steps of IP_DT:
    x'' = u, theta'' = 10 theta - u. Holding u = 10 theta keeps the pole where it is; pushing
    less lets it fall past the task's 0.2 rad limit within a few tenths of a second.
    obs [E, B, 4] (x, theta, x_dot, theta_dot), act [E, B, 1] -> (mean, logvar) [E, B, 4]."""

    def __init__(self, members: int = 5) -> None:
        super().__init__()
        self.config = EnsembleConfig(obs_dim=4, act_dim=1, members=members)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, theta, xd, thd = obs.unbind(-1)
        u = act[..., 0]
        mean = torch.stack(
            [x + IP_DT * xd, theta + IP_DT * thd, xd + IP_DT * u, thd + IP_DT * (10 * theta - u)],
            dim=-1,
        )
        return mean, torch.full_like(mean, EXACT_LOGVAR)


def make_agent(task: Task, seed: int) -> SAC:
    """A SAC agent for ``task`` whose actions and values are not small: the actor's first
    layer and mean head scaled so its action changes along a short rollout, the critics'
    outputs scaled so a terminal value is plain to see."""
    low, high = np.array(task.action_low), np.array(task.action_high)
    agent = SAC(task.obs_dim, task.act_dim, low, high, SACConfig(hidden_units=32, seed=seed))
    with torch.no_grad():
        first, head = agent.actor.net[0], agent.actor.net[-1]
        assert isinstance(first, nn.Linear) and isinstance(head, nn.Linear)
        first.weight *= 3.0
        head.weight[: task.act_dim] *= 4.0
        for q in (agent.critic.q1, agent.critic.q2):
            last = q[-1]
            assert isinstance(last, nn.Linear)
            last.weight *= 20.0
    return agent


def export_agent(agent: SAC, path: Path) -> Path:
    export_policy(agent, path, model_version=0, updates=0, real_rows=0, rollout_length=0)
    return path


class PolicyFiles:
    """Every model and policy file of this module, made once."""

    def __init__(self, root: Path) -> None:
        self.pendulum = export_pendulum(root / "pendulum.onnx")
        self.agent = make_agent(PENDULUM, seed=3)
        self.policy = export_agent(self.agent, root / "policy.onnx")
        self.ip_model = root / "inverted.onnx"
        export_ensemble(LinearInvertedPendulum(), self.ip_model, member_batched=True)
        self.ip_agent = make_agent(INVERTED, seed=4)
        self.ip_policy = export_agent(self.ip_agent, root / "ip_policy.onnx")
        self.root = root


def step_pendulum(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """[B, 3], [B, 1] -> [B, 3] through the exact pendulum."""
    return AnalyticPendulum(1)(x[None], a[None])[0][0]


@torch.no_grad()
def closed_loop(
    agent: SAC, obs: np.ndarray, h: int, discount: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """The policy's mean action at each state of the exact pendulum from ``obs``: actions
    [H, A], the discounted return under WEIGHTS, the final state [S]."""
    x = torch.from_numpy(obs)[None]
    weights = torch.from_numpy(WEIGHTS)
    acts, ret = [], 0.0
    for t in range(h):
        a = agent.actor.mean_action(x)
        nxt = step_pendulum(x, a)
        ret += discount**t * float(PENDULUM.reward(x, a, nxt, weights)[0])
        acts.append(a[0].numpy())
        x = nxt
    return np.stack(acts), ret, x[0].numpy()


@torch.no_grad()
def open_loop(obs: np.ndarray, actions: np.ndarray, discount: float) -> tuple[np.ndarray, ...]:
    """Given ``actions [N, H, A]`` through the exact pendulum: returns [N] under WEIGHTS and
    the states [N, H + 1, S]."""
    n, h, _ = actions.shape
    x = torch.from_numpy(obs).expand(n, -1)
    weights = torch.from_numpy(WEIGHTS)
    ret = torch.zeros(n)
    states = [x]
    for t in range(h):
        a = torch.from_numpy(np.ascontiguousarray(actions[:, t], np.float32))
        nxt = step_pendulum(x, a)
        ret += discount**t * PENDULUM.reward(x, a, nxt, weights)
        states.append(nxt)
        x = nxt
    return ret.numpy(), torch.stack(states, 1).numpy()


@torch.no_grad()
def critic_value(agent: SAC, states: np.ndarray) -> np.ndarray:
    """min(Q1, Q2)(s, mean_action(s)) for ``states [B, S]`` -> [B]."""
    x = torch.from_numpy(np.ascontiguousarray(states, np.float32))
    return torch.min(*agent.critic(x, agent.actor.mean_action(x))).numpy()
