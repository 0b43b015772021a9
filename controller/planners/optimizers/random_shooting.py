"""Random shooting: uniform sequences within the bounds, the best one executed (the baseline of
Nagabandi et al. 2018). The shifted previous best is always among the candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.planners.noise import uniform_candidates
from controller.planners.optimizers.base import WarmStart


@dataclass(frozen=True)
class RandomSettings:
    """Random shooting has no options of its own."""


class RandomShooting:
    """Random shooting over [H, A] sequences within [low, high].

    ``population``: N candidates per iteration (the first iteration's last one is the warm
    start); ``iterations``: per plan (every iteration samples alike).
    """

    name = "random"

    def __init__(
        self,
        population: int,
        iterations: int,
        low: np.ndarray,
        high: np.ndarray,
        options: RandomSettings | None = None,
    ) -> None:
        self.n, self.iterations = population, iterations
        self.low, self.high = low, high

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.warm = np.clip(warm.mean, self.low, self.high)
        self.best = self.warm
        self.best_score = -math.inf

    def population(self, iteration: int) -> int:
        return self.n

    def ask(self, iteration: int) -> np.ndarray:
        h = len(self.warm)
        candidates = uniform_candidates(self.rng, self.low, self.high, self.n, h)
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
