"""How the service answers the robots that sent a new state (a mixin of
:class:`~controller.service.server.MPCService`, which provides what it declares).

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

import numpy as np
import zmq

from controller.planners import POLICY, Plan, PolicyActor
from controller.planners.base import IterationCost
from controller.planners.batch import PlanRequest, plan_together
from controller.service.recorder import Recorder
from controller.service.session import RobotSession
from controller.service.settings import ServiceSettings
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


class Answering:
    """Plans for and answers the robots with a pending state."""

    sessions: dict[bytes, RobotSession]
    cost: IterationCost
    settings: ServiceSettings
    router: zmq.Socket[bytes]
    recorder: Recorder
    low: np.ndarray
    high: np.ndarray
    policy: PolicyActor | None
    policy_version: int
    model_version: int

    def _drain_robots(self) -> None:
        raise NotImplementedError

    def _refuse(self, identity: bytes, exc: p.ProtocolError) -> None:
        raise NotImplementedError

    def _send(self, identity: bytes, msg: p.Message) -> None:
        raise NotImplementedError

    def _answer_pending(self) -> None:
        """Answer every robot with a new state: the ones acting with the policy or exploring
        at once, then the ones that plan, together (each answered as its plan is done). A
        robot whose state arrives while the others plan joins them at the next round (the
        store written first, as for every ACTION), instead of waiting for the pass to end."""
        requests: list[PlanRequest] = []
        planned: list[tuple[RobotSession, p.Message, float]] = []
        self._take_pending(requests, planned)
        if not requests:
            return
        answered: set[int] = set()

        def answer(i: int, plan: Plan, batch: int) -> None:
            answered.add(i)
            self._planned(*planned[i], plan, batch)

        def admit() -> list[PlanRequest]:
            if not self.router.poll(0):
                return []
            self._drain_robots()
            self.recorder.record()
            known = len(requests)
            self._take_pending(requests, planned)
            return requests[known:]

        try:
            if self.settings.batched:
                plan_together(requests, self.cost, lambda i, plan: answer(i, plan, len(requests)),
                              admit)  # fmt: skip
            else:  # one robot after another: the earlier robots' plans count on its budget
                for i, r in enumerate(requests):
                    answer(i, r.planner.plan(r.obs, r.budget_s, r.start), 1)
        except Exception as exc:  # a bug must cost these ticks, not the service
            log.exception("planning failed")
            for i, (session, msg, _) in enumerate(planned):
                if i not in answered:
                    assert session.planner is not None
                    session.planner.reset()  # no half-made plan to warm-start from
                    self._refuse(session.identity, p.ProtocolError(
                        "internal", f"planning failed: {exc!r}"[:500], seq=msg.seq,
                        robot=msg.robot))  # fmt: skip

    def _take_pending(
        self, requests: list[PlanRequest], planned: list[tuple[RobotSession, p.Message, float]]
    ) -> None:
        """Take every robot's pending state: answer the ones acting with the policy or
        exploring now, and append a plan request for each of the others (a robot already
        planning in this pass keeps its newer state for the next pass)."""
        busy = {id(session) for session, _, _ in planned}
        for session in list(self.sessions.values()):
            if session.pending is None or id(session) in busy:
                continue
            pending, session.pending = session.pending, None
            msg, start, settings = pending.msg, time.perf_counter(), session.settings
            acted = None
            if settings.planner == POLICY:
                acted = self._act(session, msg["obs"], settings.options.explore)
            if acted is not None:
                self._answer(session, msg, start, acted[0], POLICY, 0, 0, acted[1])
            elif session.planner is None or settings.planner == POLICY:
                action = session.rng.uniform(self.low, self.high)
                self._answer(session, msg, start, action, "explore", 0, 0, None)
            else:
                budget = None
                if not session.lockstep:
                    budget = settings.budget_s(session.control_period, start - pending.received)
                requests.append(PlanRequest(session.planner, msg["obs"], budget, start))
                planned.append((session, msg, start))

    def _planned(
        self, session: RobotSession, msg: p.Message, start: float, plan: Plan, batch: int
    ) -> None:
        """Answer a robot with its plan (or, where no iteration fitted, the policy's mean: the
        shifted plan answers an older state, while the policy answers this one in tens of
        microseconds)."""
        action, planner, horizon = plan.action, plan.planner, plan.horizon
        predicted = plan.predicted_return if math.isfinite(plan.predicted_return) else None
        if plan.fallback and (acted := self._act(session, msg["obs"], False)) is not None:
            (action, predicted), planner, horizon = acted, POLICY, 0
        self._answer(session, msg, start, action, planner, horizon, plan.iterations, predicted,
                     plan.deadline_miss, plan.fallback, plan.nonfinite, plan.rows,
                     batch)  # fmt: skip

    def _answer(
        self,
        session: RobotSession,
        msg: p.Message,
        start: float,
        action: np.ndarray,
        planner: str,
        horizon: int,
        iterations: int,
        predicted: float | None,
        miss: bool = False,
        fallback: bool = False,
        nonfinite: int = 0,
        rows: int = 0,
        batch: int = 0,
    ) -> None:
        """Send the ACTION for ``msg`` and queue its telemetry record."""
        plan_ms = 1000.0 * (time.perf_counter() - start)
        reply = p.make(
            p.ACTION, session.robot, seq=msg.seq, time=time.time(), episode=msg.episode,
            answers=msg.seq, planner=planner, horizon=horizon, iterations=iterations,
            predicted_return=predicted, plan_ms=plan_ms, model_version=self.model_version,
            deadline_miss=miss, fallback=fallback, nonfinite=nonfinite,
            action=np.asarray(action, np.float64),
        )  # fmt: skip
        session.stats.tick(time.monotonic(), plan_ms, miss, fallback, nonfinite)
        self._send(session.identity, reply)
        if not self.recorder.listening:
            return
        record = {
            "robot": session.robot, "seq": msg.seq, "episode": session.episode,
            "step": msg["step"], "time": reply.time, "planner": planner, "horizon": horizon,
            "iterations": iterations, "rows": rows, "batch": batch, "plan_ms": plan_ms,
            "predicted_return": predicted,
            "deadline_miss": miss, "fallback": fallback, "nonfinite": nonfinite,
            "model_version": self.model_version, "policy_version": self.policy_version,
            "dropped_stale": session.stats.dropped_stale, "action": reply["action"].tolist(),
        }  # fmt: skip
        self.recorder.answered.append((session, record))

    def _act(
        self, session: RobotSession, obs: np.ndarray, explore: bool
    ) -> tuple[np.ndarray, float | None] | None:
        """The policy's (action [A], value) for ``obs``: a draw with the robot's generator when
        ``explore``, else the mean. None when no policy is loaded, or when its action is not
        finite (logged; the caller acts as if there were no policy)."""
        if self.policy is None:
            return None
        try:
            return self.policy.act(obs, session.rng if explore else None)
        except FloatingPointError as exc:
            log.warning("robot %s: policy p%d: %s", session.robot, self.policy_version, exc)
            return None
