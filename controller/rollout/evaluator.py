"""Score candidate action sequences through the learned model: one ONNX Runtime run per call.

:class:`RolloutEvaluator` owns the rollout sessions built from one model version (see
:mod:`controller.rollout.graph`) and the host side of trajectory sampling: how particles are laid
out, which member each particle row uses at each step, the sampling noise, and how particle
returns are aggregated per candidate. Everything random comes from the caller's generator, so a
seeded planner is deterministic.

Shapes: N candidates, H horizon, A action, S observation, E members, P particles per candidate,
M particle rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from controller.checks import check_choice, check_int, check_number
from controller.rollout.graph import Mode, ModelGraph, build_rollout_graph
from controller.rollout.reward_graph import export_reward, reward_graph
from controller.tasks import TASKS, Task
from models.export import ModelFileError, ModelMetadata
from models.runtime import RuntimeOptions, create_session, read_model

PROPAGATIONS = ("ts1", "tsinf", "expectation")
MAX_PARTICLES = 1000
MAX_PENALTY = 1e6


@dataclass(frozen=True)
class RolloutSettings:
    """How candidates are rolled out through the ensemble (PETS trajectory sampling)."""

    particles: int = 1
    """P: rollouts per candidate, whose returns are aggregated (1..MAX_PARTICLES)."""
    propagation: str = "ts1"
    """"ts1": each particle re-draws its member every step; "tsinf": each particle keeps one
    member for the whole horizon; "expectation": the members' Gaussians are averaged."""
    sample: bool = True
    """Draw each next state from the predicted Gaussian (False: follow its mean)."""
    discount: float = 1.0
    """Per-step discount of the reward, in (0, 1]."""
    disagreement_penalty: float = 0.0
    """Subtracted per step times the ensemble disagreement (variance of the members' means in
    units of the state-delta scale); > 0 evaluates every member on every particle (E x cost)."""
    risk: float = 0.0
    """Candidate score = mean - risk x std of its particles' returns (0: the mean; needs P > 1
    to matter)."""

    def __post_init__(self) -> None:
        check_int("particles", self.particles, 1, MAX_PARTICLES)
        check_choice("propagation", self.propagation, PROPAGATIONS)
        if not isinstance(self.sample, bool):
            raise ValueError(f"sample must be true or false, got {self.sample!r}")
        check_number("discount", self.discount, 0.0, 1.0, low_open=True)
        check_number("disagreement_penalty", self.disagreement_penalty, 0.0, MAX_PENALTY)
        check_number("risk", self.risk, 0.0, 100.0)

    @property
    def mode(self) -> Mode:
        """Which rollout graph serves these settings."""
        mixed = self.propagation == "expectation" or self.disagreement_penalty > 0
        return "mixed" if mixed else "routed"


def task_reward_graph(task: Task) -> onnx.ModelProto:
    """The task's reward graph; exported once per process for registered tasks."""
    if TASKS.get(task.name) is task:
        return reward_graph(task.name)
    return export_reward(task)


class RolloutEvaluator:
    """Rollout sessions for one model version and one task.

    Construction reads and verifies the model file, composes the rollout graphs and loads them
    into ONNX Runtime: do it off the hot path, then swap the new evaluator in.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        task: Task,
        *,
        options: RuntimeOptions | None = None,
    ) -> None:
        self.path = Path(model_path)
        self.task = task
        self.options = options or RuntimeOptions()
        data, self.metadata = read_model(self.path)
        cfg = self.metadata.config
        if (cfg.obs_dim, cfg.act_dim) != (task.obs_dim, task.act_dim):
            raise ModelFileError(
                f"{self.path}: model dims (obs {cfg.obs_dim}, act {cfg.act_dim}) do not match "
                f"task {task.name} (obs {task.obs_dim}, act {task.act_dim})"
            )
        model = ModelGraph(
            proto=onnx.load_from_string(data),
            members=cfg.members,
            obs_dim=cfg.obs_dim,
            act_dim=cfg.act_dim,
            member_batched=self.metadata.member_batched,
        )
        reward = task_reward_graph(task)
        modes: tuple[Mode, ...] = ("routed", "mixed") if model.member_batched else ("mixed",)
        self.sessions = {
            mode: create_session(
                build_rollout_graph(model, reward, mode).SerializeToString(),
                self.options,
                f"{self.path} ({mode} rollout)",
            )
            for mode in modes
        }
        self.inv_scale2 = _inverse_scale2(self.metadata)
        self.default_weights = np.asarray(list(task.weights.values()), np.float32)
        self._layout_key: tuple[object, ...] | None = None

    @property
    def members(self) -> int:
        return self.metadata.config.members

    def rows(self, candidates: int, horizon: int, settings: RolloutSettings) -> int:
        """Member-rows one evaluation computes (the unit of model cost)."""
        m = self._particle_rows(candidates * settings.particles, settings)
        per_row = self.members if settings.mode == "mixed" else 1
        return m * horizon * per_row

    def evaluate(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        settings: RolloutSettings,
        rng: np.random.Generator,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score each candidate: ``obs [S]``, ``actions [N, H, A]`` -> ``returns [N]``.

        A candidate whose rollout produced a non-finite return keeps it (NaN or inf): the
        planner decides what to do with it and counts it; nothing is replaced silently.
        """
        obs = np.asarray(obs, np.float32).reshape(-1)
        if obs.shape != (self.task.obs_dim,):
            raise ValueError(f"obs must have {self.task.obs_dim} values, got {obs.size}")
        if not np.isfinite(obs).all():
            raise ValueError("obs contains non-finite values")
        if actions.ndim != 3 or actions.shape[2] != self.task.act_dim or 0 in actions.shape:
            raise ValueError(f"actions must have shape [N, H, {self.task.act_dim}], "
                             f"got {list(actions.shape)}")  # fmt: skip
        n, h, _ = actions.shape
        p = settings.particles
        mode = settings.mode
        if mode not in self.sessions:
            raise ValueError(f"{self.path} is not member-batched: only mixed-mode rollouts "
                             "(expectation or a disagreement penalty) can use it")  # fmt: skip
        m = self._particle_rows(n * p, settings)
        self._layout(n, h, m, p, mode)
        feeds: dict[str, np.ndarray] = {
            "obs": obs,
            "actions": np.ascontiguousarray(actions, np.float32),
            "particle_candidate": self._candidate,
            "noise": self._noise,
            "weights": self.default_weights if weights is None else weights,
            "discount": np.array(settings.discount, np.float32),
        }
        if settings.sample:
            rng.standard_normal(dtype=np.float32, out=self._noise)
        else:
            self._noise.fill(0.0)
        if mode == "routed":
            feeds.update(self._routing(rng, h, m, settings.propagation))
        else:
            feeds["member_weight"] = self._member_weights(rng, h, m, settings.propagation)
            feeds["penalty"] = np.array(settings.disagreement_penalty, np.float32)
            feeds["inv_scale2"] = self.inv_scale2
        (returns,) = self.sessions[mode].run(["returns"], feeds)
        per_particle = returns[: n * p].reshape(n, p)
        score = per_particle.mean(axis=1)
        if p > 1 and settings.risk > 0:
            score = score - settings.risk * per_particle.std(axis=1)
        return np.asarray(score, np.float64)

    def _particle_rows(self, real: int, settings: RolloutSettings) -> int:
        if settings.mode == "mixed":
            return real
        e = self.members
        return -(-real // e) * e  # routed: blocks of M / E rows per member, padded

    def _layout(self, n: int, h: int, m: int, p: int, mode: Mode) -> None:
        """(Re)allocate the input buffers when the batch shape changes; reused otherwise."""
        key = (n, h, m, p, mode)
        if key == self._layout_key:
            return
        # Padding rows follow candidate 0; their returns are dropped.
        cand = np.zeros(m, np.int64)
        cand[: n * p] = np.repeat(np.arange(n, dtype=np.int64), p)
        self._candidate = cand
        self._noise = np.zeros((h, m, self.task.obs_dim), np.float32)
        if mode == "routed":
            self._gather = np.empty((h, m), np.int64)
            self._scatter = np.empty((h, m), np.int64)
            self._arange = np.broadcast_to(np.arange(m, dtype=np.int64), (h, m))
        else:
            self._weights = np.empty((h, self.members, m), np.float32)
        self._layout_key = key

    def _routing(
        self, rng: np.random.Generator, h: int, m: int, propagation: str
    ) -> dict[str, np.ndarray]:
        if propagation == "tsinf":
            self._gather[:] = rng.permutation(m)
        else:
            self._gather[:] = rng.permuted(self._arange, axis=1)
        np.put_along_axis(self._scatter, self._gather, self._arange, axis=1)
        return {"gather_idx": self._gather, "scatter_idx": self._scatter}

    def _member_weights(
        self, rng: np.random.Generator, h: int, m: int, propagation: str
    ) -> np.ndarray:
        e = self.members
        if propagation == "expectation":
            self._weights.fill(1.0 / e)
            return self._weights
        shape = (1, m) if propagation == "tsinf" else (h, m)
        member = np.broadcast_to(rng.integers(0, e, size=shape), (h, m))
        self._weights.fill(0.0)
        np.put_along_axis(self._weights, member[:, None, :], 1.0, axis=1)
        return self._weights


def _inverse_scale2(meta: ModelMetadata) -> np.ndarray:
    s = meta.config.obs_dim
    scale = np.asarray(meta.extra.get("delta_std", [1.0] * s), np.float32).reshape(-1)
    if scale.shape != (s,) or not np.isfinite(scale).all() or (scale <= 0).any():
        scale = np.ones(s, np.float32)
    return (1.0 / scale**2).astype(np.float32)
