"""What the service tests share: a service on loopback ports over a known cartpole model, a
probe bridge link, and the real CLI in a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.planners import PlannerSettings
from controller.service import MPCService, ServiceConfig
from controller.tasks import get_task
from models.registry import ModelDirectory
from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink, RobotSpec
from tests.controller.known_models import export_cartpole

LOOPBACK = "tcp://127.0.0.1:*"
FAST = PlannerSettings(planner="cem", horizon=15, population=100, iterations=2)
CARTPOLE = get_task("cartpole-swingup")
SPEC = RobotSpec("probe", "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04)
TICKMPC = [sys.executable, "-m", "controller.cli"]


@dataclass
class Running:
    service: MPCService
    thread: threading.Thread
    root: Path

    @property
    def endpoint(self) -> str:
        return self.service.endpoints["endpoint"]

    @property
    def control(self) -> str:
        return self.service.endpoints["control"]


def publish_cartpole(models: Path, version: int = 1) -> None:
    directory = ModelDirectory(models)
    models.mkdir(parents=True, exist_ok=True)
    export_cartpole(directory.path_of(version))
    directory.mark_latest(version)


def start_service(root: Path, planner: PlannerSettings = FAST, **settings: object) -> Running:
    service = MPCService(
        CARTPOLE,
        ServiceConfig(
            endpoint=LOOPBACK, control=LOOPBACK, telemetry=LOOPBACK,
            models=root / "models", store=root / "store",
            **{"stale_after_s": 60.0, "model_poll_s": 0.1, **settings},  # type: ignore[arg-type]
        ),
        planner,
    )  # fmt: skip
    service.start()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    return Running(service, thread, root)


def stop_service(running: Running) -> None:
    running.service.stop_event.set()
    running.thread.join(timeout=10)
    running.service.close()


def send_state(
    link: BridgeLink, step: int, obs: np.ndarray, applied: float | None = None, episode: int = 1
) -> int:
    extra = {} if applied is None else {"applied": np.array([applied])}
    msg = link.message(p.STATE, episode, step=step, reward=None, terminated=False, truncated=False,
                       obs=obs, **extra)  # fmt: skip
    link.send(msg)
    return msg.seq


def reply_to(link: BridgeLink, timeout_s: float = 10.0) -> p.Message:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        msg = link.receive(end - time.monotonic())
        if msg is not None and msg.type in (p.ACTION, p.ERROR):
            return msg
    raise AssertionError("no reply from the service")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_process(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    ports = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    return subprocess.Popen(
        [*TICKMPC, "serve", "--endpoint", f"tcp://127.0.0.1:{port}", "--control", ports[0],
         "--telemetry", ports[1], "--store", str(tmp / "store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(condition: Callable[[], object], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
