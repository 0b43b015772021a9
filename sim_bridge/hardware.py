"""The bridge loop for any robot: subclass :class:`HardwareBridge`, write ``read_state``,
``apply_action`` and ``safe_stop``, and ``run`` does the pacing, the protocol, the watchdog and
the reconnects.

Realtime mode (a physical robot): every control period the loop reads the state, sends STATE
and applies each ACTION answering it as soon as it arrives. When no fresh ACTION has arrived for
``watchdog_s`` it calls ``safe_stop`` (counted) at every tick until one does; after
``reconnect_s`` of silence it starts over with a fresh socket and HELLO. The robot keeps being
paced and made safe while the controller is gone.

Lockstep mode (simulation): the loop waits for the ACTION answering each STATE before calling
``read_state`` again, so the run is deterministic and as fast as the controller plans.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink, LinkStats, RobotSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """What ``read_state`` returns."""

    obs: npt.NDArray[np.floating]
    """[S] the observation."""
    reward: float | None = None
    """The reward of the step that ended here, if the robot knows it."""
    terminated: bool = False
    truncated: bool = False
    applied: npt.NDArray[np.floating] | None = None
    """[A] the action actually in effect during the step that ended here, if the robot knows
    better than the last ``apply_action`` (e.g. an emulated delay); None: the last one applied."""


@dataclass(frozen=True)
class BridgeSettings:
    """How the loop runs; the robot-specific parts are the subclass's."""

    watchdog_s: float = 0.1
    """Realtime: call ``safe_stop`` when no fresh ACTION came for this long."""
    reconnect_s: float = 1.0
    """Start over with a fresh socket after this long without a message from the controller."""
    connect_timeout_s: float = 30.0
    """How long ``run`` waits for the first WELCOME before giving up."""
    episode_steps: int | None = None
    """Truncate episodes after this many steps (None: when the robot says so)."""

    def __post_init__(self) -> None:
        if not 0 < self.watchdog_s <= self.reconnect_s:
            raise ValueError("need 0 < watchdog_s <= reconnect_s")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError("episode_steps must be >= 1 or None")


@dataclass
class BridgeStats:
    """What the bridge did; ``link`` holds the socket-level counts and round-trip times."""

    ticks: int = 0
    actions: int = 0
    """Fresh ACTIONs applied."""
    late_actions: int = 0
    """ACTIONs that answered an older STATE (ignored)."""
    safe_actions: int = 0
    """Ticks the watchdog made safe."""
    first_safe_after_s: float | None = None
    """Seconds from the last fresh ACTION to the first watchdog stop."""
    episodes: int = 0
    returns: list[float] = field(default_factory=list)
    link: LinkStats = field(default_factory=LinkStats)


class HardwareBridge:
    """Base class of a robot bridge. Subclasses implement the three robot methods."""

    def __init__(self, spec: RobotSpec, settings: BridgeSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or BridgeSettings()
        self.low = np.asarray(spec.action_low, np.float64)
        self.high = np.asarray(spec.action_high, np.float64)
        self.stats = BridgeStats()
        self.stop_event = threading.Event()
        """Set it (from any thread) to end ``run`` after the current tick."""

    # --- the robot: override these -----------------------------------------------------------
    def read_state(self) -> Reading:
        """Measure the robot now (realtime) or advance it one step (simulation)."""
        raise NotImplementedError

    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        """Command ``action [A]`` (already clipped to the bounds)."""
        raise NotImplementedError

    def safe_stop(self) -> None:
        """Bring the robot to a safe state; called every tick while the controller is silent."""
        raise NotImplementedError

    def begin_episode(self) -> None:
        """Prepare a new episode (reset a simulation, home a robot). Default: nothing."""

    def end_episode(self) -> None:
        """Called after an episode's last STATE. Default: nothing."""

    # --- the loop ----------------------------------------------------------------------------
    def run(
        self,
        endpoint: str,
        *,
        mode: str = "realtime",
        episodes: int | None = None,
    ) -> BridgeStats:
        """Serve ``episodes`` episodes (None: until ``stop_event`` is set) against the
        controller at ``endpoint``; returns the stats. Raises ``Refused`` on a HELLO mismatch."""
        link = BridgeLink(endpoint, self.spec, mode)
        self.stats.link = link.stats
        try:
            if link.connect(self.settings.connect_timeout_s, stop=self.stop_event) is None:
                return self.stats
            episode = 0
            while not self.stop_event.is_set() and (episodes is None or episode < episodes):
                episode += 1
                self._episode(link, episode, mode == "lockstep")
        finally:
            try:  # whatever ended the run, the robot must not keep its last command
                self.safe_stop()
            finally:
                link.close(linger_s=0.2)  # let the last STATE and EPISODE end leave
        return self.stats

    def _episode(self, link: BridgeLink, episode: int, lockstep: bool) -> None:
        s, period = self.settings, self.spec.control_period
        self.begin_episode()
        link.send(link.message(p.EPISODE, episode, event="start", steps=0, **{"return": None}))
        total, step = 0.0, 0
        applied: npt.NDArray[np.float64] | None = None
        last_fresh = last_heard = time.perf_counter()
        next_tick = time.perf_counter()
        while True:
            reading = self.read_state()
            self.stats.ticks += 1
            truncated = reading.truncated or (
                s.episode_steps is not None and step >= s.episode_steps
            )
            if reading.reward is not None and step > 0:
                total += reading.reward
            sent_applied = reading.applied if reading.applied is not None else applied
            state = link.message(
                p.STATE, episode, step=step, reward=reading.reward,
                terminated=bool(reading.terminated), truncated=bool(truncated),
                obs=np.asarray(reading.obs),
                **({} if sent_applied is None or step == 0 else {"applied": sent_applied}),
            )  # fmt: skip
            link.send(state)
            hellos = link.stats.hellos
            if reading.terminated or truncated or self.stop_event.is_set():
                break
            next_tick += period
            fresh = False
            while not fresh and not self.stop_event.is_set():
                now = time.perf_counter()
                wait = (now + s.watchdog_s if lockstep else next_tick) - now
                msg = link.receive(max(wait, 0.0))
                now = time.perf_counter()
                if msg is not None:
                    last_heard = now
                    if msg.type == p.WELCOME and lockstep and link.stats.hellos > hellos:
                        link.send(state)  # said HELLO again since: the controller needs it
                        hellos = link.stats.hellos
                if msg is not None and msg.type == p.ACTION:
                    if msg["answers"] == state.seq and len(msg["action"]) == self.spec.act_dim:
                        applied = np.clip(msg["action"].astype(np.float64), self.low, self.high)
                        self.apply_action(applied)
                        self.stats.actions += 1
                        last_fresh, fresh = now, True
                    else:
                        self.stats.late_actions += 1
                if now - last_heard > s.reconnect_s:
                    log.warning("%s: controller silent, reconnecting", self.spec.robot)
                    link.reconnect()
                    last_heard = now
                elif not link.welcomed and link.stats.hellos and msg is None:
                    link.say_hello()
                if lockstep or now < next_tick:
                    continue
                if now - last_fresh > s.watchdog_s:
                    self.safe_stop()
                    applied = None
                    self.stats.safe_actions += 1
                    if self.stats.first_safe_after_s is None:
                        self.stats.first_safe_after_s = now - last_fresh
                break
            if not lockstep:
                self._sleep_until(next_tick)
            step += 1
        self.end_episode()
        self.stats.episodes += 1
        self.stats.returns.append(total)
        link.send(link.message(p.EPISODE, episode, event="end", steps=step, **{"return": total}))

    def _sleep_until(self, deadline: float) -> None:
        """Realtime pacing; a tick that overran starts the next one at once."""
        left = deadline - time.perf_counter()
        if left > 0:
            time.sleep(left)
