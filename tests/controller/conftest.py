"""Shared fixtures: ``served``, a running service over a published cartpole model;
``policy_files`` and ``policy_evaluator``, the exact models and SAC policies of the tests of
planning with a policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.rollout.evaluator import RolloutEvaluator
from tests.controller.policy_models import PENDULUM, PolicyFiles
from tests.controller.service_fixtures import (
    Running,
    publish_cartpole,
    start_service,
    stop_service,
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Running]:
    publish_cartpole(tmp_path / "models")
    running = start_service(tmp_path)
    yield running
    stop_service(running)


@pytest.fixture(scope="module")
def policy_files(tmp_path_factory: pytest.TempPathFactory) -> PolicyFiles:
    return PolicyFiles(tmp_path_factory.mktemp("rollout_policy"))


@pytest.fixture(scope="module")
def policy_evaluator(policy_files: PolicyFiles) -> RolloutEvaluator:
    """The exact pendulum with the policy, one session per mode."""
    return RolloutEvaluator(policy_files.pendulum, PENDULUM, policy_path=policy_files.policy)
