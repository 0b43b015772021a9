"""Sampling planners over the learned model: random shooting, CEM, iCEM, MPPI."""

from controller.planners.base import Plan, WarmStart
from controller.planners.planner import OPTIMIZERS, Planner, make_optimizer
from controller.planners.settings import PLANNERS, PlannerSettings

__all__ = [
    "OPTIMIZERS",
    "PLANNERS",
    "Plan",
    "Planner",
    "PlannerSettings",
    "WarmStart",
    "make_optimizer",
]
