"""Planners over a known model exported through the real ONNX path, driving the real
gymnasium Pendulum-v1, plus their interface contracts: warm start, bounds, live settings,
anytime budget, determinism, non-finite predictions."""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from controller.planners import OPTIMIZERS, Planner, PlannerSettings, make_optimizer
from controller.planners.base import IterationCost, WarmStart, shift
from controller.planners.batch import PlanRequest, plan_together
from controller.rollout.evaluator import RolloutEvaluator
from controller.tasks import get_task
from models.export import export_ensemble
from tests.controller.known_models import AnalyticPendulum, export_pendulum

PENDULUM = get_task("pendulum")
SEED = 3
RANDOM_RETURN_FLOOR = -900.0
"""Random torques on this seed score about -1200; a swing-up and hold scores -230..-260."""


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> RolloutEvaluator:
    path = export_pendulum(tmp_path_factory.mktemp("model") / "pendulum.onnx")
    return RolloutEvaluator(path, PENDULUM)


def _episode(planner: Planner | None, steps: int = 200) -> float:
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)
    total = 0.0
    for _ in range(steps):
        if planner is None:
            action = rng.uniform(-2, 2, 1)
        else:
            action = planner.plan(obs).action
        obs, reward, _, _, _ = env.step(action.astype(np.float32))
        total += float(reward)
    env.close()
    return total


CONTROL = {
    # Measured on the reference machine: cem -256, icem -229, mppi -250, random shooting -485.
    "cem": (PlannerSettings(planner="cem", horizon=25, population=200, iterations=4), -400.0),
    "icem": (PlannerSettings(planner="icem", horizon=25, population=200, iterations=4), -400.0),
    "mppi": (PlannerSettings(planner="mppi", horizon=25, population=200, iterations=1), -400.0),
    "random": (PlannerSettings(planner="random", horizon=25, population=400, iterations=1), -700.0),
}


@pytest.mark.parametrize("name", list(CONTROL))
def test_planner_swings_up_and_holds_the_real_pendulum(
    evaluator: RolloutEvaluator, name: str
) -> None:
    settings, threshold = CONTROL[name]
    random_return = _episode(None)
    assert random_return < RANDOM_RETURN_FLOOR
    got = _episode(Planner(evaluator, settings))
    assert got > threshold, f"{name}: return {got:.1f} (random actions: {random_return:.1f})"


def test_shift_drops_the_executed_step_and_resizes() -> None:
    seq = np.arange(8.0).reshape(4, 2)
    fill = np.array([-1.0, -2.0])
    np.testing.assert_array_equal(shift(seq, fill, 4), [[2, 3], [4, 5], [6, 7], [-1, -2]])
    np.testing.assert_array_equal(shift(seq, fill, 2), [[2, 3], [4, 5]])
    longer = shift(seq, fill, 6)
    assert longer.shape == (6, 2) and (longer[3:] == fill).all()
    elites = np.stack([seq, seq + 100])
    assert shift(elites, fill, 4).shape == (2, 4, 2)


def test_warm_start_continues_from_the_shifted_previous_plan(evaluator: RolloutEvaluator) -> None:
    # MPPI with one candidate evaluates only its nominal sequence and leaves it unchanged, so
    # each plan is exactly the previous plan shifted.
    planner = Planner(evaluator, PlannerSettings(planner="mppi", population=1, horizon=6))
    planner._warm = WarmStart(np.linspace(-1, 1, 6)[:, None])
    obs = np.array([1.0, 0.0, 0.0])
    first = planner.plan(obs)
    second = planner.plan(obs)
    np.testing.assert_allclose(first.actions[:, 0], np.r_[np.linspace(-1, 1, 6)[1:], 0.0])
    np.testing.assert_allclose(second.actions, shift(first.actions, np.zeros(1), 6))
    planner.reset()
    assert (planner.plan(obs).actions == 0.0).all()


def test_a_reset_while_a_plan_is_in_flight_starts_the_next_plan_cold(
    evaluator: RolloutEvaluator,
) -> None:
    """The service's new-episode STATE can arrive while that robot's plan is in flight (admitted
    into a batch between rounds): the old plan finishes and is sent, and what it leaves behind
    must not warm-start the new episode. MPPI with one candidate plans its nominal unchanged,
    so a warm plan is the shifted ramp and a cold one the middle of the bounds (0)."""
    ramp = np.linspace(-1, 1, 6)[:, None]
    obs = np.array([1.0, 0.0, 0.0])
    settings = PlannerSettings(planner="mppi", population=1, horizon=6, iterations=2)
    planner = Planner(evaluator, settings)
    planner._warm = WarmStart(ramp)

    def new_episode() -> list[PlanRequest]:
        planner.reset()
        return []

    (sent,) = plan_together([PlanRequest(planner, obs)], IterationCost(), admit=new_episode)
    assert sent.iterations == 2  # the reset came between the rounds of this plan
    np.testing.assert_allclose(sent.actions[:, 0], np.r_[ramp[1:, 0], 0.0])
    assert (planner.plan(obs).actions == 0.0).all()

    # The same by hand: begin, reset, finish (no iteration ran: the fallback is sent).
    planner._warm = WarmStart(ramp)
    warm = planner.plan(obs)
    assert (warm.actions != 0.0).any()
    run = planner.begin(obs, None, time.perf_counter())
    planner.reset()
    assert run.finish().fallback
    assert (planner.plan(obs).actions == 0.0).all()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("bounds", ["clip", "truncate"])
def test_candidates_and_plans_stay_within_asymmetric_bounds(name: str, bounds: str) -> None:
    low, high = np.array([-0.5, 1.0]), np.array([2.0, 1.5])
    wide = {"bounds": bounds, "init_std": 2.0, "noise_std": 2.0}
    settings = PlannerSettings().changed(
        planner=name, horizon=5, population=64, iterations=4,
        **{k: v for k, v in wide.items() if k in PlannerSettings.names(name)},
    )  # fmt: skip
    opt = make_optimizer(settings, low, high)
    rng = np.random.default_rng(0)
    opt.begin(WarmStart(np.tile([3.0, 0.0], (5, 1))), rng)  # a warm start outside the bounds
    for it in range(settings.iterations):
        batch = opt.ask(it)
        assert batch.shape == (opt.population(it), 5, 2)
        assert (batch >= low).all() and (batch <= high).all()
        opt.tell(batch, batch.sum(axis=(1, 2)))  # pushes toward the upper bounds
    actions, _ = opt.solution()
    assert (actions >= low - 1e-12).all() and (actions <= high + 1e-12).all()


def test_live_horizon_change_applies_at_the_next_plan(evaluator: RolloutEvaluator) -> None:
    planner = Planner(evaluator, PlannerSettings(horizon=10, population=32, iterations=1))
    obs = np.array([0.0, 1.0, 0.0])
    assert planner.plan(obs).actions.shape == (10, 1)
    sessions = dict(evaluator.sessions)
    returned = planner.configure(horizon=30, planner="icem")
    assert returned.horizon == 30 and planner.settings.horizon == 10  # pending until next plan
    plan = planner.plan(obs)
    assert plan.horizon == 30 and plan.actions.shape == (30, 1) and plan.planner == "icem"
    assert evaluator.sessions == sessions, "a horizon change must not rebuild the graph"
    planner.configure(horizon=3)
    assert planner.plan(obs).actions.shape == (3, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"horizon": 0}, r"horizon must be an integer in \[1, 500\]"),
        ({"planner": "pso"}, "planner must be one of"),
        ({"alpha": float("nan")}, r"alpha must be a number in \[0.0, 1.0\)"),
        ({"population": 2.5}, "population must be an integer"),
        ({"propagation": "ts2"}, "propagation must be one of"),
        ({"horizn": 20}, r"unknown setting\(s\) \['horizn'\]"),
        ({"weights": {"speed": 0.2, "height": 1.0}}, "no reward term 'height'"),
    ],
)
def test_invalid_settings_are_refused_and_change_nothing(
    evaluator: RolloutEvaluator, changes: dict[str, object], message: str
) -> None:
    planner = Planner(evaluator, PlannerSettings(horizon=8, population=16, iterations=1))
    planner.configure(population=20)  # a valid pending change survives the refused one
    before = planner.settings
    with pytest.raises(ValueError, match=message):
        planner.configure(**changes)
    assert planner.settings == before
    plan = planner.plan(np.array([0.0, 1.0, 0.0]))
    assert plan.horizon == 8 and plan.candidates == 20


def test_reward_weights_are_live_settings(evaluator: RolloutEvaluator) -> None:
    # With only the control cost weighted, the best plan is to do nothing.
    planner = Planner(evaluator, PlannerSettings(horizon=10, population=100, iterations=3))
    planner.configure(weights={"angle": 0.0, "speed": 0.0, "ctrl": 1.0})
    plan = planner.plan(np.array([0.0, 1.0, 0.0]))
    assert np.abs(plan.action).max() < 0.3


def test_tiny_budget_returns_the_shifted_previous_plan(evaluator: RolloutEvaluator) -> None:
    planner = Planner(evaluator, PlannerSettings(horizon=12, population=100, iterations=3))
    obs = np.array([0.0, 1.0, 0.0])
    planner.warmup(obs)
    full = planner.plan(obs, budget_s=None)
    assert full.iterations == 3 and not full.deadline_miss and not full.fallback
    late = planner.plan(obs, budget_s=1e-7)
    assert late.fallback and late.deadline_miss and late.iterations == 0
    np.testing.assert_array_equal(late.actions, shift(full.actions, np.zeros(1), 12))
    assert np.isnan(late.predicted_return) and late.action.shape == (1,)


def test_one_slow_iteration_does_not_make_every_later_plan_skip(
    evaluator: RolloutEvaluator,
) -> None:
    planner = Planner(evaluator, PlannerSettings(horizon=12, population=100, iterations=3))
    obs = np.array([0.0, 1.0, 0.0])
    planner.warmup(obs)
    normal = planner.plan(obs, budget_s=None).elapsed_s / 3
    rows = evaluator.rows(100, 12, planner.settings.rollout)
    planner._cost.update(rows, 100 * normal)  # an outlier, e.g. the machine was busy
    budget = 4 * normal
    plans = [planner.plan(obs, budget_s=budget) for _ in range(12)]
    assert plans[0].fallback  # the estimate says no iteration fits...
    assert plans[-1].iterations >= 1 and not plans[-1].fallback  # ...until it is measured again


def test_seeded_planners_are_deterministic(evaluator: RolloutEvaluator) -> None:
    obs_seq = [np.array([np.cos(a), np.sin(a), 0.0]) for a in (3.0, 2.5, 2.0)]

    def run(seed: int, name: str) -> list[np.ndarray]:
        settings = PlannerSettings(planner=name, seed=seed, horizon=8, population=40)
        planner = Planner(evaluator, settings)
        return [planner.plan(o).actions for o in obs_seq]

    for name in OPTIMIZERS:
        a, b, c = run(1, name), run(1, name), run(2, name)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


class _NanAbove(AnalyticPendulum):
    """The pendulum model, but it predicts NaN for torques above 1."""

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = super().forward(obs, act)
        nan = torch.full_like(mean, float("nan"))
        return torch.where(act > 1.0, nan, mean), logvar


def test_nonfinite_predictions_are_counted_and_never_chosen(tmp_path: Path) -> None:
    path = tmp_path / "nan.onnx"
    export_ensemble(_NanAbove(), path, member_batched=True)
    planner = Planner(
        RolloutEvaluator(path, PENDULUM),
        PlannerSettings(planner="random", horizon=4, population=200, iterations=2),
    )
    plan = planner.plan(np.array([-1.0, 0.0, 0.0]))
    assert plan.nonfinite > 0
    # A torque above 1 poisons every later state, so every reward after it; the pendulum's
    # reward reads the state before the step, so only the last step's torque stays harmless.
    assert (plan.actions[:-1] <= 1.0).all() and np.isfinite(plan.predicted_return)


def test_model_swap_applies_at_the_next_plan(tmp_path: Path, evaluator: RolloutEvaluator) -> None:
    planner = Planner(evaluator, PlannerSettings(horizon=5, population=16, iterations=1))
    newer = RolloutEvaluator(export_pendulum(tmp_path / "v2.onnx"), PENDULUM)
    planner.set_evaluator(newer)
    assert planner.evaluator is evaluator
    planner.plan(np.array([1.0, 0.0, 0.0]))
    assert planner.evaluator is newer


def test_each_optimizer_takes_only_its_own_options() -> None:
    assert set(OPTIMIZERS) == {"random", "cem", "icem", "mppi"}
    icem = PlannerSettings().changed(planner="icem", noise_beta=3.0, elite_fraction=0.2)
    assert icem.options.noise_beta == 3.0 and icem.to_dict()["noise_beta"] == 3.0
    with pytest.raises(
        ValueError, match=r"unknown setting\(s\) \['noise_beta'\] for planner 'cem'"
    ):
        PlannerSettings().changed(noise_beta=3.0)
    with pytest.raises(ValueError, match="planner 'mppi'"):
        icem.changed(planner="mppi", keep_elites=0.5)
    back = icem.changed(planner="cem")  # the options CEM shares with iCEM are kept
    assert back.options.elite_fraction == 0.2 and "noise_beta" not in back.to_dict()
    assert PlannerSettings().changed(icem.to_dict()) == icem  # the flat form round-trips
    with pytest.raises(ValueError, match="takes MPPISettings"):
        PlannerSettings(planner="mppi", options=icem.options)


def test_a_seed_change_reseeds_the_planner(evaluator: RolloutEvaluator) -> None:
    obs = np.array([np.cos(3.0), np.sin(3.0), 0.0])
    fresh = Planner(evaluator, PlannerSettings(horizon=6, population=30, seed=7)).plan(obs)
    planner = Planner(evaluator, PlannerSettings(horizon=6, population=30, seed=1))
    planner.plan(obs)  # the seed-1 stream moves on
    planner.reset()
    planner.configure(seed=7)
    np.testing.assert_array_equal(planner.plan(obs).actions, fresh.actions)
