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

Either way the robot's methods may take as long as they need: while one runs, a keeper thread
sends HEARTBEATs so that the controller does not forget the robot (sim_bridge.keepalive), and
``stop_event`` ends every wait for the controller at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sim_bridge import protocol as p
from sim_bridge.curve import CurveClient
from sim_bridge.keepalive import KeepAlive
from sim_bridge.link import BridgeLink, LinkStats, RobotSpec
from sim_bridge.stopping import StopEvent

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
    heartbeat_s: float = 1.0
    """Send HEARTBEAT after this long without sending anything (while a robot method runs
    long, e.g. ``end_episode`` waiting for a learner), so that the controller, which forgets
    a robot silent for its ``stale_after_s`` (5 s by default), keeps the session. Below
    ``stale_after_s``."""
    episode_steps: int | None = None
    """Truncate episodes after this many steps (None: when the robot says so)."""
    curve: CurveClient | None = None
    """The keys for a controller that requires CurveZMQ (one reached beyond loopback):
    ``CurveClient.load("robot.key_secret", "controller.key")``; see sim_bridge.curve."""

    def __post_init__(self) -> None:
        if not 0 < self.watchdog_s <= self.reconnect_s:
            raise ValueError("need 0 < watchdog_s <= reconnect_s")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be positive, got {self.heartbeat_s}")
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError("episode_steps must be >= 1 or None")


@dataclass
class BridgeStats:
    """What the bridge did; ``link`` holds the socket-level counts and round-trip times."""

    ticks: int = 0
    actions: int = 0
    """Fresh ACTIONs applied."""
    late_actions: int = 0
    """ACTIONs that answered an older STATE (ignored); one of the wrong length is not late
    but ``link.bad_actions``."""
    safe_actions: int = 0
    """Ticks the watchdog made safe."""
    first_safe_after_s: float | None = None
    """Seconds from the last fresh ACTION to the first watchdog stop."""
    episodes: int = 0
    returns: list[float | None] = field(default_factory=list)
    """Each episode's return: the sum of the rewards of its steps >= 1, as ``read_state``
    reported them; None when one of them was None (the controller computed it, and the
    protocol does not send it back: ``status``'s ``last_return`` and ``history`` have it)."""
    link: LinkStats = field(default_factory=LinkStats)


@dataclass
class _Episode:
    """One episode's running state, shared by the steps of ``HardwareBridge._episode``."""

    id: int
    lockstep: bool
    last_fresh: float
    """perf_counter time of the last ACTION applied (or of the episode's start)."""
    last_heard: float
    """perf_counter time of the last message from the controller (or of a reconnect; in
    lockstep, of the STATE awaited: the controller owes nothing between ACTION and STATE)."""
    next_tick: float
    """perf_counter time the current tick ends."""
    step: int = 0
    total: float | None = 0.0
    """The sum of the rewards of steps >= 1; None once one of them is not known."""
    applied: npt.NDArray[np.float64] | None = None
    """The action in effect; None: not known (none yet, or a watchdog stop)."""


class HardwareBridge:
    """Base class of a robot bridge. Subclasses implement the three robot methods."""

    def __init__(self, spec: RobotSpec, settings: BridgeSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or BridgeSettings()
        self.low = np.asarray(spec.action_low, np.float64)
        self.high = np.asarray(spec.action_high, np.float64)
        self.stats = BridgeStats()
        self.stop_event = StopEvent()
        """Set it (from any thread, or a signal handler) to end ``run`` after the current tick;
        a wait for the controller ends at once."""
        self._away: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
        """Wraps every call of a robot method: lends the link to the run's keeper."""

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
        """Called after an episode's last STATE and its EPISODE end went out (so a controller
        has counted and stored the episode). Default: nothing."""

    # --- the loop ----------------------------------------------------------------------------
    def run(
        self,
        endpoint: str,
        *,
        mode: str = "realtime",
        episodes: int | None = None,
    ) -> BridgeStats:
        """Serve ``episodes`` episodes (None: until ``stop_event`` is set) against the
        controller at ``endpoint``; returns the stats. Raises ``Refused`` when the controller
        serves another task (a HELLO mismatch, or a WELCOME to another spec)."""
        link = BridgeLink(endpoint, self.spec, mode, self.settings.curve, self.stop_event)
        self.stats.link = link.stats
        try:
            if link.connect(self.settings.connect_timeout_s, stop=self.stop_event) is None:
                return self.stats
            with KeepAlive(link, self.settings.heartbeat_s) as keeper:
                self._away = keeper.away
                try:
                    self._episodes(link, mode == "lockstep", episodes)
                finally:
                    self._away = contextlib.nullcontext
        finally:
            try:  # whatever ended the run, the robot must not keep its last command
                self.safe_stop()
            finally:
                link.close(linger_s=0.2)  # let the last STATE and EPISODE end leave
        return self.stats

    def _episodes(self, link: BridgeLink, lockstep: bool, episodes: int | None) -> None:
        episode = 0
        while not self.stop_event.is_set() and (episodes is None or episode < episodes):
            episode += 1
            self._episode(link, episode, lockstep)

    def _episode(self, link: BridgeLink, episode: int, lockstep: bool) -> None:
        ep = self._begin(link, episode, lockstep)
        while True:
            state, over = self._send_state(link, ep)
            if over or self.stop_event.is_set():
                break
            ep.next_tick += self.spec.control_period
            self._await_action(link, ep, state)
            if not lockstep:
                self._sleep_until(ep.next_tick)
            ep.step += 1
        self._end(link, ep)

    def _begin(self, link: BridgeLink, episode: int, lockstep: bool) -> _Episode:
        with self._away():
            self.begin_episode()
        link.send(link.message(p.EPISODE, episode, event="start", steps=0, **{"return": None}))
        now = time.perf_counter()
        return _Episode(episode, lockstep, last_fresh=now, last_heard=now, next_tick=now)

    def _send_state(self, link: BridgeLink, ep: _Episode) -> tuple[p.Message, bool]:
        """Read the robot and send its STATE; the STATE, and whether the episode ends with it."""
        with self._away():
            reading = self.read_state()
        self.stats.ticks += 1
        limit = self.settings.episode_steps
        truncated = reading.truncated or (limit is not None and ep.step >= limit)
        if ep.step > 0 and ep.total is not None:
            ep.total = None if reading.reward is None else ep.total + reading.reward
        applied = reading.applied if reading.applied is not None else ep.applied
        state = link.message(
            p.STATE, ep.id, step=ep.step, reward=reading.reward,
            terminated=bool(reading.terminated), truncated=bool(truncated),
            obs=np.asarray(reading.obs),
            **({} if applied is None or ep.step == 0 else {"applied": applied}),
        )  # fmt: skip
        link.send(state)
        return state, bool(reading.terminated or truncated)

    def _await_action(self, link: BridgeLink, ep: _Episode, state: p.Message) -> None:
        """Receive until the ACTION answering ``state`` is applied or, in realtime, until the
        tick's deadline (where the watchdog may stop the robot); reconnect meanwhile if the
        controller falls silent."""
        s = self.settings
        hellos = link.stats.hellos
        if ep.lockstep:  # the controller owes nothing between an ACTION and the next STATE
            ep.last_heard = time.perf_counter()
        while not self.stop_event.is_set():
            now = time.perf_counter()
            msg = link.receive(max(s.watchdog_s if ep.lockstep else ep.next_tick - now, 0.0))
            now = time.perf_counter()
            ep.last_heard = max(ep.last_heard, link.last_heard)  # the keeper's replies count
            if msg is not None:
                if msg.type == p.WELCOME and ep.lockstep and link.stats.hellos > hellos:
                    link.send(state)  # said HELLO again since: the controller needs it
                    hellos = link.stats.hellos
                elif msg.type == p.ACTION and self._apply(ep, state, msg, now):
                    return
            if now - ep.last_heard > s.reconnect_s:
                log.warning("%s: controller silent, reconnecting", self.spec.robot)
                link.reconnect()
                ep.last_heard = now
            elif not link.welcomed and link.stats.hellos and msg is None:
                link.say_hello()
            if not ep.lockstep and now >= ep.next_tick:
                self._watchdog(ep, now)
                return

    def _apply(self, ep: _Episode, state: p.Message, action: p.Message, now: float) -> bool:
        """Apply ``action`` if it answers ``state`` (True); else it is late and ignored."""
        if action["answers"] != state.seq:
            self.stats.late_actions += 1
            return False
        ep.applied = np.clip(action["action"].astype(np.float64), self.low, self.high)
        with self._away():
            self.apply_action(ep.applied)
        self.stats.actions += 1
        ep.last_fresh = now
        return True

    def _watchdog(self, ep: _Episode, now: float) -> None:
        """At a realtime deadline: stop the robot if no fresh ACTION came for ``watchdog_s``."""
        if now - ep.last_fresh <= self.settings.watchdog_s:
            return
        with self._away():
            self.safe_stop()
        ep.applied = None
        self.stats.safe_actions += 1
        if self.stats.first_safe_after_s is None:
            self.stats.first_safe_after_s = now - ep.last_fresh

    def _end(self, link: BridgeLink, ep: _Episode) -> None:
        # EPISODE end first: the controller counts and stores the episode now, whatever the
        # hook does (a hook waiting for a learner to train on it would wait for nothing).
        link.send(link.message(p.EPISODE, ep.id, event="end", steps=ep.step,
                               **{"return": ep.total}))  # fmt: skip
        self.stats.episodes += 1
        self.stats.returns.append(ep.total)
        with self._away():
            self.end_episode()

    def _sleep_until(self, deadline: float) -> None:
        """Realtime pacing; a tick that overran starts the next one at once."""
        left = deadline - time.perf_counter()
        if left > 0:
            time.sleep(left)
