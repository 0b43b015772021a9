"""The settings the page lets an operator change, with the limits the settings themselves check
(controller.planners.settings, controller.rollout.evaluator), so a control never offers what
the service would refuse for being out of range. Weights are added by the page, one per reward
term of the task.

``slider_max`` only bounds a control's slider, for a useful resolution; its number field goes
to the setting's own maximum.
"""

from __future__ import annotations

from typing import Any

from controller.planners.registry import PLANNERS
from controller.planners.settings import (
    MAX_BUDGET_MS,
    MAX_HORIZON,
    MAX_ITERATIONS,
    MAX_MARGIN_MS,
    MAX_POPULATION,
)
from controller.rollout.settings import MAX_PARTICLES, PROPAGATIONS


def controls() -> list[dict[str, Any]]:
    """One entry per control: ``name`` (the setting), ``kind`` (int, float or choice), its
    limits or choices, and help text."""
    return [
        {
            "name": "planner",
            "kind": "choice",
            "choices": list(PLANNERS),
            "help": "optimizer, or act with the learned policy",
        },
        {
            "name": "horizon",
            "kind": "int",
            "min": 1,
            "max": MAX_HORIZON,
            "slider_max": 100,
            "help": "steps planned ahead",
        },
        {
            "name": "population",
            "kind": "int",
            "min": 1,
            "max": MAX_POPULATION,
            "slider_max": 2000,
            "help": "candidates per iteration",
        },
        {
            "name": "iterations",
            "kind": "int",
            "min": 1,
            "max": MAX_ITERATIONS,
            "slider_max": 20,
            "help": "optimizer iterations per plan",
        },
        {
            "name": "propagation",
            "kind": "choice",
            "choices": list(PROPAGATIONS),
            "help": "how particles move through the ensemble",
        },
        {
            "name": "particles",
            "kind": "int",
            "min": 1,
            "max": MAX_PARTICLES,
            "slider_max": 50,
            "help": "rollouts per candidate",
        },
        {
            "name": "budget_ms",
            "kind": "float",
            "min": 0.0,
            "max": MAX_BUDGET_MS,
            "nullable": True,
            "exclusive_min": True,
            "help": "fixed realtime planning budget (empty: the period less the margin)",
        },
        {
            "name": "margin_ms",
            "kind": "float",
            "min": 0.0,
            "max": MAX_MARGIN_MS,
            "help": "realtime budget = control period - margin - wait",
        },
    ]
