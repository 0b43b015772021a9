"""What the service keeps of each pass: the transitions its STATEs completed, in the store, and
one telemetry record per ACTION it sent.

The store write comes before the pass's ACTIONs go out, in one write (``flush``): every
transition an ACTION answers is then in the store, in the OS's cache, so a killed service
loses none of them; ``durable`` adds an fsync for power loss. Telemetry comes after the
ACTIONs, with the reward of the transition each STATE completed and the task's reward terms
of it, so computing the terms never delays an ACTION.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import zmq

from controller.service.session import RobotSession, Transition
from controller.tasks import Task
from models.store import TransitionWriter
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


class Recorder:
    """The service's store writer and telemetry publisher, one pass at a time."""

    def __init__(self, task: Task, writer: TransitionWriter | None, durable: bool) -> None:
        self.task, self.writer, self.durable = task, writer, durable
        self.unrecorded: list[Transition] = []
        """Transitions completed by this pass's STATEs."""
        self.answered: list[tuple[RobotSession, dict[str, Any]]] = []
        """This pass's telemetry records, without their rewards yet."""

    def record(self) -> None:
        """Store the pass's transitions in one write (before any ACTION answers them)."""
        unrecorded, self.unrecorded = self.unrecorded, []
        for transition in unrecorded:
            try:
                self._record(transition)
            except Exception:  # a bad row is lost alone, never the service or the store
                transition.session.stats.errors += 1
                log.exception("robot %s: transition at step %d not recorded",
                              transition.session.robot, transition.msg["step"])  # fmt: skip
        if unrecorded and self.writer is not None:
            try:
                self.writer.flush(fsync=self.durable)
            except OSError:  # the rows stay pending in the writer and go with the next flush
                log.exception("store write failed; retrying with the next pass")

    def _record(self, tr: Transition) -> None:
        reward = tr.msg["reward"]
        if reward is None:  # the bridge does not know it: the task's definition does
            tr.terms = self.task.term_values(tr.obs, tr.act, tr.next_obs)
            terms = {name: torch.tensor(v, dtype=torch.float64) for name, v in tr.terms.items()}
            reward = float(self.task.weighted_sum(terms))
        tr.reward = reward
        session = tr.session
        session.episode_return += reward
        session.last_transition = tr
        if self.writer is None:
            return
        self.writer.append(
            tr.obs, tr.act, tr.next_obs, reward, tr.msg["terminated"], tr.msg["truncated"],
            episode=session.episode, step=tr.msg["step"] - 1, robot=session.robot,
        )  # fmt: skip
        session.stats.transitions += 1

    def publish(self, telemetry: zmq.Socket[bytes]) -> None:
        """One telemetry record per ACTION of the pass, with the reward (and each reward term)
        of the transition its STATE completed (null for an episode's first STATE)."""
        answered, self.answered = self.answered, []
        for session, record in answered:
            tr = session.last_transition
            if tr is not None and tr.msg.seq == record["seq"] and tr.reward is not None:
                if tr.terms is None:
                    tr.terms = self.task.term_values(tr.obs, tr.act, tr.next_obs)
                record["reward"], record["reward_terms"] = tr.reward, tr.terms
            else:
                record["reward"] = record["reward_terms"] = None
            try:
                telemetry.send_multipart(p.telemetry_record(**record), zmq.NOBLOCK)
            except zmq.Again:  # no subscriber keeps up: telemetry is dropped, never waited on
                pass
