"""The sampling optimizers over action sequences (random shooting, CEM, iCEM, MPPI), their
options and their registry. They know nothing of the planner's settings: each is given its
population, iterations, bounds and own options (see :mod:`.registry`)."""

from controller.planners.optimizers.base import Optimizer, WarmStart
from controller.planners.optimizers.registry import OPTIMIZERS, OptimizerEntry

__all__ = ["OPTIMIZERS", "Optimizer", "OptimizerEntry", "WarmStart"]
