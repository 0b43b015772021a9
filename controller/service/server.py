"""The MPC service: one loop that serves every robot, the control socket and the telemetry.

Each pass of the loop reads everything queued on the robot socket (so a robot whose STATEs
piled up is planned on its newest one; the older ones are recorded and counted as dropped),
answers control requests, takes a newly loaded model or policy version if there is one, writes
the transitions those STATEs completed to the store in one write, then plans for each robot
that has a new state (or acts with the learned policy: controller.planners.policy), sends its
ACTION, and publishes one telemetry record per ACTION. The write
comes before the ACTIONs, so every transition an ACTION answers is in the store (in the OS's
cache: a killed service loses none; ``durable`` adds an fsync for power loss).

How the robots with a new state are planned together and answered is
:mod:`controller.service.answering`; each robot's live settings, :mod:`controller.service.tuning`
(both mixins of :class:`MPCService`). A malformed or unexpected message is answered with ERROR
and logged; nothing a robot sends can stop the loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from typing import Any

import numpy as np
import zmq

from controller.planners import Planner, PlannerSettings, PolicyActor, kernels
from controller.planners.base import IterationCost
from controller.service.answering import Answering
from controller.service.auth import CurveServer
from controller.service.commands import ControlHandler
from controller.service.history import History
from controller.service.model_watch import ModelWatcher, PolicyWatcher, VersionWatcher
from controller.service.recorder import Recorder
from controller.service.session import Pending, RobotSession, Transition
from controller.service.settings import ServiceSettings
from controller.service.tuning import Tuning
from controller.tasks import Task
from controller.tasks.generic import robot_task
from models.store import TransitionReader, TransitionWriter
from sim_bridge import protocol as p
from sim_bridge.link import RobotSpec

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 0.2
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_DRAIN = 1000
"""Messages read per pass before planning, so a flood cannot starve the robots."""


class MPCService(Answering, Tuning):
    """Serves robot bridges; ``start()`` binds, ``serve()`` loops until ``stop_event``."""

    def __init__(
        self,
        task: Task | None,
        settings: ServiceSettings,
        planner: PlannerSettings | None = None,
    ) -> None:
        self.task: Task | None = None
        """The served task; None until the first HELLO when the task is ``auto``."""
        self.settings = settings
        self.planner_settings = planner or PlannerSettings()
        """The settings a robot starts with (``apply`` without a robot changes these and
        every robot's)."""
        self.cost = IterationCost()
        """Seconds per model row of a planning round, shared by every robot's budget."""
        self.sessions: dict[bytes, RobotSession] = {}
        self.model_version = 0
        self.evaluator: Any = None
        self.policy_version = 0
        self.policy: PolicyActor | None = None
        """The learned policy serving, once a version is loaded."""
        self.refused = 0
        """Messages refused with ERROR (any robot)."""
        self.forgotten = 0
        """Robots dropped after going silent."""
        self.stop_event = threading.Event()
        self.endpoints: dict[str, str] = {}
        self._started = time.monotonic()
        self._housekeeping = 0.0
        self._episodes = 0
        self.commands = ControlHandler(self)
        self.history = History(settings.models)
        """Episodes, versions and refusals, for the ``history`` command."""
        self.watcher: ModelWatcher | None = None
        self.policy_watcher: PolicyWatcher | None = None
        self.writer: TransitionWriter | None = None
        self.recorder = Recorder(task, None, settings.durable)
        self.curve: CurveServer | None = None
        """CurveZMQ on every socket, with ``settings.keys`` (controller.service.auth)."""
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        if settings.keys is not None and settings.clients is not None:
            self.curve = CurveServer(settings.keys, settings.clients)
            self.context = zmq.Context()  # its own: one ZAP handler per context
        self.low = self.high = np.zeros(0)
        if task is not None:
            self._take_task(task)

    @property
    def task_name(self) -> str:
        """The served task's name, or what stands for it before the first HELLO (task auto)."""
        return self.task.name if self.task is not None else "auto (no robot yet)"

    @property
    def served(self) -> Task:
        """The served task (only read once a robot said HELLO, so it is known)."""
        assert self.task is not None, "no task before the first HELLO"
        return self.task

    def _take_task(self, task: Task) -> None:
        """Serve ``task``: its bounds, the weights checked, and model and policy watchers."""
        task.validated_weights(self.planner_settings.weights)
        self.task = task
        self.low = np.asarray(task.action_low, np.float64)
        self.high = np.asarray(task.action_high, np.float64)
        self.recorder.task = task
        s = self.settings
        if s.models is not None:
            self.policy_watcher = PolicyWatcher(s.models, task, s.model_poll_s)
            self.watcher = ModelWatcher(
                s.models, task, s.runtime, s.model_poll_s, self.policy_watcher
            )

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Compile the planners' numba kernels, open the store, bind the sockets and load the
        newest model (if any)."""
        # Here rather than at the first large batch: compiling holds the GIL for up to a few
        # hundred milliseconds, which no tick should wait for (0.3 s from numba's cache).
        try:
            kernels.compile_now()
        except Exception:  # a broken numba install: the planners sample with numpy, same bits
            log.exception("numba kernels failed to compile; the planners use numpy")
        if self.task is not None:
            self._open_store(self.task)
        if self.curve is not None:
            self.curve.start(self.context)
        self.router = self._bind(zmq.ROUTER, "endpoint")
        self.control = self._bind(zmq.ROUTER, "control")
        self.telemetry = self._bind(zmq.XPUB, "telemetry")  # XPUB: it hears who subscribes
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.telemetry, zmq.POLLIN)
        self._watch_models()

    def _open_store(self, task: Task) -> None:
        """Open the store for ``task``'s dims (ValueError if it holds other dims)."""
        s = self.settings
        if s.store is None:
            return
        self.writer = TransitionWriter(s.store, task.obs_dim, task.act_dim)
        self.recorder.writer = self.writer
        reader = TransitionReader(s.store)
        if n := len(reader):
            self._episodes = int(reader.read(n - 1, n).episode[0])

    @property
    def watchers(self) -> list[VersionWatcher[Any]]:
        """The model and policy watchers (none without a model directory or a task)."""
        return [w for w in (self.watcher, self.policy_watcher) if w is not None]

    def _watch_models(self) -> None:
        """Load the newest policy and model now (so the first tick has them, the model's
        rollouts composed with the policy), then follow the directory."""
        for watcher in reversed(self.watchers):
            watcher.load_now()
        self._swap_model()
        self._swap_policy()
        for watcher in self.watchers:
            watcher.start()

    def serve(self, duration_s: float | None = None) -> None:
        """Loop until ``stop_event`` is set (or ``duration_s`` passed)."""
        end = math.inf if duration_s is None else time.monotonic() + duration_s
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.step()

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        if self.writer is not None:
            self.writer.close()
        for name in ("router", "control", "telemetry"):
            if hasattr(self, name):
                getattr(self, name).close(linger=0)
        if self.curve is not None:
            self.curve.stop()
            self.context.term()

    def step(self, timeout_ms: int = 20) -> None:
        """One pass: read, answer control, swap model and policy, record, plan and answer,
        publish."""
        events = dict(self.poller.poll(timeout_ms))
        if self.router in events:
            self._drain_robots()
        if self.control in events:
            self._drain_control()
        if self.telemetry in events:
            self.recorder.hear_subscriptions(self.telemetry)
        self._swap_model()
        self._swap_policy()
        self.recorder.record()
        self._answer_pending()
        self.recorder.publish(self.telemetry)
        now = time.monotonic()
        if now - self._housekeeping > HOUSEKEEPING_S:
            self._housekeeping = now
            self._forget_silent(now)

    # --- robots ------------------------------------------------------------------------------
    def _drain_robots(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            try:
                msg = p.decode(frames[1:])
                self._handle(identity, msg)
            except p.ProtocolError as exc:
                self._refuse(identity, exc)
            except Exception as exc:  # a bug must cost one message, not the service
                log.exception("internal error on a message from %r", identity)
                self._refuse(identity, p.ProtocolError("internal", repr(exc)[:500]))

    def _handle(self, identity: bytes, msg: p.Message) -> None:
        if msg.type == p.HELLO:
            self._hello(identity, msg)
            return
        if msg.type == p.DESCRIBE:  # allowed before HELLO: it is how a bridge learns the spec
            if self.task is None:
                raise p.ProtocolError("unexpected", "this controller takes its task from the "
                                      "first robot's HELLO (task auto) and has none yet",
                                      seq=msg.seq, robot=msg.robot)  # fmt: skip
            self._send(identity, p.make(p.SPEC, msg.robot, seq=msg.seq, time=time.time(),
                                        **self._spec()))  # fmt: skip
            return
        session = self.sessions.get(identity)
        if session is None:
            raise p.ProtocolError("unknown_robot", "say HELLO first", seq=msg.seq, robot=msg.robot)
        session.last_heard = time.monotonic()
        if msg.robot != session.robot:
            raise p.ProtocolError("bad_field", f"robot {msg.robot!r} said HELLO as "
                                  f"{session.robot!r}", seq=msg.seq, robot=msg.robot)  # fmt: skip
        if msg.type == p.STATE:
            self._state(session, msg)
        elif msg.type == p.EPISODE:
            if msg["event"] == "start":
                self._begin_episode(session, msg.episode)
            else:
                self.recorder.record()
                session.stats.episodes += 1
                session.stats.last_return = session.episode_return
                self.history.episode_ended(session.robot, session.episode,
                                           session.episode_return, msg["steps"])  # fmt: skip
        elif msg.type == p.HEARTBEAT:
            self._send(identity, p.make(p.HEARTBEAT, session.robot, time=time.time()))
        elif msg.type == p.ERROR:
            log.warning("robot %s reports %s: %s", session.robot, msg["code"], msg["reason"])
        else:
            raise p.ProtocolError("unexpected", f"a bridge does not send {msg.type}",
                                  seq=msg.seq, robot=msg.robot)  # fmt: skip

    def _hello(self, identity: bytes, msg: p.Message) -> None:
        if self.task is None:
            self._task_from(msg)
        t = self.served
        problems = []
        if msg["task"] not in (t.name, t.env_id):
            problems.append(f"task {msg['task']!r} (this controller serves {t.name!r})")
        try:  # the same comparison, with the same tolerances, as a bridge makes of a WELCOME
            robot = RobotSpec(msg.robot, msg["task"], msg["obs_dim"], msg["act_dim"],
                              tuple(msg["action_low"]), tuple(msg["action_high"]),
                              msg["control_period"], msg["reward"])  # fmt: skip
            problems += robot.differences(self._spec())
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise p.ProtocolError("mismatch", "HELLO does not match the served task: "
                                  + "; ".join(problems),
                                  seq=msg.seq, robot=msg.robot)  # fmt: skip
        session = self.sessions.get(identity)
        if session is None or session.robot != msg.robot:
            session = self._session_for(identity, msg)
        session.last_heard = time.monotonic()
        settings = session.settings
        self._send(
            identity,
            p.make(
                p.WELCOME,
                msg.robot,
                time=time.time(),
                model_version=self.model_version,
                planner=settings.planner,
                horizon=settings.horizon,
                budget_ms=1000.0 * settings.budget_s(t.control_period, 0.0),
                **self._spec(),
            ),
        )

    def _task_from(self, hello: p.Message) -> None:
        """``task auto``: serve the task the first robot's HELLO describes (reward and
        termination learned), with a store for its dims and the watchers; a HELLO that
        cannot be a task, or whose dims the store does not hold, is refused and changes
        nothing."""
        if not hello["reward"]:
            raise p.ProtocolError("mismatch", "this controller learns the reward from the robots' "
                                  "STATEs (task auto), and this robot reports none",
                                  seq=hello.seq, robot=hello.robot)  # fmt: skip
        try:
            task = robot_task(hello["task"], hello["obs_dim"], hello["act_dim"],
                              hello["action_low"], hello["action_high"],
                              hello["control_period"])  # fmt: skip
            self._take_task(task)
            self._open_store(task)
        except (ValueError, RuntimeError, OSError) as exc:  # RuntimeError: a corrupt store
            if self.writer is not None:
                self.writer.close()  # its lock would refuse every later HELLO
            self.task, self.watcher, self.policy_watcher, self.writer = None, None, None, None
            self.recorder.task = self.recorder.writer = None
            raise p.ProtocolError("mismatch", f"cannot serve this robot's HELLO as the task: "
                                  f"{exc}", seq=hello.seq, robot=hello.robot) from None  # fmt: skip
        log.info("serving the task of robot %s's HELLO: %s, obs %d, act %d, period %g s, "
                 "reward and termination learned", hello.robot, task.name, task.obs_dim,
                 task.act_dim, task.control_period)  # fmt: skip
        self._watch_models()

    def _spec(self) -> dict[str, Any]:
        """The served task as WELCOME and SPEC carry it: what a bridge must match."""
        t = self.served
        return {"task": t.name, "obs_dim": t.obs_dim, "act_dim": t.act_dim,
                "control_period": t.control_period, "episode_steps": t.episode_steps,
                "learns_reward": t.reward_learned,
                "action_low": self.low, "action_high": self.high}  # fmt: skip

    def _session_for(self, identity: bytes, hello: p.Message) -> RobotSession:
        """A new session, or the robot's old one moved to its new identity (a reconnect)."""
        old = next((k for k, s in self.sessions.items() if s.robot == hello.robot), None)
        if old is not None:
            session = self.sessions.pop(old)
            log.info("robot %s reconnected", hello.robot)
            session.identity, session.hello = identity, hello
            session.lockstep = hello["mode"] == "lockstep"
            session.pending, session.last_state, session.bridge_episode = None, None, -1
        else:
            planner, stream = None, zlib.crc32(hello.robot.encode())
            if self.evaluator is not None:
                planner = Planner(self.evaluator, self.planner_settings, stream)
            session = RobotSession(
                identity=identity,
                robot=hello.robot,
                hello=hello,
                lockstep=hello["mode"] == "lockstep",
                control_period=float(hello["control_period"]),
                settings=self.planner_settings,
                planner=planner,
                rng=np.random.default_rng([self.planner_settings.seed, stream]),
                stream=stream,
            )
            log.info("robot %s connected (%s)", hello.robot, hello["mode"])
        self.sessions[identity] = session
        return session

    def _begin_episode(self, session: RobotSession, bridge_episode: int) -> None:
        if bridge_episode == session.bridge_episode:
            return
        self._episodes += 1
        session.episode, session.bridge_episode = self._episodes, bridge_episode
        session.last_state, session.episode_return = None, 0.0
        if session.planner is not None:
            session.planner.reset()

    def _state(self, session: RobotSession, msg: p.Message) -> None:
        t = self.served
        obs, applied = msg["obs"], msg.arrays.get("applied")
        if len(obs) != t.obs_dim or (applied is not None and len(applied) != t.act_dim):
            raise p.ProtocolError("bad_array", f"STATE needs obs [{t.obs_dim}] and applied "
                                  f"[{t.act_dim}]", seq=msg.seq, robot=msg.robot)  # fmt: skip
        if np.abs(obs).max(initial=0.0) > FLOAT32_MAX:
            raise p.ProtocolError("bad_array", "obs exceeds the float32 range the model "
                                  "computes in", seq=msg.seq, robot=msg.robot)  # fmt: skip
        if t.reward_learned and msg["step"] > 0 and msg["reward"] is None:
            raise p.ProtocolError("bad_field", "this controller learns the reward: a STATE "
                                  "after an episode's first needs its reward",
                                  seq=msg.seq, robot=msg.robot)  # fmt: skip
        self._begin_episode(session, msg.episode)
        prev = session.last_state
        if prev is not None and applied is not None and prev["step"] == msg["step"] - 1:
            self.recorder.unrecorded.append(Transition(session, prev["obs"], applied, msg))
        session.last_state = msg
        if session.pending is not None:
            session.stats.dropped_stale += 1
        over = msg["terminated"] or msg["truncated"]
        session.pending = None if over else Pending(msg, time.perf_counter())

    def _forget_silent(self, now: float) -> None:
        for identity, session in list(self.sessions.items()):
            if now - session.last_heard > self.settings.stale_after_s:
                log.warning("robot %s silent for %.1f s: forgotten", session.robot,
                            now - session.last_heard)  # fmt: skip
                del self.sessions[identity]
                self.forgotten += 1

    def _refuse(self, identity: bytes, exc: p.ProtocolError) -> None:
        self.refused += 1
        session = self.sessions.get(identity)
        if session is not None:
            session.stats.errors += 1
        robot = session.robot if session is not None else exc.robot
        log.warning("refused a message from %s: %s", robot or identity.hex(), exc)
        self._send(identity, p.error_reply(exc, robot, seq=0))

    def _send(self, identity: bytes, msg: p.Message) -> None:
        self.router.send_multipart([identity, *p.encode(msg)])

    # --- models ------------------------------------------------------------------------------
    def _swap_model(self) -> None:
        ready = self.watcher.take() if self.watcher is not None else None
        if ready is None:
            return
        self.model_version, self.evaluator = ready
        for session in self.sessions.values():
            if session.planner is None:
                session.planner = Planner(self.evaluator, session.settings, session.stream)
            else:
                session.planner.set_evaluator(self.evaluator)
        self.history.model_live(self.model_version, self.evaluator.metadata)
        log.info("serving model v%d", self.model_version)

    def _swap_policy(self) -> None:
        ready = self.policy_watcher.take() if self.policy_watcher is not None else None
        if ready is not None:
            self.policy_version, self.policy = ready
            self.history.policy_live(self.policy_version)
            log.info("serving policy p%d", self.policy_version)

    # --- control socket ----------------------------------------------------------------------
    def _drain_control(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            *route, body = frames
            self.control.send_multipart([*route, self.commands.answer(body)])

    def status(self) -> dict[str, Any]:
        robots = {}
        for s in self.sessions.values():
            robots[s.robot] = {
                **s.stats.summary(),
                "mode": "lockstep" if s.lockstep else "realtime",
                "period_ms": round(1000.0 * s.control_period, 3),
                "budget_ms": None if s.budget_ms is None else round(s.budget_ms, 3),
                "episode": s.episode,
                "model_version": self.model_version if s.planner is not None else 0,
                "settings": s.settings.to_dict(),
            }
        return {
            "task": self.task_name,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "model_version": self.model_version,
            "rejected_models": _rejected(self.watcher),
            "policy_version": self.policy_version,
            "rollout_policy_version": getattr(self.evaluator, "policy_version", 0),
            "rejected_policies": {
                **_rejected(self.policy_watcher),
                **{
                    str(k): f"not composed into the rollouts: {why}"
                    for k, why in (self.watcher.policy_errors if self.watcher else {}).items()
                },
            },
            "refused_messages": self.refused,
            "refused_clients": self.curve.clients.refused if self.curve is not None else 0,
            "forgotten_robots": self.forgotten,
            "transitions": len(self.writer) if self.writer is not None else 0,
            "store_errors": self.recorder.store_errors,
            "durable": self.settings.durable,
            "endpoints": self.endpoints,
            "settings": self.planner_settings.to_dict(),
            "robots": robots,
        }

    def _bind(self, kind: int, name: str) -> zmq.Socket[bytes]:
        sock = self.context.socket(kind)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(getattr(self.settings, name))
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock


def _rejected(watcher: VersionWatcher[Any] | None) -> dict[str, str]:
    """The versions ``watcher`` refused, by version number as a string (JSON keys)."""
    return {str(k): v for k, v in watcher.rejected.items()} if watcher is not None else {}
