"""Task registry: ``get_task(name)`` by task name or gymnasium id."""

from __future__ import annotations

from controller.tasks.base import Task
from controller.tasks.cartpole import CARTPOLE_SWINGUP
from controller.tasks.gym_mujoco import HALF_CHEETAH, INVERTED_PENDULUM, PUSHER, REACHER
from controller.tasks.pendulum import PENDULUM

TASKS: dict[str, Task] = {
    t.name: t
    for t in (CARTPOLE_SWINGUP, PENDULUM, INVERTED_PENDULUM, REACHER, HALF_CHEETAH, PUSHER)
}


def get_task(name: str) -> Task:
    """The task called ``name`` (or whose gymnasium id is ``name``)."""
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if task.env_id == name:
            return task
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")


__all__ = ["TASKS", "Task", "get_task"]
