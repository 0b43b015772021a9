"""A bridge for your own robot: a torque motor swinging a pendulum, served to a tickmpc controller.

Subclass ``HardwareBridge`` with three methods (``read_state``, ``apply_action``, ``safe_stop``)
and ``run`` does the rest: pacing, the wire protocol, the watchdog and reconnects. There is no
physical pendulum here, so :class:`PendulumDevice` stands in for the hardware: gymnasium's
Pendulum-v1 physics (g = 10, m = l = 1, |torque| <= 2, |speed| <= 8) integrated by its own
thread at 200 Hz, read and commanded like the registers of a motor driver. Replace it with your
driver; the bridge class stays as it is.

Run a controller for the task in one terminal and the bridge in another::

    tickmpc serve --task pendulum
    python examples/hardware_bridge.py --connect tcp://127.0.0.1:5555 --episodes 3

Check the bridge on its own first (no controller needed; exits 1 if the check fails)::

    python examples/hardware_bridge.py --check --episodes 0

Ask the controller what it serves before running (exits 1 if it is not this pendulum)::

    python examples/hardware_bridge.py --describe --episodes 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time

import numpy as np
import numpy.typing as npt

from sim_bridge.checker import check_bridge
from sim_bridge.hardware import BridgeSettings, HardwareBridge, Reading
from sim_bridge.link import Refused, RobotSpec, describe

MAX_TORQUE = 2.0
MAX_SPEED = 8.0
GRAVITY, MASS, LENGTH = 10.0, 1.0, 1.0
CONTROL_PERIOD = 0.05
"""The controller's pendulum task runs at 20 Hz; HELLO must say exactly this."""
PHYSICS_HZ = 200.0
EPISODE_STEPS = 200


def angle_normalize(theta: float) -> float:
    """``theta`` wrapped to [-pi, pi)."""
    return ((theta + math.pi) % (2 * math.pi)) - math.pi


class PendulumDevice:
    """The emulated hardware. Its physics runs on the wall clock in a thread of its own, as a
    real pendulum keeps moving whether or not anyone reads it; that is why the bridge runs in
    realtime mode (lockstep would read it faster than it moves, with a wrong time step)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._theta, self._speed, self._torque = math.pi, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pendulum-device", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.command(0.0)
        self._stop.set()
        self._thread.join()

    def home(self) -> None:
        """Start an episode where Pendulum-v1 does: angle U(-pi, pi), speed U(-1, 1) rad/s.
        (A real rig would let the pendulum settle, or swing it there.)"""
        theta, speed = self.rng.uniform([-math.pi, -1.0], [math.pi, 1.0])
        with self._lock:
            self._theta, self._speed, self._torque = float(theta), float(speed), 0.0

    def sense(self) -> tuple[float, float, float]:
        """(angle, angular speed, torque in effect), read together."""
        with self._lock:
            return self._theta, self._speed, self._torque

    def command(self, torque: float) -> None:
        # The motor driver's current limit: the device never exceeds it, whatever it is sent.
        with self._lock:
            self._torque = min(max(torque, -MAX_TORQUE), MAX_TORQUE)

    def _loop(self) -> None:
        h = 1.0 / PHYSICS_HZ
        start, steps = time.perf_counter(), 0
        while not self._stop.is_set():
            # Integrate up to the wall clock, so late wake-ups cost accuracy, never time.
            while (steps + 1) * h <= time.perf_counter() - start:
                with self._lock:
                    accel = 3 * GRAVITY / (2 * LENGTH) * math.sin(self._theta)
                    accel += 3.0 / (MASS * LENGTH**2) * self._torque
                    self._speed = min(max(self._speed + accel * h, -MAX_SPEED), MAX_SPEED)
                    self._theta += self._speed * h  # semi-implicit Euler, as Pendulum-v1
                steps += 1
            time.sleep(h)


class PendulumBridge(HardwareBridge):
    """Serves a :class:`PendulumDevice` as the controller's "pendulum" task."""

    def __init__(
        self,
        device: PendulumDevice,
        robot: str = "pendulum-hw",
        settings: BridgeSettings | None = None,
    ) -> None:
        spec = RobotSpec(
            robot=robot,
            task="pendulum",
            obs_dim=3,
            act_dim=1,
            action_low=(-MAX_TORQUE,),
            action_high=(MAX_TORQUE,),
            control_period=CONTROL_PERIOD,
            reward=True,  # read_state reports the reward: a controller may learn it
        )
        super().__init__(spec, settings or BridgeSettings(episode_steps=EPISODE_STEPS))
        self.device = device
        self._previous: tuple[float, float] | None = None

    def begin_episode(self) -> None:
        self.device.home()
        self._previous = None

    def read_state(self) -> Reading:
        theta, speed, torque = self.device.sense()
        reward = None
        if self._previous is not None:  # Pendulum-v1 charges the state the step started from
            th, thdot = self._previous
            reward = -(angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * torque**2)
        self._previous = (theta, speed)
        # ``applied`` is the torque the device holds now, i.e. what acted during the step just
        # ended: the previous ACTION, or 0 if the watchdog stopped the motor, or the old one if
        # an ACTION came late. The controller learns from it, so it must be the truth.
        return Reading(
            obs=np.array([math.cos(theta), math.sin(theta), speed]),
            reward=reward,
            applied=np.array([torque]),
        )

    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        self.device.command(float(action[0]))

    def safe_stop(self) -> None:
        # Zero torque: the pendulum then hangs down by itself, the safe state of this robot.
        self.device.command(0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", default="tcp://127.0.0.1:5555", help="controller endpoint")
    parser.add_argument("--robot", default="pendulum-hw", help="robot id, unique per controller")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to run (0: none)")
    parser.add_argument("--check", action="store_true", help="run check_bridge first")
    parser.add_argument("--describe", action="store_true", help="ask what the controller serves")
    parser.add_argument("--check-ticks", type=int, default=40, help="ticks the check runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode starts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    device = PendulumDevice(args.seed)
    device.start()
    bridge = PendulumBridge(device, args.robot)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop_event.set())
    try:
        if args.check:
            report = check_bridge(bridge, mode="realtime", ticks=args.check_ticks)
            print(report.summary())
            if not report.ok:
                return 1
        if args.describe:
            served = describe(args.connect, args.robot)
            print(json.dumps({"served": served}))
            if problems := bridge.spec.differences(served):
                print(f"error: the controller serves another task: {problems}", file=sys.stderr)
                return 1
        if args.episodes > 0:
            stats = bridge.run(args.connect, mode="realtime", episodes=args.episodes)
            summary = {
                "episodes": stats.episodes,
                "returns": [None if r is None else round(r, 2) for r in stats.returns],
                "ticks": stats.ticks,
                "safe_stops": stats.safe_actions,
                "late_actions": stats.late_actions,
                "bad_actions": stats.link.bad_actions,
                "dropped_sends": stats.link.dropped_sends,
                "reconnects": stats.link.reconnects,
            }
            print(json.dumps(summary))
    except (Refused, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        bridge.safe_stop()
        device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
