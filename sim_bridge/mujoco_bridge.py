"""A simulated robot: a gymnasium MuJoCo environment behind the bridge loop.

``read_state`` advances the simulation one control step with the action in effect (in realtime
mode the loop calls it on the wall clock; in lockstep mode after each ACTION). Hardware can be
emulated: Gaussian observation noise, an action delay of whole ticks, and timing jitter. With
``record=True`` the bridge keeps the simulation's positions at every step, to draw the episode
again later in another process (:mod:`sim_bridge.video`): a copy of a few numbers a step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import mujoco
import numpy as np
import numpy.typing as npt

import sim_bridge.cartpole  # noqa: F401  (registers tickmpc/CartpoleSwingup-v0)
from sim_bridge.hardware import BridgeSettings, HardwareBridge, Reading
from sim_bridge.link import RobotSpec

SIM_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "cartpole-swingup": ("tickmpc/CartpoleSwingup-v0", {}),
    "inverted-pendulum": ("InvertedPendulum-v5", {}),
    "reacher": ("Reacher-v5", {}),
    "half-cheetah": ("HalfCheetah-v5", {"exclude_current_positions_from_observation": False}),
    "pusher": ("Pusher-v5", {}),
    "pendulum": ("Pendulum-v1", {}),
}
"""Task name -> (gymnasium id, make kwargs) as the controller's tasks define them."""

MAX_RECORDED_STEPS = 10_000
"""Steps of an episode a recording keeps (400 s at 25 Hz)."""


@dataclass(frozen=True)
class Emulation:
    """Hardware imperfections to emulate in simulation (all off by default)."""

    obs_noise_std: float = 0.0
    """Std of Gaussian noise added to each sent observation (rewards use the true state)."""
    action_delay_ticks: int = 0
    """Ticks between receiving an action and the simulation applying it."""
    jitter_s: float = 0.0
    """Each tick reads the state up to this many seconds late (uniform)."""

    def __post_init__(self) -> None:
        if self.obs_noise_std < 0 or self.action_delay_ticks < 0 or self.jitter_s < 0:
            raise ValueError("emulation settings must be >= 0")


@dataclass(frozen=True)
class Recording:
    """One episode of a MuJoCo simulation as a bridge recorded it: enough to redraw every step
    (positions set, ``mj_forward``, render). T is the reset plus every step taken."""

    qpos: npt.NDArray[np.float64]
    """[T, nq] joint positions."""
    mocap_pos: npt.NDArray[np.float64]
    """[T, nmocap, 3] mocap body positions (nmocap is 0 in most models)."""
    mocap_quat: npt.NDArray[np.float64]
    """[T, nmocap, 4] mocap body orientations."""
    period: float
    """Seconds of simulated time between two rows (the control period)."""


class SimulatedTask(Protocol):
    """What :meth:`MujocoBridge.for_task` reads of a task (a controller ``Task`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def env_id(self) -> str | None: ...
    @property
    def env_kwargs(self) -> Mapping[str, Any]: ...


def make_env(task: str, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env[Any, Any]:
    """The simulation of ``task`` (a name of SIM_TASKS or any gymnasium id), made with
    ``env_kwargs`` over the task's own."""
    env_id, kwargs = SIM_TASKS.get(task, (task, {}))
    try:
        return gym.make(env_id, **{**kwargs, **(env_kwargs or {})})
    except (gym.error.Error, TypeError) as exc:  # TypeError: a keyword the env does not take
        raise ValueError(f"unknown task {task!r}: {exc}; known: {sorted(SIM_TASKS)}") from None


class MujocoBridge(HardwareBridge):
    """A gymnasium environment served as a robot named ``robot``."""

    def __init__(
        self,
        task: str,
        robot: str = "sim-0",
        *,
        seed: int = 0,
        safe_action: npt.ArrayLike | None = None,
        emulation: Emulation | None = None,
        settings: BridgeSettings | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        record: bool = False,
    ) -> None:
        """``record``: keep each episode's positions for :meth:`recording` (where the
        environment is a MuJoCo simulation: ``env.unwrapped.data``)."""
        self.env = make_env(task, env_kwargs)
        space = self.env.action_space
        assert isinstance(space, gym.spaces.Box)
        obs_space = self.env.observation_space
        assert obs_space.shape is not None
        spec = RobotSpec(
            robot=robot,
            task=name or task,
            obs_dim=int(np.prod(obs_space.shape)),
            act_dim=int(np.prod(space.shape)),
            action_low=tuple(float(x) for x in space.low),
            action_high=tuple(float(x) for x in space.high),
            control_period=float(self.env.unwrapped.dt),  # type: ignore[attr-defined]
            reward=True,
        )
        super().__init__(spec, settings)
        middle = (self.low + self.high) / 2.0
        self.safe_action = np.clip(
            middle if safe_action is None else np.asarray(safe_action, np.float64),
            self.low,
            self.high,
        )
        if self.safe_action.shape != middle.shape:
            raise ValueError(f"safe_action must have shape {middle.shape}")
        self.emulation = emulation or Emulation()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._queue: deque[npt.NDArray[np.float64]] = deque()
        self._held = self.safe_action.copy()
        self._obs: npt.NDArray[np.floating] | None = None
        data = getattr(self.env.unwrapped, "data", None)
        self._sim = data if record and isinstance(data, mujoco.MjData) else None
        """The simulation whose positions are recorded (None: no recording)."""
        self._frames: list[tuple[npt.NDArray[np.float64], ...]] = []

    @classmethod
    def for_task(cls, task: SimulatedTask, robot: str = "sim-0", **options: Any) -> MujocoBridge:
        """The simulation of a controller's task: its gymnasium ``env_id`` made with its
        ``env_kwargs``, saying HELLO with the task's name. ``options`` as for the constructor."""
        if task.env_id is None:
            raise ValueError(f"task {task.name} names no gymnasium environment (env_id) to "
                             "simulate")  # fmt: skip
        return cls(task.env_id, robot, env_kwargs=task.env_kwargs, name=task.name, **options)

    def begin_episode(self) -> None:
        seed = self.seed + self.stats.episodes
        self._obs, _ = self.env.reset(seed=seed)
        self._queue.clear()
        self._held = self.safe_action.copy()
        self._frames.clear()
        self._record()

    def recording(self) -> Recording | None:
        """The positions of the current (or last) episode; None where the bridge was not asked
        to record or simulates no MuJoCo model."""
        if self._sim is None or not self._frames:
            return None
        qpos, mocap_pos, mocap_quat = (np.stack(c) for c in zip(*self._frames, strict=True))
        return Recording(qpos, mocap_pos, mocap_quat, period=self.spec.control_period)

    def _record(self) -> None:
        # Copies only, about a microsecond on the control path; a long episode's video shows
        # its first MAX_RECORDED_STEPS (memory stays bounded whatever episode_steps says).
        if self._sim is not None and len(self._frames) <= MAX_RECORDED_STEPS:
            d = self._sim
            self._frames.append((d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy()))

    def read_state(self) -> Reading:
        e = self.emulation
        if e.jitter_s:
            time.sleep(self.rng.uniform(0.0, e.jitter_s))
        if self._obs is not None:  # the first reading of an episode is the reset state
            obs, self._obs = self._obs, None
            return Reading(self._noisy(obs))
        while len(self._queue) > e.action_delay_ticks:
            self._held = self._queue.popleft()
        applied = self._held.copy()
        obs, reward, terminated, truncated, _ = self.env.step(applied.astype(np.float32))
        self._record()
        return Reading(
            self._noisy(obs),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            applied=applied,
        )

    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        self._queue.append(action)

    def safe_stop(self) -> None:
        self._queue.clear()
        self._held = self.safe_action.copy()

    def close(self) -> None:
        self.env.close()

    def _noisy(self, obs: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        obs = np.asarray(obs).reshape(-1)  # a Box observation of any shape, sent flat
        std = self.emulation.obs_noise_std
        if not std:
            return obs
        return np.asarray(obs + self.rng.normal(0.0, std, np.shape(obs)), np.asarray(obs).dtype)
