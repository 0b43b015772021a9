"""Planner settings: one validated, frozen object that operators change live.

Three parts: the common fields (planner, horizon, population, iterations, budget, seed, reward
weights), the rollout settings (:class:`~controller.rollout.settings.RolloutSettings`) and the
active planner's own options (its class in :data:`~controller.planners.registry.OPTIONS`).
The optimizers never see this object: :func:`make_optimizer` gives the one it names its numbers
and its options.
Every value is checked against a named limit at construction, so a change builds a new
settings object (:meth:`PlannerSettings.changed`) and swaps it in whole: an invalid value
raises ``ValueError`` naming the setting and its allowed range, and nothing changes.

Outside the code the settings are one flat namespace (``tickmpc tune horizon=30 noise_beta=3``,
the ``[planner]`` table of a config file, the control socket's ``settings``): every name is
unique across the three parts, and an option belongs to the planner being switched to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from controller.checks import check_choice, check_int, check_number
from controller.planners.optimizers import OPTIMIZERS, Optimizer
from controller.planners.registry import OPTIONS, PLANNERS
from controller.rollout.settings import RolloutSettings

MAX_HORIZON = 500
MAX_POPULATION = 100_000
MAX_ITERATIONS = 100
MAX_SEED = 2**63 - 1
MAX_MARGIN_MS = 1000.0
MAX_BUDGET_MS = 60000.0


@dataclass(frozen=True)
class PlannerSettings:
    """Everything that shapes a plan."""

    planner: str = "cem"
    """One of PLANNERS: an optimizer, "random", "cem", "icem" or "mppi", or "policy": act with
    the learned policy (no plan; see controller.planners.policy)."""
    horizon: int = 25
    """H: steps planned ahead (1..MAX_HORIZON). 25 steps is one second of cartpole, the
    embedded default, which does not swing up with 15."""
    population: int = 200
    """N: candidate sequences per iteration (1..MAX_POPULATION); iCEM's first iteration."""
    iterations: int = 3
    """Optimizer iterations per plan (1..MAX_ITERATIONS); fewer when the budget runs out."""
    margin_ms: float = 5.0
    """Realtime budget = control period - margin - time the state waited, in [0, 1000] ms."""
    budget_ms: float | None = None
    """A fixed realtime planning budget instead, in (0, 60000] ms (None: from the margin)."""
    seed: int = 0
    """Seed of the planner's random generator; a change reseeds every robot's planner."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Task reward weight overrides by term name (checked against the task by the planner);
    a change merges into the current overrides."""
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    """How candidates are rolled out through the ensemble."""
    options: Any = None
    """The active planner's options, an instance of ``OPTIONS[planner]`` (None: that class's
    defaults)."""

    def __post_init__(self) -> None:
        check_choice("planner", self.planner, PLANNERS)
        check_int("horizon", self.horizon, 1, MAX_HORIZON)
        check_int("population", self.population, 1, MAX_POPULATION)
        check_int("iterations", self.iterations, 1, MAX_ITERATIONS)
        check_number("margin_ms", self.margin_ms, 0.0, MAX_MARGIN_MS)
        if self.budget_ms is not None:
            check_number("budget_ms", self.budget_ms, 0.0, MAX_BUDGET_MS, low_open=True)
        check_int("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.weights, Mapping):
            raise ValueError(
                f"weights must be a mapping of term name to number, got {self.weights!r}"
            )
        object.__setattr__(self, "weights", dict(self.weights))
        if not isinstance(self.rollout, RolloutSettings):
            raise ValueError(f"rollout must be RolloutSettings, got {self.rollout!r}")
        kind = OPTIONS[self.planner]
        if self.options is None:
            object.__setattr__(self, "options", kind())
        elif type(self.options) is not kind:
            raise ValueError(f"planner {self.planner!r} takes {kind.__name__}, "
                             f"got {type(self.options).__name__}")  # fmt: skip

    @staticmethod
    def names(planner: str) -> list[str]:
        """Every setting name for ``planner``: common, rollout, then its options."""
        check_choice("planner", planner, PLANNERS)
        common = [f.name for f in fields(PlannerSettings) if f.name not in ("rollout", "options")]
        rollout = [f.name for f in fields(RolloutSettings)]
        return common + rollout + [f.name for f in fields(OPTIONS[planner])]

    def changed(self, changes: Mapping[str, Any] | None = None, **more: Any) -> PlannerSettings:
        """A new validated settings object with flat ``changes`` (see the module docstring).

        Switching ``planner`` keeps the options the two optimizers share (CEM's and iCEM's
        elite refit) and takes the new one's defaults for the rest. Unknown names, and options
        of another planner, are refused with the list of valid names; nothing changes.
        """
        changes = {**(changes or {}), **more}
        planner = changes.get("planner", self.planner)
        valid = self.names(planner)
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for planner {planner!r}; "
                             f"settings: {valid}")  # fmt: skip
        own = {f.name for f in fields(self)} - {"rollout", "options"}
        rollout_names = {f.name for f in fields(RolloutSettings)}
        kind = OPTIONS[planner]
        option_names = {f.name for f in fields(kind)}
        kept = {k: v for k, v in asdict(self.options).items() if k in option_names}
        common = {k: v for k, v in changes.items() if k in own}
        if "weights" in common:
            if not isinstance(common["weights"], Mapping):
                raise ValueError(f"weights must be a mapping of term name to number, "
                                 f"got {common['weights']!r}")  # fmt: skip
            common["weights"] = {**self.weights, **common["weights"]}
        return replace(
            self,
            **common,
            rollout=replace(
                self.rollout, **{k: v for k, v in changes.items() if k in rollout_names}
            ),
            options=kind(**{**kept, **{k: v for k, v in changes.items() if k in option_names}}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat form: what ``changed`` takes, ``tickmpc tune`` prints and files hold."""
        common = {f.name: getattr(self, f.name) for f in fields(self)}
        del common["rollout"], common["options"]
        return {**common, **asdict(self.rollout), **asdict(self.options)}

    def budget_s(self, control_period: float, waited_s: float) -> float:
        """A realtime plan's budget: fixed, or the period less the margin and the wait."""
        if self.budget_ms is not None:
            return self.budget_ms / 1000.0
        return max(control_period - self.margin_ms / 1000.0 - waited_s, 0.0)


def make_optimizer(settings: PlannerSettings, low: np.ndarray, high: np.ndarray) -> Optimizer:
    """The optimizer ``settings.planner`` names, given its population, iterations, the bounds
    ``low`` and ``high`` [A] and its options (KeyError for "policy", which has none)."""
    entry = OPTIMIZERS[settings.planner]
    return entry.make(settings.population, settings.iterations, low, high, settings.options)
