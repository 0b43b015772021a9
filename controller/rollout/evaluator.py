"""Score candidate action sequences through the learned model: one ONNX Runtime run per call.

:class:`RolloutEvaluator` owns the rollout sessions built from one model version (see
:mod:`controller.rollout.graph`), runs them (one slice of the batch per session) and aggregates
the particle returns per candidate. The host side of trajectory sampling, how particles are laid
out and what is drawn for them, is :mod:`controller.rollout.particles`; whether a model or policy
file fits the task, :mod:`controller.rollout.file_checks`; the settings,
:mod:`controller.rollout.settings`. Everything random comes from the caller's generator, so a
seeded planner is deterministic. Which graph serves a call, routed or mixed, follows from the
settings and the task (:meth:`RolloutEvaluator.mode`).

With a learned policy (a file of :mod:`models.policy.export`) the evaluator also holds graphs
composed with it: a call may then ask for policy proposals (candidates whose actions the policy
chooses, step by step, at each particle's predicted state, plus noise of ``policy_noise`` times
the half range) and a terminal value (``value_weight`` times the discounted critic value at the
last state). Calls that use neither run the plain graphs, exactly as without a policy.

Shapes: N candidates, H horizon, A action, S observation, E members, P particles per candidate,
M particle rows.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import InferenceSession

from controller.rollout import particles
from controller.rollout.file_checks import check_model, policy_parts
from controller.rollout.graph import Mode, ModelGraph, build_rollout_graph
from controller.rollout.particles import Shape, Slice
from controller.rollout.settings import RolloutSettings
from controller.tasks.base import Task
from controller.tasks.export import task_reward_graph
from models.export import ModelMetadata
from models.runtime import RuntimeConfig, create_session, read_model, select_providers


class RolloutEvaluator:
    """Rollout sessions for one model version and one task.

    Construction reads and verifies the model file, composes the rollout graphs and loads them
    into ONNX Runtime: do it off the hot path, then swap the new evaluator in. On the CPU a
    batch is cut into slices evaluated at once on single-threaded sessions, one per core
    (``RuntimeConfig.rollout_slices``).

    ``device_random`` (default: on when the sessions run on CUDA) lets the graph draw the
    sampling noise and member orders itself and runs it through IOBinding: per iteration only
    the candidates go to the device and the returns come back. Those draws come from the
    graph's seeded generators, not from the caller's: plans stay reproducible for one
    evaluator from its creation, but not across evaluators or equal to the host draws.

    A task whose reward is learned needs a model that predicts it, and a task whose
    termination is learned a model that predicts ``done_prob``: another model file is refused
    (ModelFileError), as planning on it would optimize something else than the task asks.

    ``policy_path``: a policy file to compose into the rollout graphs (read and verified; its
    dims and action bounds must be the task's, else ModelFileError); ``policy_version`` its
    version, reported as is.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        task: Task,
        *,
        options: RuntimeConfig | None = None,
        device_random: bool | None = None,
        policy_path: str | os.PathLike[str] | None = None,
        policy_version: int = 0,
    ) -> None:
        self.path = Path(model_path)
        self.task = task
        self.options = options or RuntimeConfig()
        self.device = _device(self.options)
        self.device_random = self.device == "cuda" if device_random is None else device_random
        data, self.metadata = read_model(self.path)
        check_model(self.path, self.metadata, task)
        cfg = self.metadata.config
        model = ModelGraph(
            proto=onnx.load_from_string(data),
            members=cfg.members,
            obs_dim=cfg.obs_dim,
            act_dim=cfg.act_dim,
            member_batched=self.metadata.member_batched,
            predicts_reward=cfg.predict_reward,
            predicts_done=cfg.predict_done and task.termination_learned,
        )
        self.policy_path = None if policy_path is None else Path(policy_path)
        self.policy_version = policy_version if policy_path is not None else 0
        policy = None if self.policy_path is None else policy_parts(self.policy_path, task)
        reward = task_reward_graph(task)
        modes: tuple[Mode, ...] = ("routed", "mixed") if model.member_batched else ("mixed",)
        slices = 1 if self.device_random else _slice_count(self.options, self.device)
        options = self.options if slices == 1 else replace(self.options, intra_op_threads=1)
        self.sessions: dict[tuple[Mode, bool], list[InferenceSession]] = {}
        self._inputs: dict[tuple[Mode, bool], frozenset[str]] = {}
        for mode, with_policy in itertools.product(modes, (False, True)):
            if with_policy and policy is None:
                continue
            proto = build_rollout_graph(
                model,
                reward,
                mode,
                policy=policy if with_policy else None,
                device_random=self.device_random,
            )
            graph = proto.SerializeToString()
            source = f"{self.path} ({mode} rollout{' with policy' if with_policy else ''})"
            key = (mode, with_policy)
            self.sessions[key] = [create_session(graph, options, source) for _ in range(slices)]
            self._inputs[key] = frozenset(i.name for i in proto.graph.input)
        self.inv_scale2 = _inverse_scale2(self.metadata)
        self.default_weights = np.asarray(list(task.weights.values()), np.float32)
        self.center = (np.asarray(task.action_low) + np.asarray(task.action_high)) / 2.0
        """The middle of the action bounds [A]."""
        self._shape: Shape | None = None
        self._slices: list[Slice] = []
        """The current batch shape's input buffers, reused while the shape stays."""

    @property
    def members(self) -> int:
        return self.metadata.config.members

    @property
    def has_policy(self) -> bool:
        return self.policy_path is not None

    def uses_policy(self, settings: RolloutSettings) -> bool:
        """Whether a call with ``settings`` runs a graph with the policy: one is loaded and
        the settings ask for proposals or a terminal value."""
        return self.has_policy and (settings.policy_share > 0 or settings.value_weight > 0)

    def proposals(self, candidates: int, settings: RolloutSettings) -> int:
        """How many of ``candidates`` are policy proposals under ``settings`` (0 without a
        policy)."""
        if not self.has_policy:
            return 0
        return min(candidates, round(settings.policy_share * candidates))

    def mode(self, settings: RolloutSettings) -> Mode:
        """Which rollout graph serves ``settings``: "mixed" where every member must see every
        particle row (expectation, a disagreement penalty, or pessimism about a learned
        reward, which needs the members' spread), else "routed"."""
        mixed = (
            settings.propagation == "expectation"
            or settings.disagreement_penalty > 0
            or (settings.reward_pessimism > 0 and self.task.reward_learned)
        )
        return "mixed" if mixed else "routed"

    def rows(self, candidates: int, horizon: int, settings: RolloutSettings) -> int:
        """Member-rows one evaluation computes (the unit of model cost)."""
        mode = self.mode(settings)
        particle_rows = candidates * settings.particles
        cuts = particles.cuts(particle_rows, len(self.sessions[mode, False]))
        m = sum(particles.padded_rows(hi - lo, mode, self.members) for lo, hi in cuts)
        per_row = self.members if mode == "mixed" else 1
        return m * horizon * per_row

    def evaluate(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        settings: RolloutSettings,
        rng: np.random.Generator,
        weights: np.ndarray | None = None,
        proposals: int = 0,
    ) -> np.ndarray:
        """Score each candidate: ``obs [S]`` (or ``[N, S]``, the state each candidate starts
        from: several robots' candidates in one run), ``actions [N, H, A]`` -> ``returns [N]``.

        ``weights [T]``: the task's term weights (None: its defaults); unused when the reward
        is learned.

        ``proposals``: the first that many candidates are policy proposals (0..N; > 0 needs a
        policy): their rows of ``actions`` are ignored, then overwritten with the actions the
        policy took, averaged over each candidate's particles, so that an optimizer refits on
        them like any other candidate.

        A candidate whose rollout produced a non-finite return keeps it (NaN or inf): the
        planner decides what to do with it and counts it; nothing is replaced silently.
        """
        if actions.ndim != 3 or actions.shape[2] != self.task.act_dim or 0 in actions.shape:
            raise ValueError(f"actions must have shape [N, H, {self.task.act_dim}], "
                             f"got {list(actions.shape)}")  # fmt: skip
        n, h, _ = actions.shape
        starts = self._starts(obs, n)
        p = settings.particles
        if not 0 <= proposals <= n:
            raise ValueError(f"proposals must be in [0, {n}] (the candidates), got {proposals}")
        if proposals and not self.has_policy:
            raise ValueError("policy proposals need a policy, and none is loaded")
        mode = self.mode(settings)
        if (mode, False) not in self.sessions:
            raise ValueError(f"{self.path} is not member-batched: only mixed-mode rollouts "
                             "(expectation, a disagreement penalty, or pessimism about a "
                             "learned reward) can use it")  # fmt: skip
        key = (mode, bool(proposals) or self.uses_policy(settings))
        self._layout(Shape(n, h, p, mode, proposals * p if key[1] else None))
        shared: dict[str, np.ndarray] = {
            "obs": starts,
            "actions": np.ascontiguousarray(actions, np.float32),
            "weights": self.default_weights if weights is None else weights,
            "discount": np.array(settings.discount, np.float32),
            "penalty": np.array(settings.disagreement_penalty, np.float32),
            "inv_scale2": self.inv_scale2,
            "pessimism": np.array(settings.reward_pessimism, np.float32),
            "policy_noise": np.array(settings.policy_noise, np.float32),
            "value_weight": np.array(settings.value_weight, np.float32),
        }
        shared = {name: value for name, value in shared.items() if name in self._inputs[key]}
        if self.device_random:
            returns, taken = self._run_bound(self.sessions[key][0], shared, settings, rng)
        else:
            returns, taken = self._run_slices(key, shared, settings, rng)
        if proposals and taken is not None:  # [H, Np x P, A] -> each proposal's actions,
            # averaged over its particles; a rollout that blew up (NaN states) leaves the
            # middle of the bounds, never a NaN an optimizer could refit on and send
            per_candidate = taken.reshape(h, proposals, p, -1).mean(axis=2).transpose(1, 0, 2)
            finite = np.isfinite(per_candidate).all(axis=(1, 2))
            actions[:proposals] = np.where(finite[:, None, None], per_candidate, self.center)
        per_particle = returns.reshape(n, p)
        score = per_particle.mean(axis=1)
        if p > 1 and settings.risk > 0:
            score = score - settings.risk * per_particle.std(axis=1)
        return np.asarray(score, np.float64)

    def _starts(self, obs: np.ndarray, n: int) -> np.ndarray:
        """``obs [S]`` or ``[N, S]`` checked, as the ``[N, S]`` float32 the graph takes."""
        s = self.task.obs_dim
        obs = np.asarray(obs, np.float32)
        if obs.ndim <= 1 and obs.size == s:
            obs = np.broadcast_to(obs.reshape(s), (n, s))
        elif obs.shape != (n, s):
            raise ValueError(f"obs must have shape [{s}] or [N={n}, {s}], got {list(obs.shape)}")
        if not np.isfinite(obs).all():
            raise ValueError("obs contains non-finite values")
        return np.ascontiguousarray(obs)

    def policy_rollout(
        self,
        obs: np.ndarray,
        horizon: int,
        settings: RolloutSettings,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """[H, A]: the actions of the policy's open-loop rollout from ``obs``, its mean action
        at each state of the ensemble's mean prediction (no sampling, no noise). A planner
        starts from it where it has no previous plan. Draws nothing from any generator."""
        if not self.has_policy:
            raise ValueError("a policy rollout needs a policy, and none is loaded")
        mean = replace(
            settings,
            particles=1,
            propagation="expectation",
            sample=False,
            policy_noise=0.0,
            disagreement_penalty=0.0,
            reward_pessimism=0.0,
        )
        actions = np.broadcast_to(self.center, (1, horizon, self.task.act_dim)).astype(np.float32)
        self.evaluate(obs, actions, mean, np.random.default_rng(0), weights, proposals=1)
        return actions[0].astype(np.float64)

    def _run_slices(
        self,
        key: tuple[Mode, bool],
        shared: dict[str, np.ndarray],
        settings: RolloutSettings,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Host draws, then every slice at once; see :meth:`_gathered`."""
        # Every random draw happens here, in slice order, so results depend only on the seed.
        feeds = [particles.feeds(part, shared, settings, rng) for part in self._slices]
        sessions = self.sessions[key]
        names = ["returns", "policy_actions"] if key[1] else ["returns"]
        runs = [_executor(len(feeds) - 1).submit(sessions[i].run, names, feeds[i])
                for i in range(1, len(feeds))]  # fmt: skip
        return self._gathered([sessions[0].run(names, feeds[0]), *(r.result() for r in runs)])

    def _run_bound(
        self,
        session: InferenceSession,
        shared: dict[str, np.ndarray],
        settings: RolloutSettings,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One IOBinding run of a device-random graph; see :meth:`_gathered`."""
        (part,) = self._slices
        feeds = particles.feeds(part, shared, settings, rng)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("returns", self.device, self.options.cuda_device_id)
        if "policy_particle" in feeds:
            binding.bind_output("policy_actions", self.device, self.options.cuda_device_id)
        session.run_with_iobinding(binding)
        return self._gathered([[np.asarray(x) for x in binding.copy_outputs_to_cpu()]])

    def _gathered(self, outputs: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray | None]:
        """The slices' outputs put back together: ``returns [N x P]`` in particle order and,
        from a graph with the policy, the policy particles' actions ``[H, Np x P, A]``."""
        returns = np.empty(sum(len(part.index) for part in self._slices), np.float32)
        taken = None
        for out, part in zip(outputs, self._slices, strict=True):
            returns[part.index] = out[0][: len(part.index)]
            if len(out) > 1:
                if taken is None:
                    h, _, a = out[1].shape
                    driven = sum(len(s.policy_particle) for s in self._slices)
                    taken = np.empty((h, driven, a), np.float32)
                taken[:, part.index[: len(part.policy_particle)]] = out[1]
        return returns, taken

    def _layout(self, shape: Shape) -> None:
        """(Re)allocate the slices' input buffers when the batch shape changes."""
        if shape != self._shape:
            sessions = len(self.sessions[shape.mode, False])
            self._slices = particles.layout(shape, sessions, self.members, self.task.obs_dim,
                                            self.task.act_dim, not self.device_random)  # fmt: skip
            self._shape = shape


def _device(options: RuntimeConfig) -> str:
    """Where the rollout sessions run: "cuda" or "cpu"."""
    first = select_providers(options)[0]
    return "cuda" if (first if isinstance(first, str) else first[0]).startswith("CUDA") else "cpu"


def _slice_count(options: RuntimeConfig, device: str) -> int:
    if options.rollout_slices:
        return options.rollout_slices
    if device == "cuda":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool running all slices but the caller's (ONNX Runtime releases the
    GIL while it runs)."""
    return ThreadPoolExecutor(max(workers, 1), thread_name_prefix="rollout-slice")


def _inverse_scale2(meta: ModelMetadata) -> np.ndarray:
    """1 / delta_std^2: disagreement in units of the state-delta scale (checked at load)."""
    scale = np.asarray(meta.delta_std, np.float32).reshape(-1)
    return (1.0 / scale**2).astype(np.float32)
