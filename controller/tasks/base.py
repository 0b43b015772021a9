"""What a task is: dims, bounds, timing, preprocessing, and a reward made of named terms.

A task's reward terms are torch functions of batched tensors, so the planner's rollout graph can
export them into ONNX next to the learned model. Terms are unweighted, named quantities; the
weights are data (``Task.weights``), so an operator can retune them without code, and each term's
value can be reported on its own.

The weighted sum is written once, in :meth:`Task.weighted_sum`: ``Task.reward`` calls it with
weights by name, the exported reward graph (:mod:`controller.rollout.reward_graph`) with its
``weights [T]`` input.

Shapes: ``...`` any leading batch dims (e.g. N candidates x H steps), S observation, A action,
T reward terms (in ``Task.weights`` order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

RewardTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""(obs [..., S], act [..., A], next_obs [..., S]) -> {term name: value [...]}."""

Termination = Callable[[torch.Tensor], torch.Tensor]
"""next_obs [..., S] -> terminated [...] (bool)."""


@dataclass(frozen=True)
class Task:
    """A control task the planner can optimize and a bridge can run."""

    name: str
    """Registry name, e.g. "cartpole-swingup"."""
    obs_dim: int
    """S."""
    act_dim: int
    """A."""
    action_low: tuple[float, ...]
    """Lower action bound per dimension [A]."""
    action_high: tuple[float, ...]
    """Upper action bound per dimension [A]."""
    control_period: float
    """Seconds between actions."""
    episode_steps: int
    """Steps before an episode is truncated."""
    terms: RewardTerms | None = None
    """The named, unweighted reward terms (None: the reward is unknown and learned from the
    rewards the robot reports, see ``reward_learned``)."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Default weight of each term; the reward is their weighted sum (empty when the reward is
    learned)."""
    terminated: Termination | None = None
    """Which next states end the episode (None: never, unless ``learn_termination``)."""
    learn_termination: bool = False
    """Episodes do end but the task cannot say when: the model learns the probability that a
    transition ends the episode from the robot's ``terminated`` flags (only without
    ``terminated``)."""
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    """Observation preprocessing spec for the model (see models.preprocess)."""
    env_id: str | None = None
    """The gymnasium id of the real environment, where there is one."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make(env_id, ...)`` that the task's definitions assume."""
    notes: str = ""
    """Deliberate differences from the environment's own reward, if any."""
    reference_return: float | None = None
    """The episode return a good controller is known to reach (a learning curve's reference
    line: PETS' 170 on the cartpole swing-up); None when the task has none."""

    def __post_init__(self) -> None:
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"{self.name}: action bounds must have {self.act_dim} entries")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError(f"{self.name}: every action_low must be below action_high")
        if self.control_period <= 0 or self.episode_steps < 1:
            raise ValueError(f"{self.name}: control_period and episode_steps must be positive")
        if self.terms is None and self.weights:
            raise ValueError(f"{self.name}: a learned reward has no term weights")

    @property
    def reward_learned(self) -> bool:
        """The reward is the model's prediction, not the task's terms."""
        return self.terms is None

    @property
    def termination_learned(self) -> bool:
        """Whether the episode ends is the model's prediction, not the task's function."""
        return self.terminated is None and self.learn_termination

    def learned(self, reward: bool = False, termination: bool = False) -> Task:
        """This task with its reward (``reward``) and/or its termination (``termination``)
        learned instead of computed: what ``--reward learned`` and ``--termination learned``
        run."""
        changes: dict[str, Any] = {}
        if reward:
            changes.update(terms=None, weights={})
        if termination:
            changes.update(terminated=None, learn_termination=True)
        return replace(self, **changes) if changes else self

    def validated_weights(self, changes: Mapping[str, float] | None = None) -> dict[str, float]:
        """The default weights with ``changes`` applied; unknown terms are refused."""
        weights = dict(self.weights)
        for name, value in (changes or {}).items():
            if name not in weights:
                raise ValueError(f"{self.name} has no reward term {name!r}; terms: {list(weights)}")
            if not isinstance(value, (int, float)) or value != value or abs(value) > 1e6:
                raise ValueError(f"weight {name!r} must be a finite number in [-1e6, 1e6]")
            weights[name] = float(value)
        return weights

    def weighted_sum(
        self,
        terms: Mapping[str, torch.Tensor],
        weights: Mapping[str, float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reward from term values ``{name: [...]}``: their sum weighted by ``weights``,
        by term name, or a tensor [T] in ``Task.weights`` order (None: ``Task.weights``).

        Terms are added in ``Task.weights`` order. Raises ValueError if the term names are not
        exactly the weights' names.
        """
        names = list(self.weights)
        if set(terms) != set(names):
            raise ValueError(f"{self.name}: reward terms {sorted(terms)} do not match the "
                             f"weights {sorted(names)}")  # fmt: skip
        w = self.weights if weights is None else weights
        if isinstance(w, Mapping):
            factors: list[float | torch.Tensor] = [w[name] for name in names]
        else:
            factors = [w[i] for i in range(len(names))]
        total = torch.zeros_like(terms[names[0]])
        for name, factor in zip(names, factors, strict=True):
            total = total + factor * terms[name]
        return total

    def reward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        next_obs: torch.Tensor,
        weights: Mapping[str, float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted sum of the terms: [...] (see :meth:`weighted_sum` for ``weights``)."""
        if self.terms is None:
            raise ValueError(f"{self.name}: the reward is learned; the task has no terms")
        return self.weighted_sum(self.terms(obs, act, next_obs), weights)

    def term_values(
        self,
        obs: np.ndarray | torch.Tensor,
        act: np.ndarray | torch.Tensor,
        next_obs: np.ndarray | torch.Tensor,
    ) -> dict[str, float]:
        """Each unweighted term of one transition (obs [S], act [A], next_obs [S]) as a float,
        in ``Task.weights`` order: what telemetry reports per tick. Computed in float64."""
        if self.terms is None:
            return {}
        with torch.inference_mode():
            # A copy: message arrays are read-only, which torch warns about when it shares them.
            x, a, x2 = (
                torch.tensor(np.asarray(v), dtype=torch.float64) for v in (obs, act, next_obs)
            )
            terms = self.terms(x, a, x2)
            return {name: float(terms[name]) for name in self.weights}
