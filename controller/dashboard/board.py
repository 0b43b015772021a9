"""What the dashboard knows: the service's recent ticks per robot, its status and its learning
history, and what each open page has already been sent.

No sockets here: the server (:mod:`controller.dashboard.server`) feeds telemetry records,
status and history replies in, and asks for one page's update with :meth:`Board.update_for`.
Pages get the ticks they have not seen yet (a new page gets every buffered tick first), so the
cost per page is the ticks that arrived since its last update, not the window.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 600
"""Ticks kept per robot, and shown: 24 s at 25 Hz."""
STATS_WINDOW = 500
"""Ticks the plan time percentiles are computed over (the service's own window)."""
MAX_ROBOTS = 64
"""Robots traced at once: a new one past this drops the one silent for longest."""


def compact(record: dict[str, Any], number: int) -> dict[str, Any]:
    """The part of a telemetry record the page draws, under short keys (``n`` numbers the
    ticks the board has seen, so a page can ask for what is newer)."""
    return {
        "n": number,
        "t": record["time"],
        "episode": record["episode"],
        "step": record["step"],
        "plan_ms": record["plan_ms"],
        "iterations": record["iterations"],
        "horizon": record["horizon"],
        "planner": record["planner"],
        "predicted": record["predicted_return"],
        "reward": record["reward"],
        "terms": record["reward_terms"],
        "action": record["action"],
        "miss": record["deadline_miss"],
        "fallback": record["fallback"],
        "model": record["model_version"],
        "policy": record["policy_version"],
        "batch": record["batch"],
    }


@dataclass
class RobotTrace:
    """One robot's recent ticks and the counts the service has sent so far."""

    ticks: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    misses: int = 0
    """Deadline misses among the ticks this board received (status has the service's own)."""
    fallbacks: int = 0
    received: int = 0

    def stats(self) -> dict[str, Any]:
        """Plan time p50/p99 over the last STATS_WINDOW ticks, and the window's counts."""
        recent = list(itertools.islice(reversed(self.ticks), STATS_WINDOW))
        plan = np.array([t["plan_ms"] for t in recent])
        p50, p99 = np.percentile(plan, [50, 99]) if len(plan) else (None, None)
        return {
            "plan_ms_p50": None if p50 is None else round(float(p50), 3),
            "plan_ms_p99": None if p99 is None else round(float(p99), 3),
            "window": len(recent),
            "window_misses": sum(t["miss"] for t in recent),
            "window_fallbacks": sum(t["fallback"] for t in recent),
            "iterations_mean": round(float(np.mean([t["iterations"] for t in recent])), 2)
            if recent
            else None,
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "received": self.received,
        }


@dataclass
class Cursor:
    """What one page was sent: ticks up to ``tick``, the status and history generations."""

    tick: int = 0
    status: int = 0
    history: int = 0
    videos: int = 0


class Board:
    """The dashboard's state, fed by the server's readers and read by its pages."""

    def __init__(self) -> None:
        self.robots: dict[str, RobotTrace] = {}
        self.ticks_seen = 0
        self.status: dict[str, Any] | None = None
        self.history: dict[str, Any] | None = None
        self.videos: list[dict[str, Any]] = []
        self.service_error: str | None = None
        """Why the last control request failed (None while the service answers)."""
        self.refused_records = 0
        """Telemetry records that did not parse (a service of another protocol version)."""
        self._generation = {"status": 0, "history": 0, "videos": 0}

    def add_tick(self, record: dict[str, Any]) -> None:
        self.ticks_seen += 1
        robot = record["robot"]
        if robot not in self.robots and len(self.robots) >= MAX_ROBOTS:
            silent = min(self.robots, key=lambda r: self.robots[r].ticks[-1]["n"])
            del self.robots[silent]
        trace = self.robots.setdefault(robot, RobotTrace())
        trace.ticks.append(compact(record, self.ticks_seen))
        trace.received += 1
        trace.misses += int(record["deadline_miss"])
        trace.fallbacks += int(record["fallback"])

    def set_status(self, status: dict[str, Any] | None, error: str | None = None) -> None:
        """A status reply, or None with the reason the service did not answer."""
        self.service_error = error
        if status is not None:
            self.status = status
        self._generation["status"] += 1

    def set_history(self, history: dict[str, Any]) -> None:
        if history != self.history:
            self.history = history
            self._generation["history"] += 1

    def set_videos(self, videos: list[dict[str, Any]]) -> None:
        if videos != self.videos:
            self.videos = videos
            self._generation["videos"] += 1

    def update_for(self, cursor: Cursor) -> dict[str, Any] | None:
        """What the page at ``cursor`` has not seen yet, advancing the cursor; None when
        nothing changed."""
        update: dict[str, Any] = {}
        if self.ticks_seen > cursor.tick:
            ticks = {}
            for robot, trace in self.robots.items():
                new = [
                    t
                    for t in itertools.takewhile(
                        lambda t: t["n"] > cursor.tick, reversed(trace.ticks)
                    )
                ]
                if new:
                    ticks[robot] = new[::-1]
            update["ticks"] = ticks
            update["stats"] = {robot: trace.stats() for robot, trace in self.robots.items()}
            cursor.tick = self.ticks_seen
        for key, value in (
            ("status", self.status),
            ("history", self.history),
            ("videos", self.videos),
        ):
            generation = self._generation[key]
            if generation != getattr(cursor, key):
                update[key] = value
                setattr(cursor, key, generation)
        if "status" in update:
            update["service_error"] = self.service_error
        return update or None
