"""The bridge's end of the connection: a DEALER socket that says HELLO, sends STATEs and
receives ACTIONs, and starts over with a fresh socket when the controller goes silent; and
:func:`describe`, which asks a controller for the spec of the task it serves.

Reconnecting is a new socket rather than ZeroMQ's automatic reconnect: the old socket may hold
queued, now stale, STATEs, and a restarted controller does not know the robot until it hears
HELLO again (it answers ``unknown_robot`` to anything else, which also triggers a HELLO).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from sim_bridge import protocol as p
from sim_bridge.curve import CurveClient

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
    reward: bool = False
    """The robot reports each step's reward in its STATEs (required by a controller that
    learns the reward)."""

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

    def differences(self, served: Mapping[str, Any]) -> list[str]:
        """How the served task's spec (SPEC_FIELDS and SPEC_ARRAYS, as from
        :func:`describe` or a WELCOME) differs from this robot, one phrase per difference,
        within the tolerances the controller allows a HELLO. The task name is not compared:
        the controller names its task its own way, and accepts aliases (the gym id)."""
        found = []
        if (served["obs_dim"], served["act_dim"]) != (self.obs_dim, self.act_dim):
            found.append(f"dims obs {served['obs_dim']}, act {served['act_dim']} "
                         f"(this robot: obs {self.obs_dim}, act {self.act_dim})")  # fmt: skip
        for name in p.SPEC_ARRAYS:
            mine, theirs = np.asarray(getattr(self, name)), np.asarray(served[name])
            if mine.shape != theirs.shape or not np.allclose(
                theirs, mine, rtol=p.BOUNDS_RTOL, atol=p.BOUNDS_ATOL
            ):
                found.append(f"{name} {theirs.tolist()} (this robot: {mine.tolist()})")
        if not math.isclose(served["control_period"], self.control_period, rel_tol=p.PERIOD_RTOL):
            found.append(f"control period {served['control_period']} s "
                         f"(this robot: {self.control_period} s)")  # fmt: skip
        if served.get("learns_reward") and not self.reward:
            found.append("the controller learns the reward from the robots' STATEs, and this "
                         "robot reports none (RobotSpec.reward is false)")  # fmt: skip
        return found

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
            reward=self.reward,
            action_low=np.asarray(self.action_low, np.float64),
            action_high=np.asarray(self.action_high, np.float64),
        )


@dataclass
class LinkStats:
    """What the link saw; ``round_trip_s`` and ``plan_s`` are paired per answered STATE."""

    sent: int = 0
    dropped_sends: int = 0
    """Messages that did not go out: no controller connected, or its queue full."""
    received: int = 0
    """Messages from the controller decoded and accepted."""
    bad_actions: int = 0
    """ACTIONs whose ``action`` was not act_dim long (logged, dropped)."""
    hellos: int = 0
    reconnects: int = 0
    errors: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=100))
    """(code, reason) of ERRORs the controller sent, newest last."""
    refused: int = 0
    """Messages from the controller that did not decode (logged, dropped)."""
    round_trip_s: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    plan_s: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))


class Refused(RuntimeError):
    """The controller refused the HELLO (e.g. a task or dims mismatch), welcomed the robot to
    another spec, or refused a DESCRIBE: retrying cannot help."""


class BridgeLink:
    """One robot's connection to the controller at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""

    def __init__(
        self, endpoint: str, spec: RobotSpec, mode: str, curve: CurveClient | None = None
    ) -> None:
        """``curve``: the keys for a controller that requires CurveZMQ (sim_bridge.curve)."""
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f"mode must be lockstep or realtime, got {mode!r}")
        self.endpoint, self.spec, self.mode, self.curve = endpoint, spec, mode, curve
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self.welcome: p.Message | None = None
        self.served_spec: dict[str, Any] | None = None
        """The spec of the served task from the last WELCOME (see ``p.spec_of``)."""
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

    def send(self, msg: p.Message) -> bool:
        """Send ``msg`` without blocking; False when it was dropped (no controller connected,
        or its queue full)."""
        assert self.socket is not None
        try:
            self.socket.send_multipart(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.stats.dropped_sends += 1
            return False
        self.stats.sent += 1
        if msg.type == p.STATE:
            self._sent_at = {msg.seq: time.perf_counter()}
        return True

    def say_hello(self) -> None:
        self.welcome = None
        self.stats.hellos += 1
        self.send(self.spec.hello(self.mode))

    def receive(self, timeout_s: float) -> p.Message | None:
        """The next message from the controller within ``timeout_s``, or None.

        WELCOME is remembered, and raises :class:`Refused` when its spec is not this robot's;
        ERROR ``unknown_robot`` makes the link say HELLO again; an ERROR ``mismatch`` raises
        :class:`Refused`. An ACTION of the wrong length is dropped (None). Every other message
        is also returned to the caller.
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
        if msg.type == p.ACTION and len(msg["action"]) != self.spec.act_dim:
            self.stats.bad_actions += 1
            log.warning("%s: dropped an ACTION of %d values, act_dim is %d", self.spec.robot,
                        len(msg["action"]), self.spec.act_dim)  # fmt: skip
            return None
        self.stats.received += 1
        if msg.type == p.WELCOME:
            served = p.spec_of(msg)
            problems = self.spec.differences(served)
            if problems:
                raise Refused("WELCOME to another task: " + "; ".join(problems))
            self.welcome, self.served_spec = msg, served
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
            if why := self._handshake_failure():
                raise Refused(f"{self.endpoint}: {why}")
            if time.monotonic() >= end:
                raise TimeoutError(f"no WELCOME from {self.endpoint} within {timeout_s} s")

    def describe(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The spec of the task the controller serves; see :func:`describe`."""
        return describe(self.endpoint, self.spec.robot, timeout_s, curve=self.curve)

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
        self._close_socket(int(linger_s * 1000))

    def _open(self) -> None:
        self.socket = _dealer(self.context, self.curve)
        # Watched from before it connects: a refused handshake is over within milliseconds.
        self._monitor = self.socket.get_monitor_socket(HANDSHAKE_FAILURES)
        self.socket.connect(self.endpoint)
        self.welcome = None
        self._sent_at = {}

    def _close_socket(self, linger_ms: int = 0) -> None:
        if self.socket is not None:
            self.socket.disable_monitor()
            self.socket.close(linger=linger_ms)
            self.socket = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def _handshake_failure(self) -> str | None:
        """Why the controller refused the connection's security handshake, if it did: a
        controller that requires CurveZMQ and a bridge without keys, or with keys it does
        not accept (retrying cannot help). Checked while connecting only: a link that loses
        its controller later goes on reconnecting as before."""
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return "the controller does not accept this bridge's CurveZMQ key"
            if self.curve is None:
                return ("the security handshake failed: the controller requires CurveZMQ "
                        "keys (see docs/protocol.md, Authentication)")  # fmt: skip
            return ("the security handshake failed: is the controller's public key "
                    "(--server-key) the right one?")  # fmt: skip
        return None


def describe(
    endpoint: str,
    robot: str,
    timeout_s: float = 5.0,
    retry_s: float = 0.5,
    curve: CurveClient | None = None,
) -> dict[str, Any]:
    """The spec of the task the controller at ``endpoint`` serves: ``task``, ``obs_dim``,
    ``act_dim``, ``control_period``, ``episode_steps``, ``action_low``, ``action_high``.

    Asks with DESCRIBE (again every ``retry_s``) on a socket of its own, so it needs no HELLO
    and disturbs no session: a bridge can call it before it has a RobotSpec, to build or check
    one. Raises TimeoutError, or Refused when the controller answers with an ERROR.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = _dealer(context, curve)
    sock.connect(endpoint)
    end = time.monotonic() + timeout_s
    try:
        sock.poll(int(min(timeout_s, retry_s) * 1000), zmq.POLLOUT)  # see BridgeLink.connect
        seq = 0
        while (left := end - time.monotonic()) > 0:
            seq += 1
            ask = p.make(p.DESCRIBE, robot, seq=seq, time=time.time())
            with contextlib.suppress(zmq.Again):  # not connected yet: asked again below
                sock.send_multipart(p.encode(ask), zmq.NOBLOCK)
            until = time.monotonic() + min(left, retry_s)
            while (wait := until - time.monotonic()) > 0 and sock.poll(math.ceil(wait * 1000)):
                try:
                    msg = p.decode(sock.recv_multipart())
                except p.ProtocolError as exc:
                    log.warning("%s: dropped a bad answer to DESCRIBE: %s", endpoint, exc)
                    continue
                if msg.type == p.SPEC:
                    return p.spec_of(msg)
                if msg.type == p.ERROR:
                    raise Refused(f"{endpoint} refused DESCRIBE: {msg['code']}: {msg['reason']}")
        raise TimeoutError(f"no SPEC from {endpoint} within {timeout_s} s")
    finally:
        sock.close(linger=0)


HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
"""The refusals retrying cannot mend (a connection dropped mid-handshake, as a restarting
controller's, is EVENT_HANDSHAKE_FAILED_NO_DETAIL and is retried)."""


def _dealer(
    context: zmq.Context[zmq.Socket[bytes]], curve: CurveClient | None
) -> zmq.Socket[bytes]:
    """A DEALER set up as a bridge's, not connected yet."""
    sock = context.socket(zmq.DEALER)
    if curve is not None:
        curve.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    # Queue nothing for a controller that is not there: stale states must not pile up.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock
