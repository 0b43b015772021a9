"""The planner: binds an optimizer to the rollout evaluator, with warm start, live settings and
an anytime budget.

``plan(obs, budget_s)`` runs optimizer iterations while the next one is predicted to fit in the
budget (see :class:`~controller.planners.base.IterationCost`) and always returns a plan: if not
even one iteration fits, the previous plan shifted one step, flagged as a fallback.
``use(settings)`` (or ``configure(**changes)``), ``set_evaluator`` and ``reset`` take effect at
the start of the next plan (``begin``): a change made between two plans, or while one is in
flight (another robot's state admitted into a batch), never lands inside one. A plan in flight
when ``reset`` is called finishes and is sent, but the next plan starts cold all the same: what
the old episode's plan left behind never warm-starts the new one. A planner belongs to one
thread; the service makes every change from its own loop. A change that sets the seed
reseeds the random generator (even to the seed it had: a way to replay). Given a seed and no
budget, plans are deterministic.

With a learned policy in the evaluator (see :mod:`controller.rollout.evaluator`) and the
settings asking for it, ``policy_share`` of each iteration's candidates are policy proposals:
they take the place of the first sampled candidates (optimizers put what they carry, a nominal
sequence or kept elites, last), the evaluator fills in the actions the policy took, and the
optimizer refits on them like on any other candidate. A plan with no previous plan to start
from (a new episode) then starts from the policy's open-loop rollout instead of the middle of
the bounds.

With the planner setting "policy" the service acts through the learned policy
(:mod:`controller.planners.policy`) and does not plan: the planner holds no optimizer then, and
``plan`` raises RuntimeError. It keeps its settings, cost estimate and random state for the
switch back, and its next plan after one starts from no warm start, as a new episode's does
(the last one is as old as the policy's turn was long).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from controller.planners.base import IterationCost, Plan, shift, shift_warm_start
from controller.planners.batch import PlanRequest, plan_together
from controller.planners.optimizers import Optimizer, WarmStart
from controller.planners.policy import POLICY
from controller.planners.settings import PlannerSettings, make_optimizer

if TYPE_CHECKING:  # the planner only calls it: importing this module loads no ONNX Runtime
    from controller.rollout.evaluator import RolloutEvaluator


class Planner:
    """Model-predictive planning for one robot over a learned model."""

    def __init__(
        self,
        evaluator: RolloutEvaluator,
        settings: PlannerSettings | None = None,
        stream: int | None = None,
    ) -> None:
        """``stream``: which of a seed's independent random streams this planner draws from
        (the service gives each robot its own, so robots with one seed do not sample alike;
        None: the seed's first)."""
        self.stream = stream
        self.task = evaluator.task
        self.low = np.asarray(self.task.action_low, np.float64)
        self.high = np.asarray(self.task.action_high, np.float64)
        self.fill = (self.low + self.high) / 2.0
        self._evaluator = evaluator
        self._pending_evaluator: RolloutEvaluator | None = None
        self._pending: PlannerSettings | None = None
        self._reseed = False
        self._fresh = False
        self._reset: tuple[int | None] | None = None
        """A ``reset`` waiting for the next ``begin``: (its seed,), or None."""
        self._cost = IterationCost()
        self._install(settings or PlannerSettings())
        self._seed(self.settings.seed)
        self._forget()

    @property
    def evaluator(self) -> RolloutEvaluator:
        return self._evaluator

    def configure(self, **changes: Any) -> PlannerSettings:
        """Validate ``changes`` now and apply them at the next ``plan``; returns the new settings.

        An invalid change raises ValueError naming the setting and its range, and nothing
        changes (including earlier pending changes).
        """
        return self.use((self._pending or self.settings).changed(changes), "seed" in changes)

    def use(self, settings: PlannerSettings, reseed: bool = False) -> PlannerSettings:
        """Swap in a whole settings object at the next ``plan`` (its weights are checked
        against the task now: ValueError and nothing changes). The random generator is
        reseeded from ``settings.seed`` when ``reseed`` is true or the seed differs."""
        self._weights_array(settings.weights)
        self._fresh = self._fresh or (self._pending or self.settings).planner == POLICY
        self._pending = settings
        self._reseed = self._reseed or reseed or settings.seed != self.settings.seed
        return settings

    def set_evaluator(self, evaluator: RolloutEvaluator) -> None:
        """Use ``evaluator`` (a new model version, already loaded) from the next ``plan`` on."""
        if (evaluator.task.obs_dim, evaluator.task.act_dim) != (
            self.task.obs_dim,
            self.task.act_dim,
        ):
            raise ValueError("the new evaluator's task dims differ from the planner's")
        self._pending_evaluator = evaluator

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode at the next ``begin``: forget the warm start (the next plan
        starts cold, whatever a plan in flight leaves behind); reseed from ``seed`` if given
        (after any pending settings' reseed)."""
        pending = self._reset
        self._reset = (seed if seed is not None or pending is None else pending[0],)

    def _forget(self) -> None:
        """Forget the warm start: the next plan starts cold."""
        h = self.settings.horizon
        self._warm = WarmStart(np.broadcast_to(self.fill, (h, len(self.fill))).copy())
        self._previous = self._warm.mean.copy()
        self._cold = True

    def plan(
        self, obs: np.ndarray, budget_s: float | None = None, start: float | None = None
    ) -> Plan:
        """Plan from ``obs [S]`` within ``budget_s`` seconds (None: all iterations) counted
        from ``start`` (a ``perf_counter()``; None: now), with this planner's own cost
        estimate."""
        start = time.perf_counter() if start is None else start
        (plan,) = plan_together([PlanRequest(self, obs, budget_s, start)], self._cost)
        return plan

    def begin(self, obs: np.ndarray, budget_s: float | None, start: float) -> PlanRun:
        """Start one plan from ``obs`` (pending settings, evaluator and reset applied, warm
        start made); :func:`~controller.planners.batch.plan_together` drives it. RuntimeError
        under the planner setting "policy"."""
        self._apply_pending()
        opt = self._optimizer
        if opt is None:
            raise RuntimeError(
                'planner "policy" does not plan: the service acts with the learned policy'
            )
        h = self.settings.horizon
        rollout = self.settings.rollout
        if self._cold and rollout.policy_start and self._evaluator.uses_policy(rollout):
            previous = self._evaluator.policy_rollout(obs, h, rollout, self._weights)
            warm = WarmStart(previous)  # nothing executed to shift: the policy's plan
        else:
            warm = shift_warm_start(self._warm, self.fill, h)
            previous = shift(self._previous, self.fill, h)
        self._cold = False
        opt.begin(warm, self.rng)
        return PlanRun(self, opt, np.asarray(obs), budget_s, start, warm, previous)

    def _finished(self, actions: np.ndarray, warm: WarmStart) -> None:
        """What the next plan starts from: ``actions`` sent, ``warm`` the optimizer's carry."""
        self._previous, self._warm = actions, warm

    def warmup(self, obs: np.ndarray | None = None) -> None:
        """Run one full plan off the hot path (first-run allocations, cost estimate), then
        restore the warm start and random state."""
        state = self.rng.bit_generator.state, self.rollout_rng.bit_generator.state
        warm, previous, cold, reset = self._warm, self._previous, self._cold, self._reset
        self.plan(np.zeros(self.task.obs_dim) if obs is None else obs)
        self.rng.bit_generator.state, self.rollout_rng.bit_generator.state = state
        self._warm, self._previous, self._cold = warm, previous, cold
        self._reset = reset  # a pending reset still waits for the next real plan

    def _apply_pending(self) -> None:
        evaluator, self._pending_evaluator = self._pending_evaluator, None
        if evaluator is not None:
            self._evaluator = evaluator
        settings, self._pending = self._pending, None
        if settings is not None:
            if self._reseed:
                self._seed(settings.seed)
                self._reseed = False
            self._install(settings)
            if self._fresh and settings.planner != POLICY:
                self._fresh = False
                self._forget()
        reset, self._reset = self._reset, None
        if reset is not None:
            (seed,) = reset
            if seed is not None:
                self._seed(seed)
            self._forget()

    def _seed(self, seed: int) -> None:
        """Two streams from ``seed``: ``rng`` for the optimizer's candidates and
        ``rollout_rng`` for the rollouts' sampling noise and member orders. Kept apart so that
        a robot's candidates are the same whether it plans alone or beside other robots (whose
        batch draws its rollout randomness from one robot's stream)."""
        keys = () if self.stream is None else (self.stream,)
        sequence = np.random.SeedSequence(seed, spawn_key=keys)
        self.rng, self.rollout_rng = (np.random.default_rng(s) for s in sequence.spawn(2))

    def _install(self, settings: PlannerSettings) -> None:
        self._weights = self._weights_array(settings.weights)
        self._optimizer: Optimizer | None = None
        if settings.planner != POLICY:
            self._optimizer = make_optimizer(settings, self.low, self.high)
        self.settings = settings

    def _weights_array(self, changes: Mapping[str, float]) -> np.ndarray:
        weights = self.task.validated_weights(changes)
        return np.asarray(list(weights.values()), np.float32)


class PlanRun:
    """One plan in progress: the optimizer's iterations for one robot's state, driven by
    :func:`~controller.planners.batch.plan_together` alone or beside other robots' plans."""

    def __init__(
        self,
        planner: Planner,
        optimizer: Optimizer,
        obs: np.ndarray,
        budget_s: float | None,
        start: float,
        warm: WarmStart,
        previous: np.ndarray,
    ) -> None:
        self.planner = planner
        self.optimizer = optimizer
        self.obs = obs
        self.budget_s = budget_s
        self.start = start
        """perf_counter() the budget counts from."""
        self.settings = planner.settings
        self.evaluator = planner.evaluator
        self.weights = planner._weights
        self.rollout_rng = planner.rollout_rng
        """The stream this run's rollouts draw from when it is the first of its group."""
        self._warm, self._previous = warm, previous
        self.done = self.candidates = self.rows = self.nonfinite = 0

    @property
    def exhausted(self) -> bool:
        """Every iteration the settings ask for has run."""
        return self.done >= self.settings.iterations

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Plans with equal keys can be scored in one rollout run: one evaluator (model
        version), horizon, rollout settings and reward weights."""
        s = self.settings
        return (id(self.evaluator), s.horizon, s.rollout, self.weights.tobytes())

    def population(self) -> int:
        """Candidates the next iteration asks for."""
        return self.optimizer.population(self.done)

    def used(self, now: float) -> float:
        """The share of its budget used by ``now`` (0 without a budget)."""
        return 0.0 if self.budget_s is None else (now - self.start) / max(self.budget_s, 1e-9)

    def late(self, now: float, seconds: float) -> bool:
        """Whether an iteration of ``seconds`` from ``now`` would end past the budget."""
        return self.budget_s is not None and now - self.start + seconds > self.budget_s

    def ask(self) -> tuple[np.ndarray, int]:
        """The next iteration's candidates ``[N, H, A]`` and how many of the first are policy
        proposals."""
        batch = self.optimizer.ask(self.done)
        return batch, self.evaluator.proposals(len(batch), self.settings.rollout)

    def tell(self, batch: np.ndarray, scores: np.ndarray, rows: int) -> None:
        """Refit on the scores of ``batch`` (non-finite ones counted and ranked last);
        ``rows``: the member-rows that scoring it cost."""
        bad = ~np.isfinite(scores)
        if bad.any():
            self.nonfinite += int(bad.sum())
            scores = np.where(bad, -math.inf, scores)
        self.optimizer.tell(batch, scores)
        self.done += 1
        self.candidates += len(batch)
        self.rows += rows

    def finish(self) -> Plan:
        """The plan: the optimizer's solution, or the previous plan shifted when no iteration
        ran (a fallback)."""
        if self.done:
            actions, predicted_return = self.optimizer.solution()
            warm = self.optimizer.carry()
        else:
            actions, predicted_return = self._previous, math.nan
            warm = self._warm
        actions = np.array(actions, np.float64)
        actions.setflags(write=False)
        self.planner._finished(actions, warm)
        elapsed = time.perf_counter() - self.start
        budget = self.budget_s
        return Plan(
            actions=actions,
            predicted_return=float(predicted_return),
            iterations=self.done,
            candidates=self.candidates,
            rows=self.rows,
            elapsed_s=elapsed,
            budget_s=budget,
            deadline_miss=self.done == 0 or (budget is not None and elapsed > budget),
            fallback=self.done == 0,
            nonfinite=self.nonfinite,
            planner=self.settings.planner,
            horizon=self.settings.horizon,
        )
