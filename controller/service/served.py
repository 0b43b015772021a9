"""What serving one task takes, built whole from the task or not at all: the task and its action
bounds, the store it records into, the recorder, and the model and policy versions it follows.

A service given a task builds it at start; a service whose task is ``auto`` has none until the
first robot's HELLO describes one (:func:`controller.tasks.generic.robot_task`), and a HELLO
it cannot be built from (its dims not the store's, a corrupt store) is refused with nothing
left behind: no open store, no watcher.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from controller.planners import PlannerSettings, PolicyActor
from controller.rollout.evaluator import RolloutEvaluator
from controller.service.model_watch import ModelWatcher, PolicyWatcher, VersionWatcher
from controller.service.recorder import Recorder
from controller.service.settings import ServiceConfig
from controller.service.telemetry import Subscriptions
from controller.tasks import Task
from models.store import TransitionReader, TransitionWriter

log = logging.getLogger(__name__)


class Versions:
    """The model and policy versions serving, taken from their watchers between ticks."""

    def __init__(self, models: ModelWatcher | None, policies: PolicyWatcher | None) -> None:
        self.models, self.policies = models, policies
        self.model_version = 0
        self.evaluator: RolloutEvaluator | None = None
        """The rollouts of the model serving (composed with a policy where one was taken),
        None until the first model version is loaded."""
        self.policy_version = 0
        self.policy: PolicyActor | None = None
        """The learned policy serving, once a version is loaded."""

    @property
    def watchers(self) -> list[VersionWatcher[Any]]:
        """The model and policy watchers (none without a model directory)."""
        return [w for w in (self.models, self.policies) if w is not None]

    def take_model(self) -> RolloutEvaluator | None:
        """The evaluator of a model version (or composition) loaded since the last call."""
        ready = self.models.take() if self.models is not None else None
        if ready is None:
            return None
        self.model_version, self.evaluator = ready
        return self.evaluator

    def take_policy(self) -> PolicyActor | None:
        """A policy version loaded since the last call."""
        ready = self.policies.take() if self.policies is not None else None
        if ready is None:
            return None
        self.policy_version, self.policy = ready
        return self.policy

    def status(self) -> dict[str, Any]:
        models, policies = self.models, self.policies
        composed = models.policy_errors if models is not None else {}
        return {
            "model_version": self.model_version,
            "rejected_models": _rejected(models),
            "policy_version": self.policy_version,
            "rollout_policy_version": self.evaluator.policy_version if self.evaluator else 0,
            "rejected_policies": {
                **_rejected(policies),
                **{str(k): f"not composed into the rollouts: {why}" for k, why in composed.items()},
            },
        }


def _rejected(watcher: VersionWatcher[Any] | None) -> dict[str, str]:
    """The versions ``watcher`` refused, by version number as a string (JSON keys)."""
    return {str(k): v for k, v in watcher.rejected.items()} if watcher is not None else {}


NO_VERSIONS = Versions(None, None).status()
"""What ``status`` says of the versions before there is a task to serve."""


class ServedTask:
    """One task served: ``task``, its bounds, ``recorder`` (store and telemetry) and
    ``versions`` (the models and policies of ``settings.models`` for it). Raises ValueError
    (weights the task has no terms for, a store of other dims), RuntimeError (a corrupt
    store) or OSError, with nothing left open."""

    def __init__(
        self,
        task: Task,
        settings: ServiceConfig,
        planner: PlannerSettings,
        subscriptions: Subscriptions,
    ) -> None:
        task.validated_weights(planner.weights)
        self.task = task
        self.low = np.asarray(task.action_low, np.float64)
        self.high = np.asarray(task.action_high, np.float64)
        writer, episodes = None, 0
        if settings.store is not None:
            writer = TransitionWriter(settings.store, task.obs_dim, task.act_dim)
        try:
            if settings.store is not None:
                reader = TransitionReader(settings.store)
                if n := len(reader):
                    episodes = int(reader.read(n - 1, n).episode[0])
            models = policies = None
            if settings.models is not None:
                policies = PolicyWatcher(settings.models, task, settings.model_poll_s)
                models = ModelWatcher(
                    settings.models, task, settings.runtime, settings.model_poll_s, policies
                )
        except BaseException:
            if writer is not None:
                writer.close()  # its lock would refuse every later try
            raise
        self.recorder = Recorder(task, writer, settings.durable, subscriptions, episodes)
        self.versions = Versions(models, policies)

    def watch(self) -> None:
        """Load the newest policy and model now (so the first tick has them, the model's
        rollouts composed with the policy), then follow the directory."""
        watchers = self.versions.watchers
        for watcher in reversed(watchers):
            watcher.load_now()
        for watcher in watchers:
            watcher.start()

    def close(self) -> None:
        for watcher in self.versions.watchers:
            watcher.stop()
        self.recorder.close()

    def spec(self) -> dict[str, Any]:
        """The served task as WELCOME and SPEC carry it: what a bridge must match."""
        t = self.task
        return {"task": t.name, "obs_dim": t.obs_dim, "act_dim": t.act_dim,
                "control_period": t.control_period, "episode_steps": t.episode_steps,
                "learns_reward": t.reward_learned,
                "action_low": self.low, "action_high": self.high}  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {**self.versions.status(), **self.recorder.status()}
