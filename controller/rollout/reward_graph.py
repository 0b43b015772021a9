"""A task's reward and termination as an ONNX graph, to be inlined into the rollout graph.

The graph takes ``obs [B, S]``, ``act [B, A]``, ``next_obs [B, S]``, and the term weights
``weights [T]`` (in ``Task.weights`` order) when the task has reward terms. It returns what the
task computes itself, in this order: ``reward [B]`` (``Task.reward`` with those weights) when
the task has terms, ``done [B]`` (1.0 where the task's termination holds, else 0.0) when it has
a termination function. What the task leaves to the model (a learned reward, a learned or
absent termination) is not in the graph; a task that computes neither has no graph (None).
Weights are an input, so retuning them live never rebuilds a graph.

Exported with the torch exporter once per process for a registered task, and once per
:class:`Task` object for any other (a task loaded from a user's file, a learned copy).
"""

from __future__ import annotations

import threading
from functools import cache

import onnx
import torch
from torch import nn

from controller.tasks import TASKS, Task
from models.export import trace_to_onnx

INPUTS = ("obs", "act", "next_obs", "weights")
"""Every input a reward graph can have, in order (``weights`` only with reward terms)."""
OUTPUTS = ("reward", "done")
"""Every output a reward graph can have, in order."""


class _TaskReward(nn.Module):
    """The task's own reward and/or termination, as ``OUTPUTS`` in order."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def forward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        next_obs: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        out: tuple[torch.Tensor, ...] = ()
        if weights is not None:
            out += (self.task.reward(obs, act, next_obs, weights),)
        if self.task.terminated is not None:
            out += (self.task.terminated(next_obs).to(next_obs.dtype),)
        return out


def graph_names(task: Task) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (inputs, outputs) of ``task``'s reward graph; no outputs: the task has no graph."""
    has_terms = not task.reward_learned
    inputs = INPUTS if has_terms else INPUTS[:3]
    outputs = (("reward",) if has_terms else ()) + (("done",) if task.terminated else ())
    return inputs, outputs


def export_reward(task: Task) -> onnx.ModelProto | None:
    """Trace what ``task`` computes itself (see the module docstring) into ONNX with a dynamic
    batch; None when it computes neither the reward nor the termination."""
    inputs, outputs = graph_names(task)
    if not outputs:
        return None
    b = torch.export.Dim("B", min=1, max=1 << 24)
    obs = torch.zeros(3, task.obs_dim)
    args: tuple[torch.Tensor, ...] = (obs, torch.zeros(3, task.act_dim), obs.clone())
    shapes: tuple[dict[int, torch.export.Dim] | None, ...] = ({0: b}, {0: b}, {0: b})
    if "weights" in inputs:
        args += (torch.ones(len(task.weights)),)
        shapes += (None,)
    return trace_to_onnx(_TaskReward(task), args, list(inputs), list(outputs), shapes)


@cache
def reward_graph(task_name: str) -> onnx.ModelProto | None:
    """The exported graph of a registered task, exported once per process."""
    return export_reward(TASKS[task_name])


_EXPORTED: dict[int, tuple[Task, onnx.ModelProto | None]] = {}
"""id(task) -> (task, its graph) for tasks that are not registered. Holding the task keeps its
id from being reused by another object while the entry exists."""
_EXPORT_LOCK = threading.Lock()


def task_reward_graph(task: Task) -> onnx.ModelProto | None:
    """``task``'s graph: exported once per process for a registered task, once per Task object
    otherwise (Task holds callables and mappings, so it is neither hashable nor comparable by
    value). Evaluators are built in the model watcher's thread as well as at start-up: the
    lock makes the second of two concurrent builds wait for the first one's export."""
    if TASKS.get(task.name) is task:
        return reward_graph(task.name)
    with _EXPORT_LOCK:
        held = _EXPORTED.get(id(task))
        if held is None or held[0] is not task:
            held = (task, export_reward(task))
            _EXPORTED[id(task)] = held
        return held[1]
