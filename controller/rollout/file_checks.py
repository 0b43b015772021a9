"""Whether a model or a policy file fits a task, checked before anything plans on it: the
evaluator refuses a file that does not (ModelFileError), and the model watcher keeps the
previous version serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from controller.rollout.parts import PolicyParts
from controller.tasks.base import Task
from models.export import ModelFileError, ModelMetadata
from models.policy.export import PolicyMetadata, read_policy
from sim_bridge.protocol import BOUNDS_ATOL, BOUNDS_RTOL


def check_model(path: Path, metadata: ModelMetadata, task: Task) -> None:
    """ModelFileError where the model file at ``path`` cannot serve ``task``: other dims, or a
    learned reward or termination it does not predict (planning on it would optimize something
    else than the task asks)."""
    cfg = metadata.config
    if (cfg.obs_dim, cfg.act_dim) != (task.obs_dim, task.act_dim):
        raise ModelFileError(
            f"{path}: model dims (obs {cfg.obs_dim}, act {cfg.act_dim}) do not match "
            f"task {task.name} (obs {task.obs_dim}, act {task.act_dim})"
        )
    if task.reward_learned and not cfg.predict_reward:
        raise ModelFileError(
            f"{path}: task {task.name} has a learned reward, but this model does not "
            "predict the reward (train it with predict_reward)"
        )
    # Refused rather than planned on without a termination: the plans would walk into the ends
    # the task says exist.
    if task.termination_learned and not cfg.predict_done:
        raise ModelFileError(
            f"{path}: task {task.name} has a learned termination, but this model does "
            "not predict done_prob (train it with predict_done)"
        )


def policy_parts(path: Path, task: Task) -> PolicyParts:
    """Read and verify a policy file for the rollout graphs of ``task``."""
    data, meta = read_policy(path)
    if (meta.obs_dim, meta.act_dim) != (task.obs_dim, task.act_dim):
        raise ModelFileError(
            f"{path}: policy dims (obs {meta.obs_dim}, act {meta.act_dim}) do not match task "
            f"{task.name} (obs {task.obs_dim}, act {task.act_dim})"
        )
    if why := policy_bounds_error(meta, task):
        raise ModelFileError(f"{path}: policy {why}")
    low, high = np.asarray(task.action_low, np.float64), np.asarray(task.action_high, np.float64)
    return PolicyParts(onnx.load_from_string(data), low, high)


def policy_bounds_error(meta: PolicyMetadata, task: Task) -> str | None:
    """Why a policy's action bounds do not fit ``task`` (None where they do, within the
    tolerances a HELLO is held to). A policy squashes its actions into its own bounds: other
    bounds would scale every one of them wrong."""
    low, high = np.asarray(task.action_low, np.float64), np.asarray(task.action_high, np.float64)
    bounds = ((meta.low, low), (meta.high, high))
    if all(np.allclose(a, b, BOUNDS_RTOL, BOUNDS_ATOL) for a, b in bounds):
        return None
    return (f"action bounds {list(meta.low)}, {list(meta.high)} are not task {task.name}'s "
            f"{low.tolist()}, {high.tolist()}")  # fmt: skip
