"""Tests for models.policy.learner: MBPO rounds through a hand-written exact 1-D model.

Shapes: N rows, B batch, S = 1 observation, A = 1 action, E = 2 members.

The model is x' = x + STEP a for every member, log-variance -60 (so its Gaussian sample is the
mean); the task's reward is -x'^2. Real rows carry reward REAL_REWARD, which the task's reward
never reaches, so a batch's real rows can be counted by their reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.ensemble import EnsembleConfig
from models.policy.export import PolicyDirectory, read_policy
from models.policy.learner import PolicyLearner, PolicyLearnerConfig
from models.policy.rollouts import DoneFn
from models.policy.sac import SACConfig
from models.transitions import Transitions

S, A = 1, 1
STEP = 0.1
REAL_REWARD = 1000.0
LOW, HIGH = np.array([-1.0]), np.array([1.0])
SMALL_SAC = SACConfig(hidden_units=32, batch_size=16, seed=3)
G = 2
"""Updates per new real row in these tests (the caller's, as the policy trainer's)."""
CONFIG = PolicyLearnerConfig(
    real_ratio=0.25,
    rollout_batch=50,
    k_min=2,
    k_max=2,
    buffer_versions=2,
    sac=SMALL_SAC,
    seed=5,
)


class Integrator(nn.Module):
    """Every member: next_obs = obs + STEP * act, log-variance -60."""

    def __init__(self, members: int = 2) -> None:
        super().__init__()
        self.config = EnsembleConfig(obs_dim=S, act_dim=A, members=members)

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        e = self.config.members
        mean = (obs + STEP * act).expand(e, *obs.shape)
        return mean, torch.full_like(mean, -60.0)


def _reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return -(next_obs[:, 0] ** 2)


def _real(n: int, seed: int = 0, reward: float | None = REAL_REWARD) -> Transitions:
    """n real rows from x in [-1, 1] with uniform actions; reward REAL_REWARD (or the task's
    reward when None)."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, S))
    act = rng.uniform(-1, 1, (n, A))
    next_obs = obs + STEP * act
    rew = -(next_obs[:, 0] ** 2) if reward is None else np.full(n, reward)
    return Transitions.from_lists(
        obs=obs,
        act=act,
        next_obs=next_obs,
        reward=rew,
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        episode=np.zeros(n, np.int64),
        step=np.arange(n),
        wall_time=np.zeros(n),
        robot=["r"] * n,
    )


def _learner(config: PolicyLearnerConfig = CONFIG, done_fn: DoneFn | None = None) -> PolicyLearner:
    learner = PolicyLearner(config, S, A, LOW, HIGH, reward_fn=_reward, done_fn=done_fn)
    learner.load_model(Integrator(), version=7)
    return learner


def _spy(learner: PolicyLearner) -> list[dict[str, Tensor]]:
    """Record every batch the agent is updated with."""
    seen: list[dict[str, Tensor]] = []
    update = learner.agent.update

    def recording(batch: Mapping[str, Tensor]) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in batch.items()})
        return update(batch)

    learner.agent.update = recording  # type: ignore[method-assign]
    return seen


def test_step_rolls_out_updates_and_mixes_real_rows() -> None:
    learner = _learner()
    batches = _spy(learner)
    m = learner.step(_real(10), epoch=0, updates=G * 10)

    assert m["updates"] == 2 * 10 and m["k"] == 2
    assert m["rollout_rows"] == 50 * 2 and len(learner.buffer) == 100
    assert learner.buffer.versions == [7]
    assert len(batches) == 20
    n_real = round(0.25 * SMALL_SAC.batch_size)
    for b in batches:
        assert len(b["obs"]) == SMALL_SAC.batch_size
        assert int((b["reward"] == REAL_REWARD).sum()) == n_real
    # The model rows follow the exact model and the task's reward.
    r = learner.buffer.sample(64, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(r.next_obs, r.obs + STEP * r.act, atol=1e-6)
    np.testing.assert_allclose(r.reward, -(r.next_obs[:, 0] ** 2), atol=1e-6)
    assert m["model_reward_mean"] <= 0
    assert all(np.isfinite(m[k]) for k in ("critic_loss", "actor_loss", "alpha_loss", "alpha"))

    # Only the 3 new rows count next time.
    assert learner.new_rows(_real(13)) == 3
    assert learner.step(_real(13), epoch=1, updates=G * 3)["updates"] == 6
    assert learner.step(_real(13), epoch=2, updates=4)["updates"] == 4
    assert learner.updates == 30 and len(batches) == 30
    with pytest.raises(ValueError, match="fewer"):
        learner.step(_real(5), epoch=3, updates=G)


def test_step_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        learner = _learner()
        m = learner.step(_real(10), epoch=0, updates=G * 10)
        runs.append(
            (
                m,
                learner.agent.actor.state_dict(),
                learner.buffer.sample(30, torch.Generator().manual_seed(1)).obs,
            )
        )
    (m1, w1, o1), (m2, w2, o2) = runs
    assert m1 == m2
    np.testing.assert_array_equal(o1, o2)
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=0)


def test_all_real_or_all_model_batches() -> None:
    for ratio, expected in ((1.0, 16), (0.0, 0)):
        learner = _learner(dataclasses.replace(CONFIG, real_ratio=ratio))
        batches = _spy(learner)
        learner.step(_real(4), epoch=0, updates=G * 4)
        assert [int((b["reward"] == REAL_REWARD).sum()) for b in batches] == [expected] * 8


def test_step_passes_done_fn_to_rollouts() -> None:
    calls: list[int] = []

    def done_fn(next_obs: Tensor) -> Tensor:
        calls.append(len(next_obs))
        return torch.ones(len(next_obs), dtype=torch.bool)

    learner = _learner(dataclasses.replace(CONFIG, k_min=3, k_max=3), done_fn=done_fn)
    batches = _spy(learner)
    m = learner.step(_real(10), epoch=0, updates=G * 10)
    # Every row ends at its first step, so three-step rollouts stop after one.
    assert calls == [50] and m["rollout_rows"] == 50 and m["k"] == 3
    for b in batches:
        model_rows = b["reward"] != REAL_REWARD
        assert (b["done"][model_rows] == 1.0).all()


def test_step_needs_a_model_and_checks_it() -> None:
    learner = PolicyLearner(CONFIG, S, A, LOW, HIGH, reward_fn=_reward)
    with pytest.raises(RuntimeError, match="load_model"):
        learner.step(_real(3), epoch=0, updates=G * 3)
    learner.load_model(Integrator(), version=4)
    with pytest.raises(ValueError, match="older"):
        learner.load_model(Integrator(), version=3)
    wrong = Integrator()
    wrong.config = EnsembleConfig(obs_dim=2, act_dim=A, members=2)
    with pytest.raises(ValueError, match="S=2"):
        learner.load_model(wrong, version=5)


@pytest.mark.parametrize(
    "field, value",
    [
        ("real_ratio", 1.5),
        ("real_ratio", True),
        ("rollout_batch", 0),
        ("k_min", 0),
        ("k_max", 0),
        ("epoch_end", -1),
        ("buffer_versions", 0),
        ("seed", -1),
        ("sac", None),
    ],
)
def test_config_refuses_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CONFIG, **{field: value})


def test_publish_records_training_counts(tmp_path: Path) -> None:
    learner = _learner()
    learner.step(_real(10), epoch=0, updates=G * 10)
    directory = PolicyDirectory(tmp_path)
    version, meta = learner.publish(directory, real_rows=10)
    assert version.version == 1 and version.path == tmp_path / "p000001.onnx"
    _, read = read_policy(version.path)
    assert (read.model_version, read.updates, read.real_rows, read.rollout_length) == (7, 20, 10, 2)
    assert read == meta


def _model_return(learner: PolicyLearner, x0: Tensor, horizon: int = 10) -> float:
    """Mean return of the deterministic policy over ``horizon`` steps of the exact model."""
    x, total = x0, torch.zeros(len(x0))
    with torch.no_grad():
        for _ in range(horizon):
            x = x + STEP * learner.agent.actor.mean_action(x)
            total += -(x[:, 0] ** 2)
    return float(total.mean())


def test_sac_learns_to_drive_x_to_zero() -> None:
    """x' = x + 0.1 a, reward -x'^2: the policy learns a < 0 at x > 0 and a > 0 at x < 0.

    Measured (seeds as set, 5 rounds of 300 updates, ~4 s): the mean action at x = +0.5 / -0.5
    goes from -0.04 / +0.01 (initial) to -0.80 / +0.90; the 10-step model return from 64 starts
    in [-1, 1] from -3.29 to -0.84. init_alpha 0.05 because the reward differences the action
    makes are small (0.1 a) and alpha 1 keeps the policy near-uniform for this short run.
    """
    config = PolicyLearnerConfig(
        real_ratio=0.05,
        rollout_batch=256,
        k_min=1,
        k_max=1,
        sac=SACConfig(hidden_units=64, batch_size=128, discount=0.9, init_alpha=0.05, seed=0),
        seed=0,
    )
    learner = _learner(config)
    x0 = torch.linspace(-1, 1, 64).unsqueeze(1)
    probe = torch.tensor([[0.5], [-0.5]])
    before_return = _model_return(learner, x0)
    before = learner.agent.actor.mean_action(probe).detach()[:, 0]
    real = _real(300, reward=None)
    for epoch in range(5):
        learner.step(real, epoch=epoch, updates=300)
    after = learner.agent.actor.mean_action(probe).detach()[:, 0]
    after_return = _model_return(learner, x0)
    assert abs(float(before[0])) < 0.1 and abs(float(before[1])) < 0.1
    assert after[0] < -0.5 and after[1] > 0.5
    assert after_return > before_return + 1.5
