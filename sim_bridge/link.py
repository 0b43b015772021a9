"""The bridge's end of the connection: a DEALER socket that says HELLO, sends STATEs and
receives ACTIONs, and starts over with a fresh socket when the controller goes silent; and
:func:`describe`, which asks a controller for the spec of the task it serves.

Reconnecting is a new socket rather than ZeroMQ's automatic reconnect: the old socket may hold
queued, now stale, STATEs, and a restarted controller does not know the robot until it hears
HELLO again (it answers ``unknown_robot`` to anything else, which also triggers a HELLO).

A link is used by one thread at a time (ZeroMQ sockets are not thread-safe); its waits wake
when its ``stop`` event is set (sim_bridge.stopping), and while connecting when the security
handshake fails for good (sim_bridge.handshake).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from sim_bridge import protocol as p
from sim_bridge.curve import CurveClient
from sim_bridge.handshake import HandshakeWatch
from sim_bridge.spec import RobotSpec
from sim_bridge.stopping import StopEvent

__all__ = ["BridgeLink", "LinkStats", "Refused", "RobotSpec", "describe"]

log = logging.getLogger(__name__)


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
    heartbeats: int = 0
    """HEARTBEATs sent (to keep the session alive while the bridge sent nothing else)."""
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


BACKLOG = 64
"""Messages read while the bridge's thread was away (see :meth:`BridgeLink.take_in`) kept for
its next ``receive``; the oldest go first (a backlog that long holds only stale ACTIONs)."""


class BridgeLink:
    """One robot's connection to the controller at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""

    def __init__(
        self,
        endpoint: str,
        spec: RobotSpec,
        mode: str,
        curve: CurveClient | None = None,
        stop: StopEvent | None = None,
    ) -> None:
        """``curve``: the keys for a controller that requires CurveZMQ (sim_bridge.curve);
        ``stop``: set, it ends every wait of the link at once (``receive`` returns None)."""
        if mode not in ("lockstep", "realtime"):
            raise ValueError(f"mode must be lockstep or realtime, got {mode!r}")
        self.endpoint, self.spec, self.mode, self.curve = endpoint, spec, mode, curve
        self.stop = stop
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket: zmq.Socket[bytes] | None = None
        self._handshake: HandshakeWatch | None = None
        self._poller = zmq.Poller()
        self.welcome: p.Message | None = None
        self.served_spec: dict[str, Any] | None = None
        """The spec of the served task from the last WELCOME (see ``p.spec_of``)."""
        self.stats = LinkStats()
        self.last_sent = self.last_heard = time.perf_counter()
        """perf_counter times of the last message sent, and of the last one received (or of
        the socket's opening)."""
        self._seq = 0
        self._hello_seq = 0
        """The sequence number when HELLO was last said: an ``unknown_robot`` for a message
        sent before it needs no HELLO of its own."""
        self._sent_at: dict[int, float] = {}
        self._backlog: deque[p.Message] = deque(maxlen=BACKLOG)
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
        self.last_sent = time.perf_counter()
        if msg.type == p.STATE:
            self._sent_at = {msg.seq: time.perf_counter()}
        return True

    def say_hello(self) -> None:
        self.welcome = None
        self.stats.hellos += 1
        self._hello_seq = self._seq
        self.send(self.spec.hello(self.mode))

    def keep_alive(self) -> None:
        """Tell the controller the robot is still here: HEARTBEAT, or HELLO again while the
        last HELLO is unanswered."""
        if not self.welcomed:
            self.say_hello()
        elif self.send(p.make(p.HEARTBEAT, self.spec.robot, seq=self.next_seq(),
                              time=time.time())):  # fmt: skip
            self.stats.heartbeats += 1

    def receive(self, timeout_s: float) -> p.Message | None:
        """The next message from the controller within ``timeout_s``, or None (also at once
        when ``stop`` is set).

        WELCOME is remembered, and raises :class:`Refused` when its spec is not this robot's;
        ERROR ``unknown_robot`` makes the link say HELLO again; an ERROR ``mismatch`` raises
        :class:`Refused`. An ACTION of the wrong length is dropped (None). Every other message
        is also returned to the caller, those :meth:`take_in` kept first.
        """
        if self._backlog:
            return self._backlog.popleft()
        if self._wait(timeout_s, self._poller) is not self.socket:
            return None
        return self._read()

    def take_in(self) -> None:
        """Read every message waiting, as ``receive`` does (WELCOME, ``unknown_robot``,
        ``mismatch``), keeping them for the next ``receive``, but HEARTBEATs, which say only
        that the controller is there (``last_heard``). For another thread that holds the link
        while the bridge's thread is away (sim_bridge.keepalive)."""
        while self._wait(0.0, self._poller) is self.socket:
            msg = self._read()
            if msg is not None and msg.type != p.HEARTBEAT:
                self._backlog.append(msg)

    def _wait(self, timeout_s: float, poller: zmq.Poller) -> Any:
        """Poll ``poller`` up to ``timeout_s``; what woke it: the socket, the stop event, the
        handshake monitor, or None at the timeout. The stop event wins over the others."""
        if self.stop is not None and self.stop.is_set():
            return self.stop
        ready = dict(poller.poll(max(0, int(timeout_s * 1000))))
        if not ready:
            return None
        if self.stop is not None and self.stop.fileno() in ready:  # polled by descriptor
            return self.stop
        return self.socket if self.socket in ready else self._monitor_socket()

    def _monitor_socket(self) -> zmq.Socket[bytes] | None:
        return None if self._handshake is None else self._handshake.monitor

    def _read(self) -> p.Message | None:
        """Read one message from the socket (it is readable) and act on it (see receive)."""
        assert self.socket is not None
        frames = self.socket.recv_multipart()
        now = time.perf_counter()
        self.last_heard = now
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
            if msg["code"] == "unknown_robot" and not 0 <= msg["answers"] <= self._hello_seq:
                # Forgotten (silent too long) or a restarted controller: a new session. An
                # ERROR for a message sent before the last HELLO is answered by that HELLO.
                log.warning("%s: the controller does not know this robot: saying HELLO again",
                            self.spec.robot)  # fmt: skip
                self.say_hello()
        elif msg.type == p.ACTION and msg["answers"] in self._sent_at:
            self.stats.round_trip_s.append(now - self._sent_at.pop(msg["answers"]))
            self.stats.plan_s.append(msg["plan_ms"] / 1000.0)
        return msg

    def connect(
        self, timeout_s: float, retry_s: float = 0.5, stop: threading.Event | None = None
    ) -> p.Message | None:
        """Say HELLO (again every ``retry_s``) until WELCOME; raises TimeoutError or Refused.

        Returns None if ``stop`` (or the link's own) is set first. A security handshake that
        the controller refuses for good (no keys, a key it does not accept, the wrong
        controller key) raises Refused with the reason as soon as it is known: retrying cannot
        help. A link that loses its controller later goes on reconnecting as before.
        """
        assert self.socket is not None and self._handshake is not None
        end = time.monotonic() + timeout_s
        connecting = zmq.Poller()
        for polled in (self.socket, self._handshake.monitor, self.stop):
            if polled is not None:
                connecting.register(polled, zmq.POLLIN)
        # With IMMEDIATE a send before the connection is up is dropped: wait until it is (or
        # its handshake failed, or a stop).
        connecting.modify(self.socket, zmq.POLLOUT)
        connecting.poll(int(min(timeout_s, retry_s) * 1000))
        connecting.modify(self.socket, zmq.POLLIN)
        while True:
            self.say_hello()
            until = min(end, time.monotonic() + retry_s)
            while True:
                if why := self._handshake.failure():
                    raise Refused(f"{self.endpoint}: {why}")
                if any(s is not None and s.is_set() for s in (stop, self.stop)):
                    return None
                if (left := until - time.monotonic()) <= 0:
                    break
                if self._wait(left, connecting) is self.socket:
                    self._read()
                    if self.welcome is not None:
                        return self.welcome
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
        self.last_heard = time.perf_counter()  # a fresh socket's silence starts now

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
        self._handshake = HandshakeWatch(self.socket, self.endpoint, self.curve is not None)
        self.socket.connect(self.endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        if self.stop is not None:
            self._poller.register(self.stop, zmq.POLLIN)
        self.welcome = None
        self._sent_at = {}
        self._backlog.clear()  # answers to the old socket's messages

    def _close_socket(self, linger_ms: int = 0) -> None:
        if self._handshake is not None:
            self._handshake.close()
            self._handshake = None
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None


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
    one. Raises TimeoutError, or Refused when the controller answers with an ERROR or refuses
    the security handshake for good (see :meth:`BridgeLink.connect`).
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = _dealer(context, curve)
    watch = HandshakeWatch(sock, endpoint, curve is not None)
    sock.connect(endpoint)
    end = time.monotonic() + timeout_s
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(watch.monitor, zmq.POLLIN)
    try:
        sock.poll(int(min(timeout_s, retry_s) * 1000), zmq.POLLOUT)  # see BridgeLink.connect
        seq = 0
        while (left := end - time.monotonic()) > 0:
            seq += 1
            ask = p.make(p.DESCRIBE, robot, seq=seq, time=time.time())
            with contextlib.suppress(zmq.Again):  # not connected yet: asked again below
                sock.send_multipart(p.encode(ask), zmq.NOBLOCK)
            until = time.monotonic() + min(left, retry_s)
            while (wait := until - time.monotonic()) > 0:
                if why := watch.failure():
                    raise Refused(f"{endpoint}: {why}")
                if sock not in dict(poller.poll(math.ceil(wait * 1000))):
                    continue
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
        watch.close()
        sock.close(linger=0)


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
