"""iCEM (Pinneri et al. 2020, "Sample-efficient cross-entropy method for real-time planning").

Over CEM it adds: colored noise (1/f^beta along the horizon), a population that shrinks each
iteration, a fraction of the elites kept into the next iteration and (shifted by the planner)
into the next plan, the mean added as a candidate at the last iteration, clipping at the bounds,
and executing the best sequence found rather than the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.checks import check_number
from controller.planners.noise import colored_candidates
from controller.planners.optimizers.base import WarmStart
from controller.planners.optimizers.elites import EliteGaussian, EliteSettings


@dataclass(frozen=True)
class ICEMSettings(EliteSettings):
    """iCEM's own options (candidates are always clipped to the bounds)."""

    noise_beta: float = 2.0
    """Colored-noise exponent along the horizon (0 white, 2 red), in [0, 5]."""
    population_decay: float = 1.25
    """The population divides by this each iteration, in [1, 10]."""
    keep_elites: float = 0.3
    """Share of elites carried into the next iteration and, shifted, into the next plan, in
    [0, 1]."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("noise_beta", self.noise_beta, 0.0, 5.0)
        check_number("population_decay", self.population_decay, 1.0, 10.0)
        check_number("keep_elites", self.keep_elites, 0.0, 1.0)


class ICEM:
    """iCEM over [H, A] sequences within [low, high].

    ``population``: N, the first iteration's sampled candidates (later ones decay);
    ``iterations``: per plan, the last of which adds the mean as a candidate. The elites it
    keeps into the next plan leave through ``carry``; the planner shifts them.
    """

    name = "icem"

    def __init__(
        self,
        population: int,
        iterations: int,
        low: np.ndarray,
        high: np.ndarray,
        options: ICEMSettings | None = None,
    ) -> None:
        self.n, self.iterations = population, iterations
        self.o = ICEMSettings() if options is None else options
        self.low, self.high = low, high
        self.search = EliteGaussian(self.o, low, high)
        self.n_elites = self.o.elites(population)
        self.n_keep = round(self.o.keep_elites * self.n_elites)

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.search.begin(warm, rng)
        shape = self.search.mean.shape
        kept = warm.elites if warm.elites is not None else np.empty((0, *shape))
        self.kept = kept[: self.n_keep]
        self.elites = self.kept
        self.best: np.ndarray | None = None
        self.best_score = -math.inf

    def _sampled(self, iteration: int) -> int:
        n = math.ceil(self.n * self.o.population_decay**-iteration)
        return max(n, 2 * self.n_elites)

    def population(self, iteration: int) -> int:
        kept = len(self.kept) if iteration == 0 else min(self.n_keep, len(self.elites))
        return self._sampled(iteration) + kept + int(iteration == self.iterations - 1)

    def ask(self, iteration: int) -> np.ndarray:
        s, n, beta = self.search, self._sampled(iteration), self.o.noise_beta
        parts = [colored_candidates(s.rng, beta, s.mean, s.std, self.low, self.high, n)]
        parts.append(self.kept if iteration == 0 else self.elites[: self.n_keep])
        if iteration == self.iterations - 1:
            parts.append(s.mean[None])
        return np.clip(np.concatenate(parts), self.low, self.high)

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        k = min(self.n_elites, len(scores))
        top = np.argsort(-scores, kind="stable")[:k]
        self.elites = candidates[top]
        if scores[top[0]] > self.best_score or self.best is None:
            self.best, self.best_score = candidates[top[0]].copy(), float(scores[top[0]])
        self.search.refit(self.elites)

    def solution(self) -> tuple[np.ndarray, float]:
        assert self.best is not None, "solution() before any tell()"
        return self.best, self.best_score

    def carry(self) -> WarmStart:
        return WarmStart(self.search.mean, self.elites[: self.n_keep].copy())
