"""The ``served`` fixture: a running service over a published cartpole model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
