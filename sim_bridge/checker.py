"""Check a bridge before it meets a real controller, like gymnasium's ``check_env``.

:func:`check_bridge` binds a loopback ROUTER, runs ``bridge.run`` against it in a thread and
plays a strict controller that decodes every message and answers DESCRIBE, HELLO and each
STATE, serving exactly the bridge's own spec. It then reports, in plain words, every way the
bridge broke the protocol or misreported its robot. It uses ``sim_bridge`` alone, so it checks
exactly what a controller would receive.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sim_bridge import protocol as p
from sim_bridge.hardware import BridgeStats, HardwareBridge
from sim_bridge.link import Refused

PERIOD_TOLERANCE = 0.2
"""Realtime: the median STATE interval may differ from control_period by this fraction."""
APPLIED_RTOL, APPLIED_ATOL = 1e-5, 1e-6
"""How closely ``applied`` must echo the ACTION sent (a float32 round trip passes)."""
ROBOT_METHODS = ("read_state", "apply_action", "safe_stop", "begin_episode", "end_episode")


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_bridge` found; ``ok`` when ``problems`` is empty."""

    ok: bool
    problems: list[str]
    """What a controller would refuse or be misled by, one sentence each."""
    notes: list[str]
    """Worth knowing, not wrong (e.g. the episode ended before ``ticks``)."""
    mode: str
    ticks: int
    """STATEs received (re-sends not counted)."""
    actions: int
    """ACTIONs sent."""
    state_interval_s: float | None
    """Median time between consecutive STATEs as they arrived (None: fewer than two)."""
    duration_s: float

    def summary(self) -> str:
        """A few lines for a terminal."""
        interval = "-" if self.state_interval_s is None else f"{self.state_interval_s:.4f} s"
        head = (f"bridge check ({self.mode}): {'ok' if self.ok else 'FAILED'}: {self.ticks} "
                f"states, {self.actions} actions, median state interval {interval}, "
                f"{self.duration_s:.2f} s")  # fmt: skip
        lines = [head, *(f"  problem: {m}" for m in self.problems)]
        return "\n".join([*lines, *(f"  note: {m}" for m in self.notes)])


@dataclass
class _Strict:
    """The checking controller's state for one run: what it expects next, what it found."""

    mode: str
    delay: int
    served: dict[str, Any]
    """The task spec this controller serves (SPEC_FIELDS and SPEC_ARRAYS): the bridge's own."""
    problems: dict[str, list[str]] = field(default_factory=dict)
    """Problems by kind: one seen at many steps is reported once, with a count."""
    notes: list[str] = field(default_factory=list)
    hello: p.Message | None = None
    episode: int | None = None
    """The open episode (between EPISODE start and end)."""
    last_seq: int = 0
    last_state: p.Message | None = None
    states: int = 0
    actions: int = 0
    echo_misses: int = 0
    sent: dict[int, np.ndarray] = field(default_factory=dict)
    """This episode's ACTIONs by the step of the STATE they answered."""
    arrivals: list[float] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)
    stopping: bool = False
    """Set with ``stop_event``: from then on the bridge may not read the last ACTION."""

    def flag(self, text: str, kind: str | None = None) -> None:
        self.problems.setdefault(kind or text, []).append(text)

    def answer(self, msg: p.Message, now: float) -> p.Message | None:
        """Check ``msg`` and return the reply a controller would send (if any)."""
        if msg.type == p.DESCRIBE:  # allowed before HELLO, and outside the seq order
            return p.make(p.SPEC, msg.robot, seq=msg.seq, time=time.time(), **self.served)
        if msg.type == p.HELLO:
            return self._hello(msg)
        if self.hello is None:
            self.flag(f"{msg.type} arrived before HELLO")
            return None
        if msg.robot != self.hello.robot:
            self.flag(f"{msg.type} from robot {msg.robot!r}, HELLO said {self.hello.robot!r}")
        last = self.last_state
        if msg.type == p.STATE and last is not None and msg.seq == last.seq:
            # Lockstep re-sends its STATE after a WELCOME (in case the controller restarted).
            return self._action(msg, self.sent[msg["step"]]) if msg["step"] in self.sent else None
        if msg.seq <= self.last_seq:
            self.flag(f"{msg.type} seq {msg.seq} does not follow {self.last_seq}", "seq")
        self.last_seq = max(self.last_seq, msg.seq)
        if msg.type == p.EPISODE:
            self._episode(msg)
        elif msg.type == p.STATE:
            return self._state(msg, now)
        elif msg.type == p.HEARTBEAT:
            return p.make(p.HEARTBEAT, msg.robot, time=time.time())
        else:
            self.flag(f"a bridge does not send {msg.type}: {dict(msg.fields)}")
        return None

    def _hello(self, msg: p.Message) -> p.Message:
        # Several HELLOs before the first episode are the link retrying; later, a reconnect.
        if self.last_seq > 0:
            self.flag("HELLO again mid-run (a reconnect) though all was answered")
        self.hello = msg
        low, high, act_dim = msg["action_low"], msg["action_high"], msg["act_dim"]
        found = []
        if not msg["task"] or msg["obs_dim"] < 1 or act_dim < 1:
            found.append(f"task {msg['task']!r}, obs_dim {msg['obs_dim']}, act_dim {act_dim}")
        if len(low) != act_dim or len(high) != act_dim:
            found.append(f"bounds of {len(low)} and {len(high)} values for act_dim {act_dim}")
        elif not np.all(low < high):
            found.append(f"action_low {low.tolist()} not below action_high {high.tolist()}")
        if not msg["control_period"] > 0:
            found.append(f"control_period {msg['control_period']} is not > 0")
        if msg["mode"] != self.mode:
            found.append(f"mode {msg['mode']!r}, but run() was given {self.mode!r}")
        for m in found:
            self.flag(f"HELLO: {m}")
        if found:  # a strict controller refuses: the bridge's run() raises Refused
            return p.make(p.ERROR, msg.robot, code="mismatch", reason="; ".join(found)[:1000],
                          answers=msg.seq)  # fmt: skip
        budget_ms = 1000.0 * float(msg["control_period"])
        return p.make(p.WELCOME, msg.robot, time=time.time(), model_version=0,
                      planner="checker", horizon=0, budget_ms=budget_ms,
                      **self.served)  # fmt: skip

    def _episode(self, msg: p.Message) -> None:
        if msg["event"] == "start":
            if self.episode is not None:
                self.flag(f"EPISODE {msg.episode} started before {self.episode} ended")
            self.episode, self.last_state, self.sent, self.arrivals = msg.episode, None, {}, []
            return
        last_step = -1 if self.last_state is None else self.last_state["step"]
        if self.episode != msg.episode:
            self.flag(f"EPISODE {msg.episode} ended but episode {self.episode} is open")
        elif msg["steps"] != last_step:
            self.flag(f"EPISODE end says {msg['steps']} steps, the last STATE {last_step}")
        self.episode = None

    def _state(self, msg: p.Message, now: float) -> p.Message | None:
        assert self.hello is not None
        self.states += 1
        step, obs, applied = msg["step"], msg["obs"], msg.arrays.get("applied")
        prev, at = self.last_state, f"STATE step {step}"
        if self.episode is None or msg.episode != self.episode:
            self.flag(f"{at} (episode {msg.episode}) outside its EPISODE start/end", "ep")
        if step != (-1 if prev is None else prev["step"]) + 1:
            self.flag(f"{at} does not follow the last STATE: steps count up from 0", "step")
        if prev is not None and (prev["terminated"] or prev["truncated"]):
            self.flag(f"{at} after a terminated/truncated STATE", "over")
        self.last_state = msg
        if len(obs) != self.hello["obs_dim"]:
            self.flag(f"{at}: obs has {len(obs)} values, obs_dim is {self.hello['obs_dim']}",
                      "obs")  # fmt: skip
        low, high = self.hello["action_low"], self.hello["action_high"]
        if step > 0 and applied is None:
            self.flag(f"{at}: no `applied` (the controller cannot record the step)", "none")
        elif applied is not None and len(applied) != len(low):
            self.flag(f"{at}: applied has {len(applied)} values, act_dim {len(low)}", "len")
        elif applied is not None:
            if np.any(applied < low - APPLIED_ATOL) or np.any(applied > high + APPLIED_ATOL):
                self.flag(f"{at}: applied {applied.tolist()} is outside the bounds", "bounds")
            self._echo(at, step, applied)
        if len(self.arrivals) == step > 0:
            self.intervals.append(now - self.arrivals[-1])
        self.arrivals.append(now)
        if msg["terminated"] or msg["truncated"]:  # like the service: no answer is awaited
            return None
        # A sinusoid, not a constant: an action that changes every tick shows whether the
        # bridge really applies it (a constant could equal its safe or initial action).
        mid, half = (low + high) / 2.0, (high - low) / 2.0
        self.sent[step] = mid + 0.5 * half * np.sin(0.9 * step + 1.0 + np.arange(len(low)))
        self.actions += 1
        return self._action(msg, self.sent[step])

    def _action(self, state: p.Message, action: np.ndarray) -> p.Message:
        return p.make(p.ACTION, state.robot, seq=state.seq, time=time.time(),
                      episode=state.episode, answers=state.seq, planner="checker", horizon=0,
                      iterations=0, predicted_return=None, plan_ms=0.0, model_version=0,
                      deadline_miss=False, fallback=False, nonfinite=0,
                      action=action)  # fmt: skip

    def _echo(self, at: str, step: int, applied: np.ndarray) -> None:
        """``applied`` must be the ACTION answering the STATE ``delay + 1`` steps back."""
        answered = step - 1 - self.delay
        expected = [self.sent[s] for s in (answered, answered - 1) if s in self.sent]
        if not expected:
            return  # the robot's initial action: no ACTION had taken effect yet
        if not self.stopping:  # once stopped, the bridge may not have read the last ACTION
            expected = expected[:1]
        if any(np.allclose(applied, e, APPLIED_RTOL, APPLIED_ATOL) for e in expected):
            return
        self.echo_misses += 1
        if self.mode == "lockstep":
            self.flag(f"{at}: applied {applied.tolist()}, but the ACTION for step {answered} was "
                      f"{expected[0].tolist()}: apply_action has no effect, or applied "
                      f"misreports it", "echo")  # fmt: skip


def check_bridge(
    bridge: HardwareBridge,
    *,
    mode: str = "lockstep",
    ticks: int = 50,
    timeout_s: float = 10.0,
    action_delay_ticks: int = 0,
) -> CheckReport:
    """Run one episode of ``bridge`` (``ticks`` ACTIONs at most, within ``timeout_s``)
    against a strict controller on loopback, and report what a controller would object to.

    ``action_delay_ticks`` is the robot's known actuation delay: ``applied`` at step k must be
    the ACTION for step k - 1 - delay (a failure in lockstep; realtime only notes mismatches).
    ``safe_stop`` is called once at the end, so it is checked even if the watchdog never fires.
    ``bridge.stats`` and ``stop_event`` are as before afterwards, so ``bridge.run`` can follow.
    """
    if mode not in ("lockstep", "realtime") or ticks < 1 or timeout_s <= 0:
        raise ValueError("need mode lockstep or realtime, ticks >= 1 and timeout_s > 0")
    if mode == "realtime" and ticks * bridge.spec.control_period >= timeout_s:
        raise ValueError(f"{ticks} realtime ticks take longer than timeout_s={timeout_s}")
    strict = _Strict(mode, action_delay_ticks, _served(bridge, ticks))
    failure: list[BaseException] = []
    saved_stats, bridge.stats = bridge.stats, BridgeStats()
    bridge.stop_event.clear()
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def run() -> None:
        try:
            bridge.run(endpoint, mode=mode, episodes=1)
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            failure.append(exc)

    thread = threading.Thread(target=run, name="check_bridge", daemon=True)
    start = time.monotonic()
    thread.start()
    try:
        while time.monotonic() - start < timeout_s:
            if not router.poll(20):
                if not thread.is_alive():
                    break  # run() has returned and nothing is left in flight
                continue
            identity, *frames = router.recv_multipart()
            try:
                reply = strict.answer(p.decode(frames), time.perf_counter())
            except p.ProtocolError as exc:
                strict.flag(f"a message did not decode: {exc}", exc.code)
                reply = p.error_reply(exc)
            if strict.actions >= ticks and not strict.stopping:
                # Before the reply, so the bridge sends at most one more STATE after it.
                strict.stopping = True
                bridge.stop_event.set()
            if reply is not None:
                router.send_multipart([identity, *p.encode(reply)])
        else:
            strict.flag(f"the episode did not end within timeout_s={timeout_s}")
        bridge.stop_event.set()
        thread.join(2.0 + bridge.settings.reconnect_s)
    finally:
        router.close(linger=0)
        stats, bridge.stats = bridge.stats, saved_stats
    if thread.is_alive():
        strict.flag("run() did not return after stop_event was set")
    else:
        bridge.stop_event.clear()
        try:
            bridge.safe_stop()
        except Exception as exc:
            failure.append(exc)
    return _report(strict, ticks, stats, failure, time.monotonic() - start)


def _served(bridge: HardwareBridge, ticks: int) -> dict[str, Any]:
    """The spec of a task that is exactly what ``bridge`` says it is; its episodes last as long
    as the bridge truncates them, else as long as the check."""
    spec = bridge.spec
    return {
        "task": spec.task,
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "learns_reward": False,
        "control_period": spec.control_period,
        "episode_steps": bridge.settings.episode_steps or ticks,
        "action_low": spec.action_low,
        "action_high": spec.action_high,
    }


def _report(
    strict: _Strict, ticks: int, stats: BridgeStats, failure: list[BaseException], duration: float
) -> CheckReport:
    """The end-of-run checks, and the report."""
    notes, mode = strict.notes, strict.mode
    problems = [
        m[0] + (f" ({len(m)} times)" if len(m) > 1 else "") for m in strict.problems.values()
    ]
    for exc in failure:
        if isinstance(exc, Refused):
            continue  # the HELLO problems say why
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f.name for f in frames if f.name in ROBOT_METHODS), None)
        if where is None and isinstance(exc, p.ProtocolError):
            problems.append(f"the bridge could not encode a message it had to send: {exc}")
        else:
            problems.append(f"{where or 'run'}() raised {type(exc).__name__}: {exc}")
    if strict.hello is None:
        problems.append("no HELLO arrived")
    elif strict.states == 0 and not failure:
        problems.append("no STATE arrived")
    if strict.episode is not None and not failure:
        problems.append(f"episode {strict.episode} never sent EPISODE end")
    interval = statistics.median(strict.intervals) if strict.intervals else None
    if mode == "realtime" and strict.hello is not None and interval is not None:
        period = float(strict.hello["control_period"])
        if not math.isclose(interval, period, rel_tol=PERIOD_TOLERANCE):
            problems.append(f"median STATE interval {interval:.4f} s, control_period "
                            f"{period} s: realtime pacing is off by more than 20%")  # fmt: skip
    last = strict.last_state
    if strict.actions < ticks and last is not None and (last["terminated"] or last["truncated"]):
        notes.append(f"the episode ended by itself after {strict.actions} of {ticks} actions")
    if strict.echo_misses and mode == "realtime":
        notes.append(f"{strict.echo_misses} STATEs reported an older action (late ACTIONs)")
    if stats.safe_actions:
        notes.append(f"the watchdog called safe_stop() {stats.safe_actions} times")
    return CheckReport(
        ok=not problems, problems=problems, notes=notes, mode=mode, ticks=strict.states,
        actions=strict.actions, state_interval_s=interval, duration_s=duration,
    )  # fmt: skip
