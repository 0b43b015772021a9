"""How the service answers the robots that sent a new state.

The robots acting with the learned policy, or exploring while there is no model, are answered
at once; the others are planned together (controller.planners.batch): each keeps its own
planner, settings and random streams, and every optimizer iteration scores all their
candidates in one rollout run. A realtime robot leaves the batch at its deadline and its ACTION
goes out at once; a state's wait is taken off its budget; a robot whose state arrives while the
others plan joins them at the next round, the store written first as before every ACTION. With
``service.batched`` false the robots are planned one after another instead. A planning failure
costs the ticks of the robots not yet answered (ERROR ``internal``), not the service.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from controller.planners import POLICY, Plan
from controller.planners.base import IterationCost
from controller.planners.batch import PlanRequest, plan_together
from controller.service.fleet import Fleet
from controller.service.outbox import Outbox
from controller.service.served import ServedTask
from controller.service.session import RobotSession
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What one ACTION says: the action and how it was found."""

    action: np.ndarray
    """[A] the action to apply."""
    planner: str
    """The planner that found it, ``"policy"``, or ``"explore"`` (random, no model yet)."""
    horizon: int = 0
    iterations: int = 0
    predicted_return: float | None = None
    deadline_miss: bool = False
    fallback: bool = False
    """No optimizer iteration fitted: the previous plan, shifted (or the policy) answered."""
    nonfinite: int = 0
    """Candidates whose predicted return was not finite (ranked last)."""
    rows: int = 0
    """Model member-rows the plan evaluated."""
    batch: int = 0
    """Robots planned in the same pass."""

    @classmethod
    def of_plan(cls, plan: Plan, batch: int) -> Answer:
        predicted = plan.predicted_return if math.isfinite(plan.predicted_return) else None
        return cls(plan.action, plan.planner, plan.horizon, plan.iterations, predicted,
                   plan.deadline_miss, plan.fallback, plan.nonfinite, plan.rows,
                   batch)  # fmt: skip

    def fields(self, plan_ms: float, model_version: int) -> dict[str, Any]:
        """The fields an ACTION and its telemetry record share."""
        return {
            "planner": self.planner, "horizon": self.horizon, "iterations": self.iterations,
            "predicted_return": self.predicted_return, "plan_ms": plan_ms,
            "model_version": model_version, "deadline_miss": self.deadline_miss,
            "fallback": self.fallback, "nonfinite": self.nonfinite,
        }  # fmt: skip


@dataclass
class Planned:
    """A robot whose plan is under way in this pass."""

    session: RobotSession
    msg: p.Message
    start: float
    """perf_counter() when its state was taken."""


class Answerer:
    """Plans for and answers the robots of ``fleet`` with a pending state, over ``served``'s
    model and policy. ``arrivals()`` reads what came on the robot socket meanwhile and stores
    the transitions it completed (False: nothing came), so a robot whose state arrives while
    others plan can join them; ``cost``: the seconds per model row of a planning round, which
    every robot's budget is held to."""

    def __init__(
        self,
        fleet: Fleet,
        served: ServedTask,
        cost: IterationCost,
        outbox: Outbox,
        arrivals: Callable[[], bool],
        batched: bool = True,
    ) -> None:
        self.fleet, self.served, self.cost = fleet, served, cost
        self.outbox, self.arrivals, self.batched = outbox, arrivals, batched

    def answer_pending(self) -> None:
        """Answer every robot with a new state: the ones acting with the policy or exploring
        at once, then the ones that plan, together (each answered as its plan is done)."""
        requests: list[PlanRequest] = []
        planned: list[Planned] = []
        self._take_pending(requests, planned)
        if not requests:
            return
        answered: set[int] = set()

        def answer(i: int, plan: Plan, batch: int) -> None:
            answered.add(i)
            self._planned(planned[i], plan, batch)

        def admit() -> list[PlanRequest]:
            if not self.arrivals():
                return []
            known = len(requests)
            self._take_pending(requests, planned)
            return requests[known:]

        try:
            if self.batched:
                plan_together(requests, self.cost, lambda i, plan: answer(i, plan, len(requests)),
                              admit)  # fmt: skip
            else:  # one robot after another: the earlier robots' plans count on its budget
                for i, r in enumerate(requests):
                    answer(i, r.planner.plan(r.obs, r.budget_s, r.start), 1)
        except Exception as exc:  # a bug must cost these ticks, not the service
            log.exception("planning failed")
            for i, run in enumerate(planned):
                if i not in answered:
                    assert run.session.planner is not None
                    run.session.planner.reset()  # no half-made plan to warm-start from
                    self.outbox.refuse(run.session.identity, p.ProtocolError(
                        "internal", f"planning failed: {exc!r}"[:500], seq=run.msg.seq,
                        robot=run.msg.robot), run.session)  # fmt: skip

    def _take_pending(self, requests: list[PlanRequest], planned: list[Planned]) -> None:
        """Take every robot's pending state: answer the ones acting with the policy or
        exploring now, and append a plan request for each of the others (a robot already
        planning in this pass keeps its newer state for the next pass)."""
        busy = {id(run.session) for run in planned}
        served = self.served
        for session in self.fleet:
            if session.pending is None or id(session) in busy:
                continue
            pending, session.pending = session.pending, None
            msg, start, settings = pending.msg, time.perf_counter(), session.settings
            acted = None
            if settings.planner == POLICY:
                acted = self._act(session, msg["obs"], settings.options.explore)
            if acted is not None:
                self._send(session, msg, start, Answer(acted[0], POLICY, predicted_return=acted[1]))
            elif session.planner is None or settings.planner == POLICY:
                action = session.rng.uniform(served.low, served.high)
                self._send(session, msg, start, Answer(action, "explore"))
            else:
                budget = None
                if not session.lockstep:
                    budget = settings.budget_s(session.control_period, start - pending.received)
                requests.append(PlanRequest(session.planner, msg["obs"], budget, start))
                planned.append(Planned(session, msg, start))

    def _planned(self, run: Planned, plan: Plan, batch: int) -> None:
        """Answer a robot with its plan (or, where no iteration fitted, the policy's mean: the
        shifted plan answers an older state, while the policy answers this one in tens of
        microseconds)."""
        answer = Answer.of_plan(plan, batch)
        if plan.fallback and (acted := self._act(run.session, run.msg["obs"], False)) is not None:
            action, predicted = acted
            answer = replace(answer, action=action, planner=POLICY, horizon=0,
                             predicted_return=predicted)  # fmt: skip
        self._send(run.session, run.msg, run.start, answer)

    def _send(self, session: RobotSession, msg: p.Message, start: float, answer: Answer) -> None:
        """Send the ACTION ``answer`` for ``msg`` and queue its telemetry record."""
        plan_ms = 1000.0 * (time.perf_counter() - start)
        versions = self.served.versions
        shared = answer.fields(plan_ms, versions.model_version)
        action = np.asarray(answer.action, np.float64)
        reply = p.make(p.ACTION, session.robot, seq=msg.seq, time=time.time(),
                       episode=msg.episode, answers=msg.seq, action=action,
                       **shared)  # fmt: skip
        session.stats.tick(time.monotonic(), plan_ms, answer.deadline_miss, answer.fallback,
                           answer.nonfinite)  # fmt: skip
        self.outbox.send(session.identity, reply)
        recorder = self.served.recorder
        if recorder.listening:
            recorder.answered(session, {
                **shared, "robot": session.robot, "seq": msg.seq, "episode": session.episode,
                "step": msg["step"], "time": reply.time, "rows": answer.rows,
                "batch": answer.batch, "policy_version": versions.policy_version,
                "dropped_stale": session.stats.dropped_stale, "action": action.tolist(),
            })  # fmt: skip

    def _act(
        self, session: RobotSession, obs: np.ndarray, explore: bool
    ) -> tuple[np.ndarray, float | None] | None:
        """The policy's (action [A], value) for ``obs``: a draw with the robot's generator when
        ``explore``, else the mean. None when no policy is loaded, or when its action is not
        finite (logged; the caller acts as if there were no policy)."""
        versions = self.served.versions
        if versions.policy is None:
            return None
        try:
            return versions.policy.act(obs, session.rng if explore else None)
        except FloatingPointError as exc:
            log.warning("robot %s: policy p%d: %s", session.robot, versions.policy_version, exc)
            return None
