"""The MPC service: one loop that serves every robot, the control socket and the telemetry.

Each pass of the loop reads everything queued on the robot socket (so a robot whose STATEs
piled up is planned on its newest one; the older ones are recorded and counted as dropped),
answers control requests, takes a newly loaded model or policy version if there is one, writes
the transitions those STATEs completed to the store in one write, then plans for each robot
that has a new state (or acts with the learned policy: controller.planners.policy), sends its
ACTION, and publishes one telemetry record per ACTION. The write comes before the ACTIONs, so
every transition an ACTION answers is in the store (in the OS's cache: a killed service loses
none; ``durable`` adds an fsync for power loss).

This module keeps the sockets, the loop and the routing of messages; the state is owned by
its parts: the robots and their live settings by the :class:`~controller.service.fleet.Fleet`,
the served task with its store, recorder and model versions by a
:class:`~controller.service.served.ServedTask` (built at start, or from the first robot's HELLO
when the task is ``auto``), planning and answering by the
:class:`~controller.service.answerer.Answerer`, the control socket's requests by
:class:`~controller.service.commands.ControlCommands`. A malformed or unexpected message is
answered with ERROR and logged; nothing a robot sends can stop the loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
import zmq

from controller.planners import PlannerSettings, kernels
from controller.planners.base import IterationCost
from controller.service.answerer import Answerer
from controller.service.auth import CurveServer
from controller.service.commands import ControlCommands
from controller.service.fleet import Fleet
from controller.service.history import History
from controller.service.outbox import Outbox
from controller.service.served import NO_VERSIONS, ServedTask
from controller.service.session import Pending, RobotSession, Transition
from controller.service.settings import ServiceConfig
from controller.service.telemetry import Subscriptions
from controller.tasks import Task
from controller.tasks.generic import robot_task
from sim_bridge import protocol as p
from sim_bridge.link import RobotSpec

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 0.2
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_DRAIN = 1000
"""Messages read per pass before planning, so a flood cannot starve the robots."""
AUTO_NAME = "auto (no robot yet)"
"""What stands for the task's name before the first HELLO (task auto)."""


class MPCService:
    """Serves robot bridges; ``start()`` binds, ``serve()`` loops until ``stop_event``.

    ``task`` None: the task is ``auto``, taken from the first robot's HELLO."""

    def __init__(
        self,
        task: Task | None,
        settings: ServiceConfig,
        planner: PlannerSettings | None = None,
    ) -> None:
        planner = planner or PlannerSettings()
        if task is not None:
            task.validated_weights(planner.weights)
        self.settings = settings
        self.stop_event = threading.Event()
        self.endpoints: dict[str, str] = {}
        self.fleet = Fleet(planner, self._check_settings)
        self.history = History(settings.models)
        """Episodes, versions and refusals, for the ``history`` command."""
        self.served: ServedTask | None = None
        """The task served with what serving it takes; None until ``start``, and under task
        auto until the first HELLO."""
        self._task = task
        self._answerer: Answerer | None = None
        self._cost = IterationCost()
        """Seconds per model row of a planning round, shared by every robot's budget."""
        self._subscriptions = Subscriptions()
        self.commands = ControlCommands(self.fleet, self.status, self._history, self._announced)
        self._started = time.monotonic()
        self._housekeeping = 0.0
        self.curve: CurveServer | None = None
        """CurveZMQ on every socket, with ``settings.keys`` (controller.service.auth)."""
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        if settings.keys is not None and settings.clients is not None:
            self.curve = CurveServer(settings.keys, settings.clients)
            self.context = zmq.Context()  # its own: one ZAP handler per context
        self._sockets: list[zmq.Socket[bytes]] = []

    @property
    def task_name(self) -> str:
        """The served task's name, or what stands for it before the first HELLO (task auto)."""
        task = self.served.task if self.served is not None else self._task
        return task.name if task is not None else AUTO_NAME

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
        served = None
        if self._task is not None:
            served = ServedTask(self._task, self.settings, self.fleet.defaults,
                                self._subscriptions)  # fmt: skip
        try:
            if self.curve is not None:
                self.curve.start(self.context)
            self.router = self._bind(zmq.ROUTER, "endpoint")
            self.control = self._bind(zmq.ROUTER, "control")
            self.telemetry = self._bind(zmq.XPUB, "telemetry")  # XPUB: it hears who subscribes
        except BaseException:
            if served is not None:
                served.close()
            raise
        self.outbox = Outbox(self.router)
        self.poller = zmq.Poller()
        for sock in self._sockets:
            self.poller.register(sock, zmq.POLLIN)
        if served is not None:
            self._serve(served)

    def _serve(self, served: ServedTask) -> None:
        """Serve ``served`` from now on: its newest model and policy loaded, then followed."""
        self.served = served
        self._answerer = Answerer(self.fleet, served, self._cost, self.outbox, self._arrivals,
                                  self.settings.batched)  # fmt: skip
        served.watch()
        self._swap_versions()

    def serve(self, duration_s: float | None = None) -> None:
        """Loop until ``stop_event`` is set (or ``duration_s`` passed)."""
        end = math.inf if duration_s is None else time.monotonic() + duration_s
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.step()

    def close(self) -> None:
        if self.served is not None:
            self.served.close()
        for sock in self._sockets:
            sock.close(linger=0)
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
            self._subscriptions.hear(self.telemetry)
        served, answerer = self.served, self._answerer
        if served is not None and answerer is not None:
            self._swap_versions()
            served.recorder.record()
            answerer.answer_pending()
            served.recorder.publish(self.telemetry)
        now = time.monotonic()
        if now - self._housekeeping > HOUSEKEEPING_S:
            self._housekeeping = now
            self.fleet.forget_silent(now, self.settings.stale_after_s)

    # --- robots ------------------------------------------------------------------------------
    def _arrivals(self) -> bool:
        """Read what came on the robot socket while a pass plans, and store the transitions
        it completed (so a robot whose state arrived can join the batch); False: nothing."""
        if not self.router.poll(0):
            return False
        self._drain_robots()
        if self.served is not None:
            self.served.recorder.record()
        return True

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
                self.outbox.refuse(identity, exc, self.fleet.by_identity(identity))
            except Exception as exc:  # a bug must cost one message, not the service
                log.exception("internal error on a message from %r", identity)
                self.outbox.refuse(identity, p.ProtocolError("internal", repr(exc)[:500]),
                                   self.fleet.by_identity(identity))  # fmt: skip

    def _handle(self, identity: bytes, msg: p.Message) -> None:
        if msg.type == p.HELLO:
            self._hello(identity, msg)
            return
        if msg.type == p.DESCRIBE:  # allowed before HELLO: it is how a bridge learns the spec
            if self.served is None:
                raise p.ProtocolError("unexpected", "this controller takes its task from the "
                                      "first robot's HELLO (task auto) and has none yet",
                                      seq=msg.seq, robot=msg.robot)  # fmt: skip
            self.outbox.send(identity, p.make(p.SPEC, msg.robot, seq=msg.seq, time=time.time(),
                                              **self.served.spec()))  # fmt: skip
            return
        session = self.fleet.by_identity(identity)
        if session is None or self.served is None:  # a session exists once a HELLO was served
            raise p.ProtocolError("unknown_robot", "say HELLO first", seq=msg.seq, robot=msg.robot)
        session.last_heard = time.monotonic()
        if msg.robot != session.robot:
            raise p.ProtocolError("bad_field", f"robot {msg.robot!r} said HELLO as "
                                  f"{session.robot!r}", seq=msg.seq, robot=msg.robot)  # fmt: skip
        if msg.type == p.STATE:
            self._state(self.served, session, msg)
        elif msg.type == p.EPISODE:
            if msg["event"] == "start":
                self._begin_episode(self.served, session, msg.episode)
            else:
                self.served.recorder.record()
                session.stats.episodes += 1
                session.stats.last_return = session.episode_return
                self.history.episode_ended(session.robot, session.episode,
                                           session.episode_return, msg["steps"])  # fmt: skip
        elif msg.type == p.HEARTBEAT:
            self.outbox.send(identity, p.make(p.HEARTBEAT, session.robot, time=time.time()))
        elif msg.type == p.ERROR:
            log.warning("robot %s reports %s: %s", session.robot, msg["code"], msg["reason"])
        else:
            raise p.ProtocolError("unexpected", f"a bridge does not send {msg.type}",
                                  seq=msg.seq, robot=msg.robot)  # fmt: skip

    def _hello(self, identity: bytes, msg: p.Message) -> None:
        served = self.served if self.served is not None else self._task_from(msg)
        spec = served.spec()
        problems = []
        if msg["task"] not in (served.task.name, served.task.env_id):
            problems.append(f"task {msg['task']!r} (this controller serves {served.task.name!r})")
        try:  # the same comparison, with the same tolerances, as a bridge makes of a WELCOME
            robot = RobotSpec(msg.robot, msg["task"], msg["obs_dim"], msg["act_dim"],
                              tuple(msg["action_low"]), tuple(msg["action_high"]),
                              msg["control_period"], msg["reward"])  # fmt: skip
            problems += robot.differences(spec)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise p.ProtocolError("mismatch", "HELLO does not match the served task: "
                                  + "; ".join(problems),
                                  seq=msg.seq, robot=msg.robot)  # fmt: skip
        session = self.fleet.connect(identity, msg, served.versions.evaluator)
        session.last_heard = time.monotonic()
        settings = session.settings
        self.outbox.send(
            identity,
            p.make(
                p.WELCOME,
                msg.robot,
                time=time.time(),
                model_version=served.versions.model_version,
                planner=settings.planner,
                horizon=settings.horizon,
                budget_ms=1000.0 * settings.budget_s(served.task.control_period, 0.0),
                **spec,
            ),
        )

    def _task_from(self, hello: p.Message) -> ServedTask:
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
            served = ServedTask(task, self.settings, self.fleet.defaults, self._subscriptions)
        except (ValueError, RuntimeError, OSError) as exc:  # RuntimeError: a corrupt store
            raise p.ProtocolError("mismatch", f"cannot serve this robot's HELLO as the task: "
                                  f"{exc}", seq=hello.seq, robot=hello.robot) from None  # fmt: skip
        try:
            self._serve(served)
        except Exception as exc:  # its models could not be read: nothing stays served
            served.close()
            self.served = self._answerer = None
            raise p.ProtocolError("mismatch", f"cannot serve this robot's HELLO as the task: "
                                  f"{exc}", seq=hello.seq, robot=hello.robot) from None  # fmt: skip
        log.info("serving the task of robot %s's HELLO: %s, obs %d, act %d, period %g s, "
                 "reward and termination learned", hello.robot, task.name, task.obs_dim,
                 task.act_dim, task.control_period)  # fmt: skip
        return served

    def _check_settings(self, settings: PlannerSettings) -> None:
        """Refuse (ValueError) settings the served task cannot take."""
        task = self.served.task if self.served is not None else self._task
        if task is not None:
            task.validated_weights(settings.weights)
        elif settings.weights:  # task auto learns its reward: there will be no terms to weigh
            raise ValueError(
                "this controller takes its task from the first robot's HELLO and "
                "learns its reward: there are no reward terms to weigh"
            )

    def _begin_episode(
        self, served: ServedTask, session: RobotSession, bridge_episode: int
    ) -> None:
        if bridge_episode == session.bridge_episode:
            return
        session.episode, session.bridge_episode = served.recorder.new_episode(), bridge_episode
        session.last_state, session.episode_return = None, 0.0
        if session.planner is not None:
            session.planner.reset()

    def _state(self, served: ServedTask, session: RobotSession, msg: p.Message) -> None:
        t = served.task
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
        self._begin_episode(served, session, msg.episode)
        prev = session.last_state
        if prev is not None and applied is not None and prev["step"] == msg["step"] - 1:
            served.recorder.completed(Transition(session, prev["obs"], applied, msg))
        session.last_state = msg
        if session.pending is not None:
            session.stats.dropped_stale += 1
        over = msg["terminated"] or msg["truncated"]
        session.pending = None if over else Pending(msg, time.perf_counter())

    # --- models ------------------------------------------------------------------------------
    def _swap_versions(self) -> None:
        """Take a newly loaded model or policy version, if there is one (between ticks)."""
        assert self.served is not None
        versions = self.served.versions
        if (evaluator := versions.take_model()) is not None:
            self.fleet.serve_model(evaluator)
            self.history.model_live(versions.model_version, evaluator.metadata)
            log.info("serving model v%d", versions.model_version)
        if versions.take_policy() is not None:
            self.history.policy_live(versions.policy_version)
            log.info("serving policy p%d", versions.policy_version)

    # --- control socket ----------------------------------------------------------------------
    def _drain_control(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            *route, body = frames
            self.control.send_multipart([*route, self.commands.answer(body)])

    def _announced(self) -> int:
        """A learner announced a version: look for it now; the model version serving."""
        if self.served is None:
            return 0
        for watcher in self.served.versions.watchers:
            watcher.poke()
        return self.served.versions.model_version

    def _history(self) -> bytes:
        served = self.served
        task = served.task if served is not None else self._task
        versions = served.versions if served is not None else None
        return self.history.encoded(
            self.task_name,
            task.reference_return if task is not None else None,
            dict(task.weights) if task is not None else {},
            {
                "model": versions.models if versions is not None else None,
                "policy": versions.policies if versions is not None else None,
            },
        )

    def status(self) -> dict[str, Any]:
        """What ``tickmpc status`` shows (once started): the service, then each robot."""
        served = self.served
        model_version = served.versions.model_version if served is not None else 0
        robots = {}
        for s in self.fleet:
            robots[s.robot] = {
                **s.stats.summary(),
                "mode": "lockstep" if s.lockstep else "realtime",
                "period_ms": round(1000.0 * s.control_period, 3),
                "budget_ms": None if s.budget_ms is None else round(s.budget_ms, 3),
                "episode": s.episode,
                "model_version": model_version if s.planner is not None else 0,
                "settings": s.settings.to_dict(),
            }
        no_store = {"transitions": 0, "store_errors": 0}
        return {
            "task": self.task_name,
            "uptime_s": round(time.monotonic() - self._started, 1),
            **(served.versions.status() if served is not None else NO_VERSIONS),
            "refused_messages": self.outbox.refused,
            "refused_clients": self.curve.clients.refused if self.curve is not None else 0,
            "forgotten_robots": self.fleet.forgotten,
            **(served.recorder.status() if served is not None else no_store),
            "durable": self.settings.durable,
            "endpoints": self.endpoints,
            "settings": self.fleet.defaults.to_dict(),
            "robots": robots,
        }

    def _bind(self, kind: int, name: str) -> zmq.Socket[bytes]:
        sock = self.context.socket(kind)
        self._sockets.append(sock)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(getattr(self.settings, name))
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock
