"""Tasks nobody wrote: any gymnasium environment by id, and a robot's own HELLO.

Both know only what the environment or the robot says about itself: the dims, the action
bounds, the control period (and, for gymnasium, the episode length). The reward is learned from
the rewards the robot reports, and whether an episode has ended from its ``terminated`` flags
(``Task.terms`` None, ``Task.learn_termination``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np

from controller.tasks.base import Task

ROBOT_EPISODE_STEPS = 1_000_000
"""A task from a HELLO does not know the robot's episode length: the robot ends its episodes."""


@cache
def gym_task(env_id: str) -> Task:
    """The task of gymnasium environment ``env_id``: a Box observation (its values flattened)
    and a Box action space with finite bounds, the env's ``dt`` as the control period, its time
    limit as the episode length, reward and termination learned. ValueError saying what does
    not fit (no dt, no time limit, other spaces)."""
    import gymnasium as gym

    import sim_bridge.cartpole  # noqa: F401  (registers tickmpc/CartpoleSwingup-v0)

    if env_id not in gym.registry:
        raise ValueError(
            f"unknown task {env_id!r}: not a built-in task, a task file (path/to/file.py[:NAME]), "
            f"a module (package.module:NAME) or a registered gymnasium id "
            f"(built in: {_builtin_names()})"
        )
    try:
        env = gym.make(env_id)
    except Exception as exc:
        raise ValueError(f"gymnasium id {env_id}: cannot make the environment: "
                         f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    try:
        obs_space, act_space = env.observation_space, env.action_space
        for what, space in (("observation", obs_space), ("action", act_space)):
            if not isinstance(space, gym.spaces.Box):
                raise ValueError(f"gymnasium id {env_id}: its {what} space is "
                                 f"{type(space).__name__}, tickmpc needs a Box")  # fmt: skip
        assert isinstance(act_space, gym.spaces.Box) and isinstance(obs_space, gym.spaces.Box)
        low, high = act_space.low.reshape(-1), act_space.high.reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"gymnasium id {env_id}: action bounds must be finite, got "
                             f"{low.tolist()} .. {high.tolist()}")  # fmt: skip
        dt = getattr(env.unwrapped, "dt", None)
        if not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"gymnasium id {env_id}: the environment has no dt (its control "
                             "period), which tickmpc needs; write a task file for it")  # fmt: skip
        steps = env.spec.max_episode_steps if env.spec is not None else None
        if not steps:
            raise ValueError(
                f"gymnasium id {env_id}: the environment has no time limit "
                "(max_episode_steps); write a task file with its episode length"
            )
        return Task(
            name=env_id,
            env_id=env_id,
            obs_dim=int(np.prod(obs_space.shape)),
            act_dim=int(low.size),
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            control_period=float(dt),
            episode_steps=int(steps),
            learn_termination=True,
            notes="from the gymnasium id alone: reward and termination learned",
        )
    finally:
        env.close()


def robot_task(
    name: str,
    obs_dim: int,
    act_dim: int,
    action_low: Sequence[float],
    action_high: Sequence[float],
    control_period: float,
) -> Task:
    """The task a robot's HELLO describes (``tickmpc serve --task auto``): its dims, bounds and
    period, reward and termination learned."""
    return Task(
        name=name,
        obs_dim=obs_dim,
        act_dim=act_dim,
        action_low=tuple(float(x) for x in action_low),
        action_high=tuple(float(x) for x in action_high),
        control_period=float(control_period),
        episode_steps=ROBOT_EPISODE_STEPS,
        learn_termination=True,
        notes="taken from the first robot's HELLO: reward and termination learned",
    )


def _builtin_names() -> list[str]:
    from controller.tasks.registry import TASKS

    return sorted(TASKS)
