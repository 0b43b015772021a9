"""Follows the model directory and loads each new model and policy version off the hot path.

One :class:`VersionWatcher` per kind of file: :class:`ModelWatcher` for the dynamics models
(``v*.onnx``, ``LATEST``) and :class:`PolicyWatcher` for the learned policies (``p*.onnx``,
``LATEST_POLICY``), which the learners publish into the same directory. A background thread
polls the marker every ``poll_s`` and at once when a learner announces a version (a ``model``
request on the control socket calls :meth:`VersionWatcher.poke`); a newer version is read,
verified, loaded into ONNX Runtime and run once on the zero state, all in that thread. The
service then takes the ready object between ticks (a pointer swap). A version that fails to
load is logged, remembered in ``rejected`` (and when, in ``rejected_at``) and skipped; the
previous one keeps serving.

The rollout graphs hold the policy too (its proposals and terminal value): the model watcher
composes each model version with the newest policy the policy watcher accepted, and composes
again when a newer policy is accepted, so a new policy reaches the planners, like a new model,
as a ready evaluator swapped in between ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from controller.planners.policy import PolicyActor
from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.file_checks import policy_bounds_error
from controller.rollout.settings import RolloutSettings
from controller.tasks import Task
from models.policy.export import PolicyDirectory, PolicyRuntime
from models.registry import ModelDirectory, ModelVersion, VersionedDirectory
from models.runtime import RuntimeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
POLICY_RUNTIME = RuntimeConfig(intra_op_threads=1)
"""A policy runs on one observation per tick: measured on 2 cores, a 4-dim SAC policy answers
in 21 us on one thread and 30 us with ONNX Runtime's default pool, whose hand-offs cost more
than a row this small gains."""


class VersionWatcher(Generic[T]):
    """Loads new versions of ``directory`` in a daemon thread with :meth:`_load`."""

    def __init__(self, directory: VersionedDirectory, poll_s: float) -> None:
        self.directory, self.poll_s = directory, poll_s
        self.rejected: dict[int, str] = {}
        """Version -> why it was not loaded."""
        self.rejected_at: dict[int, float] = {}
        """Version -> when it was refused (wall clock, UNIX seconds); set before ``rejected``,
        so a version another thread reads in ``rejected`` has its time here."""
        self._lock = threading.Lock()
        self._ready: tuple[int, T] | None = None
        self._seen = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"{directory.kind}-watch", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def load_now(self) -> None:
        """Look once, in the caller's thread (used at start-up so the first tick has it)."""
        self._check()

    def poke(self) -> None:
        """Look now rather than at the next poll (a new version was announced)."""
        self._wake.set()

    def take(self) -> tuple[int, T] | None:
        """The newest loaded (version, object) not taken yet, or None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _load(self, latest: ModelVersion) -> T:
        """Read, verify and try out one version (in the watcher's thread); raise on any fault."""
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._check()

    def _check(self) -> None:
        latest = self.directory.latest()
        if latest is None or latest.version <= self._seen or latest.version in self.rejected:
            return
        name = f"{self.directory.kind} {self.directory.prefix}{latest.version}"
        try:
            loaded = self._load(latest)
        except Exception as exc:  # any failure of a new version must leave the old one serving
            self._reject(latest.version, str(exc))
            log.error("%s rejected, keeping the current one: %s", name, exc)
            return
        self._seen = latest.version
        with self._lock:
            self._ready = (latest.version, loaded)
        log.info("%s loaded from %s", name, latest.path)
        self._accepted(latest)

    def _reject(self, version: int, reason: str) -> None:
        """Remember that ``version`` was refused, why and when (in the loading thread)."""
        self.rejected_at[version] = time.time()
        self.rejected[version] = reason

    def _accepted(self, latest: ModelVersion) -> None:
        """Called (in the loading thread) after ``latest`` was loaded and is ready."""


class ModelWatcher(VersionWatcher[RolloutEvaluator]):
    """Loads new model versions of ``root`` for ``task``: rollout evaluators, each composed
    with the newest policy ``policies`` accepted (if any).

    A new policy recomposes the model serving. Where a new model does not compose with the
    policy it is loaded without it; where a new policy does not compose with the model
    serving, it is logged, remembered in ``policy_errors`` and the evaluator serving stays.
    """

    def __init__(
        self,
        root: Path,
        task: Task,
        options: RuntimeConfig,
        poll_s: float = 0.5,
        policies: PolicyWatcher | None = None,
    ) -> None:
        super().__init__(ModelDirectory(root), poll_s)
        self.task, self.options = task, options
        self.policies = policies
        if policies is not None:
            policies.followers.append(self)
        self.policy_errors: dict[int, str] = {}
        """Policy version -> why the rollout graphs could not take it."""
        self._model: ModelVersion | None = None
        self._composed: tuple[int, int] | None = None

    def _check(self) -> None:
        latest = self.directory.latest()
        model = self._model
        if latest is not None and latest.version > self._seen:
            model = latest if latest.version not in self.rejected else model
        if model is None:
            return
        policy = self.policies.accepted if self.policies is not None else None
        key = (model.version, policy.version if policy is not None else 0)
        if key == self._composed:
            return
        name = f"model v{model.version}"
        try:
            evaluator = self._load_with(model, policy)
        except Exception as exc:  # a new version must leave the old one serving
            alone, own = None, None  # whose fault was it? a new model without the policy
            if model is not self._model and policy is not None:
                alone, own = self._without_policy(model)
            if policy is not None and (model is self._model or alone is not None):
                self.policy_errors[policy.version] = str(exc)
                log.error("policy p%d does not compose with %s: %s", policy.version, name, exc)
            if alone is None:
                if model is not self._model:
                    # Both reasons: the model's own, and what the try with the policy said.
                    why = str(exc)
                    if own is not None and policy is not None and own != why:
                        why = f"{own}; with policy p{policy.version}: {exc}"
                    self._reject(model.version, why)
                    log.error("%s rejected, keeping the current one: %s", name, why)
                else:
                    self._composed = key  # tried: the evaluator serving stays
                return
            evaluator = alone
        if policy is not None and evaluator.policy_version == policy.version:
            self.policy_errors.pop(policy.version, None)
        self._seen, self._model, self._composed = model.version, model, key
        with self._lock:
            self._ready = (model.version, evaluator)
        composed = evaluator.policy_version
        with_policy = f" with policy p{composed}" if composed else ""
        log.info("%s loaded from %s%s", name, model.path, with_policy)

    def _without_policy(self, model: ModelVersion) -> tuple[RolloutEvaluator | None, str | None]:
        """The model loaded alone, or None and why not (the model's own fault)."""
        try:
            return self._load_with(model, None), None
        except Exception as exc:  # the caller rejects it, with this reason and its own
            return None, str(exc)

    def _load_with(self, model: ModelVersion, policy: ModelVersion | None) -> RolloutEvaluator:
        evaluator = RolloutEvaluator(
            model.path,
            self.task,
            options=self.options,
            policy_path=policy.path if policy is not None else None,
            policy_version=policy.version if policy is not None else 0,
        )
        obs = np.zeros(self.task.obs_dim)
        actions = np.zeros((2, 2, self.task.act_dim))
        rng = np.random.default_rng(0)
        checks = [RolloutSettings()]
        if policy is not None:
            checks.append(RolloutSettings(policy_share=0.5, value_weight=1.0))
        for settings in checks:
            proposals = evaluator.proposals(len(actions), settings)
            scores = evaluator.evaluate(obs, actions, settings, rng, None, proposals)
            if not np.isfinite(scores).all():
                with_policy = " with the policy" if settings.policy_share else ""
                raise ValueError(f"it predicts non-finite returns from the zero state{with_policy}")
        return evaluator


class PolicyWatcher(VersionWatcher[PolicyActor]):
    """Loads new policy versions of ``root`` for ``task``: actors within the task's bounds.

    A policy is refused unless its dims and action bounds are the task's (the bounds within
    the tolerances a HELLO is held to) and its mean action, std and value from the zero state
    are finite and of the task's dims.
    """

    def __init__(
        self, root: Path, task: Task, poll_s: float = 0.5, options: RuntimeConfig = POLICY_RUNTIME
    ) -> None:
        super().__init__(PolicyDirectory(root), poll_s)
        self.task, self.options = task, options
        self.accepted: ModelVersion | None = None
        """The newest version loaded; the model watchers in ``followers`` compose it into
        their rollout graphs and are poked when it changes."""
        self.followers: list[VersionWatcher[RolloutEvaluator]] = []

    def _accepted(self, latest: ModelVersion) -> None:
        self.accepted = latest
        for follower in self.followers:
            follower.poke()

    def _load(self, latest: ModelVersion) -> PolicyActor:
        t = self.task
        runtime = PolicyRuntime(
            latest.path, obs_dim=t.obs_dim, act_dim=t.act_dim, options=self.options
        )
        if why := policy_bounds_error(runtime.metadata, t):
            raise ValueError(f"its {why}")
        low, high = np.asarray(t.action_low, np.float64), np.asarray(t.action_high, np.float64)
        mean, std, value = runtime.predict(np.zeros(t.obs_dim))
        if mean.shape != (t.act_dim,) or std.shape != (t.act_dim,) or np.shape(value) != ():
            raise ValueError(f"from the zero state it answers action {list(mean.shape)}, std "
                             f"{list(std.shape)}, value {list(np.shape(value))}; the task "
                             f"needs [{t.act_dim}], [{t.act_dim}], []")  # fmt: skip
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(value)):
            raise ValueError("it answers non-finite outputs from the zero state")
        return PolicyActor(runtime, low, high)
