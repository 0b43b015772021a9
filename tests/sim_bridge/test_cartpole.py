"""PETS cartpole swing-up environment on real MuJoCo."""

from __future__ import annotations

import importlib

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sim_bridge import cartpole
from sim_bridge.cartpole import (
    CONTROL_PERIOD,
    ENV_ID,
    EPISODE_STEPS,
    POLE_LENGTH,
    CartpoleSwingupEnv,
    cartpole_reward,
)


def tip_height(obs: np.ndarray) -> float:
    return float(-POLE_LENGTH * np.cos(obs[1]))


def pets_reward(obs: np.ndarray, act: float) -> float:
    """The PETS formula written out again, independently of the module."""
    x, theta = float(obs[0]), float(obs[1])
    tip_x, tip_y = x - 0.6 * np.sin(theta), -0.6 * np.cos(theta)
    return float(np.exp(-(tip_x**2 + (tip_y - 0.6) ** 2) / 0.6**2) - 0.01 * act**2)


# x is unlimited and theta unwrapped, so the observation box is unbounded on purpose.
@pytest.mark.filterwarnings("ignore:.*Box observation space m.* value is .*infinity")
def test_gymnasium_env_checker_passes() -> None:
    check_env(CartpoleSwingupEnv(), skip_render_check=True)


def test_registered_and_reimport_is_harmless() -> None:
    importlib.reload(cartpole)
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs.dtype == np.float32
    assert env.spec is not None and env.spec.max_episode_steps is None  # the env truncates


def test_model_matches_the_pets_task() -> None:
    env = CartpoleSwingupEnv()
    assert env.model.opt.timestep * 4 == pytest.approx(CONTROL_PERIOD)
    assert env.model.actuator_ctrlrange.tolist() == [[-1.0, 1.0]]
    assert env.model.actuator_gear[0, 0] == pytest.approx(300.0)  # PETS: gear 100 x ctrl 3
    assert env.model.body("cart").mass[0] == pytest.approx(10.47, abs=0.01)
    assert env.model.body("pole").mass[0] == pytest.approx(5.02, abs=0.01)
    # The tip site sits where the reward puts the tip, for any state.
    env.reset(seed=0)
    env.data.qpos[:] = [0.3, 2.0]
    mujoco.mj_forward(env.model, env.data)
    site = env.data.site("tip").xpos
    expected = cartpole.pole_tip(np.array([0.3, 2.0, 0.0, 0.0]))
    np.testing.assert_allclose(site[[0, 2]], expected, atol=1e-9)


def test_reset_is_deterministic_per_seed() -> None:
    a, b = CartpoleSwingupEnv(), CartpoleSwingupEnv()
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, a.reset(seed=8)[0])
    assert 0.0 < np.abs(obs_a).max() < 0.5  # N(0, 0.1) noise around the hanging rest state
    a.reset(seed=7)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 1)).astype(np.float32)
    for act in actions:
        np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])


def test_zero_action_leaves_the_pole_hanging() -> None:
    env = CartpoleSwingupEnv()
    env.reset(seed=1)
    rewards, heights = [], []
    for _ in range(EPISODE_STEPS):
        obs, reward, *_ = env.step(np.zeros(1, np.float32))
        rewards.append(reward)
        heights.append(tip_height(obs))
    assert max(heights) < -0.55
    assert np.mean(rewards) < 0.2


def energy_pump(env: CartpoleSwingupEnv, obs: np.ndarray) -> np.ndarray:
    """Swing-up by energy pumping: push along theta_dot*cos(theta) until the energy is upright's."""
    pole = env.model.body("pole")
    mass, com = float(pole.mass[0]), float(np.linalg.norm(pole.ipos))
    inertia = float(pole.inertia.max()) + mass * com**2  # about the hinge
    theta, theta_dot = float(obs[1]), float(obs[3])
    energy = 0.5 * inertia * theta_dot**2 + mass * 9.81 * com * (1 - np.cos(theta))
    missing = 2 * mass * 9.81 * com - energy
    push = np.sign(theta_dot * np.cos(theta)) or 1.0
    return np.clip([missing * push], -1.0, 1.0).astype(np.float32)


def test_energy_pumping_reaches_upright() -> None:
    env = CartpoleSwingupEnv()
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        best = -1.0
        for _ in range(EPISODE_STEPS):
            obs, *_ = env.step(energy_pump(env, obs))
            best = max(best, tip_height(obs))
        assert best > 0.5, f"seed {seed}: best tip height {best:.2f}"


def test_truncates_at_exactly_episode_steps() -> None:
    env = CartpoleSwingupEnv()
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    for step in range(1, EPISODE_STEPS + 1):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=1))
        assert not terminated
        assert truncated == (step == EPISODE_STEPS)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1))
    env.reset(seed=2)
    assert not env.step(np.zeros(1))[3]


def test_reward_is_the_pets_formula_on_the_returned_obs() -> None:
    env = CartpoleSwingupEnv()
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(50):
        act = rng.uniform(-1.5, 1.5, size=1)  # some out of bounds: clipped before use
        obs, reward, _, _, info = env.step(act)
        applied = float(np.clip(act[0], -1.0, 1.0))
        assert reward == pytest.approx(pets_reward(obs, applied), rel=1e-12, abs=1e-12)
        assert info["reward_ctrl"] == pytest.approx(-0.01 * applied**2, rel=1e-12)
        assert info["reward_tip"] + info["reward_ctrl"] == reward
        batched = cartpole_reward(obs[None].astype(np.float64), np.array([[applied]]))
        assert batched.shape == (1,) and batched[0] == reward


def test_actions_are_clipped_to_the_bounds() -> None:
    a, b = CartpoleSwingupEnv(), CartpoleSwingupEnv()
    a.reset(seed=4)
    b.reset(seed=4)
    obs_a, reward_a, *_ = a.step(np.array([5.0]))
    obs_b, reward_b, *_ = b.step(np.array([1.0]))
    np.testing.assert_array_equal(obs_a, obs_b)
    assert reward_a == reward_b
    with pytest.raises(ValueError, match="finite"):
        a.step(np.array([np.nan]))


def test_cartpole_reward_is_batched() -> None:
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(8, 4))
    act = rng.uniform(-1, 1, size=(8, 1))
    out = cartpole_reward(obs, act)
    assert out.shape == (8,)
    expected = [pets_reward(o, float(a[0])) for o, a in zip(obs, act, strict=True)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    upright = np.array([[0.0, np.pi, 0.0, 0.0]])
    assert cartpole_reward(upright, np.zeros((1, 1)))[0] == pytest.approx(1.0)
