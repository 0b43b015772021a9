"""The one list of planners: the optimizers (:data:`OPTIMIZERS`, each with its class and its
options dataclass) and the learned policy.

``PlannerSettings.planner`` is one of PLANNERS: an optimizer of OPTIMIZERS, which the
:class:`~controller.planners.planner.Planner` runs, or "policy", with which the service acts
through the learned policy instead (:mod:`controller.planners.policy`).
``PlannerSettings.options`` is an instance of ``OPTIONS[planner]``. Adding an optimizer is one
module and one line in :mod:`controller.planners.optimizers.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from controller.planners.optimizers import OPTIMIZERS
from controller.planners.policy import POLICY, PolicySettings

__all__ = ["OPTIMIZERS", "OPTIONS", "PLANNERS"]

PLANNERS = (*OPTIMIZERS, POLICY)
OPTIONS: Mapping[str, type] = MappingProxyType(
    {**{name: entry.options for name, entry in OPTIMIZERS.items()}, POLICY: PolicySettings}
)
"""Each planner's options dataclass (every field defaulted and validated on construction)."""
