"""The run directory (controller.run.rundir): its files by name, the config that points the
service into it, and the episodes' record."""

from __future__ import annotations

from pathlib import Path

from controller.config import Config
from controller.run import RunDir


def test_every_file_of_a_run_is_named_under_its_root(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    named = {
        run.config: "config.toml", run.task: "task", run.task_record: "task/source.json",
        run.store: "store", run.models: "models", run.episodes: "metrics/episodes.jsonl",
        run.ticks: "metrics/ticks.jsonl", run.learner_metrics: "metrics/learner.jsonl",
        run.policy_metrics: "metrics/policy.jsonl", run.log("serve"): "logs/serve.log",
        run.learning_curve: "learning_curve.png", run.videos: "videos",
    }  # fmt: skip
    for path, relative in named.items():
        assert path == tmp_path / "run" / relative
    run.create()
    assert run.metrics.is_dir() and run.logs.is_dir() and run.models.is_dir()


def test_the_runs_config_puts_the_services_sockets_and_data_in_the_directory(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path / "run")
    service = run.own(Config()).service
    where = (tmp_path / "run").resolve()
    assert (service.endpoint, service.control, service.telemetry) == (
        f"ipc://{where}/robots.sock", f"ipc://{where}/control.sock",
        f"ipc://{where}/telemetry.sock",
    )  # fmt: skip
    assert (service.store, service.models) == (where / "store", where / "models")


def test_the_episodes_record_counts_the_finished_episodes_and_their_steps(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path / "run")
    assert run.completed() == 0 and run.stored_steps() == 0  # a new run
    run.create()
    run.add_episodes([{"episode": 1, "steps": 200}, {"episode": 2, "steps": 150}])
    assert run.completed() == 2 and run.stored_steps() == 350
    assert [line["episode"] for line in RunDir(run.root).episode_lines()] == [1, 2]
