"""The cross-entropy method as in PETS (Chua et al. 2018): Gaussian sampling around a mean
sequence, refit to the elites with momentum, the mean executed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from controller.checks import check_choice, check_number
from controller.planners.base import WarmStart
from controller.planners.noise import TRUNCATION, gaussian_candidates, truncated_candidates

if TYPE_CHECKING:
    from controller.planners.settings import PlannerSettings

BOUNDS = ("clip", "truncate")


@dataclass(frozen=True)
class EliteOptions:
    """What CEM and iCEM share: the elite refit and the sampling std. Action-scale values are
    fractions of each action dimension's half range, so one value suits every task."""

    elite_fraction: float = 0.1
    """Share of the population refit as elites, in (0, 1]."""
    alpha: float = 0.1
    """Momentum kept from the previous mean and std, in [0, 1)."""
    init_std: float = 0.5
    """Initial sampling std per plan, as a fraction of the half range, in (0, 2]."""
    min_std: float = 0.01
    """Floor on the sampling std (fraction of the half range), in [0, 2]."""

    def __post_init__(self) -> None:
        check_number("elite_fraction", self.elite_fraction, 0.0, 1.0, low_open=True)
        check_number("alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_number("init_std", self.init_std, 0.0, 2.0, low_open=True)
        check_number("min_std", self.min_std, 0.0, 2.0)

    def elites(self, population: int) -> int:
        """Elite count for a population (at least 1)."""
        return max(1, round(self.elite_fraction * population))


@dataclass(frozen=True)
class CEMOptions(EliteOptions):
    """CEM's own options."""

    bounds: str = "truncate"
    """"truncate" (PETS: std shrunk so mean +- 2 std stays in bounds, truncated normal draws)
    or "clip" (draws clipped to the bounds)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("bounds", self.bounds, BOUNDS)


def refit(
    mean: np.ndarray, std: np.ndarray, elites: np.ndarray, alpha: float, min_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The elite refit of CEM and iCEM: [H, A] mean and std moved toward the elites' [K, H, A]
    statistics, keeping ``alpha`` of the old values; the std floored at ``min_std`` [A]."""
    new_mean = alpha * mean + (1.0 - alpha) * elites.mean(axis=0)
    new_std = np.maximum(alpha * std + (1.0 - alpha) * elites.std(axis=0), min_std)
    return new_mean, new_std


class CEM:
    """Cross-entropy method over [H, A] sequences within [low, high]."""

    name = "cem"

    def __init__(
        self, options: CEMOptions, settings: PlannerSettings, low: np.ndarray, high: np.ndarray
    ) -> None:
        self.o, self.s = options, settings
        self.low, self.high = low, high
        half = (high - low) / 2.0
        self.init_std = options.init_std * half
        self.min_std = options.min_std * half

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.mean = warm.mean.copy()
        self.std = np.broadcast_to(self.init_std, self.mean.shape).copy()
        self.elite_score = float("nan")

    def population(self, iteration: int) -> int:
        return self.s.population

    def ask(self, iteration: int) -> np.ndarray:
        n = self.s.population
        if self.o.bounds == "truncate":
            # PETS: shrink the std so that mean +- 2 std stays inside the bounds.
            room = np.minimum(self.mean - self.low, self.high - self.mean) / TRUNCATION
            std = np.minimum(self.std, np.maximum(room, 0.0))
            return truncated_candidates(self.rng, self.mean, std, self.low, self.high, n)
        return gaussian_candidates(self.rng, self.mean, self.std, self.low, self.high, n)

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        k = self.o.elites(len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        elites = candidates[top]
        self.mean, self.std = refit(self.mean, self.std, elites, self.o.alpha, self.min_std)
        self.elite_score = float(scores[top].mean())

    def solution(self) -> tuple[np.ndarray, float]:
        return np.clip(self.mean, self.low, self.high), self.elite_score

    def carry(self) -> WarmStart:
        return WarmStart(self.mean)
