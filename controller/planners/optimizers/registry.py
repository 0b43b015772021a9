"""The one list of optimizers: each with its class and its options dataclass.

Every optimizer is made the same way, ``make(population, iterations, low, high, options)``:
numbers and its own options, never the planner's settings (which build it, see
:func:`controller.planners.settings.make_optimizer`). Adding an optimizer is one module and one
line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from controller.planners.optimizers.base import Optimizer
from controller.planners.optimizers.cem import CEM, CEMSettings
from controller.planners.optimizers.icem import ICEM, ICEMSettings
from controller.planners.optimizers.mppi import MPPI, MPPISettings
from controller.planners.optimizers.random_shooting import RandomSettings, RandomShooting


@dataclass(frozen=True)
class OptimizerEntry:
    make: Callable[[int, int, np.ndarray, np.ndarray, Any], Optimizer]
    """(population N, iterations per plan, low [A], high [A], options) -> a fresh optimizer."""
    options: type
    """Its frozen options dataclass (every field defaulted and validated on construction)."""


OPTIMIZERS: Mapping[str, OptimizerEntry] = MappingProxyType(
    {
        "random": OptimizerEntry(RandomShooting, RandomSettings),
        "cem": OptimizerEntry(CEM, CEMSettings),
        "icem": OptimizerEntry(ICEM, ICEMSettings),
        "mppi": OptimizerEntry(MPPI, MPPISettings),
    }
)
