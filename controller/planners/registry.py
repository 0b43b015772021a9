"""The one list of planners: each optimizer with its class and its options dataclass, and the
learned policy.

``PlannerSettings.planner`` is one of PLANNERS: an optimizer of OPTIMIZERS, which the
:class:`~controller.planners.planner.Planner` runs, or "policy", with which the service acts
through the learned policy instead (:mod:`controller.planners.policy`).
``PlannerSettings.options`` is an instance of ``OPTIONS[planner]``. Adding an optimizer is one
module and one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from controller.planners.base import Optimizer
from controller.planners.cem import CEM, CEMOptions
from controller.planners.icem import ICEM, ICEMOptions
from controller.planners.mppi import MPPI, MPPIOptions
from controller.planners.policy import POLICY, PolicyOptions
from controller.planners.random_shooting import RandomOptions, RandomShooting

if TYPE_CHECKING:
    from controller.planners.settings import PlannerSettings


@dataclass(frozen=True)
class OptimizerEntry:
    make: Callable[[Any, PlannerSettings, np.ndarray, np.ndarray], Optimizer]
    """(options, settings, low [A], high [A]) -> a fresh optimizer."""
    options: type
    """Its frozen options dataclass (every field defaulted and validated on construction)."""


OPTIMIZERS: Mapping[str, OptimizerEntry] = MappingProxyType(
    {
        "random": OptimizerEntry(RandomShooting, RandomOptions),
        "cem": OptimizerEntry(CEM, CEMOptions),
        "icem": OptimizerEntry(ICEM, ICEMOptions),
        "mppi": OptimizerEntry(MPPI, MPPIOptions),
    }
)
PLANNERS = (*OPTIMIZERS, POLICY)
OPTIONS: Mapping[str, type] = MappingProxyType(
    {**{name: entry.options for name, entry in OPTIMIZERS.items()}, POLICY: PolicyOptions}
)
"""Each planner's options dataclass (every field defaulted and validated on construction)."""


def make_optimizer(settings: PlannerSettings, low: np.ndarray, high: np.ndarray) -> Optimizer:
    """The optimizer ``settings.planner`` names, configured by ``settings`` (KeyError for
    "policy", which has none)."""
    return OPTIMIZERS[settings.planner].make(settings.options, settings, low, high)
