"""Per-robot statistics for ``tickmpc status``: tick rate, plan time percentiles, counts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 500
"""Ticks the rate and percentiles are computed over."""


@dataclass
class RobotStats:
    ticks: int = 0
    deadline_misses: int = 0
    fallbacks: int = 0
    """Plans where no optimizer iteration fitted: the previous plan, shifted, was sent."""
    nonfinite: int = 0
    """Candidates whose predicted return was NaN or infinite (ranked last)."""
    dropped_stale: int = 0
    """STATEs not planned on because a newer one from the robot was already queued."""
    errors: int = 0
    """Messages from this robot refused with an ERROR."""
    transitions: int = 0
    """Transitions recorded into the store."""
    episodes: int = 0
    last_return: float | None = None
    tick_times: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    plan_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def tick(self, now: float, plan_ms: float, miss: bool, fallback: bool, nonfinite: int) -> None:
        self.ticks += 1
        self.deadline_misses += int(miss)
        self.fallbacks += int(fallback)
        self.nonfinite += nonfinite
        self.tick_times.append(now)
        self.plan_ms.append(plan_ms)

    def summary(self) -> dict[str, Any]:
        times = np.asarray(self.tick_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        plan = np.asarray(self.plan_ms)
        p50, p99 = np.percentile(plan, [50, 99]) if len(plan) else (0.0, 0.0)
        return {
            "ticks": self.ticks,
            "tick_hz": round(float(rate), 2),
            "plan_ms_p50": round(float(p50), 3),
            "plan_ms_p99": round(float(p99), 3),
            "deadline_misses": self.deadline_misses,
            "fallbacks": self.fallbacks,
            "nonfinite": self.nonfinite,
            "dropped_stale": self.dropped_stale,
            "errors": self.errors,
            "transitions": self.transitions,
            "episodes": self.episodes,
            "last_return": self.last_return,
        }
