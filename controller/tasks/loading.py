"""Where a task comes from: a name, a task file, a module, a gymnasium id, or the robot.

:func:`load_task` turns the string every entry point takes (``--task`` or ``task`` in the
config) into a checked :class:`Task`:

- a built-in task's name (``cartpole-swingup``) or its gymnasium id (``InvertedPendulum-v5``);
- ``path/to/file.py`` or ``path/to/file.py:NAME``: a task file the user wrote; NAME defaults to
  ``TASK``, or the file's only ``Task``. NAME may also be a function of no arguments that
  returns the ``Task``;
- ``package.module:NAME``: the same, from an importable module;
- any other gymnasium id: a task with its dims, bounds, control period and episode length from
  the environment, and its reward and termination learned (:mod:`controller.tasks.generic`);
- ``auto`` is not loaded here: the service takes that task from its first robot's HELLO.

A task from a file or module is checked before anything uses it (:func:`check_task`), and a bad
one is refused with a ValueError that names the file and what is wrong. Loading is cached per
process by the reference and the file's content, so the config's checks, the service and the
learner in one process load a file once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from controller.tasks.base import AUTO, Task
from controller.tasks.errors import describe
from controller.tasks.export import check_export
from controller.tasks.generic import gym_task
from controller.tasks.registry import TASKS, builtin_task

DEFAULT_NAME = "TASK"
"""The attribute a task file defines when its reference names none."""
_MODULE_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
_CHECK_BATCH = (4, 3)
"""Leading batch shape a task's functions are called with when it is checked."""


@dataclass(frozen=True)
class TaskSource:
    """The file a task was loaded from, for copying it into a run directory."""

    path: Path
    """The source file (a task file, or the module's file)."""
    name: str | None
    """The attribute that holds the task (or makes it); None: ``TASK``, or the file's only
    Task."""
    sha256: str
    """Hash of the file's bytes when it was loaded."""
    module: str | None = None
    """The module's import name, for a ``package.module:NAME`` reference."""


_cache: dict[tuple[str, str], Task] = {}


def load_task(ref: str) -> Task:
    """The checked task ``ref`` refers to (see the module docstring); ValueError naming the
    problem if there is none or it is broken."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"task must be a non-empty string, got {ref!r}")
    if ref == AUTO:
        raise ValueError("task 'auto' is taken from the first robot's HELLO: only "
                         "`tickmpc serve` (and `tickmpc learn`) take it")  # fmt: skip
    if (task := builtin_task(ref)) is not None:
        return task
    source = task_source(ref)
    if source is None:
        return gym_task(ref)  # ValueError listing every way to name a task, if not an id
    key = (f"{source.path}:{source.name or ''}", source.sha256)
    if key not in _cache:
        task = _take(_module_of(source, ref), source, ref)
        check_task(task, f"task {ref}")
        _cache[key] = task
    return _cache[key]


def task_source(ref: str) -> TaskSource | None:
    """The file behind a task-file or module reference; None for any other reference.
    ValueError if the file or module cannot be found."""
    path_part, _, name = ref.rpartition(":") if _has_name(ref) else (ref, "", "")
    if path_part.endswith(".py"):
        path = Path(path_part).expanduser()
        if not path.is_file():
            raise ValueError(f"task file {path} does not exist")
        return TaskSource(path.resolve(), name or None, _sha256(path))
    if _MODULE_REF.match(ref):
        module_name, _, name = ref.partition(":")
        try:
            spec = importlib.util.find_spec(module_name)
        except Exception as exc:  # finding it runs the parent packages' __init__
            raise ValueError(f"task module {module_name}: {describe(exc)}") from None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ValueError(f"task module {module_name} not found (or not a .py file)")
        origin = Path(spec.origin)
        return TaskSource(origin.resolve(), name, _sha256(origin), module_name)
    return None


def _has_name(ref: str) -> bool:
    head, sep, tail = ref.rpartition(":")
    return bool(sep) and head.endswith(".py") and tail.isidentifier()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module_of(source: TaskSource, ref: str) -> Any:
    """Import a module reference in its package; run a task file as a module of its own."""
    if source.module is not None:
        try:
            return importlib.import_module(source.module)
        except Exception as exc:
            raise ValueError(f"task {ref}: importing {source.module} raised "
                             f"{describe(exc)}") from exc  # fmt: skip
    module_name = f"tickmpc_task_{source.sha256[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, source.path)
    if spec is None or spec.loader is None:
        raise ValueError(f"task {ref}: cannot load {source.path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ValueError(f"task {ref}: {source.path.name} raised {describe(exc)}") from exc
    return module


def _take(module: Any, source: TaskSource, ref: str) -> Task:
    """The module's task: the named attribute, else ``TASK``, else its only Task."""
    name = source.name or DEFAULT_NAME
    if source.name is not None or hasattr(module, name):
        if not hasattr(module, name):
            raise ValueError(f"task {ref}: {source.path.name} defines no {name!r}")
        value = getattr(module, name)
    else:
        found = [v for v in vars(module).values() if isinstance(v, Task)]
        if len(found) != 1:
            raise ValueError(f"task {ref}: {source.path.name} defines {len(found)} Task "
                             f"objects and no {DEFAULT_NAME!r}; name one as "
                             f"{source.path}:NAME")  # fmt: skip
        value = found[0]
    if callable(value) and not isinstance(value, Task):
        try:
            value = value()
        except Exception as exc:
            raise ValueError(f"task {ref}: {name}() raised {describe(exc)}") from exc
    if not isinstance(value, Task):
        raise ValueError(f"task {ref}: {name} is a {type(value).__name__}, not a Task "
                         "(from controller.tasks import Task)")  # fmt: skip
    return value


def check_task(task: Task, where: str) -> None:
    """Refuse a task that cannot work, naming what is wrong (ValueError prefixed ``where``):
    its reward terms and termination called on a batch (each must run and return the batch's
    shape) and exported to ONNX (:func:`~controller.tasks.export.check_export`). Its fields
    (dims, bounds, timing, weights, preprocessing) were checked when it was made
    (:class:`~controller.tasks.base.Task`)."""
    try:
        _check_functions(task)
        check_export(task)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _check_functions(task: Task) -> None:
    """Call the terms and the termination on a random batch of the task's shapes."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(*_CHECK_BATCH, task.obs_dim, generator=gen)
    low, high = torch.tensor(task.action_low), torch.tensor(task.action_high)
    act = low + (high - low) * torch.rand(*_CHECK_BATCH, task.act_dim, generator=gen)
    next_obs = obs + 0.1 * torch.randn(*_CHECK_BATCH, task.obs_dim, generator=gen)
    if task.terms is not None:
        try:
            with torch.no_grad():
                terms = task.terms(obs, act, next_obs)
        except Exception as exc:
            raise ValueError(f"the reward terms raise on a batch obs {list(obs.shape)}, act "
                             f"{list(act.shape)}: {describe(exc)}") from None  # fmt: skip
        if not isinstance(terms, dict):
            raise ValueError(f"the reward terms must return a dict of term name -> tensor, "
                             f"got {type(terms).__name__}")  # fmt: skip
        if set(terms) != set(task.weights):
            raise ValueError(f"the reward terms return {sorted(terms)} but the weights name "
                             f"{sorted(task.weights)}")  # fmt: skip
        for name, value in terms.items():
            _check_batch_tensor(f"reward term {name!r}", value, floating=True)
    if task.terminated is not None:
        try:
            with torch.no_grad():
                done = task.terminated(next_obs)
        except Exception as exc:
            raise ValueError(f"terminated raises on a batch next_obs {list(next_obs.shape)}: "
                             f"{describe(exc)}") from None  # fmt: skip
        _check_batch_tensor("terminated", done, floating=False)


def _check_batch_tensor(what: str, value: object, *, floating: bool) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} returns a {type(value).__name__}, not a torch tensor")
    if tuple(value.shape) != _CHECK_BATCH:
        raise ValueError(f"{what} returns shape {list(value.shape)} for a batch of shape "
                         f"{list(_CHECK_BATCH)}: it must return one value per batch element "
                         "(reduce the last dimension)")  # fmt: skip
    if floating and not value.dtype.is_floating_point:
        raise ValueError(f"{what} returns {value.dtype}, not a floating-point tensor")
    if not floating and value.dtype != torch.bool:
        raise ValueError(f"{what} returns {value.dtype}, not a bool tensor (compare, e.g. "
                         "x.abs() > 0.2)")  # fmt: skip


__all__ = ["AUTO", "TASKS", "TaskSource", "check_task", "load_task", "task_source"]
