"""A task's reward as an ONNX graph, to be inlined into the rollout graph.

The graph takes ``obs [B, S]``, ``act [B, A]``, ``next_obs [B, S]`` and the term weights
``weights [T]`` (in ``Task.weights`` order) and returns ``reward [B]`` (``Task.reward`` with
those weights) and ``done [B]`` (1.0 where the task's termination holds, else 0.0). Weights are
an input, so retuning them live never rebuilds a graph. Exported once per task with the torch
exporter.
"""

from __future__ import annotations

from functools import cache

import onnx
import torch
from torch import nn

from controller.tasks import Task, get_task
from models.export import trace_to_onnx

INPUTS = ("obs", "act", "next_obs", "weights")
OUTPUTS = ("reward", "done")


class _TaskReward(nn.Module):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def forward(
        self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.task.reward(obs, act, next_obs, weights)
        if self.task.terminated is None:
            done = torch.zeros_like(total)
        else:
            done = self.task.terminated(next_obs).to(next_obs.dtype)
        return total, done


def export_reward(task: Task) -> onnx.ModelProto:
    """Trace ``task``'s weighted reward and termination into ONNX with a dynamic batch."""
    b = torch.export.Dim("B", min=1, max=1 << 24)
    obs = torch.zeros(3, task.obs_dim)
    act = torch.zeros(3, task.act_dim)
    weights = torch.ones(len(task.weights))
    return trace_to_onnx(
        _TaskReward(task),
        (obs, act, obs.clone(), weights),
        list(INPUTS),
        list(OUTPUTS),
        ({0: b}, {0: b}, {0: b}, None),
    )


@cache
def reward_graph(task_name: str) -> onnx.ModelProto:
    """The exported reward of a registered task, exported once per process."""
    return export_reward(get_task(task_name))
