"""The rollout graph against a torch reference rollout, through real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.settings import RolloutSettings
from controller.tasks import get_task
from controller.tasks.base import Task
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.export import ModelFileError, export_ensemble
from tests.controller.known_models import export_pendulum, rotating_routing
from tests.controller.policy_models import INVERTED, LinearInvertedPendulum


def _random_ensemble(task: Task, members: int = 5, seed: int = 0) -> GaussianEnsemble:
    torch.manual_seed(seed)
    cfg = EnsembleConfig(
        obs_dim=task.obs_dim,
        act_dim=task.act_dim,
        members=members,
        hidden_layers=2,
        hidden_units=32,
        preprocess=task.preprocess,
    )
    model = GaussianEnsemble(cfg).eval()
    with torch.no_grad():  # small steps, so rollouts stay in a sensible range
        model.out_std.mul_(0.05)
    return model


def _evaluator(tmp_path: Path, task: Task, model: GaussianEnsemble) -> RolloutEvaluator:
    path = tmp_path / f"{task.name}.onnx"
    export_ensemble(model, path, member_batched=True)
    return RolloutEvaluator(path, task)


def _reference(
    model: GaussianEnsemble, task: Task, obs: np.ndarray, actions: np.ndarray, discount: float
) -> np.ndarray:
    """Expectation propagation without sampling, one torch call per step (as mbrl-lib)."""
    n, h, _ = actions.shape
    x = torch.from_numpy(obs).float().expand(n, -1)
    ret, alive, disc = torch.zeros(n), torch.ones(n), 1.0
    with torch.no_grad():
        for t in range(h):
            a = torch.from_numpy(actions[:, t]).float()
            nxt = model(x, a)[0].mean(0)
            ret += disc * alive * task.reward(x, a, nxt)
            if task.terminated is not None:
                alive = alive * (~task.terminated(nxt)).float()
            x, disc = nxt, disc * discount
    return ret.numpy()


@pytest.mark.parametrize(
    ("task_name", "discount"), [("cartpole-swingup", 0.9), ("inverted-pendulum", 1.0)]
)
def test_expectation_rollout_matches_torch_reference(
    tmp_path: Path, task_name: str, discount: float
) -> None:
    task = get_task(task_name)
    model = _random_ensemble(task)
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 0.1, task.obs_dim).astype(np.float32)
    if task.terminated is not None:
        obs[1] = 0.19  # the pole near its 0.2 rad limit, moved by the action: some rollouts end
        with torch.no_grad():
            model.out_std[0, 1] = 1.0
    actions = rng.uniform(task.action_low, task.action_high, (9, 12, task.act_dim))
    actions = actions.astype(np.float32)
    evaluator = _evaluator(tmp_path, task, model)
    settings = RolloutSettings(propagation="expectation", sample=False, discount=discount)
    got = evaluator.evaluate(obs, actions, settings, rng)
    want = _reference(model, task, obs, actions, discount)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if task.terminated is not None:
        # Survival reward 1 per step until the pole falls: some, not all, candidates fall.
        assert got.min() < 12 - 0.5 and got.max() == pytest.approx(12)


def test_routed_rows_follow_their_member(tmp_path: Path) -> None:
    """Direct session run with a known routing that changes every step (as TS1 does):
    at step t particle i runs through member (i + t) % E."""
    task = get_task("cartpole-swingup")
    model = _random_ensemble(task)
    evaluator = _evaluator(tmp_path, task, model)
    n, h, e = 10, 6, 5
    rng = np.random.default_rng(1)
    obs = np.array([0.0, 3.0, 0.1, 0.0], np.float32)
    actions = rng.uniform(-1, 1, (n, h, 1)).astype(np.float32)

    member, gather, scatter = rotating_routing(n, h, e)
    feeds = {
        "obs": np.tile(obs, (n, 1)),
        "actions": actions,
        "particle_candidate": np.arange(n, dtype=np.int64),
        "noise": np.zeros((h, n, 4), np.float32),
        "weights": np.array([1.0, 0.01], np.float32),
        "discount": np.array(1.0, np.float32),
        "gather_idx": gather,
        "scatter_idx": scatter,
    }
    (got,) = evaluator.sessions["routed", False][0].run(["returns"], feeds)
    want = np.zeros(n)
    with torch.no_grad():
        for i in range(n):
            x = torch.from_numpy(obs)[None]
            for t in range(h):
                a = torch.from_numpy(actions[i, t])[None]
                nxt = model(x, a)[0][member(i, t)]
                want[i] += float(task.reward(x, a, nxt))
                x = nxt
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("propagation", ["ts1", "tsinf", "expectation"])
def test_exact_model_gives_exact_returns_for_any_layout(tmp_path: Path, propagation: str) -> None:
    """Identical members: every propagation, particle count and padding gives the same scores."""
    task = get_task("pendulum")
    evaluator = RolloutEvaluator(export_pendulum(tmp_path / "p.onnx"), task)
    rng = np.random.default_rng(2)
    obs = np.array([np.cos(2.5), np.sin(2.5), 0.3], np.float32)
    actions = rng.uniform(-2, 2, (7, 10, 1)).astype(np.float32)  # 7 x 3 particles: padded to 25
    base = evaluator.evaluate(obs, actions, RolloutSettings(sample=False), rng)
    for particles in (1, 3):
        settings = RolloutSettings(propagation=propagation, particles=particles)
        got = evaluator.evaluate(obs, actions, settings, rng)
        np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-4)
    assert np.ptp(base) > 1.0, "candidates must differ for the comparison to mean anything"


def test_one_graph_serves_every_horizon(tmp_path: Path) -> None:
    task = get_task("pendulum")
    evaluator = RolloutEvaluator(export_pendulum(tmp_path / "p.onnx"), task)
    sessions = dict(evaluator.sessions)
    rng = np.random.default_rng(3)
    obs = np.array([1.0, 0.0, 0.0], np.float32)  # upright, at rest
    settings = RolloutSettings(sample=False)
    for h in (1, 5, 40):
        still = np.zeros((2, h, 1), np.float32)
        got = evaluator.evaluate(obs, still, settings, rng)
        # Upright and still with no torque stays there: zero cost over any horizon.
        np.testing.assert_allclose(got, 0.0, atol=1e-6)
        pushed = still.copy()
        pushed[:, 0] = 2.0
        assert (evaluator.evaluate(obs, pushed, settings, rng) < -1e-4).all()
    assert evaluator.sessions == sessions


def test_disagreement_penalty_and_risk_lower_scores(tmp_path: Path) -> None:
    task = get_task("cartpole-swingup")
    evaluator = _evaluator(tmp_path, task, _random_ensemble(task))
    obs = np.array([0.0, 3.0, 0.0, 0.0], np.float32)
    actions = np.random.default_rng(4).uniform(-1, 1, (6, 8, 1)).astype(np.float32)

    def score(**kw: float | int | str | bool) -> np.ndarray:
        settings = RolloutSettings(**kw)  # type: ignore[arg-type]
        return evaluator.evaluate(obs, actions, settings, np.random.default_rng(5))

    plain = score(sample=False)
    penalized = score(sample=False, disagreement_penalty=10.0)
    assert (penalized < plain - 1e-6).all()
    neutral = score(particles=8, propagation="tsinf")
    averse = score(particles=8, propagation="tsinf", risk=1.0)
    assert (averse < neutral).all()


def test_seeded_sampling_is_deterministic(tmp_path: Path) -> None:
    task = get_task("cartpole-swingup")
    evaluator = _evaluator(tmp_path, task, _random_ensemble(task))
    obs = np.array([0.0, 3.0, 0.0, 0.0], np.float32)
    actions = np.random.default_rng(6).uniform(-1, 1, (11, 8, 1)).astype(np.float32)
    settings = RolloutSettings(particles=4, propagation="ts1")
    a = evaluator.evaluate(obs, actions, settings, np.random.default_rng(7))
    b = evaluator.evaluate(obs, actions, settings, np.random.default_rng(7))
    c = evaluator.evaluate(obs, actions, settings, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_inputs_are_refused_with_the_reason(tmp_path: Path) -> None:
    task = get_task("pendulum")
    evaluator = RolloutEvaluator(export_pendulum(tmp_path / "p.onnx"), task)
    rng = np.random.default_rng(0)
    good_obs = np.zeros(3, np.float32)
    good_actions = np.zeros((2, 4, 1), np.float32)
    with pytest.raises(ValueError, match=r"obs must have shape \[3\] or \[N=2, 3\]"):
        evaluator.evaluate(np.zeros(4), good_actions, RolloutSettings(), rng)
    with pytest.raises(ValueError, match=r"got \[3, 3\]"):  # one start per candidate, or one
        evaluator.evaluate(np.zeros((3, 3)), good_actions, RolloutSettings(), rng)
    with pytest.raises(ValueError, match="non-finite"):
        evaluator.evaluate(np.array([[0, 0, 0], [np.inf, 0, 0]]), good_actions,
                           RolloutSettings(), rng)  # fmt: skip
    with pytest.raises(ValueError, match="non-finite"):
        evaluator.evaluate(np.array([np.nan, 0, 0]), good_actions, RolloutSettings(), rng)
    with pytest.raises(ValueError, match=r"actions must have shape \[N, H, 1\]"):
        evaluator.evaluate(good_obs, np.zeros((2, 4, 2)), RolloutSettings(), rng)
    with pytest.raises(ValueError, match="particles must be"):
        RolloutSettings(particles=0)
    with pytest.raises(ValueError, match="discount must be"):
        RolloutSettings(discount=float("nan"))
    with pytest.raises(ModelFileError, match="do not match task cartpole-swingup"):
        RolloutEvaluator(tmp_path / "p.onnx", get_task("cartpole-swingup"))


def test_device_random_graph_draws_like_the_host(tmp_path: Path) -> None:
    """The GPU variant (noise and member orders drawn in the graph, run through IOBinding),
    run here on the CPU: same rollouts, same distributions as the host draws."""
    task = get_task("cartpole-swingup")
    path = tmp_path / "m.onnx"
    export_ensemble(_random_ensemble(task), path, member_batched=True)
    host = RolloutEvaluator(path, task)
    device = RolloutEvaluator(path, task, device_random=True)
    assert device.device == "cpu" and device.device_random and not host.device_random
    assert "noise" not in {i.name for i in device.sessions["routed", False][0].get_inputs()}
    rng = np.random.default_rng(3)
    obs = np.array([0.0, 3.0, 0.1, 0.0], np.float32)
    # 600 copies of one sequence: scores differ only through routing and noise.
    actions = np.tile(rng.uniform(-1, 1, (1, 10, 1)), (600, 1, 1)).astype(np.float32)

    def scores(evaluator: RolloutEvaluator, propagation: str, sample: bool) -> np.ndarray:
        settings = RolloutSettings(propagation=propagation, sample=sample)
        return evaluator.evaluate(obs, actions, settings, rng)

    # Expectation without sampling is deterministic: equal.
    np.testing.assert_allclose(
        scores(device, "expectation", False), scores(host, "expectation", False), rtol=1e-5
    )
    # TS-infinity keeps one member per particle: the same E distinct rollouts.
    want = np.unique(scores(host, "tsinf", False).round(4))
    got = np.unique(scores(device, "tsinf", False).round(4))
    assert len(want) == 5 and np.array_equal(got, want)
    # TS1 re-draws the member every step: many distinct rollouts, the same mean.
    h1, d1 = scores(host, "ts1", False), scores(device, "ts1", False)
    assert len(np.unique(d1.round(5))) > 100
    assert abs(d1.mean() - h1.mean()) < 4 * h1.std() / np.sqrt(len(h1)) + 1e-4
    # Sampling adds noise of the same size, and each call draws anew.
    hs, ds = scores(host, "ts1", True), scores(device, "ts1", True)
    assert ds.std() > 10 * d1.std()
    assert 0.7 < ds.std() / hs.std() < 1.4
    assert not np.allclose(ds, scores(device, "ts1", True))


class _NaNPastTheLimit(LinearInvertedPendulum):
    """The exact inverted pendulum, except that it predicts NaN once the pole is past 0.3 rad,
    beyond the task's 0.2 rad end of the episode (a learned model far outside its data)."""

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = super().forward(obs, act)
        return mean + 0.0 * torch.sqrt(0.3 - mean[..., 1:2].abs()), logvar


@pytest.mark.parametrize("propagation", ["ts1", "expectation"])
def test_a_nan_past_the_end_of_an_episode_counts_nothing(tmp_path: Path, propagation: str) -> None:
    """Steps after the terminal one count 0, even where the model's prediction there is NaN:
    each constant push scores the steps its pole stays within the task's limit."""
    export_ensemble(_NaNPastTheLimit(), tmp_path / "m.onnx", member_batched=True)
    evaluator = RolloutEvaluator(tmp_path / "m.onnx", INVERTED)
    pushes = np.linspace(-3.0, 3.0, 7).reshape(7, 1, 1).repeat(15, axis=1)
    settings = RolloutSettings(propagation=propagation, sample=False)
    obs = np.array([0.0, 0.1, 0.0, 0.0])
    returns = evaluator.evaluate(obs, pushes, settings, np.random.default_rng(0))
    want = []
    for push in pushes[:, 0, 0]:  # 1 per step up to the one that ends the episode (it gets 0)
        x, alive = torch.tensor(obs[None, None], dtype=torch.float32), 0
        while alive < 15:
            x = LinearInvertedPendulum()(x, torch.tensor([[[push]]], dtype=torch.float32))[0]
            if abs(float(x[0, 0, 1])) > 0.2:
                break
            alive += 1
        want.append(alive)
    assert np.isfinite(returns).all() and len(set(want)) > 3
    np.testing.assert_array_equal(returns, want)
