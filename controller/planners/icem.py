"""iCEM (Pinneri et al. 2020, "Sample-efficient cross-entropy method for real-time planning").

Over CEM it adds: colored noise (1/f^beta along the horizon), a population that shrinks each
iteration, a fraction of the elites kept into the next iteration and (shifted by the planner)
into the next plan, the mean added as a candidate at the last iteration, clipping at the bounds,
and executing the best sequence found rather than the mean.
"""

from __future__ import annotations

import math

import numpy as np

from controller.planners.base import WarmStart
from controller.planners.cem import refit
from controller.planners.noise import colored_noise
from controller.planners.settings import PlannerSettings


class ICEM:
    """iCEM over [H, A] sequences within [low, high]."""

    name = "icem"

    def __init__(self, settings: PlannerSettings, low: np.ndarray, high: np.ndarray) -> None:
        self.s = settings
        self.low, self.high = low, high
        half = (high - low) / 2.0
        self.init_std = settings.init_std * half
        self.min_std = settings.min_std * half
        self.n_elites = settings.elites(settings.population)
        self.n_keep = round(settings.keep_elites * self.n_elites)

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.mean = warm.mean.copy()
        self.std = np.broadcast_to(self.init_std, self.mean.shape).copy()
        kept = warm.elites if warm.elites is not None else np.empty((0, *self.mean.shape))
        self.kept = kept[: self.n_keep]
        self.elites = self.kept
        self.best: np.ndarray | None = None
        self.best_score = -math.inf

    def _sampled(self, iteration: int) -> int:
        n = math.ceil(self.s.population * self.s.population_decay**-iteration)
        return max(n, 2 * self.n_elites)

    def population(self, iteration: int) -> int:
        kept = len(self.kept) if iteration == 0 else min(self.n_keep, len(self.elites))
        return self._sampled(iteration) + kept + int(iteration == self.s.iterations - 1)

    def ask(self, iteration: int) -> np.ndarray:
        h, a = self.mean.shape
        noise = colored_noise(self.rng, self.s.noise_beta, self._sampled(iteration), h, a)
        parts = [self.mean + self.std * noise]
        parts.append(self.kept if iteration == 0 else self.elites[: self.n_keep])
        if iteration == self.s.iterations - 1:
            parts.append(self.mean[None])
        return np.clip(np.concatenate(parts), self.low, self.high)

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        k = min(self.n_elites, len(scores))
        top = np.argsort(-scores, kind="stable")[:k]
        self.elites = candidates[top]
        if scores[top[0]] > self.best_score or self.best is None:
            self.best, self.best_score = candidates[top[0]].copy(), float(scores[top[0]])
        self.mean, self.std = refit(self.mean, self.std, self.elites, self.s.alpha, self.min_std)

    def solution(self) -> tuple[np.ndarray, float]:
        assert self.best is not None, "solution() before any tell()"
        return self.best, self.best_score

    def carry(self) -> WarmStart:
        return WarmStart(self.mean, self.elites[: self.n_keep].copy())
