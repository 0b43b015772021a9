"""What CEM and iCEM share: their options for the elite refit and the sampling std, and the
Gaussian over sequences that each plan starts from a warm start and refits to elites.

Shapes: H horizon, A action, K elites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.checks import check_number
from controller.planners.optimizers.base import WarmStart


@dataclass(frozen=True)
class EliteSettings:
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


def refit(
    mean: np.ndarray, std: np.ndarray, elites: np.ndarray, alpha: float, min_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The elite refit of CEM and iCEM: [H, A] mean and std moved toward the elites' [K, H, A]
    statistics, keeping ``alpha`` of the old values; the std floored at ``min_std`` [A]."""
    new_mean = alpha * mean + (1.0 - alpha) * elites.mean(axis=0)
    new_std = np.maximum(alpha * std + (1.0 - alpha) * elites.std(axis=0), min_std)
    return new_mean, new_std


class EliteGaussian:
    """The sampling distribution of CEM and iCEM over [H, A] sequences within [low, high]: a
    mean and a std per step and action dimension, restarted by every plan from its warm start
    (``begin``) and moved toward each iteration's elites (``refit``)."""

    def __init__(self, options: EliteSettings, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.high = low, high
        self.alpha = options.alpha
        half = (high - low) / 2.0
        self.init_std = options.init_std * half
        """[A] every plan's first std."""
        self.min_std = options.min_std * half
        """[A] the std's floor."""

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        """Start a plan: the mean from ``warm``, the std at ``init_std``, draws from ``rng``."""
        self.rng = rng
        self.mean = warm.mean.copy()
        self.std = np.broadcast_to(self.init_std, self.mean.shape).copy()

    def refit(self, elites: np.ndarray) -> None:
        """Move the mean and std toward the statistics of ``elites`` [K, H, A]."""
        self.mean, self.std = refit(self.mean, self.std, elites, self.alpha, self.min_std)
