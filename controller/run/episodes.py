"""The run's episodes: simulated robots (MuJoCo bridges, one fleet) against the run's service,
one round of ``run.robots`` episodes at a time, each finished episode a line of
``metrics/episodes.jsonl``."""

from __future__ import annotations

import time
from typing import Any

from controller.config import Config
from controller.run.rundir import RunDir
from controller.run.supervise import Children
from sim_bridge.fleet import Fleet, fleet_ids
from sim_bridge.hardware import BridgeSettings
from sim_bridge.mujoco_bridge import MujocoBridge
from sim_bridge.video import EpisodeVideos

ROBOT = "sim-0"
"""The name of the run's robot (with ``run.robots`` N: sim-0 .. sim-N-1)."""
SERVICE_READ_S = 10.0
"""How long a round waits for the service to have read every episode's end."""


class Episodes:
    """Runs the episodes of the run in ``run``, its children watched while they run."""

    def __init__(
        self, config: Config, run: RunDir, children: Children, videos: EpisodeVideos | None
    ) -> None:
        self.config, self.run, self.children, self.videos = config, run, children, videos
        self._misses: dict[str, int] = {}
        """Each robot's deadline misses so far (the service counts them cumulatively)."""

    def play_round(self, index: int, robots: int = 1) -> list[dict[str, Any]]:
        """Run episodes ``index..index+robots-1`` (0-based) at once, one per robot (robot r's
        resets seeded with ``run.seed + 1000 (index + r)``), record them and return their
        lines in robot order. RuntimeError when a child or a robot stopped."""
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
        robots_before = self.children.status()["robots"]
        before = {name: robots_before.get(name, {}).get("episodes", 0) for name in names}
        started = time.perf_counter()
        try:
            self.children.watch(fleet.stop_event)  # a child's death ends the episode at once
            stats = fleet.run(c.service.endpoint, mode="realtime" if c.run.realtime else
                              "lockstep", episodes=1)  # fmt: skip
        finally:
            fleet.stop_event.set()  # also ends the watch
            for bridge in bridges:
                if bridge not in fleet.running:  # one still stepping keeps its simulation
                    bridge.close()
        wall = time.perf_counter() - started
        self.children.check_alive()
        if fleet.errors:
            raise RuntimeError(f"robots stopped: {fleet.errors}")
        status = self._read_by_service(names, before)
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
        self.run.add_episodes(lines)
        return lines

    def _read_by_service(self, names: list[str], before: dict[str, int]) -> dict[str, Any]:
        """The service's robots once it has read every episode's end (up to
        ``SERVICE_READ_S``). A robot the service forgot meanwhile (idle past stale_after_s
        while the others ran) is not waited for."""
        status = self.children.status()["robots"]
        deadline = time.monotonic() + SERVICE_READ_S
        while (any(n in status and status[n]["episodes"] <= before[n] for n in names)
               and time.monotonic() < deadline):  # fmt: skip
            time.sleep(0.05)
            status = self.children.status()["robots"]
        return dict(status)
