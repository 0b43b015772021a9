"""PETS cartpole swing-up (Chua et al. 2018) as a gymnasium environment on MuJoCo.

The pole hangs down at theta = 0 and is upright at theta = pi; the pole tip is at
``(x - 0.6 sin(theta), -0.6 cos(theta))``. One step applies the (clipped) action for 0.04 s
(4 physics steps of 0.01 s); an episode is 200 steps and is truncated, never terminated. The
model's parameters, and where they differ from PETS, are explained in ``assets/cartpole.xml``.

Importing this module registers the environment as ``tickmpc/CartpoleSwingup-v0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import numpy.typing as npt

ENV_ID = "tickmpc/CartpoleSwingup-v0"
ASSET_PATH = Path(__file__).parent / "assets" / "cartpole.xml"

POLE_LENGTH = 0.6
"""Distance from the hinge to the pole tip, metres."""
FRAME_SKIP = 4
"""Physics steps per control step."""
CONTROL_PERIOD = 0.04
"""Seconds per env step: FRAME_SKIP times the asset's timestep."""
EPISODE_STEPS = 200
"""Steps per episode; the step that reaches it returns truncated=True."""
RESET_NOISE_STD = 0.1
"""Std of the Gaussian noise on (x, theta) and (x_dot, theta_dot) at reset, as in PETS."""
ACTION_LIMIT = 1.0
"""Actions are clipped to [-ACTION_LIMIT, ACTION_LIMIT]; the asset's gear scales them to newtons."""
CTRL_COST_WEIGHT = 0.01
"""Weight of the squared-action penalty in the reward."""

TIP_TARGET = np.array([0.0, POLE_LENGTH])
"""Tip position (x, height) of the upright pole over the origin."""


def pole_tip(obs: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """Pole-tip position (x, height) of observations: [..., 4] -> [..., 2]."""
    x, theta = obs[..., 0], obs[..., 1]
    return np.stack([x - POLE_LENGTH * np.sin(theta), -POLE_LENGTH * np.cos(theta)], axis=-1)


def cartpole_reward_terms(
    next_obs: npt.NDArray[np.floating], act: npt.NDArray[np.floating]
) -> dict[str, npt.NDArray[np.floating]]:
    """The two PETS reward terms of a batch of transitions; their sum is the reward.

    ``reward_tip = exp(-|tip(next_obs) - (0, 0.6)|^2 / 0.6^2)`` in (0, 1] and
    ``reward_ctrl = -0.01 * |act|^2``.

    Args:
        next_obs: [N, 4] observations *after* the step, (x, theta, x_dot, theta_dot).
        act: [N, 1] actions applied during the step.

    Returns:
        ``{"reward_tip": [N], "reward_ctrl": [N]}`` in the floating dtype of the inputs.
    """
    dist2 = np.sum(np.square(pole_tip(next_obs) - TIP_TARGET.astype(next_obs.dtype)), axis=-1)
    return {
        "reward_tip": np.exp(-dist2 / POLE_LENGTH**2),
        "reward_ctrl": -CTRL_COST_WEIGHT * np.sum(np.square(act), axis=-1),
    }


def cartpole_reward(
    next_obs: npt.NDArray[np.floating], act: npt.NDArray[np.floating]
) -> npt.NDArray[np.floating]:
    """PETS cartpole reward of a batch of transitions: [N, 4], [N, 1] -> [N].

    Computed on the observation after the step (as PETS does) and the action applied; see
    :func:`cartpole_reward_terms`.
    """
    terms = cartpole_reward_terms(next_obs, act)
    return terms["reward_tip"] + terms["reward_ctrl"]


class CartpoleSwingupEnv(gym.Env[npt.NDArray[np.float32], npt.NDArray[np.float32]]):
    """Cartpole swing-up of PETS, stepped with the MuJoCo bindings directly.

    - observation: float32 ``[x, theta, x_dot, theta_dot]``, theta unwrapped (0 = hanging down);
    - action: ``Box(-1, 1, (1,))``, clipped to the bounds, scaled to +-300 N on the cart;
    - reward: :func:`cartpole_reward` of the returned (next) observation and the clipped action;
      ``info`` holds its terms ``reward_tip`` and ``reward_ctrl``, which sum to it;
    - episode: truncated at step ``EPISODE_STEPS``, never terminated; stepping a finished
      episode raises;
    - reset: ``qpos, qvel ~ N(0, 0.1)`` each, drawn from ``self.np_random``.
    """

    # gymnasium.make reads metadata off the class, and Env declares it as an instance variable,
    # so a ClassVar annotation would clash with the base.
    metadata = {"render_modes": [], "render_fps": round(1.0 / CONTROL_PERIOD)}  # noqa: RUF012
    dt = CONTROL_PERIOD
    """Seconds per step, named as gymnasium's MuJoCo environments name it."""
    episode_steps = EPISODE_STEPS
    """Steps before the episode is truncated (the env does it itself)."""

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(ASSET_PATH))
        if not np.isclose(self.model.opt.timestep * FRAME_SKIP, CONTROL_PERIOD):
            raise ValueError(
                f"{ASSET_PATH}: timestep {self.model.opt.timestep} x frame skip {FRAME_SKIP}"
                f" is not the control period {CONTROL_PERIOD}"
            )
        self.data = mujoco.MjData(self.model)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Box(
            -ACTION_LIMIT, ACTION_LIMIT, shape=(1,), dtype=np.float32
        )
        self._steps: int | None = None  # None until reset and after the episode's last step

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.np_random.normal(0.0, RESET_NOISE_STD, size=self.model.nq)
        self.data.qvel[:] = self.np_random.normal(0.0, RESET_NOISE_STD, size=self.model.nv)
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        return self._obs(), {}

    def step(
        self, action: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        if self._steps is None:
            raise RuntimeError("call reset() before step() and after an episode ends")
        act = np.asarray(action, dtype=np.float64).reshape(-1)
        if act.shape != (1,) or not np.all(np.isfinite(act)):
            raise ValueError(f"action must be one finite number, got {action!r}")
        act = np.clip(act, -ACTION_LIMIT, ACTION_LIMIT)
        self.data.ctrl[:] = act
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        obs = self._obs()
        terms = cartpole_reward_terms(obs[None].astype(np.float64), act[None])
        info = {name: float(value[0]) for name, value in terms.items()}
        reward = info["reward_tip"] + info["reward_ctrl"]
        self._steps += 1
        truncated = self._steps >= EPISODE_STEPS
        if truncated:
            self._steps = None
        return obs, reward, False, truncated, info

    def _obs(self) -> npt.NDArray[np.float32]:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=f"{__name__}:CartpoleSwingupEnv")
