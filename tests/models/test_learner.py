"""The learner over a real store on disk, exporting real ONNX files checked in ONNX Runtime."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.ensemble import EnsembleShape
from models.learner import Learner, LearnerConfig, ModelVersion
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.store import TransitionWriter
from models.train import TrainConfig
from models.transitions import Transitions
from sim_bridge.random_data import collect_random

PRE = {"kind": "sincos", "angle_indices": [1]}
"""The cartpole's observation preprocessing, which every learner here bakes into its models."""


def _learner(store: Path, models: Path, config: LearnerConfig, **kwargs: Any) -> Learner:
    return Learner(store, models, config, preprocess=PRE, **kwargs)


SMALL = EnsembleShape(members=3, hidden_layers=2, hidden_units=64, reward_layers=2,
                      reward_units=64)  # fmt: skip
CONFIG = LearnerConfig(
    model=SMALL, train=TrainConfig(max_epochs=80, max_seconds=60.0), min_transitions=200,
    retrain_every=200,
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
    learner = _learner(store, models, CONFIG, metrics=metrics)
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
    restarted = _learner(store, models, CONFIG, metrics=metrics)  # a new process, same files
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
    _learner(store, models, CONFIG).step()
    _append(store, 200, seed=5)
    # An untrainable candidate (one epoch of a fresh tiny model) against a trained current one.
    weak = replace(CONFIG, model=replace(SMALL, hidden_units=8, reward_units=8),
                   train=replace(CONFIG.train, max_epochs=1), gate_margin=0.0)  # fmt: skip
    learner = _learner(store, models, weak)
    before = time.time()
    result = learner.retrain_now()
    assert result is not None and not result.accepted and "nmse" in result.reason
    assert ModelDirectory(models).versions() == [1]
    (candidate,) = (models / "rejected").glob("*.onnx")
    # Why, beside it with its stem (the service lists it in its history): nothing else there.
    names = {p.name for p in (models / "rejected").iterdir()}
    assert names == {candidate.name, candidate.with_suffix(".json").name}
    refusal = json.loads(candidate.with_suffix(".json").read_text())
    assert refusal == {"rows": 600, "reason": result.reason, "time": refusal["time"]}
    assert before <= refusal["time"] <= time.time()
    assert candidate.stem == f"rows{600:08d}-{int(refusal['time'])}"


def test_an_episode_end_triggers_a_retrain_before_retrain_every_rows_and_is_announced(
    tmp_path: Path,
) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    announced: list[int] = []
    _append(store, 200, seed=6)
    learner = _learner(store, models, CONFIG, on_publish=lambda v: announced.append(v.version))
    assert learner.step() and announced == [1]
    _append(store, 30, seed=7)  # a running episode: 30 rows of the 200 needed
    assert not learner.step()
    _append(store, 12, seed=8, end=True)  # the episode ends (e.g. the pole fell)
    steps_only = _learner(store, models, replace(CONFIG,
                         retrain_at_episode_end=False))  # fmt: skip
    assert not steps_only.step()
    assert learner.step() and learner.history[-1].rows == 242
    assert announced == ([1, 2] if learner.history[-1].accepted else [1])


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_a_failing_announcement_leaves_the_learner_running_and_the_version_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, models = tmp_path / "store", tmp_path / "models"
    directory = ModelDirectory(models)
    _append(store, 200, seed=9)

    def unreachable(version: object) -> None:
        raise TimeoutError("no reply from the control socket tcp://127.0.0.1:5556 in 2.0 s")

    learner = _learner(store, models, CONFIG, on_publish=unreachable)
    thread = threading.Thread(target=learner.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: len(learner.history) == 1, 60, "first retrain")
        assert directory.versions() == [1] and thread.is_alive()
        _append(store, 200, seed=10)  # it goes on retraining
        _wait_for(lambda: len(learner.history) == 2, 60, "second retrain")
    finally:
        learner.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    published = [r.version for r in learner.history if r.version is not None]
    assert published and directory.versions() == published
    assert directory.latest() == ModelVersion(published[-1], directory.path_of(published[-1]))
    failures = [r for r in caplog.records if "announcing it failed" in r.getMessage()]
    assert len(failures) == len(published)  # one line per version
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in failures)
    assert "TimeoutError" in failures[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_stop_request_interrupts_a_running_retrain_and_publishes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="models.learner")
    store, models = tmp_path / "store", tmp_path / "models"
    _append(store, 600, seed=11)
    # The default architecture on 600 rows trains for 5-20 s before early stopping.
    slow = replace(CONFIG, model=EnsembleShape(members=5, hidden_layers=3, hidden_units=200),
                   train=replace(CONFIG.train, max_epochs=100_000))  # fmt: skip
    announced: list[ModelVersion] = []
    learner = _learner(store, models, slow, on_publish=announced.append)
    thread = threading.Thread(target=learner.run, daemon=True)
    thread.start()
    started = lambda: any("retraining on" in r.getMessage() for r in caplog.records)  # noqa: E731
    _wait_for(started, 30, "retrain")
    time.sleep(0.3)  # well inside the training loop
    learner.stop_event.set()
    asked = time.monotonic()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 1.5
    assert learner.history == [] and announced == [] and learner.trained_rows == 0
    assert ModelDirectory(models).versions() == []
    assert not (models / "rejected").exists() and not list(models.glob(".candidate-*"))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("stopped in training: nothing published" in r.getMessage() for r in caplog.records)


def test_learner_config_refuses_a_non_boolean_episode_end_switch() -> None:
    with pytest.raises(ValueError, match="retrain_at_episode_end"):
        LearnerConfig(retrain_at_episode_end="yes")  # type: ignore[arg-type]


PENDULUM = replace(CONFIG, train=replace(CONFIG.train, max_epochs=40))
"""For InvertedPendulum-v5 rows: random actions end an episode every ~6 steps, so a few hundred
rows hold dozens of terminal ones."""


def _append_pendulum(store: Path, steps: int, seed: int) -> None:
    data = collect_random("InvertedPendulum-v5", steps, seed=seed)
    rows = Transitions(
        obs=data.obs, act=data.act, next_obs=data.next_obs, reward=data.reward,
        terminated=data.terminated, truncated=data.truncated, episode=data.episode + seed * 1000,
        step=data.step, wall_time=np.full(len(data), time.time()), robot=np.full(len(data), "r"),
    )  # fmt: skip
    with TransitionWriter(store, 4, 1) as writer:
        writer.append_batch(rows)


def test_learned_reward_and_termination_are_published_and_new_flags_train_from_scratch(
    tmp_path: Path,
) -> None:
    store, models, metrics = tmp_path / "store", tmp_path / "models", tmp_path / "learner.jsonl"
    _append_pendulum(store, 400, seed=1)
    learner = Learner(store, models, PENDULUM, predict_reward=True, predict_done=True,
                      metrics=metrics)  # fmt: skip
    assert learner.step() and learner.history[-1].accepted
    directory = ModelDirectory(models)
    meta = OnnxEnsemble(directory.path_of(1)).metadata
    assert meta.config.predict_reward and meta.config.predict_done
    assert meta.output_names[-3:] == ("reward_mean", "reward_logvar", "done_prob")
    assert {"reward_nmse", "done_brier", "done_log_loss", "done_rate"} <= set(meta.holdout)
    line = json.loads(metrics.read_text().splitlines()[-1])
    assert 0.0 <= line["reward_nmse"] < 1.0 and 0.0 <= line["done_brier"] < 0.25, line

    # The task no longer learns them: the saved model is of another architecture, so the
    # learner trains anew on the whole store at once, not after retrain_every more rows.
    state_only = Learner(store, models, PENDULUM, metrics=metrics)
    assert state_only.model is None and state_only.trained_rows == 0
    assert state_only.step()
    second = state_only.history[-1]
    assert second.rows == 400 and second.accepted and second.version == 2
    assert "reward" not in second.reason  # compared with v1 on the state alone
    line = json.loads(metrics.read_text().splitlines()[-1])
    assert line["reward_nmse"] is None and line["done_brier"] is None
    assert OnnxEnsemble(directory.path_of(2)).metadata.output_names == (
        "next_obs_mean",
        "next_obs_logvar",
    )
    resumed = Learner(store, models, PENDULUM)  # the same settings as v2: a warm start
    assert resumed.model is not None and resumed.trained_rows == 400


def test_the_gate_refuses_a_non_finite_or_diverged_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reward is part of the worst-dim gate, and every output must be finite."""
    from models import learner as learner_module

    store, models = tmp_path / "store", tmp_path / "models"
    _append_pendulum(store, 400, seed=2)
    learner = Learner(store, models, PENDULUM, predict_reward=True, predict_done=True)
    assert learner.step() and learner.history[-1].version == 1
    train = learner_module.train_ensemble

    def broken_reward(value: float) -> Any:
        def train_ensemble(*args: Any, **kwargs: Any) -> Any:
            model, report = train(*args, **kwargs)
            with torch.no_grad():  # the reward mean's column of the reward's output layer
                model.reward_head.bias[..., 0] = value
            return model, report

        return train_ensemble

    monkeypatch.setattr(learner_module, "train_ensemble", broken_reward(float("nan")))
    result = learner.retrain_now()
    assert result is not None and not result.accepted
    assert result.reason == "non-finite reward_mean on the check batch"
    monkeypatch.setattr(learner_module, "train_ensemble", broken_reward(50.0))
    result = learner.retrain_now()
    assert result is not None and not result.accepted, result
    assert "one-step nmse (reward included)" in result.reason
    assert ModelDirectory(models).versions() == [1]


def test_an_unreadable_current_model_opens_the_gate_loudly_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, models, metrics = tmp_path / "store", tmp_path / "models", tmp_path / "learner.jsonl"
    _append(store, 250, seed=21)
    learner = _learner(store, models, CONFIG, metrics=metrics)
    assert learner.step() and learner.history[-1].current_unreadable == 0
    # A flipped byte in the serving model's weights: its graph hash no longer matches.
    current = ModelDirectory(models).path_of(1)
    raw = bytearray(current.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    current.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING, logger="models.learner")
    _append(store, 200, seed=22)
    assert learner.step()
    result = learner.history[-1]
    assert result.accepted and result.reason.startswith("current model unreadable")
    assert result.current_nmse is None and result.current_unreadable == 1
    (warning,) = [r for r in caplog.records if "cannot read the current model" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "v1" in warning.getMessage()
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["current_unreadable"] for line in lines] == [0, 1]
