"""The rollout graph's steps written out for a fixed horizon instead of the ``Loop``: built only so
that ``benchmarks/plan_latency.py`` can measure what the loop costs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller.rollout.builder import Builder
from controller.rollout.parts import Mode, ModelGraph, PolicyParts
from controller.rollout.step import model_step


def unrolled(
    b: Builder,
    model: ModelGraph,
    mode: Mode,
    horizon: int,
    state0: str,
    seed: float | None,
    reads: Sequence[str],
    policy: PolicyParts | None,
) -> dict[str, str]:
    """The same steps as :func:`controller.rollout.step.loop`, written out for a fixed horizon."""
    steps: dict[str, list[str]] = {}
    state = state0
    for i in range(horizon):
        t = b.const(np.int64(i), "t")
        step = model_step(b, model, mode, t, state, f"s{i}/", seed, reads, policy)
        state = step["next_state"]
        for name, value in step.items():
            steps.setdefault(name, []).append(b.op("Unsqueeze", [value, b.ints(0)]))
    return {name: b.op("Concat", values, axis=0) for name, values in steps.items()}
