"""The learner over a real store on disk, exporting real ONNX files checked in ONNX Runtime."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from models.learner import Learner, LearnerConfig
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.store import TransitionWriter
from models.transitions import Transitions
from sim_bridge.random_data import collect_random

CONFIG = LearnerConfig(
    preprocess={"kind": "sincos", "angle_indices": [1]}, members=3, hidden_layers=2,
    hidden_units=64, min_transitions=200, retrain_every=200, max_epochs=80,
)  # fmt: skip


def _append(store: Path, steps: int, seed: int, *, end: bool = False) -> None:
    """Append ``steps`` random cartpole transitions; ``end``: the last one ends its episode."""
    data = collect_random("tickmpc/CartpoleSwingup-v0", steps, seed=seed)
    terminated = data.terminated.copy()
    terminated[-1] |= end
    rows = Transitions(
        obs=data.obs, act=data.act, next_obs=data.next_obs, reward=data.reward,
        terminated=terminated, truncated=data.truncated, episode=data.episode + seed * 100,
        step=data.step, wall_time=np.full(len(data), time.time()), robot=np.full(len(data), "r"),
    )  # fmt: skip
    with TransitionWriter(store, 4, 1) as writer:
        writer.append_batch(rows)


def test_learner_publishes_when_enough_data_arrived_and_warm_starts_after_a_restart(
    tmp_path: Path,
) -> None:
    store, models, metrics = tmp_path / "store", tmp_path / "models", tmp_path / "learner.jsonl"
    learner = Learner(store, models, CONFIG, metrics=metrics)
    assert not learner.step()  # no store yet
    _append(store, 150, seed=1)
    assert not learner.step()  # below min_transitions
    _append(store, 100, seed=2)
    assert learner.step()
    directory = ModelDirectory(models)
    assert directory.versions() == [1] and learner.history[-1].accepted
    assert OnnxEnsemble(directory.path_of(1)).metadata.extra["store_rows"] == 250
    assert not learner.step()  # nothing new
    _append(store, 200, seed=3)
    restarted = Learner(store, models, CONFIG, metrics=metrics)  # a new process, same files
    assert restarted.model is not None and restarted.trained_rows == 250
    assert restarted.step()
    second = restarted.history[-1]
    assert second.accepted and second.version == 2 and second.current_nmse is not None
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["version"] for line in lines] == [1, 2] and lines[1]["rows"] == 450


def test_a_candidate_worse_than_the_current_model_is_kept_aside_not_published(
    tmp_path: Path,
) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    _append(store, 400, seed=4)
    Learner(store, models, CONFIG).step()
    _append(store, 200, seed=5)
    # An untrainable candidate (one epoch of a fresh tiny model) against a trained current one.
    weak = LearnerConfig(**{**CONFIG.__dict__, "max_epochs": 1, "hidden_units": 8,
                            "gate_margin": 0.0})  # fmt: skip
    learner = Learner(store, models, weak)
    result = learner.retrain_now()
    assert not result.accepted and "nmse" in result.reason
    assert ModelDirectory(models).versions() == [1]
    assert len(list((models / "rejected").glob("*.onnx"))) == 1


def test_an_episode_end_triggers_a_retrain_before_retrain_every_rows_and_is_announced(
    tmp_path: Path,
) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    announced: list[int] = []
    _append(store, 200, seed=6)
    learner = Learner(store, models, CONFIG, on_publish=lambda v: announced.append(v.version))
    assert learner.step() and announced == [1]
    _append(store, 30, seed=7)  # a running episode: 30 rows of the 200 needed
    assert not learner.step()
    _append(store, 12, seed=8, end=True)  # the episode ends (e.g. the pole fell)
    steps_only = Learner(store, models, LearnerConfig(**{**CONFIG.__dict__,
                         "retrain_at_episode_end": False}))  # fmt: skip
    assert not steps_only.step()
    assert learner.step() and learner.history[-1].rows == 242
    assert announced == ([1, 2] if learner.history[-1].accepted else [1])


def test_a_failing_announcement_does_not_stop_the_learner(tmp_path: Path) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    _append(store, 200, seed=9)

    def unreachable(version: object) -> None:
        raise TimeoutError("no reply from the control socket")

    learner = Learner(store, models, CONFIG, on_publish=unreachable)
    assert learner.step() and ModelDirectory(models).versions() == [1]


def test_learner_config_refuses_a_non_boolean_episode_end_switch() -> None:
    with pytest.raises(ValueError, match="retrain_at_episode_end"):
        LearnerConfig(retrain_at_episode_end="yes")  # type: ignore[arg-type]
