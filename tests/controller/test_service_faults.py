"""The service when things go wrong: a controller killed under a realtime robot, kill -9 of the
service mid-episode (no answered transition lost), and the simulated robots' side of it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from models.store import TransitionReader
from sim_bridge import protocol as p
from sim_bridge.hardware import BridgeSettings
from sim_bridge.link import BridgeLink
from sim_bridge.mujoco_bridge import MujocoBridge
from tests.controller.service_fixtures import (
    SPEC,
    free_port,
    send_state,
    serve_process,
    wait_for,
)


def test_realtime_bridge_makes_the_robot_safe_when_the_controller_dies_and_reconnects(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = BridgeSettings(watchdog_s=0.1, reconnect_s=0.4, connect_timeout_s=60.0)
    bridge = MujocoBridge("cartpole-swingup", "rt", safe_action=[0.0], settings=settings)
    controller = serve_process(port, tmp_path)
    thread = threading.Thread(target=bridge.run, args=(f"tcp://127.0.0.1:{port}",),
                              kwargs={"mode": "realtime"})  # fmt: skip
    thread.start()
    try:
        wait_for(lambda: bridge.stats.actions >= 20, 60)
        assert bridge.stats.actions >= 20 and bridge.stats.safe_actions == 0
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        wait_for(lambda: bridge.stats.safe_actions >= 3, 5)
        delay = bridge.stats.first_safe_after_s
        assert delay is not None and delay <= settings.watchdog_s + SPEC.control_period + 0.02
        before = bridge.stats.actions
        controller = serve_process(port, tmp_path)
        wait_for(lambda: bridge.stats.actions >= before + 10, 60)
        assert bridge.stats.actions >= before + 10, "no actions after the controller came back"
        assert bridge.stats.link.reconnects >= 1
    finally:
        bridge.stop_event.set()
        thread.join(timeout=10)
        controller.kill()
        controller.wait()


def test_a_killed_service_loses_no_transition_an_action_answered(tmp_path: Path) -> None:
    """kill -9 of ``tickmpc serve`` mid-episode: every transition whose next STATE got an
    ACTION is in the store afterwards."""
    port = free_port()
    controller = serve_process(port, tmp_path)
    link = BridgeLink(f"tcp://127.0.0.1:{port}", SPEC, "lockstep")
    answered: list[int] = []  # steps of the STATEs that an ACTION answered
    done = threading.Event()

    def robot() -> None:
        rng = np.random.default_rng(0)
        link.connect(60.0)
        step, applied = 0, None
        while not done.is_set():
            seq = send_state(link, step, rng.standard_normal(4), applied)
            while (reply := link.receive(0.5)) is not None and reply.type != p.ACTION:
                pass
            if reply is None or reply["answers"] != seq:
                return  # the service is gone
            answered.append(step)
            step, applied = step + 1, float(reply["action"][0])

    thread = threading.Thread(target=robot)
    thread.start()
    try:
        wait_for(lambda: len(answered) >= 300, 60)
        controller.send_signal(signal.SIGKILL)  # mid-episode, while the robot is stepping
        controller.wait()
    finally:
        done.set()
        thread.join(timeout=10)
        link.close()
    acknowledged = {k - 1 for k in answered if k >= 1}  # STATE k completes transition k - 1
    assert len(acknowledged) >= 299
    stored = TransitionReader(tmp_path / "store").read_all()
    assert acknowledged <= set(stored.step.tolist()), sorted(acknowledged - set(stored.step))


@pytest.mark.parametrize("task", ["cartpole-swingup", "pendulum", "inverted-pendulum",
                                  "reacher", "half-cheetah", "pusher"])  # fmt: skip
def test_every_simulated_robot_says_a_hello_its_controller_task_accepts(task: str) -> None:
    from controller.tasks import get_task

    bridge = MujocoBridge(task, "sim")
    spec, expected = bridge.spec, get_task(task)
    assert (spec.obs_dim, spec.act_dim) == (expected.obs_dim, expected.act_dim)
    np.testing.assert_allclose(spec.action_low, expected.action_low)
    np.testing.assert_allclose(spec.action_high, expected.action_high)
    assert spec.control_period == pytest.approx(expected.control_period, rel=1e-3)
    bridge.close()


def test_emulated_noise_and_delay_change_what_the_robot_reports() -> None:
    from sim_bridge.mujoco_bridge import Emulation

    clean = MujocoBridge("cartpole-swingup", "clean", seed=5)
    noisy = MujocoBridge("cartpole-swingup", "noisy", seed=5,
                         emulation=Emulation(obs_noise_std=0.1, action_delay_ticks=2))  # fmt: skip
    for bridge in (clean, noisy):
        bridge.begin_episode()
    first = [b.read_state().obs for b in (clean, noisy)]
    assert 0 < np.abs(first[0] - first[1]).max() < 1.0  # same reset, noisy observation
    applied = []
    for k in range(4):
        for b in (clean, noisy):
            b.apply_action(np.array([0.1 * (k + 1)]))
        applied.append([float(b.read_state().applied[0]) for b in (clean, noisy)])  # type: ignore[index]
    # clean applies each action at the next step; the delayed one two ticks later
    assert [a[0] for a in applied] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [a[1] for a in applied] == pytest.approx([0.0, 0.0, 0.1, 0.2])
