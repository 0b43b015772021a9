"""The service and the task it serves: a task taken from the first robot's HELLO (``--task
auto``), and a learned reward that a robot must feed."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from controller.service import MPCService, ServiceConfig
from controller.service.control import request
from models.store import TransitionReader
from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink, Refused, RobotSpec
from tests.controller.service_fixtures import (
    CARTPOLE,
    FAST,
    LOOPBACK,
    TICKMPC,
    free_port,
    reply_to,
)


def _welcome_or_error(link: BridgeLink, timeout_s: float = 10.0) -> p.Message:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        link.say_hello()  # again every 0.5 s, as a bridge does: the first may precede the link
        msg = link.receive(0.5)
        if msg is not None and msg.type in (p.WELCOME, p.ERROR):
            return msg
    raise AssertionError("no answer to HELLO")


def test_serve_auto_drives_and_records_a_robot_no_task_was_written_for(tmp_path: Path) -> None:
    """Real processes: ``tickmpc serve --task auto`` and ``tickmpc bridge --task Swimmer-v5``
    (a gymnasium environment no built-in task defines)."""
    endpoint, control, telemetry = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    serve = subprocess.Popen(
        [*TICKMPC, "serve", "--task", "auto", "--endpoint", endpoint, "--control", control,
         "--telemetry", telemetry, "--store", str(tmp_path / "store"),
         "--models", str(tmp_path / "models")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        bridge = subprocess.run(
            [*TICKMPC, "bridge", "--task", "Swimmer-v5", "--connect", endpoint, "--mode",
             "lockstep", "--episodes", "1", "--robot", "swimmer-1"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert bridge.returncode == 0, bridge.stdout + bridge.stderr
        summary = json.loads(bridge.stdout.strip().splitlines()[-1])
        assert summary["episodes"] == 1 and summary["actions"] == 1000
        assert summary["safe_actions"] == 0 and summary["bad_actions"] == 0
        # Asked in-process: a `tickmpc status` process can take longer to start on a loaded
        # machine than the service waits (stale_after_s) before forgetting a robot that left.
        served = request(control, "status", timeout_s=30.0)
        assert served["task"] == "Swimmer-v5" and served["transitions"] == 1000
        assert served["robots"]["swimmer-1"]["episodes"] == 1
        # A robot of other dims is refused, naming the difference; the service keeps serving.
        other = subprocess.run(
            [*TICKMPC, "bridge", "--task", "cartpole-swingup", "--connect", endpoint, "--mode",
             "lockstep", "--episodes", "1", "--robot", "cartpole-1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert other.returncode == 1 and "mismatch" in other.stderr and "dims obs 8" in other.stderr
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=30)
    assert serve.returncode == 0, out
    assert "reward and termination learned" in out
    data = TransitionReader(tmp_path / "store").read_all()
    assert data.obs.shape == (1000, 8) and data.act.shape == (1000, 2)
    assert summary["returns"][0] == round(float(data.reward.sum()), 3)  # the robot's rewards


def test_a_learned_reward_needs_a_robot_that_reports_it(tmp_path: Path) -> None:
    service = MPCService(
        CARTPOLE.learned(reward=True),
        ServiceConfig(endpoint=LOOPBACK, control=LOOPBACK, telemetry=LOOPBACK,
                        store=tmp_path / "store"),
        FAST,
    )  # fmt: skip
    service.start()
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    spec = RobotSpec("quiet", "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04)
    try:
        quiet = BridgeLink(service.endpoints["endpoint"], spec, "lockstep")
        with pytest.raises(Refused, match=r"learns the reward .* this robot reports none"):
            _welcome_or_error(quiet)  # a mismatch ERROR: no retry can help
        quiet.close()
        spec = RobotSpec("honest", "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04, reward=True)
        link = BridgeLink(service.endpoints["endpoint"], spec, "lockstep")
        welcome = _welcome_or_error(link)
        assert welcome.type == p.WELCOME and welcome["learns_reward"] is True
        obs = np.zeros(4)
        link.send(link.message(p.STATE, 1, step=0, reward=None, terminated=False,
                               truncated=False, obs=obs))  # fmt: skip
        assert reply_to(link).type == p.ACTION  # an episode's first STATE has no reward
        link.send(link.message(p.STATE, 1, step=1, reward=None, terminated=False,
                               truncated=False, obs=obs, applied=np.zeros(1)))  # fmt: skip
        error = reply_to(link)
        assert error.type == p.ERROR and error["code"] == "bad_field"
        assert "needs its reward" in error["reason"]
        link.send(link.message(p.STATE, 1, step=1, reward=0.5, terminated=False,
                               truncated=False, obs=obs, applied=np.zeros(1)))  # fmt: skip
        assert reply_to(link).type == p.ACTION
        link.close()
    finally:
        service.stop_event.set()
        thread.join(timeout=10)
        service.close()
    data = TransitionReader(tmp_path / "store").read_all()
    assert data.reward.tolist() == [0.5]  # the refused STATE recorded nothing
