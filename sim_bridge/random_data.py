"""Random-action data from a gymnasium environment, for a first model before any planning.

PETS starts every run this way: uniformly random actions within the bounds, episodes reset on
termination or truncation. Everything is seeded, so the same call gives the same data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from sim_bridge import cartpole as _cartpole  # noqa: F401  (registers tickmpc/CartpoleSwingup-v0)


@dataclass(frozen=True)
class RandomRollouts:
    """N transitions collected with random actions (S observation, A action dims)."""

    obs: np.ndarray
    """[N, S] float32."""
    act: np.ndarray
    """[N, A] float32."""
    next_obs: np.ndarray
    """[N, S] float32."""
    reward: np.ndarray
    """[N] float32."""
    terminated: np.ndarray
    """[N] bool."""
    truncated: np.ndarray
    """[N] bool."""
    episode: np.ndarray
    """[N] int64, counted from 0."""
    step: np.ndarray
    """[N] int64, step within the episode."""

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def collect_random(
    env_id: str,
    steps: int,
    *,
    seed: int = 0,
    max_episode_steps: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> RandomRollouts:
    """Run ``steps`` uniformly random actions in ``env_id`` and return the transitions."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    env = gym.make(env_id, max_episode_steps=max_episode_steps, **dict(env_kwargs or {}))
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"{env_id}: only continuous (Box) action spaces are supported")
        space.seed(seed)
        obs, _ = env.reset(seed=seed)
        rows: dict[str, list[object]] = {k: [] for k in RandomRollouts.__dataclass_fields__}
        episode, step = 0, 0
        for _ in range(steps):
            act = space.sample()
            next_obs, reward, terminated, truncated, _ = env.step(act)
            for key, value in (
                ("obs", obs), ("act", act), ("next_obs", next_obs), ("reward", reward),
                ("terminated", terminated), ("truncated", truncated),
                ("episode", episode), ("step", step),
            ):  # fmt: skip
                rows[key].append(value)
            step += 1
            if terminated or truncated:
                obs, _ = env.reset()
                episode, step = episode + 1, 0
            else:
                obs = next_obs
    finally:
        env.close()
    return RandomRollouts(
        obs=np.asarray(rows["obs"], np.float32),
        act=np.asarray(rows["act"], np.float32).reshape(steps, -1),
        next_obs=np.asarray(rows["next_obs"], np.float32),
        reward=np.asarray(rows["reward"], np.float32),
        terminated=np.asarray(rows["terminated"], bool),
        truncated=np.asarray(rows["truncated"], bool),
        episode=np.asarray(rows["episode"], np.int64),
        step=np.asarray(rows["step"], np.int64),
    )
