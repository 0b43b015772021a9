"""A HardwareBridge's session with a real service: kept alive while the robot's own methods take
longer than the service's ``stale_after_s``, said HELLO again once when the service forgot it
anyway, with honest returns when the service computes the reward; and a lockstep bridge whose
service is gone stops at SIGTERM (a real subprocess and a real signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.service import MPCService, ServiceConfig
from sim_bridge.hardware import BridgeSettings, HardwareBridge, Reading
from sim_bridge.link import RobotSpec
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    LOOPBACK,
    Running,
    free_port,
    start_service,
    stop_service,
    wait_for,
)

STALE_S = 1.0
"""The services' ``stale_after_s``: a hook twice as long would lose the session (the bridges
beat every 0.1 s)."""
STEPS = 5


class Busy(HardwareBridge):
    """A cartpole-shaped robot (lockstep) whose ``end_episode`` runs ``between`` (a callable of
    the ended episode's number, sleeping well past ``stale_after_s``); it never knows its
    reward (``reward`` None: the service computes it)."""

    def __init__(self, robot: str, between: Callable[[int], None]) -> None:
        spec = RobotSpec(robot, "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04)
        super().__init__(spec, BridgeSettings(episode_steps=STEPS, heartbeat_s=0.1))
        self.between, self.ended = between, 0
        self.applied: list[float] = []

    def read_state(self) -> Reading:
        return Reading(obs=np.array([0.0, np.pi, 0.0, 0.0]))

    def apply_action(self, action: np.ndarray) -> None:
        self.applied.append(float(action[0]))

    def safe_stop(self) -> None:
        pass

    def end_episode(self) -> None:
        self.ended += 1
        self.between(self.ended)


def start_at(root: Path, endpoint: str) -> Running:
    """A service like ``start_service``'s whose robot endpoint is ``endpoint``."""
    service = MPCService(
        CARTPOLE,
        ServiceConfig(endpoint=endpoint, control=LOOPBACK, telemetry=LOOPBACK,
                        models=root / "models", store=root / "store", stale_after_s=STALE_S),
        FAST,
    )  # fmt: skip
    service.start()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    return Running(service, thread, root)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Running]:
    running = start_service(tmp_path, stale_after_s=STALE_S)
    yield running
    stop_service(running)


def test_a_bridge_busy_between_episodes_keeps_its_session(served: Running) -> None:
    bridge = Busy("busy-1", lambda ended: time.sleep(2 * STALE_S if ended == 1 else 0.0))
    stats = bridge.run(served.endpoint, mode="lockstep", episodes=2)
    assert stats.episodes == 2 and stats.actions == 2 * STEPS
    # Never forgotten: one HELLO, no unknown_robot, the service counted both episodes.
    assert [code for code, _ in stats.link.errors] == [] and stats.link.hellos == 1
    assert stats.link.heartbeats >= 2 and stats.link.reconnects == 0
    wait_for(lambda: served.service.status()["robots"]["busy-1"]["episodes"] == 2, 10)
    status = served.service.status()
    assert status["forgotten_robots"] == 0
    assert status["robots"]["busy-1"]["transitions"] == 2 * STEPS
    # The service computed the rewards; the bridge does not pretend they summed to 0.
    assert stats.returns == [None, None]
    assert status["robots"]["busy-1"]["last_return"] is not None


def test_a_forgotten_robot_says_hello_again_once_and_goes_on(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = start_at(tmp_path / "a", endpoint)
    later: list[Running] = []

    def restart(ended: int) -> None:
        """After episode 1: the service restarts (it knows no robot), on the same port."""
        if ended == 1:
            stop_service(first)
            later.append(start_at(tmp_path / "b", endpoint))
            # Still inside the hook: the keeper's HEARTBEAT meets unknown_robot, says HELLO.
            wait_for(lambda: "again" in later[0].service.status()["robots"], 20)

    bridge = Busy("again", restart)
    try:
        stats = bridge.run(endpoint, mode="lockstep", episodes=2)
        assert later and "again" in later[0].service.status()["robots"]
        assert stats.episodes == 2 and stats.actions == 2 * STEPS
        # One HELLO for the lapse, not one per refused message; nothing of episode 2 refused.
        assert [code for code, _ in stats.link.errors] == ["unknown_robot"]
        assert stats.link.hellos == 2
        wait_for(lambda: later[0].service.status()["robots"]["again"]["episodes"] == 1, 10)
        robot = later[0].service.status()["robots"]["again"]
        assert robot["transitions"] == STEPS and robot["errors"] == 0
    finally:
        for running in later:
            stop_service(running)


BRIDGE_SCRIPT = """
import signal, sys
import numpy as np
from sim_bridge.hardware import BridgeSettings, HardwareBridge, Reading
from sim_bridge.link import RobotSpec

class Sim(HardwareBridge):
    acted = False
    def read_state(self):
        return Reading(obs=np.zeros(4))
    def apply_action(self, action):
        if not self.acted:
            self.acted = True
            print("acted", flush=True)
    def safe_stop(self):
        pass

# Lockstep waits for each ACTION in polls of watchdog_s: five minutes here.
settings = BridgeSettings(watchdog_s=300.0, reconnect_s=300.0, episode_steps=10_000)
bridge = Sim(RobotSpec("term", "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04), settings)
signal.signal(signal.SIGTERM, lambda *_: bridge.stop_event.set())
stats = bridge.run(sys.argv[1], mode="lockstep", episodes=1)
print("stopped", stats.episodes, flush=True)
"""


def test_a_lockstep_bridge_whose_service_is_gone_stops_at_sigterm(tmp_path: Path) -> None:
    running = start_service(tmp_path)
    script = tmp_path / "bridge.py"
    script.write_text(textwrap.dedent(BRIDGE_SCRIPT))
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), running.endpoint], cwd=root, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "acted"  # served: in its episode's loop
        stop_service(running)  # gone: the bridge waits for an ACTION that never comes
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - start < 5.0
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert out.splitlines()[-1] == "stopped 1"  # run() returned, the episode ended
