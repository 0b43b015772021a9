"""Service settings: where it listens and what it records (fixed at start), and the live
settings an operator changes over the control socket (swapped in whole, validated first)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.checks import check_int, check_number
from controller.planners.settings import PlannerSettings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_endpoint(name: str, endpoint: str, allow_remote: bool) -> None:
    """Refuse a non-loopback TCP bind unless ``allow_remote`` says so explicitly."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return
    if scheme != "tcp":
        raise ValueError(f"{name}: endpoint {endpoint!r} must be tcp://, ipc:// or inproc://")
    host = urlsplit(endpoint).hostname or ""
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise ValueError(
            f"{name}: {endpoint!r} is not loopback; pass allow_remote (--allow-remote) to bind it"
        )


@dataclass(frozen=True)
class ServiceSettings:
    """Fixed for the service's lifetime."""

    task: str = "cartpole-swingup"
    """The task every robot of this service runs (a HELLO for another task is refused)."""
    endpoint: str = "tcp://127.0.0.1:5555"
    """ROUTER that bridges connect to."""
    control: str = "tcp://127.0.0.1:5556"
    """ROUTER for ``tickmpc tune`` / ``status`` (JSON requests)."""
    telemetry: str = "tcp://127.0.0.1:5557"
    """PUB with one JSON record per tick (topic ``tick``)."""
    allow_remote: bool = False
    """Allow binding non-loopback TCP addresses."""
    models: Path | None = None
    """Model directory to follow (None: no model; actions are random within bounds)."""
    store: Path | None = None
    """Transition store to record into (None: record nothing)."""
    stale_after_s: float = 5.0
    """A robot silent this long is forgotten (it must say HELLO again)."""
    model_poll_s: float = 0.5
    """How often to look for a newer model version."""
    flush_s: float = 1.0
    """How often buffered transitions are written to the store (so the learner sees them)."""
    device: str = "cpu"
    """ONNX Runtime device for the rollout sessions."""
    rollout_slices: int = 1
    """Slices each rollout batch is cut into (RuntimeOptions.rollout_slices; 0: one per core
    on the CPU). One by default: the service shares the machine with the learner and the
    bridge, and slices are a fixed split, so a slice whose core is taken holds the plan up,
    while one session's thread pool moves work to the free core. Measured with realtime
    cartpole on 2 cores, the learner training beside it: 4.3% and 0.9% of ticks missed their
    deadline with slices (seeds 0, 1), 0.4% and 0.3% with one session."""

    def __post_init__(self) -> None:
        for name in ("endpoint", "control", "telemetry"):
            check_endpoint(name, getattr(self, name), self.allow_remote)
        check_number("stale_after_s", self.stale_after_s, 0.0, 3600.0, low_open=True)
        check_number("model_poll_s", self.model_poll_s, 0.0, 3600.0, low_open=True)
        check_number("flush_s", self.flush_s, 0.0, 3600.0, low_open=True)
        check_int("rollout_slices", self.rollout_slices, 0, 256)


@dataclass(frozen=True)
class LiveSettings:
    """What ``tickmpc tune`` changes; applies at every robot's next tick."""

    planner: PlannerSettings = field(default_factory=PlannerSettings)
    margin_ms: float = 5.0
    """Realtime budget = control period - margin - time the state waited (0..1000 ms)."""
    budget_ms: float | None = None
    """Fixed realtime planning budget instead (None: from the margin), (0, 60000] ms."""

    def __post_init__(self) -> None:
        check_number("margin_ms", self.margin_ms, 0.0, 1000.0)
        if self.budget_ms is not None:
            check_number("budget_ms", self.budget_ms, 0.0, 60000.0, low_open=True)

    def changed(self, changes: Mapping[str, Any]) -> LiveSettings:
        """New settings with ``changes`` (planner fields, ``weights``, ``margin_ms``,
        ``budget_ms``); raises ValueError naming the setting, and nothing changes."""
        own = {f.name for f in fields(self)} - {"planner"}
        mine = {k: v for k, v in changes.items() if k in own}
        theirs = {k: v for k, v in changes.items() if k not in own}
        if "weights" in theirs:
            theirs["weights"] = {**self.planner.weights, **dict(theirs["weights"])}
        return replace(self, planner=self.planner.changed(**theirs), **mine)

    def budget_s(self, control_period: float, waited_s: float) -> float:
        if self.budget_ms is not None:
            return self.budget_ms / 1000.0
        return max(control_period - self.margin_ms / 1000.0 - waited_s, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.planner.to_dict(), "margin_ms": self.margin_ms, "budget_ms": self.budget_ms}
