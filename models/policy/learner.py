"""The policy learner's core loop: MBPO (Janner et al. 2019, "When to Trust Your Model").

Shapes: N start states, B batch, S observation, A action.

One :meth:`PolicyLearner.step` is one MBPO round: ``rollout_batch`` start states drawn from the
real rows, k-step branched rollouts of the current policy through the current dynamics
ensemble (k from the rollout-length schedule), kept in the model buffer under the model's
version; then G gradient steps of SAC per new real row, each on a batch of which a fixed share
``real_ratio`` is real rows and the rest model rows. Everything random comes from the
learner's own generator seeded by ``PolicyLearnerConfig.seed`` (and the agent's from
``SACConfig.seed``), so a run is reproducible.

Loading the ensemble (from the store's files) and deciding when to publish belong to the
caller; this module only needs a torch module with the ensemble's ``config`` and outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.checks import check_bool, check_int, check_number
from models.policy.export import PolicyDirectory, PolicyMetadata
from models.policy.rollouts import (
    MAX_EPOCH,
    MAX_VERSIONS,
    DoneFn,
    EnsembleDynamics,
    ModelBuffer,
    RewardFn,
    Rollouts,
    RolloutSchedule,
    branched_rollouts,
    initial_states,
)
from models.policy.sac import SAC, SACConfig
from models.registry import ModelVersion
from models.transitions import Transitions

MAX_ROLLOUT_BATCH = 1_000_000
MAX_UPDATES = 10**9


@dataclass(frozen=True)
class PolicyLearnerConfig:
    """Hyperparameters of :class:`PolicyLearner`. Validated at construction.

    Defaults follow MBPO's MuJoCo settings where they carry over: 5% real rows in each batch,
    k = 1 throughout, and the rollouts of the last few model versions kept. How many updates
    to take (MBPO: 20 per real step) is the caller's: the policy trainer's
    ``updates_per_step``, or ``step``'s ``updates``.
    """

    real_ratio: float = 0.05
    """Share of real rows in each SAC batch [0, 1]; round(real_ratio * batch_size) rows."""
    rollout_batch: int = 400
    """Start states per rollout round, drawn with replacement from the real rows
    (1..MAX_ROLLOUT_BATCH)."""
    k_min: int = 1
    """Rollout length up to epoch_start (see :class:`RolloutSchedule`)."""
    k_max: int = 1
    """Rollout length from epoch_end on."""
    epoch_start: int = 0
    """Epoch where the rollout length starts rising."""
    epoch_end: int = 0
    """Epoch where it reaches k_max."""
    buffer_versions: int = 3
    """Model versions whose rollouts the model buffer keeps (1..MAX_VERSIONS)."""
    naive: bool = False
    """Start the rollouts at the episodes' initial states instead of at any real state: with
    k the episode length, the seeds' naive Dyna (Algorithm 1), whose model error compounds
    over the whole imagined episode."""
    sac: SACConfig = field(default_factory=SACConfig)
    """The agent's hyperparameters; its ``batch_size`` is the size of the mixed batch."""
    seed: int = 0
    """Seeds the start-state draws, the rollouts and the batch draws."""

    def __post_init__(self) -> None:
        check_number("real_ratio", self.real_ratio, 0.0, 1.0)
        check_int("rollout_batch", self.rollout_batch, 1, MAX_ROLLOUT_BATCH)
        check_int("buffer_versions", self.buffer_versions, 1, MAX_VERSIONS)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_bool("naive", self.naive)
        if not isinstance(self.sac, SACConfig):
            raise ValueError(f"sac must be a SACConfig, got {type(self.sac).__name__}")
        RolloutSchedule(self.k_min, self.k_max, self.epoch_start, self.epoch_end)  # validates

    @property
    def schedule(self) -> RolloutSchedule:
        """The rollout-length schedule of the k_* and epoch_* fields."""
        return RolloutSchedule(self.k_min, self.k_max, self.epoch_start, self.epoch_end)

    @property
    def real_batch(self) -> int:
        """Real rows in each SAC batch."""
        return round(self.real_ratio * self.sac.batch_size)


class PolicyLearner:
    """SAC trained on a mix of real rows and branched model rollouts (MBPO).

    ``reward_fn`` and ``done_fn`` are the task's reward and termination for the imagined steps
    (see :func:`branched_rollouts`); without them the ensemble's learned heads are used.
    """

    def __init__(
        self,
        config: PolicyLearnerConfig,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray | Tensor,
        high: np.ndarray | Tensor,
        *,
        reward_fn: RewardFn | None = None,
        done_fn: DoneFn | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.schedule = config.schedule
        self.agent = SAC(obs_dim, act_dim, low, high, config.sac, preprocess)
        self.buffer = ModelBuffer(config.buffer_versions)
        self.reward_fn = reward_fn
        self.done_fn = done_fn
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model: EnsembleDynamics | None = None
        self.model_version = 0
        self.updates = 0
        """SAC gradient steps taken so far."""
        self.rollout_length = 0
        """k of the latest rollout round (0 before the first)."""
        self.real_rows_seen = 0
        """Real rows in the latest ``step``'s ``real``: the next step's new rows are past it."""

    def load_model(self, model: EnsembleDynamics, version: int) -> None:
        """Branch from ``model`` (version ``version``, not older than the current one) on."""
        check_int("version", version, 0, 2**63 - 1)
        if version < self.model_version:
            raise ValueError(f"model version {version} is older than {self.model_version}")
        cfg = model.config
        if (cfg.obs_dim, cfg.act_dim) != (self.agent.obs_dim, self.agent.act_dim):
            raise ValueError(
                f"model is S={cfg.obs_dim}, A={cfg.act_dim}; the agent "
                f"S={self.agent.obs_dim}, A={self.agent.act_dim}"
            )
        self.model, self.model_version = model, version

    def new_rows(self, real: Transitions) -> int:
        """Rows of ``real`` new since the latest rollout round (MBPO owes G updates for each)."""
        return len(real) - self.real_rows_seen

    def step(self, real: Transitions, epoch: int, updates: int) -> dict[str, float]:
        """One MBPO round on ``real``, all real rows so far (earlier rows first): a rollout
        round (:meth:`rollout`) and then ``updates`` gradient steps (:meth:`train`; MBPO takes
        G x :meth:`new_rows`). Returns updates (this step's), k, rollout_rows,
        model_reward_mean, the mean SAC losses over the updates (critic_loss, actor_loss,
        alpha_loss; NaN with no update), alpha, and the totals updates_total and buffer_rows.
        """
        rolled = self.rollout(real, epoch)
        return {**rolled, **self.train(real, updates)}

    def rollout(self, real: Transitions, epoch: int) -> dict[str, float]:
        """Branch ``rollout_batch`` k-step rollouts (k of the schedule at ``epoch``) from states
        of ``real`` into the model buffer, under the current model's version. Returns k,
        rollout_rows and model_reward_mean (the mean imagined reward)."""
        if self.model is None:
            raise RuntimeError("no dynamics model loaded: call load_model first")
        self._check_real(real)
        check_int("epoch", epoch, 0, MAX_EPOCH)
        k = self.schedule.length(epoch)
        rollouts = self._rollout(real, k)
        self.buffer.add(self.model_version, rollouts)
        self.rollout_length = k
        self.real_rows_seen = len(real)
        return {
            "k": float(k),
            "rollout_rows": float(len(rollouts)),
            "model_reward_mean": float(rollouts.reward.mean()) if len(rollouts) else math.nan,
        }

    def train(self, real: Transitions, updates: int) -> dict[str, float]:
        """``updates`` SAC gradient steps on mixed batches of ``real`` rows and model rows.
        Returns updates, the mean losses (NaN with no update), alpha, updates_total and
        buffer_rows."""
        self._check_real(real)
        check_int("updates", updates, 0, MAX_UPDATES)
        losses: dict[str, list[float]] = {"critic_loss": [], "actor_loss": [], "alpha_loss": []}
        real_cols = _real_columns(real)
        for _ in range(updates):
            stats = self.agent.update(self._batch(real_cols))
            for name, values in losses.items():
                values.append(stats[name])
        self.updates += updates
        metrics: dict[str, float] = {
            "updates": float(updates),
            "alpha": self.agent.alpha,
            "updates_total": float(self.updates),
            "buffer_rows": float(len(self.buffer)),
        }
        for name, values in losses.items():
            metrics[name] = float(np.mean(values)) if values else math.nan
        return metrics

    def _check_real(self, real: Transitions) -> None:
        if len(real) == 0:
            raise ValueError("the policy learner needs at least one real row")
        if len(real) < self.real_rows_seen:
            raise ValueError(
                f"real has {len(real)} rows, fewer than the {self.real_rows_seen} seen"
            )

    def publish(
        self,
        directory: PolicyDirectory,
        real_rows: int,
        evaluation: dict[str, Any] | None = None,
    ) -> tuple[ModelVersion, PolicyMetadata]:
        """Export the agent to ``directory`` as its next policy version, recording the model
        version branched from, the updates taken, ``real_rows`` and the latest rollout length."""
        return directory.publish(
            self.agent,
            model_version=self.model_version,
            updates=self.updates,
            real_rows=real_rows,
            rollout_length=self.rollout_length,
            evaluation=evaluation,
        )

    def _rollout(self, real: Transitions, k: int) -> Rollouts:
        assert self.model is not None
        starts = initial_states(real) if self.config.naive else real.obs
        if len(starts) == 0:
            raise ValueError("naive rollouts start at episodes' first rows; real has none")
        idx = torch.randint(len(starts), (self.config.rollout_batch,), generator=self.generator)
        start = torch.as_tensor(starts[idx.numpy()], dtype=torch.float32)
        actor, gen = self.agent.actor, self.generator
        return branched_rollouts(
            self.model,
            start.to(self.agent.log_alpha.device),
            lambda obs: actor.sample(obs, gen)[0],
            k,
            self.generator,
            reward_fn=self.reward_fn,
            done_fn=self.done_fn,
        )

    def _batch(self, real: dict[str, Tensor]) -> dict[str, Tensor]:
        """A batch of round(real_ratio B) real rows then the rest model rows (all real rows
        when the model buffer is empty)."""
        size = self.config.sac.batch_size
        n_real = self.config.real_batch if len(self.buffer) else size
        parts: list[dict[str, Tensor]] = []
        if n_real:
            idx = torch.randint(len(real["obs"]), (n_real,), generator=self.generator)
            parts.append({key: col[idx] for key, col in real.items()})
        if size - n_real:
            r = self.buffer.sample(size - n_real, self.generator)
            parts.append(
                {
                    "obs": torch.from_numpy(r.obs),
                    "act": torch.from_numpy(r.act),
                    "reward": torch.from_numpy(r.reward),
                    "next_obs": torch.from_numpy(r.next_obs),
                    "done": torch.from_numpy(r.done.astype(np.float32)),
                }
            )
        device = self.agent.log_alpha.device
        return {key: torch.cat([p[key] for p in parts]).to(device) for key in parts[0]}


def _real_columns(real: Transitions) -> dict[str, Tensor]:
    """The SAC batch columns of the real rows; done is ``terminated`` (a time-limit truncation
    still bootstraps)."""
    return {
        "obs": torch.as_tensor(real.obs, dtype=torch.float32),
        "act": torch.as_tensor(real.act, dtype=torch.float32),
        "reward": torch.as_tensor(real.reward, dtype=torch.float32),
        "next_obs": torch.as_tensor(real.next_obs, dtype=torch.float32),
        "done": torch.as_tensor(real.terminated, dtype=torch.float32),
    }
