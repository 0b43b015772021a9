"""The cross-entropy method as in PETS (Chua et al. 2018): Gaussian sampling around a mean
sequence, refit to the elites with momentum, the mean executed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.checks import check_choice
from controller.planners.noise import TRUNCATION, gaussian_candidates, truncated_candidates
from controller.planners.optimizers.base import WarmStart
from controller.planners.optimizers.elites import EliteGaussian, EliteSettings

BOUNDS = ("clip", "truncate")


@dataclass(frozen=True)
class CEMSettings(EliteSettings):
    """CEM's own options."""

    bounds: str = "truncate"
    """"truncate" (PETS: std shrunk so mean +- 2 std stays in bounds, truncated normal draws)
    or "clip" (draws clipped to the bounds)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("bounds", self.bounds, BOUNDS)


class CEM:
    """Cross-entropy method over [H, A] sequences within [low, high].

    ``population``: N candidates per iteration; ``iterations``: per plan (every iteration
    samples alike; the planner decides how many run). It does not own the horizon or the shift
    of its mean from one plan to the next (the planner's warm start).
    """

    name = "cem"

    def __init__(
        self,
        population: int,
        iterations: int,
        low: np.ndarray,
        high: np.ndarray,
        options: CEMSettings | None = None,
    ) -> None:
        self.n, self.iterations = population, iterations
        self.o = CEMSettings() if options is None else options
        self.low, self.high = low, high
        self.search = EliteGaussian(self.o, low, high)

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.search.begin(warm, rng)
        self.elite_score = float("nan")

    def population(self, iteration: int) -> int:
        return self.n

    def ask(self, iteration: int) -> np.ndarray:
        s = self.search
        if self.o.bounds == "truncate":
            # PETS: shrink the std so that mean +- 2 std stays inside the bounds.
            room = np.minimum(s.mean - self.low, self.high - s.mean) / TRUNCATION
            std = np.minimum(s.std, np.maximum(room, 0.0))
            return truncated_candidates(s.rng, s.mean, std, self.low, self.high, self.n)
        return gaussian_candidates(s.rng, s.mean, s.std, self.low, self.high, self.n)

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        k = self.o.elites(len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        self.search.refit(candidates[top])
        self.elite_score = float(scores[top].mean())

    def solution(self) -> tuple[np.ndarray, float]:
        return np.clip(self.search.mean, self.low, self.high), self.elite_score

    def carry(self) -> WarmStart:
        return WarmStart(self.search.mean)
