"""What the service keeps of each pass: the transitions its STATEs completed, in the store, and
one telemetry record per ACTION it sent.

The store write comes before the pass's ACTIONs go out, in one write (``flush``): every
transition an ACTION answers is then in the store, in the OS's cache, so a killed service
loses none of them; ``durable`` adds an fsync for power loss. Both are on the ACTION's path,
as is the task's reward for a robot that sends none (it is stored with the row). Telemetry
comes after the ACTIONs: the reward of the transition each STATE completed and the task's
reward terms of it. It is built only while someone subscribes (the telemetry socket is an
XPUB, which hears subscriptions): the terms cost ~35 us of torch per tick, which a loop with
no dashboard and no run recording it need not pay.

A write that fails is counted (``store_errors``, in ``tickmpc status``) and logged; its rows
stay buffered in the writer and go with the next pass's flush. A telemetry record that cannot
be built is counted as the robot's error and logged. Neither stops the service.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import zmq

from controller.service.session import RobotSession, Transition
from controller.service.telemetry import Subscriptions
from controller.tasks import Task
from models.store import TransitionWriter
from sim_bridge import protocol as p

log = logging.getLogger(__name__)


class Recorder:
    """The store writer and the telemetry records of one served task, one pass at a time."""

    def __init__(
        self,
        task: Task,
        writer: TransitionWriter | None,
        durable: bool,
        subscriptions: Subscriptions,
        episodes: int = 0,
    ) -> None:
        """``writer``: the store (None: record nothing); ``episodes``: the episodes the store
        holds already (their numbers go on from there)."""
        self.task, self._writer, self._durable = task, writer, durable
        self._subscriptions = subscriptions
        self._episodes = episodes
        self._unrecorded: list[Transition] = []
        """Transitions completed by this pass's STATEs."""
        self._answered: list[tuple[RobotSession, dict[str, Any]]] = []
        """This pass's telemetry records, without their rewards yet."""
        self.store_errors = 0
        """Store writes that failed (their rows were kept for the next one)."""

    @property
    def listening(self) -> bool:
        """Whether a subscriber would receive a telemetry record (build none otherwise)."""
        return self._subscriptions.listening

    def new_episode(self) -> int:
        """The store's number for an episode that starts now (service-wide, counted on from
        the episodes the store held)."""
        self._episodes += 1
        return self._episodes

    def completed(self, transition: Transition) -> None:
        """A STATE completed ``transition``: it is stored at the next ``record``."""
        self._unrecorded.append(transition)

    def answered(self, session: RobotSession, record: dict[str, Any]) -> None:
        """An ACTION went to ``session``'s robot: ``record`` (its telemetry, without the
        reward) is published at the next ``publish``."""
        self._answered.append((session, record))

    def status(self) -> dict[str, Any]:
        return {
            "transitions": len(self._writer) if self._writer is not None else 0,
            "store_errors": self.store_errors,
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def record(self) -> None:
        """Store the pass's transitions in one write (before any ACTION answers them)."""
        unrecorded, self._unrecorded = self._unrecorded, []
        for transition in unrecorded:
            try:
                self._record(transition)
            except Exception:  # a bad row is lost alone, never the service or the store
                transition.session.stats.errors += 1
                log.exception("robot %s: transition at step %d not recorded",
                              transition.session.robot, transition.msg["step"])  # fmt: skip
        if self._writer is not None and self._writer.pending:
            try:
                self._writer.flush(fsync=self._durable)
            except (OSError, ValueError):  # full disk, closed writer: keep serving, say so
                self.store_errors += 1
                log.exception("store write failed (%d so far); the rows stay buffered",
                              self.store_errors)  # fmt: skip

    def _record(self, tr: Transition) -> None:
        reward = tr.msg["reward"]
        if reward is None:  # the bridge does not know it: the task's definition does
            tr.terms = self.task.term_values(tr.obs, tr.act, tr.next_obs)
            terms = {name: torch.tensor(v, dtype=torch.float64) for name, v in tr.terms.items()}
            reward = float(self.task.weighted_sum(terms))
        session = tr.session
        session.last_transition = tr
        if self._writer is not None:  # refuses a non-finite reward (raises: not recorded)
            self._writer.append(
                tr.obs, tr.act, tr.next_obs, reward, tr.msg["terminated"], tr.msg["truncated"],
                episode=session.episode, step=tr.msg["step"] - 1, robot=session.robot,
            )  # fmt: skip
            session.stats.transitions += 1
        tr.reward = reward
        session.episode_return += reward

    def publish(self, telemetry: zmq.Socket[bytes]) -> None:
        """One telemetry record per ACTION of the pass, with the reward (and each reward term)
        of the transition its STATE completed (null for an episode's first STATE, and where
        the transition was not recorded)."""
        answered, self._answered = self._answered, []
        if not self.listening:
            return
        for session, record in answered:
            try:
                record["reward"] = record["reward_terms"] = None
                tr = session.last_transition
                if tr is not None and tr.msg.seq == record["seq"] and tr.reward is not None:
                    if tr.terms is None:
                        tr.terms = self.task.term_values(tr.obs, tr.act, tr.next_obs)
                    terms = tr.terms or {}  # empty: the reward is learned, it has no terms
                    finite = bool(terms) and all(math.isfinite(v) for v in terms.values())
                    record["reward"] = tr.reward
                    record["reward_terms"] = tr.terms if finite else None
                frames = p.telemetry_record(**record)
            except Exception:  # a record that cannot be built is lost alone
                session.stats.errors += 1
                log.exception("robot %s: no telemetry for step %s", session.robot, record["step"])
                continue
            try:
                telemetry.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:  # no subscriber keeps up: telemetry is dropped, never waited on
                pass
