"""check_bridge on real sockets: it passes a real MuJoCo bridge and names what breaks bad ones."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from sim_bridge.checker import check_bridge
from sim_bridge.hardware import BridgeStats, HardwareBridge, Reading
from sim_bridge.link import RobotSpec, describe
from sim_bridge.mujoco_bridge import Emulation, MujocoBridge


class ToyRobot(HardwareBridge):
    """A cart on a frictionless rail, pushed by a bounded force: a correct hand-written bridge
    that the broken variants below each spoil in one way."""

    def __init__(self, period: float = 0.02, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__(RobotSpec("toy", "toy", 2, 1, (low,), (high,), period))
        self.x, self.v, self.force, self.step = 0.0, 0.0, np.zeros(1), 0

    def begin_episode(self) -> None:
        self.x, self.v, self.force, self.step = 0.5, 0.0, np.zeros(1), 0

    def read_state(self) -> Reading:
        if self.step:
            self.v += float(self.force[0]) * self.spec.control_period
            self.x += self.v * self.spec.control_period
        self.step += 1
        return Reading(np.array([self.x, self.v]), reward=-(self.x**2), applied=self.force.copy())

    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        self.force = action.copy()

    def safe_stop(self) -> None:
        self.force = np.zeros(1)


class WrongObsLength(ToyRobot):
    def read_state(self) -> Reading:
        reading = super().read_state()
        return Reading(np.append(reading.obs, 0.0), reading.reward, applied=reading.applied)


class IgnoresActions(ToyRobot):
    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        pass  # e.g. a motor left disabled: it reports the force truly applied, always zero


class NanAtStepThree(ToyRobot):
    def read_state(self) -> Reading:
        reading = super().read_state()
        return Reading(reading.obs * np.nan) if self.step == 4 else reading


class RaisesInApply(ToyRobot):
    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        if self.step == 3:
            raise RuntimeError("motor driver timeout")
        super().apply_action(action)


class SlowSensor(ToyRobot):
    def read_state(self) -> Reading:
        time.sleep(1.8 * self.spec.control_period)  # overruns every tick
        return super().read_state()


class BrokenSafeStop(ToyRobot):
    def safe_stop(self) -> None:
        raise OSError("brake not found")


class AsksForTheSpec(ToyRobot):
    """Learns what the controller serves before it says HELLO."""

    def run(
        self, endpoint: str, *, mode: str = "realtime", episodes: int | None = None
    ) -> BridgeStats:
        self.served = describe(endpoint, self.spec.robot, timeout_s=2.0)
        return super().run(endpoint, mode=mode, episodes=episodes)


def test_answers_describe_with_the_bridges_own_spec() -> None:
    bridge = AsksForTheSpec()
    report = check_bridge(bridge, ticks=5)
    assert report.ok, report.summary()
    assert bridge.served == {
        "task": "toy", "obs_dim": 2, "act_dim": 1, "control_period": 0.02, "episode_steps": 5,
        "learns_reward": False,
        "action_low": (-1.0,), "action_high": (1.0,),
    }  # fmt: skip


def test_passes_mujoco_cartpole_in_lockstep() -> None:
    bridge = MujocoBridge("cartpole-swingup")
    before = bridge.stats
    report = check_bridge(bridge, ticks=50)
    assert report.ok, report.summary()
    assert report.ticks == report.actions in (50, 51)  # the final STATE may come after the stop
    assert report.state_interval_s is not None and report.state_interval_s < 0.04
    # The bridge is left ready for a real run.
    assert bridge.stats is before and not bridge.stop_event.is_set()


def test_passes_mujoco_cartpole_in_realtime() -> None:
    report = check_bridge(MujocoBridge("cartpole-swingup"), mode="realtime", ticks=10)
    assert report.ok, report.summary()
    assert report.state_interval_s == pytest.approx(0.04, rel=0.2)


def test_passes_a_hand_written_bridge_and_a_known_action_delay() -> None:
    assert check_bridge(ToyRobot()).ok
    delayed = MujocoBridge("cartpole-swingup", emulation=Emulation(action_delay_ticks=2))
    assert check_bridge(delayed, ticks=20, action_delay_ticks=2).ok


def test_an_ignored_action_fails() -> None:
    report = check_bridge(IgnoresActions(), ticks=20)
    assert not report.ok
    assert any("apply_action has no effect" in m for m in report.problems), report.summary()


def test_an_unannounced_action_delay_fails() -> None:
    delayed = MujocoBridge("cartpole-swingup", emulation=Emulation(action_delay_ticks=1))
    report = check_bridge(delayed, ticks=20)
    assert any("but the ACTION for step" in m for m in report.problems), report.summary()


@pytest.mark.parametrize(
    ("bridge", "expected"),
    [
        (WrongObsLength(), "obs has 3 values, obs_dim is 2"),
        (NanAtStepThree(), "nonfinite: STATE.obs holds NaN"),
        (RaisesInApply(), "apply_action() raised RuntimeError: motor driver timeout"),
        (BrokenSafeStop(), "safe_stop() raised OSError: brake not found"),
    ],
    ids=["obs-length", "nan", "apply-raises", "safe-stop-raises"],
)
def test_a_broken_bridge_fails_naming_the_problem(bridge: HardwareBridge, expected: str) -> None:
    report = check_bridge(bridge, ticks=10, timeout_s=5.0)
    assert not report.ok
    assert any(expected in m for m in report.problems), report.summary()


def test_inverted_bounds_are_refused_before_any_socket_opens() -> None:
    with pytest.raises(ValueError, match="low below its high"):
        ToyRobot(low=1.0, high=-1.0)


def test_realtime_pacing_off_by_more_than_20_percent_fails() -> None:
    report = check_bridge(SlowSensor(), mode="realtime", ticks=6)
    assert not report.ok
    assert any("realtime pacing" in m for m in report.problems), report.summary()
