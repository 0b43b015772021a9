"""The policy trainer: a policy learning beside the ensemble, in the learner's process.

It is driven by the ensemble learner (:class:`models.learner.Learner`): after each retrain the
learner hands over its current model and the rows it trained on, and whenever no retrain is
due the learner lets the trainer work one chunk (:meth:`PolicyTrainer.work`). So in lockstep
the policy's updates follow the model's retrain in a fixed order (a run is reproducible and
the episode waits for both), and in realtime the process does what fits between retrains.

The trainer owes ``updates_per_step`` (G) gradient steps per real row the model was trained
on and pays them in chunks of ``chunk_updates``; the update-to-data ratio it sustained,
``updates_total / real_rows``, is in every metrics line. Two optimizers:

- ``sac``: MBPO (:class:`~models.policy.learner.PolicyLearner`): branched rollouts of the
  policy through the ensemble from real states, every ``rollout_every`` new rows and at every
  new model version, and SAC on batches of ``real_ratio`` real rows, the rest model rows.
- ``bptt``: the seeds' section 2.2 (:class:`~models.policy.bptt.BPTTOptimizer`): each update
  differentiates the H-step imagined return from a batch of real states through the frozen
  ensemble, gradient clipped.

A policy is published (:class:`~models.policy.export.PolicyDirectory`, beside the models)
when the trainer has paid what it owes, and at least every ``publish_every_s`` while it is
behind; its weights are kept beside it (``pNNNNNN.pt``), so a restarted learner resumes it.
The reward and the termination of the imagined steps come from the entry point (the task's
terms and termination), or are the model's learned heads.

Shapes: B batch, S observation, A action.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checks import check_choice, check_int, check_number
from models.policy.bptt import BPTTConfig, BPTTOptimizer
from models.policy.export import PolicyDirectory, read_policy
from models.policy.learner import PolicyLearner, PolicyLearnerConfig
from models.policy.rollouts import DoneFn, EnsembleDynamics, RewardFn
from models.progress import append_record
from models.registry import ModelVersion
from models.transitions import Transitions

log = logging.getLogger(__name__)
MAX_UPDATES_PER_STEP = 10_000
OPTIMIZERS = ("none", "sac", "bptt")
"""``none``: no policy is trained."""


@dataclass(frozen=True)
class PolicyTrainerConfig:
    """The policy's training (the config file's ``[policy]`` table): the trainer's own
    schedule, and the configs of the two optimizers it feeds, composed as they are
    (``[policy.mbpo]`` with its agent in ``[policy.mbpo.sac]``, and ``[policy.bptt]``).
    Validated at construction (each part checks its own fields)."""

    optimizer: str = "none"
    """"none", "sac" (MBPO) or "bptt" (backprop through the model)."""
    updates_per_step: int = 20
    """G: gradient steps owed per real row, for either optimizer (MBPO: 20 on MuJoCo)."""
    rollout_every: int = 250
    """SAC: new real rows between rollout rounds (one is also made for each new model)."""
    epoch_rows: int = 1000
    """Real rows per epoch of the rollout-length schedule (MBPO: 1000 environment steps)."""
    chunk_updates: int = 250
    """Updates per chunk of work (a due retrain or a stop waits at most one chunk)."""
    publish_every_s: float = 30.0
    """While behind, publish at least this often (caught up, it publishes at once)."""
    mbpo: PolicyLearnerConfig = field(
        default_factory=lambda: PolicyLearnerConfig(rollout_batch=100_000)
    )
    """SAC on branched model rollouts (``optimizer = "sac"``): the real share, the rollouts
    (100,000 start states per round here, as MBPO), their length schedule and the agent."""
    bptt: BPTTConfig = field(default_factory=BPTTConfig)
    """Backprop through the model (``optimizer = "bptt"``): horizon, learning rate, clip,
    batch, discount, the actor's size and seed."""

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_int("updates_per_step", self.updates_per_step, 1, MAX_UPDATES_PER_STEP)
        for name in ("rollout_every", "epoch_rows", "chunk_updates"):
            check_int(name, getattr(self, name), 1)
        check_number("publish_every_s", self.publish_every_s, 0.0, low_open=True)
        if not isinstance(self.mbpo, PolicyLearnerConfig):
            raise ValueError(f"mbpo must be a PolicyLearnerConfig, got {self.mbpo!r}")
        if not isinstance(self.bptt, BPTTConfig):
            raise ValueError(f"bptt must be a BPTTConfig, got {self.bptt!r}")


class _BPTT:
    """The backprop-through-model optimizer behind the interface the trainer drives."""

    def __init__(self, optimizer: BPTTOptimizer, seed: int) -> None:
        self.optimizer = optimizer
        self.agent = optimizer
        self.generator = torch.Generator().manual_seed(seed)
        self.model: EnsembleDynamics | None = None
        self.model_version = 0
        self.updates = 0
        self.rollout_length = optimizer.config.horizon

    def load_model(self, model: EnsembleDynamics, version: int) -> None:
        self.model, self.model_version = model, version

    def train(self, real: Transitions, updates: int) -> dict[str, float]:
        assert self.model is not None
        obs = torch.as_tensor(real.obs, dtype=torch.float32)
        stats: dict[str, list[float]] = {"return": [], "grad_norm": [], "clipped": []}
        for _ in range(updates):
            idx = torch.randint(len(obs), (self.optimizer.config.batch,), generator=self.generator)
            for key, value in self.optimizer.update(self.model, obs[idx], self.generator).items():
                stats[key].append(value)
        self.updates += updates
        out = {f"imagined_{k}" if k == "return" else k: float(np.mean(v)) if v else math.nan
               for k, v in stats.items()}  # fmt: skip
        return {**out, "updates": float(updates), "updates_total": float(self.updates)}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.actor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.actor.load_state_dict(state)


class PolicyTrainer:
    """Trains ``config.optimizer``'s policy on the learner's model and rows; publishes it
    into ``directory`` (the model directory)."""

    def __init__(
        self,
        directory: Path,
        config: PolicyTrainerConfig,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        *,
        reward_fn: RewardFn | None = None,
        done_fn: DoneFn | None = None,
        metrics: Path | None = None,
        on_publish: Callable[[ModelVersion], None] | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        if config.optimizer == "none":
            raise ValueError("policy optimizer is 'none': there is no policy to train")
        self.config, self.metrics, self.on_publish = config, metrics, on_publish
        self.directory = PolicyDirectory(directory)
        self.algorithm: PolicyLearner | _BPTT
        if config.optimizer == "sac":
            self.algorithm = PolicyLearner(config.mbpo, obs_dim, act_dim, low, high,
                                           reward_fn=reward_fn, done_fn=done_fn,
                                           preprocess=preprocess)  # fmt: skip
        else:
            if reward_fn is None:
                log.info("bptt: the imagined reward is the model's learned reward")
            optimizer = BPTTOptimizer(config.bptt, obs_dim, act_dim, low, high,
                                      reward_fn=reward_fn, preprocess=preprocess)  # fmt: skip
            self.algorithm = _BPTT(optimizer, config.bptt.seed)
        self.model_version = 0
        self.version = 0
        """The newest published policy version (0: none)."""
        self.real_rows = 0
        """Real rows of the data of the latest ``work``."""
        self._rolled_at = -1
        """Real rows at the latest rollout round (-1: none for this model)."""
        self._published_updates = 0
        self._published_at = time.monotonic()
        self._last: dict[str, float] = {}
        self._fitted_for = -1
        """The model version at whose rows the observation normalization was last fitted."""
        self._resume(obs_dim, act_dim)

    @property
    def updates(self) -> int:
        return self.algorithm.updates

    def owed(self, real_rows: int) -> int:
        """Updates still owed for ``real_rows`` real rows (G per row)."""
        return max(self.config.updates_per_step * real_rows - self.updates, 0)

    def set_model(self, model: EnsembleDynamics, version: int) -> None:
        """Train against ``model`` (version ``version``) from now on; a no-op for the current."""
        if version == self.model_version and self.algorithm.model is model:
            return
        self.algorithm.load_model(model, version)
        self.model_version = version
        self._rolled_at = -1

    def work(self, real: Transitions) -> bool:
        """One chunk on ``real`` (the rows the model was trained on): a rollout round where
        one is due, up to ``chunk_updates`` owed updates, and a publish where due. False when
        there was nothing to do."""
        if self.algorithm.model is None or len(real) < 2:
            return False
        if self._fitted_for != self.model_version:
            # Refit to all real rows at each model version: a fit kept from the first rows
            # (InvertedPendulum: random episodes, cart position std 0.04) clipped every
            # position past 0.4 into one, and the policy balanced for seven episodes and
            # then drove the cart to the rail. Per version the rows grow, so the shift is
            # small after the first episodes.
            obs = torch.as_tensor(real.obs, dtype=torch.float32)
            self.algorithm.agent.fit_observations(obs)
            self._fitted_for = self.model_version
        self.real_rows = len(real)
        owed = self.owed(len(real))
        behind = self.updates > self._published_updates
        if owed == 0 and not behind:
            return False
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        if isinstance(self.algorithm, PolicyLearner) and owed and self._rollout_due(len(real)):
            epoch = len(real) // self.config.epoch_rows
            metrics.update(self.algorithm.rollout(real, epoch))
            self._rolled_at = len(real)
        if owed:
            metrics.update(self.algorithm.train(real, min(owed, self.config.chunk_updates)))
            metrics["chunk_seconds"] = time.perf_counter() - started
            self._last.update(metrics)
        caught_up = self.owed(len(real)) == 0
        late = time.monotonic() - self._published_at >= self.config.publish_every_s
        if self.updates > self._published_updates and (caught_up or late):
            self.publish()
        return True

    def _rollout_due(self, rows: int) -> bool:
        return self._rolled_at < 0 or rows - self._rolled_at >= self.config.rollout_every

    def publish(self) -> ModelVersion:
        """Export the policy as the next version (weights beside it), record a metrics line
        and announce it quietly."""
        alg = self.algorithm
        evaluation = {"optimizer": self.config.optimizer,
                      "utd": round(self.updates / max(self.real_rows, 1), 3)}  # fmt: skip
        for key in ("alpha", "critic_loss", "model_reward_mean", "imagined_return", "grad_norm"):
            if math.isfinite(value := self._last.get(key, math.nan)):
                evaluation[key] = round(value, 6)
        version, _ = self.directory.publish(
            alg.agent, model_version=self.model_version, updates=self.updates,
            real_rows=self.real_rows, rollout_length=alg.rollout_length, evaluation=evaluation,
        )  # fmt: skip
        torch.save(alg.state_dict() if isinstance(alg, _BPTT) else alg.agent.state_dict(),
                   version.path.with_suffix(".pt"))  # fmt: skip
        self.version = version.version
        self._published_updates = self.updates
        self._published_at = time.monotonic()
        line = {
            "version": version.version, "model_version": self.model_version,
            "real_rows": self.real_rows, "updates_total": self.updates,
            "owed": self.owed(self.real_rows), "utd": self.updates / max(self.real_rows, 1),
            **{k: v for k, v in self._last.items() if math.isfinite(v)}, "wall_time": time.time(),
        }  # fmt: skip
        if self.metrics is not None:
            append_record(self.metrics, line)
        log.info("policy p%d published (%d updates on %d rows, model v%d)", version.version,
                 self.updates, self.real_rows, self.model_version)  # fmt: skip
        if self.on_publish is not None:
            try:
                self.on_publish(version)
            except Exception as exc:  # the service polls the directory anyway
                log.warning("p%d published, but announcing it failed (%s: %s)", version.version,
                            type(exc).__name__, exc)  # fmt: skip
        return version

    def _resume(self, obs_dim: int, act_dim: int) -> None:
        """Continue from the newest published policy's weights when they are this trainer's
        kind and shape; otherwise start fresh (logged)."""
        latest = self.directory.latest()
        if latest is None or not latest.path.with_suffix(".pt").exists():
            return
        try:
            _, meta = read_policy(latest.path)
            if (meta.optimizer, meta.obs_dim, meta.act_dim) != (
                self.config.optimizer, obs_dim, act_dim,
            ):  # fmt: skip
                log.info("policy p%d is another optimizer's or shape's: starting fresh",
                         latest.version)  # fmt: skip
                return
            state = torch.load(latest.path.with_suffix(".pt"), weights_only=True)
            alg = self.algorithm
            (alg if isinstance(alg, _BPTT) else alg.agent).load_state_dict(state)
        except Exception as exc:  # corrupt or of other settings: train from scratch
            log.warning("cannot resume the policy from %s: %s", latest.path, exc)
            return
        self.algorithm.updates = meta.updates
        self.version = latest.version
        self._published_updates = meta.updates
        log.info("resuming policy p%d (%d updates)", latest.version, meta.updates)


__all__ = ["OPTIMIZERS", "PolicyTrainer", "PolicyTrainerConfig"]
