"""Planner settings: one validated, frozen dataclass that operators can change live.

Every field is checked against a named limit at construction, so a change is made by building a
new settings object (``dataclasses.replace``) and swapping it in whole: an invalid value raises
``ValueError`` naming the setting and its allowed range, and nothing changes. Action-scale
settings (``init_std``, ``min_std``, ``noise_std``) are fractions of each action dimension's
half range, so one value suits every task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from controller.checks import check_choice, check_int, check_number
from controller.rollout.evaluator import RolloutSettings

PLANNERS = ("random", "cem", "icem", "mppi")
BOUNDS = ("clip", "truncate")
MAX_HORIZON = 500
MAX_POPULATION = 100_000
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class PlannerSettings:
    """Everything that shapes a plan. Fields name the planners that read them."""

    planner: str = "cem"
    """Optimizer: "random" (random shooting), "cem" (PETS), "icem" (Pinneri et al. 2020) or
    "mppi" (Williams et al.)."""
    horizon: int = 15
    """H: steps planned ahead (1..MAX_HORIZON)."""
    population: int = 200
    """N: candidate sequences per iteration (1..MAX_POPULATION); iCEM's first iteration."""
    iterations: int = 3
    """Optimizer iterations per plan (1..MAX_ITERATIONS); fewer when the budget runs out."""
    particles: int = 1
    """P: model rollouts per candidate (see RolloutSettings)."""
    propagation: str = "ts1"
    """"ts1", "tsinf" or "expectation" (see RolloutSettings)."""
    sample: bool = True
    """Sample next states from the model's Gaussian (False: follow its mean)."""
    discount: float = 1.0
    """Per-step reward discount in (0, 1]."""
    disagreement_penalty: float = 0.0
    """Reward penalty per unit of ensemble disagreement, >= 0 (see RolloutSettings)."""
    risk: float = 0.0
    """Score = mean - risk x std over a candidate's particles, >= 0."""
    elite_fraction: float = 0.1
    """cem, icem: share of the population refit as elites, in (0, 1]."""
    alpha: float = 0.1
    """cem, icem: momentum kept from the previous mean and std, in [0, 1)."""
    init_std: float = 0.5
    """cem, icem: initial sampling std per plan, as a fraction of the half range, in (0, 2]."""
    min_std: float = 0.01
    """cem, icem: floor on the sampling std (fraction of the half range), in [0, 2]."""
    bounds: str = "truncate"
    """cem: "truncate" (PETS: std shrunk so mean +- 2 std stays in bounds, truncated normal
    draws) or "clip" (draws clipped to the bounds). The others always clip."""
    noise_beta: float = 2.0
    """icem: colored-noise exponent along the horizon (0 white, 2 red), in [0, 5]."""
    population_decay: float = 1.25
    """icem: population divides by this each iteration, in [1, 10]."""
    keep_elites: float = 0.3
    """icem: share of elites carried into the next iteration and, shifted, into the next plan,
    in [0, 1]."""
    temperature: float = 1.0
    """mppi: lambda, the temperature of the exponential weighting of returns, in (0, 1e6]."""
    noise_std: float = 0.5
    """mppi: exploration noise std as a fraction of the half range, in (0, 2]."""
    seed: int = 0
    """Seed of the planner's random generator, applied by ``reset(seed=...)`` and at creation."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Task reward weight overrides by term name (checked against the task by the planner)."""

    def __post_init__(self) -> None:
        check_choice("planner", self.planner, PLANNERS)
        check_choice("bounds", self.bounds, BOUNDS)
        check_int("horizon", self.horizon, 1, MAX_HORIZON)
        check_int("population", self.population, 1, MAX_POPULATION)
        check_int("iterations", self.iterations, 1, MAX_ITERATIONS)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_number("elite_fraction", self.elite_fraction, 0.0, 1.0, low_open=True)
        check_number("alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_number("init_std", self.init_std, 0.0, 2.0, low_open=True)
        check_number("min_std", self.min_std, 0.0, 2.0)
        check_number("noise_beta", self.noise_beta, 0.0, 5.0)
        check_number("population_decay", self.population_decay, 1.0, 10.0)
        check_number("keep_elites", self.keep_elites, 0.0, 1.0)
        check_number("temperature", self.temperature, 0.0, 1e6, low_open=True)
        check_number("noise_std", self.noise_std, 0.0, 2.0, low_open=True)
        if not isinstance(self.weights, Mapping):
            raise ValueError(
                f"weights must be a mapping of term name to number, got {self.weights!r}"
            )
        object.__setattr__(self, "weights", dict(self.weights))
        self.rollout  # noqa: B018 - validates the rollout fields

    @property
    def rollout(self) -> RolloutSettings:
        """The rollout part, validated by RolloutSettings."""
        return RolloutSettings(
            particles=self.particles,
            propagation=self.propagation,
            sample=self.sample,
            discount=self.discount,
            disagreement_penalty=self.disagreement_penalty,
            risk=self.risk,
        )

    def elites(self, population: int) -> int:
        """Elite count for a population (at least 1)."""
        return max(1, round(self.elite_fraction * population))

    def changed(self, **changes: Any) -> PlannerSettings:
        """A new validated settings object with ``changes``; unknown names are refused."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; settings: {sorted(known)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
