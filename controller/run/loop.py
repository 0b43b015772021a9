"""``tickmpc run``: the embedded default. A simulated robot, the MPC service and the learner on
this machine, learning a task from scratch.

The service (``tickmpc serve``) and the learner (``tickmpc learn``) run as their own processes
(:mod:`controller.run.supervise`), reading the run's ``config.toml`` (the whole config tree,
with ipc:// sockets and data paths inside the run directory: :mod:`controller.run.rundir`);
the bridge runs here, one episode at a time (with ``run.robots`` N, N robots at a time, one
episode each, in one fleet: :mod:`controller.run.episodes`), so the progress is known per
episode. Until the learner's first model the service acts randomly within the bounds
(PETS-style random first episode). In lockstep mode (the default, reproducible) each episode
waits for the retrain on everything stored so far and for the service to serve its result
(:mod:`controller.run.lockstep`); with ``--realtime`` the robot runs on the wall clock and
models swap in whenever ready. ``--resume`` continues a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.config import Config
from controller.run.episodes import Episodes
from controller.run.lockstep import Lockstep
from controller.run.rundir import RunDir
from controller.run.supervise import Children
from controller.run.task_copy import keep_task_copy
from controller.run.telemetry import TelemetryLog
from controller.tasks import AUTO
from sim_bridge.video import EpisodeVideos

VIDEOS_WAIT_S = 120.0
"""How long the end of a run waits for its videos to be rendered (a cartpole episode's takes
1-2 s once the service and the learner have stopped)."""


class ClosedLoop:
    """The parts of one run in ``run_dir``: its children, its telemetry record, its episodes,
    the lockstep wait between them and its videos."""

    def __init__(self, config: Config, run_dir: Path | RunDir) -> None:
        run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        if config.task == AUTO:
            raise ValueError("tickmpc run simulates the robot, so it needs a task to simulate, "
                             "not 'auto'")  # fmt: skip
        run.create()
        config = run.own(keep_task_copy(config, run))
        config.save(run.config)
        self.config, self.run = config, run
        self.children = Children(run, config.service.control)
        self.telemetry = TelemetryLog(run, config.service.telemetry)
        task = config.resolved_task()
        assert task is not None
        self.videos = EpisodeVideos(task, run.videos) if config.run.videos else None
        """The run's videos (None: ``run.videos`` is off)."""
        self.episodes = Episodes(config, run, self.children, self.videos)
        self.lockstep = Lockstep(config, run, self.children)
        self.dashboard_url: str | None = None
        """The page of ``tickmpc dashboard`` following the run (``run.dashboard``)."""

    def start(self) -> None:
        """Start the children (returning once the service answers), the telemetry record and,
        with ``run.dashboard``, the dashboard."""
        self.children.start()
        self.telemetry.start()
        if self.config.run.dashboard:
            self.dashboard_url = self.children.start_dashboard(self.config.run.dashboard_port)

    def stop(self) -> dict[str, int | None]:
        """Stop the children and the telemetry record; returns the service's and the learner's
        exit codes."""
        try:
            return self.children.stop()
        finally:
            self.telemetry.stop()


def run_closed_loop(
    config: Config,
    run_dir: Path | RunDir,
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
    steps = loop.run.stored_steps()
    total = config.run.episodes
    completed = False
    try:
        loop.start()
        if on_start is not None:
            on_start(loop)
        for index in range(first_episode, total, config.run.robots):
            done = loop.episodes.play_round(index, min(config.run.robots, total - index))
            steps += sum(line["steps"] for line in done)
            last = index + len(done) == total or 0 < config.run.max_steps <= steps
            if not config.run.realtime and not last:
                done[-1]["next_model_version"] = loop.lockstep.wait_for_model()
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
