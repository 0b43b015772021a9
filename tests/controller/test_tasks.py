"""Task rewards in torch against the real gymnasium MuJoCo environments' rewards."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch

from controller.tasks import TASKS, get_task
from controller.tasks.base import Task
from controller.tasks.export import export_reward
from sim_bridge.random_data import collect_random

GYM_TASKS = [t for t in TASKS.values() if t.env_id is not None]


def _torch_reward(task: Task, obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    as_t = [torch.from_numpy(np.asarray(a, np.float64)) for a in (obs, act, nxt)]
    return task.reward(*as_t).numpy()


@pytest.mark.parametrize("task", GYM_TASKS, ids=lambda t: t.name)
def test_reward_matches_environment(task: Task) -> None:
    assert task.env_id is not None
    data = collect_random(task.env_id, 400, seed=1, env_kwargs=task.env_kwargs)
    got = _torch_reward(task, data.obs, data.act, data.next_obs)
    assert np.abs(data.reward).max() > 0.01, "a test on all-zero rewards would prove nothing"
    # Observations are float32 on the way (store, model): a finite difference of positions
    # (half-cheetah) loses a few more digits than the other terms.
    tol = 1e-3 if task.name == "half-cheetah" else 1e-5
    np.testing.assert_allclose(got, data.reward, rtol=tol, atol=tol)


@pytest.mark.parametrize("task", GYM_TASKS, ids=lambda t: t.name)
def test_task_describes_environment(task: Task) -> None:
    assert task.env_id is not None
    env = gym.make(task.env_id, **task.env_kwargs)
    try:
        space = env.action_space
        assert isinstance(space, gym.spaces.Box)
        obs_shape = env.observation_space.shape
        assert obs_shape is not None and task.obs_dim == obs_shape[0]
        assert task.act_dim == space.shape[0]
        np.testing.assert_allclose(task.action_low, space.low)
        np.testing.assert_allclose(task.action_high, space.high)
        assert task.control_period == pytest.approx(env.unwrapped.dt)  # type: ignore[attr-defined]
        assert env.spec is not None
        # The cartpole truncates its own episodes; gymnasium's wrapper does the others.
        limit = env.spec.max_episode_steps or env.unwrapped.episode_steps  # type: ignore[attr-defined]
        assert task.episode_steps == limit
    finally:
        env.close()


def test_termination_matches_environment() -> None:
    task = get_task("InvertedPendulum-v5")
    data = collect_random("InvertedPendulum-v5", 500, seed=2)
    assert task.terminated is not None
    got = task.terminated(torch.from_numpy(data.next_obs)).numpy()
    np.testing.assert_array_equal(got, data.terminated)
    assert data.terminated.any() and not data.terminated.all()


def test_terms_are_named_and_weights_validated() -> None:
    task = get_task("pusher")
    obs = torch.zeros(3, 5, 23)
    act = torch.ones(3, 5, 7)
    terms = task.terms(obs, act, obs)
    assert set(terms) == set(task.weights) == {"near", "dist", "ctrl"}
    assert all(v.shape == (3, 5) for v in terms.values())
    weights = task.validated_weights({"ctrl": 0.0})
    torch.testing.assert_close(
        task.reward(obs, act, obs, weights), task.reward(obs, act, obs) + 0.1 * 7
    )
    with pytest.raises(ValueError, match="no reward term 'speed'"):
        task.validated_weights({"speed": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        task.validated_weights({"ctrl": float("nan")})
    with pytest.raises(ValueError, match="unknown task"):
        get_task("walker")


BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "auto": ({"name": "auto"}, "name must be a non-empty string other than 'auto'"),
    "nan period": ({"control_period": math.nan}, "control_period must be a positive, finite"),
    "float steps": ({"episode_steps": 2.5}, "episode_steps must be an integer >= 1"),
    "short bounds": ({"action_low": ()}, "action bounds must have 1 entries"),
    "nan weight": ({"weights": {"upright": math.nan, "ctrl": 0.1}}, "weight 'upright' is nan"),
    "no weights": ({"weights": {}}, "reward terms need weights"),
    "both ends": ({"learn_termination": True, "terminated": lambda x: x[..., 0] > 0},
                  "learn_termination is for a task without a terminated function"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_tasks_fields_are_checked_when_it_is_made(case: str) -> None:
    """One place for every task, however it is made (here: a built-in one changed)."""
    changes, message = BAD_FIELDS[case]
    name = changes.get("name", "cartpole-swingup")
    with pytest.raises(ValueError, match=f"^{name}: {re.escape(message)}"):
        replace(get_task("cartpole-swingup"), **changes)


@pytest.mark.parametrize("task", list(TASKS.values()), ids=lambda t: t.name)
def test_one_weighted_sum_by_name_by_tensor_and_in_the_graph(task: Task) -> None:
    rng = np.random.default_rng(0)
    obs, nxt = (rng.standard_normal((40, task.obs_dim)).astype(np.float32) for _ in range(2))
    act = rng.standard_normal((40, task.act_dim)).astype(np.float32)
    draws = rng.uniform(-2, 2, len(task.weights))
    by_name = {name: float(w) for name, w in zip(task.weights, draws, strict=True)}
    as_tensor = torch.tensor(list(by_name.values()), dtype=torch.float32)
    t_obs, t_act, t_nxt = (torch.from_numpy(x) for x in (obs, act, nxt))
    want = task.reward(t_obs, t_act, t_nxt, by_name)
    torch.testing.assert_close(task.reward(t_obs, t_act, t_nxt, as_tensor), want)
    terms = task.terms(t_obs, t_act, t_nxt)
    torch.testing.assert_close(task.weighted_sum(terms, by_name), want)
    # The exported graph takes the weights as an input and computes the same sum.
    session = ort.InferenceSession(
        export_reward(task).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {"obs": obs, "act": act, "next_obs": nxt, "weights": as_tensor.numpy()}
    (reward,) = session.run(["reward"], feeds)
    np.testing.assert_allclose(reward, want.numpy(), rtol=1e-5, atol=1e-5)


def test_weighted_sum_refuses_terms_that_are_not_the_weights() -> None:
    task = get_task("cartpole-swingup")
    with pytest.raises(ValueError, match="do not match the weights"):
        task.weighted_sum({"tip": torch.ones(3)})
    with pytest.raises(ValueError, match="do not match the weights"):
        task.weighted_sum({"tip": torch.ones(3), "ctrl": torch.ones(3), "speed": torch.ones(3)})


def test_term_values_of_one_transition() -> None:
    task = get_task("cartpole-swingup")
    obs = np.array([0.1, 3.0, 0.2, -0.1])
    act = np.array([0.5])
    nxt = np.array([0.11, 3.05, 0.2, -0.1])
    values = task.term_values(obs, act, nxt)
    assert list(values) == list(task.weights)
    assert all(type(v) is float for v in values.values())
    assert values["ctrl"] == -0.25
    from_torch = task.term_values(*(torch.tensor(x, dtype=torch.float32) for x in (obs, act, nxt)))
    assert from_torch == pytest.approx(values, rel=1e-6)
    total = sum(task.weights[k] * v for k, v in values.items())
    as_batch = [torch.from_numpy(x)[None] for x in (obs, act, nxt)]
    assert total == pytest.approx(float(task.reward(*as_batch)[0]), rel=1e-12)
