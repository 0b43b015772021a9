"""The bridge's end of the connection: a DEALER socket that says HELLO, sends STATEs and
receives ACTIONs, and starts over with a fresh socket when the controller goes silent.

Reconnecting is a new socket rather than ZeroMQ's automatic reconnect: the old socket may hold
queued, now stale, STATEs, and a restarted controller does not know the robot until it hears
HELLO again (it answers ``unknown_robot`` to anything else, which also triggers a HELLO).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sim_bridge import protocol as p

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobotSpec:
    """What a bridge tells the controller in HELLO."""

    robot: str
    """Robot id, unique among the controller's robots (1-32 UTF-8 bytes)."""
    task: str
    """Task name the controller must serve (e.g. "cartpole-swingup")."""
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period: float
    """Seconds per tick."""

    def __post_init__(self) -> None:
        if not p.robot_id_ok(self.robot):
            raise ValueError(f"robot id {self.robot!r} must be 1-32 printable UTF-8 bytes")
        if not self.task or self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError("a robot needs a task name and obs_dim, act_dim >= 1")
        low, high = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if low.shape != (self.act_dim,) or high.shape != (self.act_dim,):
            raise ValueError(f"action bounds need {self.act_dim} values each")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError("action bounds must be finite with every low below its high")
        if not (np.isfinite(self.control_period) and self.control_period > 0):
            raise ValueError(f"control_period must be > 0 seconds, got {self.control_period}")

    def hello(self, mode: str) -> p.Message:
        return p.make(
            p.HELLO,
            self.robot,
            time=time.time(),
            task=self.task,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            control_period=self.control_period,
            mode=mode,
            action_low=np.asarray(self.action_low, np.float64),
            action_high=np.asarray(self.action_high, np.float64),
        )


@dataclass
class LinkStats:
    """What the link saw; ``round_trip_s`` and ``plan_s`` are paired per answered STATE."""

    sent: int = 0
    received: int = 0
    hellos: int = 0
    reconnects: int = 0
    errors: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=100))
    """(code, reason) of ERRORs the controller sent, newest last."""
    refused: int = 0
    """Messages from the controller that did not decode (logged, dropped)."""
    round_trip_s: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    plan_s: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))


class Refused(RuntimeError):
    """The controller refused the HELLO (e.g. a task or dims mismatch): retrying cannot help."""


class BridgeLink:
    """One robot's connection to the controller at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""

    def __init__(self, endpoint: str, spec: RobotSpec, mode: str) -> None:
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f"mode must be lockstep or realtime, got {mode!r}")
        self.endpoint, self.spec, self.mode = endpoint, spec, mode
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self.welcome: p.Message | None = None
        self.stats = LinkStats()
        self._seq = 0
        self._sent_at: dict[int, float] = {}
        self._open()

    @property
    def welcomed(self) -> bool:
        return self.welcome is not None

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, msg: p.Message) -> None:
        """Send ``msg`` (without blocking: dropped if no controller is connected)."""
        assert self.socket is not None
        try:
            self.socket.send_multipart(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return
        self.stats.sent += 1
        if msg.type == p.STATE:
            self._sent_at = {msg.seq: time.perf_counter()}

    def say_hello(self) -> None:
        self.welcome = None
        self.stats.hellos += 1
        self.send(self.spec.hello(self.mode))

    def receive(self, timeout_s: float) -> p.Message | None:
        """The next message from the controller within ``timeout_s``, or None.

        WELCOME is remembered; ERROR ``unknown_robot`` makes the link say HELLO again; an ERROR
        ``mismatch`` raises :class:`Refused`. Every message is also returned to the caller.
        """
        assert self.socket is not None
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.socket.recv_multipart()
        now = time.perf_counter()
        try:
            msg = p.decode(frames)
        except p.ProtocolError as exc:
            self.stats.refused += 1
            log.warning("%s: dropped a bad message from the controller: %s", self.spec.robot, exc)
            return None
        self.stats.received += 1
        if msg.type == p.WELCOME:
            self.welcome = msg
        elif msg.type == p.ERROR:
            self.stats.errors.append((msg["code"], msg["reason"]))
            log.warning("%s: controller says %s: %s", self.spec.robot, msg["code"], msg["reason"])
            if msg["code"] == "mismatch":
                raise Refused(msg["reason"])
            if msg["code"] == "unknown_robot":
                self.say_hello()
        elif msg.type == p.ACTION and msg["answers"] in self._sent_at:
            self.stats.round_trip_s.append(now - self._sent_at.pop(msg["answers"]))
            self.stats.plan_s.append(msg["plan_ms"] / 1000.0)
        return msg

    def connect(
        self, timeout_s: float, retry_s: float = 0.5, stop: threading.Event | None = None
    ) -> p.Message | None:
        """Say HELLO (again every ``retry_s``) until WELCOME; raises TimeoutError or Refused.

        Returns None if ``stop`` is set first.
        """
        assert self.socket is not None
        end = time.monotonic() + timeout_s
        # With IMMEDIATE a send before the connection is up is dropped: wait until it is.
        self.socket.poll(int(min(timeout_s, retry_s) * 1000), zmq.POLLOUT)
        while True:
            if stop is not None and stop.is_set():
                return None
            self.say_hello()
            until = min(end, time.monotonic() + retry_s)
            while (left := until - time.monotonic()) > 0:
                self.receive(left)
                if self.welcome is not None:
                    return self.welcome
            if time.monotonic() >= end:
                raise TimeoutError(f"no WELCOME from {self.endpoint} within {timeout_s} s")

    def reconnect(self) -> None:
        """Drop the socket (and whatever it queued) and say HELLO on a fresh one (if it is not
        connected yet the HELLO is dropped: the caller says HELLO again until WELCOME)."""
        self.stats.reconnects += 1
        self._close_socket()
        self._open()
        self.say_hello()

    def message(self, type: str, episode: int, **values: Any) -> p.Message:
        """A message of ``type`` from this robot with the next sequence number."""
        return p.make(
            type, self.spec.robot, seq=self.next_seq(), time=time.time(), episode=episode, **values
        )

    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket, giving queued messages up to ``linger_s`` to leave."""
        if self.socket is not None:
            self.socket.close(linger=int(linger_s * 1000))
            self.socket = None

    def _open(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a controller that is not there: stale states must not pile up.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoint)
        self.socket = sock
        self.welcome = None
        self._sent_at = {}

    def _close_socket(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
