"""Random shooting: uniform sequences within the bounds, the best one executed (the baseline of
Nagabandi et al. 2018). The shifted previous best is always among the candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from controller.planners.base import WarmStart
from controller.planners.noise import uniform_candidates

if TYPE_CHECKING:
    from controller.planners.settings import PlannerSettings


@dataclass(frozen=True)
class RandomOptions:
    """Random shooting has no options of its own."""


class RandomShooting:
    """Random shooting over [H, A] sequences within [low, high]."""

    name = "random"

    def __init__(
        self, options: RandomOptions, settings: PlannerSettings, low: np.ndarray, high: np.ndarray
    ) -> None:
        self.s = settings
        self.low, self.high = low, high

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.warm = np.clip(warm.mean, self.low, self.high)
        self.best = self.warm
        self.best_score = -math.inf

    def population(self, iteration: int) -> int:
        return self.s.population

    def ask(self, iteration: int) -> np.ndarray:
        h = len(self.warm)
        candidates = uniform_candidates(self.rng, self.low, self.high, self.s.population, h)
        if iteration == 0:
            candidates[-1] = self.warm  # last: planners put policy proposals first
        return candidates

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        i = int(np.argmax(scores))
        if scores[i] > self.best_score:
            self.best, self.best_score = candidates[i].copy(), float(scores[i])

    def solution(self) -> tuple[np.ndarray, float]:
        return self.best, self.best_score

    def carry(self) -> WarmStart:
        return WarmStart(self.best)
