"""The tasks built into the package, by name and by gymnasium id."""

from __future__ import annotations

from controller.tasks.base import Task
from controller.tasks.cartpole import CARTPOLE_SWINGUP
from controller.tasks.gym_mujoco import HALF_CHEETAH, INVERTED_PENDULUM, PUSHER, REACHER
from controller.tasks.pendulum import PENDULUM

TASKS: dict[str, Task] = {
    t.name: t
    for t in (CARTPOLE_SWINGUP, PENDULUM, INVERTED_PENDULUM, REACHER, HALF_CHEETAH, PUSHER)
}


def builtin_task(name: str) -> Task | None:
    """The built-in task called ``name`` or whose gymnasium id is ``name``; None if none is."""
    if name in TASKS:
        return TASKS[name]
    return next((t for t in TASKS.values() if t.env_id == name), None)
