"""Tasks: built in (``TASKS``), from task files and modules, from gymnasium ids, or from the
robot's HELLO. ``load_task(ref)`` resolves any reference a user can give (see
:mod:`controller.tasks.loading`)."""

from __future__ import annotations

from controller.tasks.base import RewardTerms, Task, Termination
from controller.tasks.loading import AUTO, TaskSource, check_task, load_task, task_source
from controller.tasks.registry import TASKS

get_task = load_task
"""The task a reference names (the name the CLI and config have always used)."""

__all__ = ["AUTO", "TASKS", "RewardTerms", "Task", "TaskSource", "Termination", "check_task",
           "get_task", "load_task", "task_source"]  # fmt: skip
