"""Sampling planners over the learned model: random shooting, CEM, iCEM, MPPI; and acting with
the learned policy instead."""

from controller.planners.base import Plan, WarmStart
from controller.planners.planner import Planner
from controller.planners.policy import POLICY, PolicyActor, PolicySettings
from controller.planners.registry import OPTIMIZERS, OPTIONS, PLANNERS
from controller.planners.settings import PlannerSettings, make_optimizer

__all__ = [
    "OPTIMIZERS",
    "OPTIONS",
    "PLANNERS",
    "POLICY",
    "Plan",
    "Planner",
    "PlannerSettings",
    "PolicyActor",
    "PolicySettings",
    "WarmStart",
    "make_optimizer",
]
