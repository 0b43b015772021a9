"""The planner over a learned policy: a population of policy proposals plans the policy's own
action, and a cold plan starts from the policy's open-loop rollout (real ONNX Runtime sessions
over the exact pendulum)."""

import numpy as np
import pytest

from controller.planners import Planner, PlannerSettings
from controller.rollout.evaluator import RolloutEvaluator
from models.policy.export import PolicyRuntime
from tests.controller.policy_models import (
    OBS,
    PolicyFiles,
    closed_loop,
)

# --- 3. the planner over policy proposals only -------------------------------------------


@pytest.mark.parametrize("planner", ["cem", "icem", "mppi", "random"])
def test_a_policy_only_population_plans_the_policys_action(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles, planner: str
) -> None:
    settings = PlannerSettings(planner=planner, horizon=10, population=24, iterations=3)
    policy = settings.changed(policy_share=1.0, policy_noise=0.0)
    want = PolicyRuntime(policy_files.policy).predict(OBS)[0]

    plan = Planner(policy_evaluator, policy).plan(OBS)
    assert plan.iterations == 3 and not plan.fallback and plan.nonfinite == 0
    np.testing.assert_allclose(plan.action, want, atol=2e-5)
    plain = Planner(policy_evaluator, settings).plan(OBS)
    assert abs(float(plain.action[0] - want[0])) > 1e-3, "planning alone must not find it"


def test_a_cold_plan_starts_from_the_policys_rollout(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles
) -> None:
    """MPPI with one candidate, its nominal, and no proposals (share 0, a terminal value on):
    the cold plan is the policy's open-loop rollout; after reset again; a warm one its shift."""
    settings = PlannerSettings(planner="mppi", horizon=8, population=1, iterations=1)
    planner = Planner(policy_evaluator, settings.changed(value_weight=1.0))
    want, _, _ = closed_loop(policy_files.agent, OBS, 8, 1.0)
    first = planner.plan(OBS)
    np.testing.assert_allclose(first.actions, want, atol=2e-5)
    second = planner.plan(OBS)
    np.testing.assert_allclose(second.actions[:-1], first.actions[1:])
    planner.reset()
    np.testing.assert_allclose(planner.plan(OBS).actions, want, atol=2e-5)
    cold = Planner(policy_evaluator, settings).plan(
        OBS
    )  # no policy in use: the middle of the bounds
    np.testing.assert_array_equal(cold.actions, 0.0)
    untrusted = Planner(policy_evaluator, settings.changed(value_weight=1.0, policy_start=False))
    np.testing.assert_array_equal(untrusted.plan(OBS).actions, 0.0)  # policy in use, not trusted
    with pytest.raises(ValueError, match="policy_start must be true or false"):
        settings.changed(policy_start=1)
