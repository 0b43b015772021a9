"""Plan for several robots at once: each optimizer iteration scores every robot's candidates in
one rollout run.

Each robot keeps its own planner: optimizer state, warm start, settings and random stream (its
candidates are drawn from its own generator). Per round, the plans still running are grouped by
what a rollout run shares (:attr:`Run.batch_key`: the model version, horizon, rollout
settings and reward weights; robots tuned differently form separate groups), and each group's
candidates are scored in one :meth:`~controller.rollout.evaluator.RolloutEvaluator.evaluate`,
every particle row starting from its own robot's state. Policy proposals go first in that run
(the evaluator drives the first rows), and the actions the policy took go back to each robot's
candidates. The model's sampling noise and member orders of a group's run are drawn from the
first robot's rollout stream (``Run.rollout_rng``), never from a robot's candidate stream:
a robot's candidates are the same alone or in a batch, and a robot planning alone draws
exactly what ``Planner.plan`` draws.

Budgets: a plan with a budget (a realtime robot) leaves the batch with its best plan so far
before a round that is predicted to end past its budget; the prediction is the round's rows
times the shared :class:`~controller.planners.base.IterationCost`. When a round would be late
for some robots, the late one that used the most of its budget leaves first, and the round is
predicted again without it (smaller, it may now fit the others). Plans without a budget
(lockstep robots) run all their iterations. Where a plan of a call fell back (no iteration
fitted), the estimate is relaxed once (``IterationCost.skipped``), so that it is measured
again soon. ``answered`` is called the moment a robot's plan is done, so no robot's ACTION
waits for the other robots' extra iterations; and ``admit`` lets a robot whose state arrives
while the others plan join the batch at the next round, so it does not wait for the pass.

What this needs of a planner is the small protocol below (:class:`Plannable`, whose ``begin``
makes a :class:`Run`), which :class:`~controller.planners.planner.Planner` and its ``PlanRun``
meet; this module imports nothing of theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from controller.planners.base import IterationCost, Plan
from controller.planners.settings import PlannerSettings
from controller.rollout.settings import RolloutSettings


class Scorer(Protocol):
    """What a round needs of a rollout evaluator
    (:class:`~controller.rollout.evaluator.RolloutEvaluator`)."""

    def rows(self, candidates: int, horizon: int, settings: RolloutSettings) -> int:
        """Member-rows one evaluation of ``candidates`` computes."""
        ...

    def evaluate(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        settings: RolloutSettings,
        rng: np.random.Generator,
        weights: np.ndarray | None = None,
        proposals: int = 0,
    ) -> np.ndarray:
        """``obs [N, S]``, ``actions [N, H, A]`` -> returns [N] (the first ``proposals``
        candidates' actions overwritten with what the policy took)."""
        ...


class Run(Protocol):
    """One robot's plan in progress, as :func:`plan_together` drives it."""

    @property
    def obs(self) -> np.ndarray:
        """[S] the state it plans from."""
        ...

    @property
    def settings(self) -> PlannerSettings:
        """The settings it plans with (fixed for the run)."""
        ...

    @property
    def evaluator(self) -> Scorer: ...

    @property
    def weights(self) -> np.ndarray:
        """[T] the reward weights."""
        ...

    @property
    def rollout_rng(self) -> np.random.Generator:
        """The stream a group's rollout randomness is drawn from when this run is first."""
        ...

    @property
    def exhausted(self) -> bool:
        """Every iteration the settings ask for has run."""
        ...

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Runs with equal keys are scored in one rollout run."""
        ...

    def population(self) -> int:
        """Candidates the next iteration asks for."""
        ...

    def used(self, now: float) -> float:
        """The share of its budget used by ``now`` (0 without a budget)."""
        ...

    def late(self, now: float, seconds: float) -> bool:
        """Whether an iteration of ``seconds`` from ``now`` would end past the budget."""
        ...

    def ask(self) -> tuple[np.ndarray, int]:
        """The next iteration's candidates [N, H, A], and how many of the first are policy
        proposals."""
        ...

    def tell(self, batch: np.ndarray, scores: np.ndarray, rows: int) -> None:
        """Refit on the scores [N] of ``batch``, which cost ``rows`` member-rows."""
        ...

    def finish(self) -> Plan:
        """The plan, the run's end (it leaves the planner its warm start)."""
        ...


class Plannable(Protocol):
    """What plans: one robot's planner (:class:`~controller.planners.planner.Planner`)."""

    def begin(self, obs: np.ndarray, budget_s: float | None, start: float) -> Run:
        """Start one plan from ``obs [S]`` with ``budget_s`` seconds from ``start``."""
        ...


P = TypeVar("P", bound=Plannable)


@dataclass
class PlanRequest(Generic[P]):
    """One robot's plan to make: its planner (any :class:`Plannable`; the request keeps its
    type), current state and budget."""

    planner: P
    obs: np.ndarray
    budget_s: float | None = None
    """Seconds from ``start`` (None: every iteration, as for a lockstep robot)."""
    start: float = field(default_factory=time.perf_counter)


def plan_together(
    requests: Sequence[PlanRequest[P]],
    cost: IterationCost,
    answered: Callable[[int, Plan], None] | None = None,
    admit: Callable[[], Sequence[PlanRequest[P]]] | None = None,
) -> list[Plan]:
    """Plan for every request, the compatible ones batched into shared rollout runs; returns
    the plans in request order and calls ``answered(i, plan)`` as each one is done. ``cost``
    is the per-row time estimate the budgets are held to (updated by every round).
    ``admit``: called before every round after the first, returns requests that arrived
    meanwhile; they join the batch (numbered after the ones before them)."""
    runs = [r.planner.begin(r.obs, r.budget_s, r.start) for r in requests]
    plans: list[Plan | None] = [None] * len(runs)
    active = list(range(len(runs)))

    def finish(i: int) -> None:
        active.remove(i)
        plan = plans[i] = runs[i].finish()
        if answered is not None:
            answered(i, plan)

    first = True
    while True:
        if admit is not None and not first:
            for r in admit():
                runs.append(r.planner.begin(r.obs, r.budget_s, r.start))
                plans.append(None)
                active.append(len(runs) - 1)
        first = False
        for i in [i for i in active if runs[i].exhausted]:
            finish(i)
        while active:
            predicted = cost.predict(_rows([runs[i] for i in active]))
            now = time.perf_counter()
            late = [i for i in active if predicted is not None and runs[i].late(now, predicted)]
            if not late:
                break
            finish(max(late, key=lambda i: runs[i].used(now)))
        if not active:
            break
        t0 = time.perf_counter()
        rows = sum(_score(group) for group in _groups([runs[i] for i in active]))
        cost.update(rows, time.perf_counter() - t0)
    if any(plan is not None and plan.fallback for plan in plans):
        cost.skipped()  # once per call: an estimate no plan could measure is retried soon
    return [plan for plan in plans if plan is not None]


def _groups(runs: list[Run]) -> list[list[Run]]:
    """The runs that can share a rollout run, in first-seen order."""
    groups: dict[tuple[object, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.batch_key, []).append(run)
    return list(groups.values())


def _rows(runs: list[Run]) -> int:
    """Member-rows of a round over ``runs``: each group's candidates in one run."""
    total = 0
    for group in _groups(runs):
        first = group[0]
        candidates = sum(run.population() for run in group)
        total += first.evaluator.rows(candidates, first.settings.horizon, first.settings.rollout)
    return total


def _score(group: list[Run]) -> int:
    """One optimizer iteration of every run in ``group`` with one rollout run; returns its
    member-rows."""
    first = group[0]
    settings, evaluator = first.settings.rollout, first.evaluator
    asked = [run.ask() for run in group]
    # Proposals first: the evaluator's policy drives the first rows of a run. (For one robot
    # this is its batch as asked, the same values a lone planner evaluates.)
    parts = [batch[:k] for batch, k in asked] + [batch[k:] for batch, k in asked]
    owners = group * 2
    actions = np.concatenate(parts)
    starts = np.concatenate([np.repeat(run.obs[None], len(part), axis=0)
                             for run, part in zip(owners, parts, strict=True)])  # fmt: skip
    proposals = sum(k for _, k in asked)
    scores = evaluator.evaluate(
        starts, actions, settings, first.rollout_rng, first.weights, proposals
    )
    rows = evaluator.rows(len(actions), first.settings.horizon, settings)
    offsets = np.cumsum([0, *(len(part) for part in parts)])
    n = len(group)
    for j, (run, (batch, k)) in enumerate(zip(group, asked, strict=True)):
        head, tail = slice(offsets[j], offsets[j + 1]), slice(offsets[n + j], offsets[n + j + 1])
        batch[:k] = actions[head]  # the actions the policy took
        mine = np.concatenate([scores[head], scores[tail]])
        run.tell(batch, mine, rows * len(batch) // len(actions))
    return rows
