"""Sampling planners over the learned model: random shooting, CEM, iCEM, MPPI."""

from controller.planners.base import Plan, WarmStart
from controller.planners.planner import Planner
from controller.planners.registry import OPTIMIZERS, PLANNERS, make_optimizer
from controller.planners.settings import PlannerSettings

__all__ = [
    "OPTIMIZERS",
    "PLANNERS",
    "Plan",
    "Planner",
    "PlannerSettings",
    "WarmStart",
    "make_optimizer",
]
