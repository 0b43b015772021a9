"""Lockstep: between episodes, the run waits until the learner has trained on everything
stored, the policy (when one is trained) has taken every update it owes for it, and the
service serves both, so that a seed gives the same run on one machine.

What the learner and the policy trainer have done is read from their progress records
(:mod:`models.progress`, in the run's ``metrics/``); what the service serves, from its status.
"""

from __future__ import annotations

import time
from typing import Any

from controller.config import Config
from controller.run.rundir import RunDir
from controller.run.supervise import Children
from models.policy.export import PolicyDirectory
from models.progress import policy_caught_up, trained_rows
from models.registry import ModelDirectory
from models.store import TransitionReader, follow


class Lockstep:
    """Waits for the retrain owed after an episode of the run in ``run``."""

    def __init__(self, config: Config, run: RunDir, children: Children) -> None:
        self.config, self.run, self.children = config, run, children
        self.models = ModelDirectory(run.models)
        self.policies = PolicyDirectory(run.models)
        self._store: TransitionReader | None = None
        """The run's store, followed by one reader (see models.store.follow)."""

    def wait_for_model(self) -> int:
        """Wait until the learner has trained on everything stored, the policy has caught up
        and the service serves both; returns the served model version (0 while the first
        model still waits for ``learner.min_transitions``). TimeoutError after
        ``run.model_timeout_s``."""
        timeout_s = self.config.run.model_timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.children.check_alive()
            self._store = follow(self.run.store, self._store)
            rows = len(self._store) if self._store is not None else 0
            if rows < self.config.learner.min_transitions and self.models.latest() is None:
                return 0  # still collecting random transitions for the first model
            trained = trained_rows(self.run.learner_metrics)
            if trained is not None and trained >= rows and self._policy_caught_up(rows):
                latest = self.models.latest()
                want = latest.version if latest else 0
                status = self.children.status()
                served = status["model_version"]
                if served >= want and self._policy_served(status):
                    return int(served)
            time.sleep(0.2)
        raise TimeoutError(f"no retrain within {timeout_s} s")

    def _policy_caught_up(self, rows: int) -> bool:
        """No policy is trained, no model exists for it yet, or the newest published policy
        has every update owed for ``rows`` real rows."""
        if self.config.policy.optimizer == "none" or self.models.latest() is None:
            return True
        return policy_caught_up(self.run.policy_metrics, rows)

    def _policy_served(self, status: dict[str, Any]) -> bool:
        """The service acts with the newest published policy and, where it has a model, plans
        with it too (its rollouts composed with it), unless the rollouts refused it."""
        policy = self.policies.latest()
        if policy is None or str(policy.version) in status.get("rejected_policies", {}):
            return True
        if status["policy_version"] < policy.version:
            return False
        has_model = status["model_version"] > 0
        return not has_model or status["rollout_policy_version"] >= policy.version
