"""A task's reward and termination as an ONNX graph, to be inlined into the rollout graph, and
the load-time check that a task file's functions export (:func:`check_export`).

The graph takes ``obs [B, S]``, ``act [B, A]``, ``next_obs [B, S]``, and the term weights
``weights [T]`` (in ``Task.weights`` order) when the task has reward terms. It returns what the
task computes itself, in this order: ``reward [B]`` (``Task.reward`` with those weights) when
the task has terms, ``done [B]`` (1.0 where the task's termination holds, else 0.0) when it has
a termination function. What the task leaves to the model (a learned reward, a learned or
absent termination) is not in the graph; a task that computes neither has no graph (None).
Weights are an input, so retuning them live never rebuilds a graph.

Exported with the torch exporter once per process for a registered task, and once per
:class:`Task` object for any other (a task loaded from a user's file, a learned copy). The
rollout graph (:mod:`controller.rollout.graph`) inlines it.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import cache

import numpy as np
import onnx
import torch
from torch import nn

from controller.tasks.base import Task
from controller.tasks.errors import describe
from controller.tasks.registry import TASKS
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


def check_export(task: Task) -> None:
    """Export the reward and termination to ONNX as the planner will, and compare the graph
    with torch on a batch; a failure is narrowed down to the term that causes it."""
    try:
        graph = task_reward_graph(task)  # kept: the planner's evaluators take this one
    except Exception as exc:
        raise ValueError(_export_culprit(task, exc)) from None
    if graph is not None:
        _compare_graph(task, graph)


def _export_culprit(task: Task, exc: Exception) -> str:
    """Which part of ``task`` fails to export on its own (the whole export raised ``exc``)."""
    terms = task.terms
    for name in task.weights if terms is not None else ():

        def one(
            obs: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor, n: str = name
        ) -> dict[str, torch.Tensor]:
            assert terms is not None
            return {n: terms(obs, act, nxt)[n]}

        alone = replace(task, terms=one, weights={name: 1.0}, terminated=None)
        try:
            export_reward(alone)
        except Exception as inner:
            return f"reward term {name!r} does not export to ONNX: {describe(inner)}"
    if task.terminated is not None:
        return f"terminated does not export to ONNX: {describe(exc)}"
    return f"the reward does not export to ONNX: {describe(exc)}"


def _compare_graph(task: Task, graph: onnx.ModelProto) -> None:
    """The exported graph must compute what the torch functions compute: a term whose value
    depends on Python control flow over tensor values is traced for one branch only."""
    from onnxruntime import InferenceSession

    rng = np.random.default_rng(1)
    batch = 64
    obs = rng.standard_normal((batch, task.obs_dim)).astype(np.float32)
    low, high = np.asarray(task.action_low), np.asarray(task.action_high)
    act = (low + (high - low) * rng.random((batch, task.act_dim))).astype(np.float32)
    nxt = (obs + 0.1 * rng.standard_normal(obs.shape)).astype(np.float32)
    feeds = {"obs": obs, "act": act, "next_obs": nxt}
    names = {i.name for i in graph.graph.input}
    if "weights" in names:
        feeds["weights"] = np.asarray(list(task.weights.values()), np.float32)
    session = InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in graph.graph.output],
                       session.run(None, {k: v for k, v in feeds.items() if k in names}),
                       strict=True))  # fmt: skip
    t_obs, t_act, t_nxt = (torch.from_numpy(x) for x in (obs, act, nxt))
    with torch.no_grad():
        if "reward" in outputs:
            want = task.reward(t_obs, t_act, t_nxt).numpy()
            if not np.allclose(outputs["reward"], want, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise ValueError("the reward's ONNX export computes other values than the torch "
                                 "terms (does a term branch in Python on tensor values? use "
                                 "torch.where)")  # fmt: skip
        if "done" in outputs and task.terminated is not None:
            want_done = task.terminated(t_nxt).numpy().astype(np.float32)
            if not np.array_equal(outputs["done"], want_done):
                raise ValueError(
                    "terminated's ONNX export computes other values than torch "
                    "(does it branch in Python on tensor values? use torch.where)"
                )
