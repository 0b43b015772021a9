"""Service settings: where it listens, what it records and how it runs the model, fixed at
start. What an operator changes live is the planner's settings (controller.planners.settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from controller.checks import check_bool, check_number
from models.runtime import RuntimeConfig

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_endpoint(name: str, endpoint: str, allow_remote: bool) -> bool:
    """Refuse a non-loopback TCP bind unless ``allow_remote`` says so explicitly; returns
    whether ``endpoint`` is reachable beyond this machine."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return False
    if scheme != "tcp":
        raise ValueError(f"{name}: endpoint {endpoint!r} must be tcp://, ipc:// or inproc://")
    host = urlsplit(endpoint).hostname or ""
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise ValueError(
            f"{name}: {endpoint!r} is not loopback; pass allow_remote (--allow-remote) to bind it"
        )
    return host not in LOOPBACK_HOSTS


@dataclass(frozen=True)
class ServiceConfig:
    """Fixed for the service's lifetime (the live settings are PlannerSettings)."""

    endpoint: str = "tcp://127.0.0.1:5555"
    """ROUTER that bridges connect to."""
    control: str = "tcp://127.0.0.1:5556"
    """ROUTER for ``tickmpc tune`` / ``status`` and the learner's announcements."""
    telemetry: str = "tcp://127.0.0.1:5557"
    """PUB with one record per tick (see docs/protocol.md, "Telemetry")."""
    allow_remote: bool = False
    """Allow binding non-loopback TCP addresses (which needs ``keys`` and ``clients``)."""
    keys: Path | None = None
    """The service's CurveZMQ key pair, a ``.key_secret`` file of ``tickmpc keys``: with it
    every socket is encrypted and only accepted clients are served. Required for a
    non-loopback bind."""
    clients: Path | None = None
    """The directory of the client public keys (``.key`` files) the service accepts, read
    again when it changes; with ``keys``."""
    models: Path | None = None
    """Model directory to follow (None: no model; actions are random within bounds)."""
    store: Path | None = None
    """Transition store to record into (None: record nothing)."""
    durable: bool = False
    """fsync the store after every pass's write, so a power loss loses nothing answered either
    (without it each pass's transitions are written before its ACTIONs go out, which a killed
    service survives, but they may sit in the OS's cache)."""
    stale_after_s: float = 5.0
    """A robot silent this long is forgotten (it must say HELLO again)."""
    model_poll_s: float = 0.5
    """How often to look for a newer model version."""
    batched: bool = True
    """Plan the robots waiting in a pass together, each optimizer iteration one rollout run
    for all of them (False: one robot after another, each plan a run of its own; kept to
    measure what batching gains, benchmarks/fleet_scaling.py)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """ONNX Runtime options of the rollout sessions (device, threads, spinning, slices)."""

    def __post_init__(self) -> None:
        remote = [name for name in ("endpoint", "control", "telemetry")
                  if check_endpoint(name, getattr(self, name), self.allow_remote)]  # fmt: skip
        if (self.keys is None) != (self.clients is None):
            raise ValueError("keys and clients go together: the service's key pair and the "
                             "directory of the client keys it accepts")  # fmt: skip
        if remote and self.keys is None:
            raise ValueError(
                f"{', '.join(remote)}: binding beyond loopback needs CurveZMQ: keys (the "
                "service's .key_secret) and clients (a directory of the accepted clients' .key "
                "files); make key pairs with tickmpc keys"
            )
        for name in ("durable", "batched"):
            check_bool(name, getattr(self, name))
        check_number("stale_after_s", self.stale_after_s, 0.0, 3600.0, low_open=True)
        check_number("model_poll_s", self.model_poll_s, 0.0, 3600.0, low_open=True)
