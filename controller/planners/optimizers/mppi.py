"""MPPI (Williams et al. 2017): perturb a nominal sequence, average the perturbations weighted
by exp(return / lambda). API and defaults after pytorch_mppi; returns are rewards (higher is
better), so no separate control-cost term: the task's reward carries it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.checks import check_number
from controller.planners.noise import gaussian_candidates
from controller.planners.optimizers.base import WarmStart


@dataclass(frozen=True)
class MPPISettings:
    """MPPI's own options."""

    temperature: float = 1.0
    """lambda, the temperature of the exponential weighting of returns, in (0, 1e6]."""
    noise_std: float = 0.5
    """Exploration noise std as a fraction of the half range, in (0, 2]."""

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0.0, 1e6, low_open=True)
        check_number("noise_std", self.noise_std, 0.0, 2.0, low_open=True)


class MPPI:
    """Model-predictive path integral control over [H, A] sequences within [low, high].

    ``population``: N candidates per iteration, the nominal sequence among them;
    ``iterations``: per plan (every iteration samples alike). The nominal sequence's shift to
    the next plan is the planner's.
    """

    name = "mppi"

    def __init__(
        self,
        population: int,
        iterations: int,
        low: np.ndarray,
        high: np.ndarray,
        options: MPPISettings | None = None,
    ) -> None:
        self.n, self.iterations = population, iterations
        self.o = MPPISettings() if options is None else options
        self.low, self.high = low, high
        self.sigma = self.o.noise_std * (high - low) / 2.0

    def begin(self, warm: WarmStart, rng: np.random.Generator) -> None:
        self.rng = rng
        self.mean = np.clip(warm.mean, self.low, self.high)
        self.score = float("nan")

    def population(self, iteration: int) -> int:
        return self.n

    def ask(self, iteration: int) -> np.ndarray:
        sigma = np.broadcast_to(self.sigma, self.mean.shape)
        n = self.n
        candidates = gaussian_candidates(self.rng, self.mean, sigma, self.low, self.high, n)
        # The nominal sequence itself is always a candidate, last: policy proposals go first.
        candidates[-1] = self.mean
        return candidates

    def tell(self, candidates: np.ndarray, scores: np.ndarray) -> None:
        finite = np.isfinite(scores)
        if not finite.any():
            return
        z = np.where(finite, scores - scores[finite].max(), -np.inf) / self.o.temperature
        w = np.exp(z)
        w /= w.sum()
        # Clipped perturbations: the update stays inside the bounds.
        self.mean = self.mean + np.tensordot(w, candidates - self.mean, axes=1)
        self.score = float(np.dot(w[finite], scores[finite]))

    def solution(self) -> tuple[np.ndarray, float]:
        return self.mean, self.score

    def carry(self) -> WarmStart:
        return WarmStart(self.mean)
