"""The child processes of a run: ``tickmpc serve`` and ``tickmpc learn``, which the run cannot go
on without, and ``tickmpc dashboard``, which it can.

Each child writes its output to the run's ``logs/NAME.log`` and ends when the run's process is
gone, however it went (:mod:`sim_bridge.lifeline`), so that a run killed outright leaves
nothing holding its sockets and store and ``--resume`` starts at once.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from controller.run.rundir import RunDir
from controller.service.control import request
from sim_bridge.lifeline import child_env

SERVICE_START_S = 120.0
"""How long the run waits for its service to answer on the control socket."""
DASHBOARD_START_S = 30.0
"""How long ``run --dashboard`` waits for the dashboard to print its address."""
STOP_S = 20.0
"""How long a child may take to stop on SIGTERM before it is killed."""
CLI = [sys.executable, "-m", "controller.cli"]


class Children:
    """Starts, watches and stops the child processes of the run in ``run``, whose service
    answers on ``control``."""

    def __init__(self, run: RunDir, control: str) -> None:
        self.run, self.control = run, control
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        """The service and the learner, by command; the run stops if either exits."""
        self.dashboard: subprocess.Popen[str] | None = None
        """``tickmpc dashboard`` following the run (None: not asked for, or it did not start)."""

    def start(self) -> None:
        """Start the service and the learner on the run's ``config.toml`` and return once the
        service answers on its control socket (RuntimeError when a child exits first)."""
        config = str(self.run.config)
        commands = {
            "serve": ["serve", "--config", config],
            "learn": ["learn", "--config", config, "--announce",
                      "--metrics", str(self.run.learner_metrics),
                      "--policy-metrics", str(self.run.policy_metrics)],
        }  # fmt: skip
        for name, args in commands.items():
            with open(self.run.log(name), "ab") as log:  # the child keeps its own copy
                self.processes[name] = subprocess.Popen(
                    [*CLI, *args], stdout=log, stderr=log, env=child_env()
                )
        deadline = time.monotonic() + SERVICE_START_S
        while True:
            try:
                request(self.control, "get", timeout_s=1.0)
                return
            except TimeoutError:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise

    def start_dashboard(self, port: int) -> str | None:
        """``tickmpc dashboard`` of the run, on ``port`` or, when that is taken, any free one;
        returns the page's address (None when it did not start: the run goes on without it,
        the reason in logs/dashboard.log)."""
        for tried in dict.fromkeys((port, 0)):
            cmd = [*CLI, "dashboard", "--service", str(self.run.root), "--port", str(tried)]
            with open(self.run.log("dashboard"), "ab") as log_file:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                        env=child_env())  # fmt: skip
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

    def check_alive(self) -> None:
        """RuntimeError naming the first of the service and the learner that exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited ({proc.returncode}); see "
                                   f"{self.run.log(name)}")  # fmt: skip

    def status(self) -> dict[str, Any]:
        """The service's status; a service that died meanwhile is reported as such."""
        try:
            return request(self.control, "status")
        except TimeoutError:
            self.check_alive()
            raise

    def watch(self, stop: threading.Event) -> threading.Thread:
        """A started thread that sets ``stop`` (an episode's, to end it early) when the service
        or the learner exits, and ends once ``stop`` is set."""

        def run() -> None:
            while not stop.wait(0.5):
                if any(proc.poll() is not None for proc in self.processes.values()):
                    stop.set()

        thread = threading.Thread(target=run, name="children", daemon=True)
        thread.start()
        return thread

    def stop(self) -> dict[str, int | None]:
        """Stop every child (SIGTERM, then SIGKILL after ``STOP_S``); returns the service's
        and the learner's exit codes."""
        if self.dashboard is not None:
            self.dashboard.terminate()
            try:
                self.dashboard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dashboard.kill()
                self.dashboard.wait()
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes
