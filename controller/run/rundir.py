"""The run directory of ``tickmpc run``: where each of a run's files lives, by name.

::

    config.toml           the whole config tree the service and the learner read
    task/                 the copy of a task file, with source.json (controller.run.task_copy)
    store/                the transitions (models.store)
    models/               every model and policy version, their weights, rejected/
    metrics/episodes.jsonl  one line per finished episode (controller.run.episodes)
    metrics/ticks.jsonl   every telemetry record the run received (controller.run.telemetry)
    metrics/learner.jsonl one line per retrain (models.progress, written by the learner)
    metrics/policy.jsonl  one line per published policy (models.progress, the policy trainer)
    logs/NAME.log         each child's output: serve, learn, dashboard
    learning_curve.png    the returns, drawn at the end (controller.run.plot)
    videos/               the first, the best and the last episode, index.json (sim_bridge.video)
    robots.sock, control.sock, telemetry.sock   the service's ipc:// sockets

Every part of the product that reads or writes a run's files takes a :class:`RunDir`; the
names are written here only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controller.config import Config
from models.progress import append_record, read_records


@dataclass(frozen=True)
class RunDir:
    """The files of one run, under ``root`` (which need not exist yet)."""

    root: Path
    """The run directory itself."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def task(self) -> Path:
        """The directory of the run's copy of its task file."""
        return self.root / "task"

    @property
    def task_record(self) -> Path:
        """Where the task copy's origin and hash are recorded."""
        return self.task / "source.json"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def episodes(self) -> Path:
        return self.metrics / "episodes.jsonl"

    @property
    def ticks(self) -> Path:
        return self.metrics / "ticks.jsonl"

    @property
    def learner_metrics(self) -> Path:
        return self.metrics / "learner.jsonl"

    @property
    def policy_metrics(self) -> Path:
        return self.metrics / "policy.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, name: str) -> Path:
        """The log file of the child ``name`` (serve, learn, dashboard)."""
        return self.logs / f"{name}.log"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    def socket(self, name: str) -> str:
        """The ipc:// address of the service's socket ``name`` (robots, control, telemetry),
        absolute, so that it holds wherever a child starts."""
        return f"ipc://{self.root.resolve()}/{name}.sock"

    def create(self) -> None:
        """Make the directories the run writes into before its children start."""
        for directory in (self.metrics, self.logs, self.models):
            directory.mkdir(parents=True, exist_ok=True)

    def own(self, config: Config) -> Config:
        """``config`` with the service's sockets, store and models in this directory, so that
        ``config.toml`` says everything about the run (rewritten whole on resume, wherever the
        directory moved)."""
        where = self.root.resolve()
        service = replace(
            config.service,
            endpoint=self.socket("robots"),
            control=self.socket("control"),
            telemetry=self.socket("telemetry"),
            models=where / "models",
            store=where / "store",
        )
        return replace(config, service=service)

    # --- the episodes' record -------------------------------------------------------------------
    def episode_lines(self) -> list[dict[str, Any]]:
        """The finished episodes' lines, in order."""
        return read_records(self.episodes)

    def completed(self) -> int:
        """How many episodes the run completed."""
        return len(self.episode_lines())

    def stored_steps(self) -> int:
        """Real steps of the episodes completed (a resumed run counts them too)."""
        return sum(int(line["steps"]) for line in self.episode_lines())

    def add_episodes(self, lines: list[dict[str, Any]]) -> None:
        """Record finished episodes, a line each."""
        for line in lines:
            append_record(self.episodes, line)

    def tick_lines(self) -> list[dict[str, Any]]:
        """The telemetry records the run received, in order."""
        return read_records(self.ticks)
