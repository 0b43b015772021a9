"""The planner interface: what a plan is, the warm-start shift, and the iteration cost.

Three layers, as in mbrl-lib: an optimizer (:class:`~controller.planners.optimizers.Optimizer`)
only proposes candidate sequences and refits from their scores; the
:class:`~controller.planners.planner.Planner` owns the horizon, bounds, warm start and its shift,
budget and the evaluator; the service binds it to a robot's current state.

Shapes: N candidates, H horizon, A action, K carried elites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.planners.optimizers.base import Optimizer, WarmStart

__all__ = ["IterationCost", "Optimizer", "Plan", "WarmStart", "shift", "shift_warm_start"]


@dataclass(frozen=True)
class Plan:
    """The result of one ``plan`` call."""

    actions: np.ndarray
    """[H, A] the sequence to execute (read-only); ``action`` is its first row."""
    predicted_return: float
    """The optimizer's estimate for it: the best candidate's score (random, icem), the mean
    elite score (cem), the weighted mean score (mppi); NaN when no iteration ran."""
    iterations: int
    """Optimizer iterations completed within the budget."""
    candidates: int
    """Candidate sequences evaluated."""
    rows: int
    """Model member-rows evaluated (candidates x particles x horizon, x E in mixed mode)."""
    elapsed_s: float
    """Wall time of the call."""
    budget_s: float | None
    """The budget it was given (None: unlimited)."""
    deadline_miss: bool
    """The call overran its budget, or no iteration fitted and the previous plan was reused."""
    fallback: bool
    """No iteration fitted: ``actions`` is the previous plan shifted one step."""
    nonfinite: int
    """Candidates whose predicted return was NaN or infinite (ranked last, never executed
    unless nothing else was evaluated)."""
    planner: str
    horizon: int

    @property
    def action(self) -> np.ndarray:
        """[A] the action to apply now."""
        return self.actions[0]


def shift(seq: np.ndarray, fill: np.ndarray, horizon: int) -> np.ndarray:
    """The warm-start shift, in one place: drop the executed first step, pad with ``fill``.

    ``seq [..., H0, A]`` -> ``[..., horizon, A]``: also resizes when the horizon changed
    (truncating, or padding with ``fill [A]``).
    """
    body = seq[..., 1 : horizon + 1, :]
    missing = horizon - body.shape[-2]
    if missing <= 0:
        return body.copy()
    pad = np.broadcast_to(fill, (*seq.shape[:-2], missing, seq.shape[-1]))
    return np.concatenate([body, pad], axis=-2)


def shift_warm_start(warm: WarmStart, fill: np.ndarray, horizon: int) -> WarmStart:
    elites = None if warm.elites is None else shift(warm.elites, fill, horizon)
    return WarmStart(shift(warm.mean, fill, horizon), elites)


class IterationCost:
    """Predicts how long the next optimizer iteration takes, from the ones measured before.

    Cost scales with the member-rows an iteration evaluates (iCEM's population shrinks), so it
    tracks seconds per row: an exponential average and an average absolute deviation, and
    predicts rows x (mean + ``spread`` x deviation) so that noisy iterations rarely overrun.

    An estimate is only corrected by measuring, and a plan whose first iteration is predicted
    not to fit measures nothing: one slow outlier (the machine busy with training, a model's
    first run) would then skip every later plan. :meth:`skipped` forgets part of the estimate
    each time that happens, so a plan tries again within a few ticks; measured on a 2-core
    realtime cartpole run, 2 of 5 seeds had stuck at 95% of ticks skipped without it.
    """

    def __init__(self, smoothing: float = 0.2, spread: float = 3.0) -> None:
        self.smoothing = smoothing
        self.spread = spread
        self.per_row: float | None = None
        self.deviation = 0.0

    def predict(self, rows: int) -> float | None:
        """Seconds for an iteration of ``rows`` member-rows; None before any measurement."""
        if self.per_row is None:
            return None
        return rows * (self.per_row + self.spread * self.deviation)

    def skipped(self, forget: float = 0.5) -> None:
        """A plan ran no iteration on this estimate: shrink it (the deviation by ``forget``,
        the mean by half as much) so that it is measured again soon."""
        if self.per_row is not None:
            self.deviation *= forget
            self.per_row *= 1.0 - (1.0 - forget) / 2.0

    def update(self, rows: int, seconds: float) -> None:
        sample = seconds / max(rows, 1)
        if self.per_row is None:
            self.per_row = sample
            return
        k = self.smoothing
        self.deviation += k * (abs(sample - self.per_row) - self.deviation)
        self.per_row += k * (sample - self.per_row)
