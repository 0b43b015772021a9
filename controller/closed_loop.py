"""``tickmpc run``: the embedded default. A simulated robot, the MPC service and the learner on
this machine, learning a task from scratch.

The service (``tickmpc serve``) and the learner (``tickmpc learn``) run as their own processes,
reading the run's ``config.toml`` (the whole config tree, with ipc:// sockets and data paths
inside the run directory); the bridge runs here, one episode at a time (with ``run.robots`` N,
N robots at a time, one episode each, in one fleet: :mod:`sim_bridge.fleet`), so the
progress is known per episode. Until the learner's first model the service acts randomly within
the bounds (PETS-style random first episode). In lockstep mode (the default, reproducible) each
episode waits for the retrain on everything stored so far and for the service to serve its
result; with ``--realtime`` the robot runs on the wall clock and models swap in whenever ready.

Run directory: ``config.toml``, ``task/`` (a task file's copy, see :func:`keep_task_copy`),
``store/`` (transitions), ``models/`` (every version, its
weights, ``rejected/``), ``metrics/episodes.jsonl``, ``metrics/ticks.jsonl`` (telemetry),
``metrics/learner.jsonl``, ``logs/``, ``learning_curve.png``, ``videos/`` (the first, the best
and the last episode, with ``index.json``: :mod:`sim_bridge.video`). ``--resume`` continues a
run.
"""

from __future__ import annotations

import hashlib
import json
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from controller.config import Config
from controller.service.control import request
from controller.tasks import AUTO, task_source
from models.policy.export import PolicyDirectory
from models.registry import ModelDirectory
from models.store import TransitionReader, follow
from sim_bridge import protocol as p
from sim_bridge.fleet import Fleet, fleet_ids
from sim_bridge.hardware import BridgeSettings
from sim_bridge.mujoco_bridge import MujocoBridge
from sim_bridge.video import EpisodeVideos

ROBOT = "sim-0"
TASK_DIR = "task"
"""Where a run directory keeps the copy of its task file (and ``source.json``)."""
DASHBOARD_START_S = 30.0
"""How long ``run --dashboard`` waits for the dashboard to print its address."""
VIDEOS_WAIT_S = 120.0
"""How long the end of a run waits for its videos to be rendered (a cartpole episode's takes
1-2 s once the service and the learner have stopped)."""


def keep_task_copy(config: Config, run_dir: Path) -> Config:
    """``config`` with its task read from a copy in ``run_dir/task/`` when the task comes from a
    file or module: every process of the run loads that copy, and ``--resume`` loads it again
    (:func:`resumed_task`), whatever happened to the original since. ``source.json`` beside it
    records the original reference and the copy's sha256."""
    source = task_source(config.task)
    if source is None:
        return config
    where = (run_dir / TASK_DIR).resolve()
    if source.path.parent == where:  # already the run's own copy
        return config
    where.mkdir(parents=True, exist_ok=True)
    copy = where / source.path.name
    shutil.copyfile(source.path, copy)
    record = {"source": config.task, "file": copy.name, "name": source.name,
              "sha256": source.sha256}  # fmt: skip
    (where / "source.json").write_text(json.dumps(record, indent=2) + "\n")
    return replace(config, task=_ref(copy, source.name))


def resumed_task(run_dir: Path) -> str | None:
    """The task reference of the copy a run directory keeps (None if it keeps none); ValueError
    if the copy is missing or differs from the hash recorded when the run began."""
    record_path = run_dir / TASK_DIR / "source.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        copy = run_dir / TASK_DIR / record["file"]
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{record_path}: the run's task copy cannot be read: {exc}") from None
    if digest != record["sha256"]:
        raise ValueError(f"{copy} changed since the run began (sha256 {digest[:12]}..., "
                         f"recorded {str(record['sha256'])[:12]}...)")  # fmt: skip
    return _ref(copy.resolve(), record["name"])


def _ref(path: Path, name: str | None) -> str:
    """The task reference of ``path`` and, where one was named, the attribute ``name``."""
    return f"{path}:{name}" if name else str(path)


class ClosedLoop:
    """Starts, drives and stops the three parts of a run in ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        for sub in ("metrics", "logs", "models"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        if config.task == AUTO:
            raise ValueError("tickmpc run simulates the robot, so it needs a task to simulate, "
                             "not 'auto'")  # fmt: skip
        config = keep_task_copy(config, run_dir)
        where = run_dir.resolve()
        # The run's own sockets and data, written into the config the children read, so the
        # file says everything about the run (rewritten whole on resume, wherever it moved).
        service = replace(
            config.service,
            endpoint=f"ipc://{where}/robots.sock",
            control=f"ipc://{where}/control.sock",
            telemetry=f"ipc://{where}/telemetry.sock",
            models=where / "models",
            store=where / "store",
        )
        self.config, self.dir = replace(config, service=service), run_dir
        self.config.save(run_dir / "config.toml")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_event = threading.Event()
        self._misses: dict[str, int] = {}
        """Each robot's deadline misses so far (the service counts them cumulatively)."""
        self._telemetry: threading.Thread | None = None
        self.models = ModelDirectory(run_dir / "models")
        self.policies = PolicyDirectory(run_dir / "models")
        self.dashboard: subprocess.Popen[str] | None = None
        self.dashboard_url: str | None = None
        """The page of ``tickmpc dashboard`` following the run (``run.dashboard``)."""
        self._store: TransitionReader | None = None
        """The run's store, followed by one reader (see models.store.follow)."""
        task = self.config.resolved_task()
        assert task is not None
        self.videos = EpisodeVideos(task, run_dir / "videos") if config.run.videos else None
        """The run's videos (None: ``run.videos`` is off)."""

    @property
    def control(self) -> str:
        return self.config.service.control

    @staticmethod
    def completed(run_dir: Path) -> int:
        """How many episodes the run in ``run_dir`` completed."""
        episodes = run_dir / "metrics" / "episodes.jsonl"
        return len(episodes.read_text().splitlines()) if episodes.exists() else 0

    def start(self) -> None:
        config, py = self.dir / "config.toml", [sys.executable, "-m", "controller.cli"]
        commands = {
            "serve": [*py, "serve", "--config", str(config)],
            "learn": [*py, "learn", "--config", str(config), "--announce",
                      "--metrics", str(self.dir / "metrics" / "learner.jsonl"),
                      "--policy-metrics", str(self.dir / "metrics" / "policy.jsonl")],
        }  # fmt: skip
        for name, cmd in commands.items():
            log = open(self.dir / "logs" / f"{name}.log", "ab")  # the child writes it
            self.processes[name] = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + 120.0
        while True:  # until the service answers (or dies, or does not come up)
            try:
                request(self.control, "get", timeout_s=1.0)
                break
            except TimeoutError:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise
        self._telemetry = threading.Thread(target=self._record_telemetry, daemon=True)
        self._telemetry.start()
        if self.config.run.dashboard:
            self.dashboard_url = self._start_dashboard()

    def _start_dashboard(self) -> str | None:
        """``tickmpc dashboard`` of this run, on its port or, when that is taken, any free
        one; returns the page's address (None when it did not start: the run goes on without
        it, the reason in logs/dashboard.log)."""
        for port in dict.fromkeys((self.config.run.dashboard_port, 0)):
            cmd = [sys.executable, "-m", "controller.cli", "dashboard", "--service",
                   str(self.dir), "--port", str(port)]  # fmt: skip
            with open(self.dir / "logs" / "dashboard.log", "ab") as log_file:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True)
            assert proc.stdout is not None
            deadline = time.monotonic() + DASHBOARD_START_S
            while select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                line = proc.stdout.readline()  # its address; nothing when it stopped
                if not line:
                    break
                if line.startswith("tickmpc dashboard: "):
                    self.dashboard = proc
                    return line.split(": ", 1)[1].strip()
            proc.kill()  # stopped, or silent past the deadline
            proc.wait()
        return None

    def episodes(self, index: int, robots: int = 1) -> list[dict[str, Any]]:
        """Run episodes ``index..index+robots-1`` (0-based) at once, one per robot (robot r's
        resets seeded with ``run.seed + 1000 (index + r)``), and return their metrics lines
        in robot order."""
        c = self.config
        settings = BridgeSettings(episode_steps=c.run.episode_steps or None, connect_timeout_s=60.0)
        task = c.resolved_task()
        assert task is not None
        names = fleet_ids(ROBOT, robots)
        record = self.videos is not None and self.videos.active
        bridges = [MujocoBridge.for_task(task, name, seed=c.run.seed + 1000 * (index + r),
                                         settings=settings, record=record)
                   for r, name in enumerate(names)]  # fmt: skip
        fleet = Fleet(bridges)
        robots_before = self._status()["robots"]
        before = {name: robots_before.get(name, {}).get("episodes", 0) for name in names}
        watch = threading.Thread(target=self._watch_children, args=(fleet.stop_event,),
                                 daemon=True)  # fmt: skip
        started = time.perf_counter()
        try:
            watch.start()
            stats = fleet.run(c.service.endpoint, mode="realtime" if c.run.realtime else
                              "lockstep", episodes=1)  # fmt: skip
        finally:
            fleet.stop_event.set()  # also ends the watch thread
            for bridge in bridges:
                if bridge not in fleet.running:  # one still stepping keeps its simulation
                    bridge.close()
        wall = time.perf_counter() - started
        self._check_alive()
        if fleet.errors:
            raise RuntimeError(f"robots stopped: {fleet.errors}")
        status = self._status()["robots"]
        deadline = time.monotonic() + 10.0
        # A robot the service forgot meanwhile (idle past stale_after_s while the others ran)
        # is not waited for.
        while (any(n in status and status[n]["episodes"] <= before[n] for n in names)
               and time.monotonic() < deadline):  # fmt: skip
            time.sleep(0.05)  # the service has not read every episode's end yet
            status = self._status()["robots"]
        lines = []
        for r, (name, run) in enumerate(zip(names, stats, strict=True)):
            robot = status.get(name, {})
            misses = robot.get("deadline_misses", self._misses.get(name, 0))
            earlier = self._misses.get(name, 0)
            if misses < earlier:  # forgotten and back: the service counts from 0 again
                earlier = 0
            line = {
                "episode": index + r + 1, "return": run.returns[0] if run.returns else None,
                "steps": run.ticks - 1, "ticks_per_s": round(run.ticks / wall, 1),
                "plan_ms_p99": robot.get("plan_ms_p99"),
                "deadline_misses": misses - earlier,
                "safe_actions": run.safe_actions, "model_version": robot.get("model_version", 0),
                "wall_time": time.time(), "seconds": round(wall, 2),
            }  # fmt: skip
            if robots > 1:
                line["robot"] = name
            self._misses[name] = misses
            lines.append(line)
            if self.videos is not None:
                self.videos.episode_done(bridges[r].recording(), index + r + 1, name,
                                         line["return"])  # fmt: skip
        with open(self.dir / "metrics" / "episodes.jsonl", "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        return lines

    def stored_steps(self) -> int:
        """Real steps of the episodes already completed (a resumed run counts them too)."""
        path = self.dir / "metrics" / "episodes.jsonl"
        if not path.exists():
            return 0
        return sum(int(json.loads(x)["steps"]) for x in path.read_text().splitlines())

    def _status(self) -> dict[str, Any]:
        """The service's status; a service that died meanwhile is reported as such."""
        try:
            return request(self.control, "status")
        except TimeoutError:
            self._check_alive()
            raise

    def _watch_children(self, stop: threading.Event) -> None:
        """Ends the episode early (``stop``) if the service or the learner dies in it."""
        while not stop.wait(0.5):
            if any(proc.poll() is not None for proc in self.processes.values()):
                stop.set()

    def wait_for_model(self) -> int:
        """Lockstep: wait until the learner has trained on everything stored, the policy (when
        one is trained) has taken every update it owes for it, and the service serves both;
        returns the served model version."""
        deadline = time.monotonic() + self.config.run.model_timeout_s
        metrics = self.dir / "metrics" / "learner.jsonl"
        while time.monotonic() < deadline:
            self._check_alive()
            self._store = follow(self.dir / "store", self._store)
            rows = len(self._store) if self._store is not None else 0
            if rows < self.config.learner.min_transitions and self.models.latest() is None:
                return 0  # still collecting random transitions for the first model
            trained = (
                [json.loads(x) for x in metrics.read_text().splitlines()]
                if metrics.exists()
                else []
            )
            if trained and trained[-1]["rows"] >= rows and self._policy_caught_up(rows):
                latest = self.models.latest()
                want = latest.version if latest else 0
                status = self._status()
                served = status["model_version"]
                if served >= want and self._policy_served(status):
                    return int(served)
            time.sleep(0.2)
        raise TimeoutError(f"no retrain within {self.config.run.model_timeout_s} s")

    def _policy_served(self, status: dict[str, Any]) -> bool:
        """The service acts with the newest published policy and, where it has a model, plans
        with it too (its rollouts composed with it), unless the rollouts refused it."""
        policy = self.policies.latest()
        if policy is None or str(policy.version) in status.get("rejected_policies", {}):
            return True
        if status["policy_version"] < policy.version:
            return False
        has_model = status["model_version"] > 0
        return not has_model or status["rollout_policy_version"] >= policy.version

    def _policy_caught_up(self, rows: int) -> bool:
        """No policy is trained, no model exists for it yet, or the newest published policy
        has every update owed for ``rows`` real rows."""
        if self.config.policy.optimizer == "none" or self.models.latest() is None:
            return True
        path = self.dir / "metrics" / "policy.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        if not lines:
            return False
        last = json.loads(lines[-1])
        return bool(last["real_rows"] >= rows and last["owed"] == 0)

    def stop(self) -> dict[str, int | None]:
        """Stop the processes (SIGTERM, then SIGKILL after 20 s); returns their exit codes."""
        self.stop_event.set()
        if self.dashboard is not None:
            self.dashboard.terminate()
            try:
                self.dashboard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dashboard.kill()
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        if self._telemetry is not None:
            self._telemetry.join(timeout=5)
        return codes

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited ({proc.returncode}); see "
                                   f"{self.dir / 'logs' / (name + '.log')}")  # fmt: skip

    def _record_telemetry(self) -> None:
        """Every telemetry record as one line of metrics/ticks.jsonl, written as it arrives
        (line-buffered: a killed run leaves every record it received, whole)."""
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        path = self.dir / "metrics" / "ticks.jsonl"
        with context.socket(zmq.SUB) as sub, open(path, "a", buffering=1) as out:
            sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
            sub.connect(self.config.service.telemetry)
            while not self.stop_event.is_set():
                if sub.poll(200):
                    out.write(sub.recv_multipart()[1].decode() + "\n")


def plot_learning_curve(run_dir: Path, task: str, reference: float | None = None) -> Path:
    """Episode return against episodes and against wall time, as a PNG in ``run_dir``, with
    the task's reference return (``Task.reference_return``) as a line where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        json.loads(x) for x in (run_dir / "metrics" / "episodes.jsonl").read_text().splitlines()
    ]
    returns = [x["return"] for x in lines]
    minutes = [(x["wall_time"] - lines[0]["wall_time"] + lines[0]["seconds"]) / 60 for x in lines]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], list(range(1, len(lines) + 1)), "episode"), (axes[1], minutes, "minutes"))
    for ax, xs, label in panels:
        ax.plot(list(xs), returns, marker="o", label="tickmpc")
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle="--", label="reference")
        ax.set_xlabel(label)
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{task}: learning from scratch ({run_dir.name})")
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_closed_loop(
    config: Config,
    run_dir: Path,
    *,
    first_episode: int = 0,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[ClosedLoop], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int | None]]:
    """Run episodes ``first_episode..config.episodes-1`` (fewer when ``run.max_steps`` is
    reached), ``run.robots`` at a time; returns their lines and exit codes. In lockstep the
    wait for the retrain comes after each round of episodes. With ``run.videos``, the run ends
    once its videos are rendered (up to ``VIDEOS_WAIT_S``); an interrupted run drops those not
    rendered yet. ``on_start`` is called once the service answers (and the dashboard, with
    ``run.dashboard``, serves)."""
    loop = ClosedLoop(config, run_dir)
    lines = []
    codes: dict[str, int | None] = {}
    steps = loop.stored_steps()
    total = config.run.episodes
    completed = False
    try:
        loop.start()
        if on_start is not None:
            on_start(loop)
        for index in range(first_episode, total, config.run.robots):
            done = loop.episodes(index, min(config.run.robots, total - index))
            steps += sum(line["steps"] for line in done)
            last = index + len(done) == total or 0 < config.run.max_steps <= steps
            if not config.run.realtime and not last:
                done[-1]["next_model_version"] = loop.wait_for_model()
            lines += done
            if on_episode is not None:
                for line in done:
                    on_episode(line)
            if last:
                break
        completed = True
    finally:
        try:
            codes = loop.stop()
        finally:
            if loop.videos is not None:  # rendered after the service and learner have stopped
                if completed:
                    loop.videos.finish(VIDEOS_WAIT_S)
                else:
                    loop.videos.close()
    return lines, codes
