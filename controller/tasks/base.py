"""What a task is: dims, bounds, timing, preprocessing, and a reward made of named terms.

A task's reward terms are torch functions of batched tensors, so the planner's rollout graph can
export them into ONNX next to the learned model. Terms are unweighted, named quantities; the
weights are data (``Task.weights``), so an operator can retune them without code, and each term's
value can be reported on its own.

The weighted sum is written once, in :meth:`Task.weighted_sum`: ``Task.reward`` calls it with
weights by name, the exported reward graph (:mod:`controller.tasks.export`) with its
``weights [T]`` input. A task's fields are checked once, when it is made (``__post_init__``).

Shapes: ``...`` any leading batch dims (e.g. N candidates x H steps), S observation, A action,
T reward terms (in ``Task.weights`` order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

RewardTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""(obs [..., S], act [..., A], next_obs [..., S]) -> {term name: value [...]}."""

Termination = Callable[[torch.Tensor], torch.Tensor]
"""next_obs [..., S] -> terminated [...] (bool)."""

AUTO = "auto"
"""The task reference that means: take the task from the first robot's HELLO (so no task is
called that)."""


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
        """Every field checked, in one place, for every task however it was made (built in,
        from a task file, a gymnasium id or a robot's HELLO): ValueError naming the task and
        what is wrong."""
        try:
            _check_fields(self)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None

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


def _check_fields(task: Task) -> None:
    """What :meth:`Task.__post_init__` checks: dims, bounds, timing, weights, preprocessing."""
    if not isinstance(task.name, str) or not task.name or task.name == AUTO:
        raise ValueError(f"name must be a non-empty string other than {AUTO!r}, got "
                         f"{task.name!r}")  # fmt: skip
    for name in ("obs_dim", "act_dim", "episode_steps"):
        value = getattr(task, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    bounds = []
    for name in ("action_low", "action_high"):
        try:
            values = np.asarray(getattr(task, name), np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {task.act_dim} numbers, got "
                             f"{getattr(task, name)!r}") from None  # fmt: skip
        if len(values) != task.act_dim:
            raise ValueError(f"action bounds must have {task.act_dim} entries ({name} has "
                             f"{len(values)})")  # fmt: skip
        if not np.isfinite(values).all():
            raise ValueError(f"{name} must be finite numbers, got {values.tolist()}")
        bounds.append(values)
    if (bounds[0] >= bounds[1]).any():
        raise ValueError("every action_low must be below action_high")
    period = task.control_period
    if (
        isinstance(period, bool)
        or not isinstance(period, (int, float))
        or not (math.isfinite(period) and period > 0)
    ):
        raise ValueError(f"control_period must be a positive, finite number of seconds, "
                         f"got {period!r}")  # fmt: skip
    ref = task.reference_return
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float))
                            or not math.isfinite(ref)):  # fmt: skip
        raise ValueError(f"reference_return must be a finite number or None, got {ref!r}")
    if not isinstance(task.weights, Mapping):
        raise ValueError(f"weights must be a dict of term name -> weight, got "
                         f"{type(task.weights).__name__}")  # fmt: skip
    if not isinstance(task.env_kwargs, Mapping):
        raise ValueError(f"env_kwargs must be a dict, got {type(task.env_kwargs).__name__}")
    for name, weight in task.weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight {name!r} must be a number, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weight {name!r} is {weight}: every weight must be finite")
    if task.terms is None and task.weights:
        raise ValueError("a learned reward has no term weights")
    if task.terms is not None and not task.weights:
        raise ValueError("reward terms need weights (a weight per term name)")
    if task.terminated is not None and task.learn_termination:
        raise ValueError("learn_termination is for a task without a terminated function")
    if task.preprocess:
        from models.preprocess import make_preprocessor  # torch modules: only where asked

        try:
            make_preprocessor({**task.preprocess, "obs_dim": task.obs_dim})
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"preprocess {dict(task.preprocess)}: {exc}") from None
