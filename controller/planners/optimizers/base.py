"""What an optimizer is: the protocol the planner drives, and the warm start it carries.

An optimizer only proposes candidate sequences and refits from their scores (mbrl-lib's
optimizer layer). It is given numbers (population, iterations, bounds) and its own options, never
the planner's settings; the horizon, the shift of the warm start from one plan to the next, the
budget and the rollout belong to the :class:`~controller.planners.planner.Planner`.

Shapes: N candidates, H horizon, A action, K carried elites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class WarmStart:
    """What an optimizer carries from one plan to the next, before shifting."""

    mean: np.ndarray
    """[H, A] the sampling mean (or nominal sequence) to start from."""
    elites: np.ndarray | None = None
    """[K, H, A] elite sequences kept across plans (iCEM), or None."""


class Optimizer(Protocol):
    """A sampling optimizer over action sequences, stateful within one plan.

    The planner calls ``begin`` once per plan, then ``ask``/``tell`` per iteration while the
    budget allows, then ``solution`` and ``carry``. Candidates must lie within the bounds.
    """

    name: str

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None: ...

    def population(self, iteration: int) -> int:
        """Candidates ``ask(iteration)`` will return (for the cost prediction)."""
        ...

    def ask(self, iteration: int) -> np.ndarray:
        """[N, H, A] candidates for this iteration: the sampled ones first, then what the
        optimizer carries (a nominal sequence, kept elites), which the planner never replaces
        with policy proposals while the share leaves room."""
        ...

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        """Refit from the scores [N] (higher is better; non-finite ones arrive as -inf)."""
        ...

    def solution(self) -> tuple[np.ndarray, float]:
        """([H, A] sequence to execute, its predicted return)."""
        ...

    def carry(self) -> WarmStart:
        """What the next plan starts from (the planner shifts it)."""
        ...
