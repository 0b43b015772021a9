"""The cross-entropy method as in PETS (Chua et al. 2018): Gaussian sampling around a mean
sequence, refit to the elites with momentum, the mean executed."""

from __future__ import annotations

import numpy as np

from controller.planners.base import WarmStart
from controller.planners.noise import TRUNCATION, truncated_normal
from controller.planners.settings import PlannerSettings


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

    def __init__(self, settings: PlannerSettings, low: np.ndarray, high: np.ndarray) -> None:
        self.s = settings
        self.low, self.high = low, high
        half = (high - low) / 2.0
        self.init_std = settings.init_std * half
        self.min_std = settings.min_std * half

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.mean = warm.mean.copy()
        self.std = np.broadcast_to(self.init_std, self.mean.shape).copy()
        self.elite_score = float("nan")

    def population(self, iteration: int) -> int:
        return self.s.population

    def ask(self, iteration: int) -> np.ndarray:
        shape = (self.s.population, *self.mean.shape)
        if self.s.bounds == "truncate":
            # PETS: shrink the std so that mean +- 2 std stays inside the bounds.
            room = np.minimum(self.mean - self.low, self.high - self.mean) / TRUNCATION
            std = np.minimum(self.std, np.maximum(room, 0.0))
            candidates = self.mean + std * truncated_normal(self.rng, shape)
        else:
            candidates = self.mean + self.std * self.rng.standard_normal(shape)
        return np.clip(candidates, self.low, self.high)

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        k = self.s.elites(len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        elites = candidates[top]
        self.mean, self.std = refit(self.mean, self.std, elites, self.s.alpha, self.min_std)
        self.elite_score = float(scores[top].mean())

    def solution(self) -> tuple[np.ndarray, float]:
        return np.clip(self.mean, self.low, self.high), self.elite_score

    def carry(self) -> WarmStart:
        return WarmStart(self.mean)
