"""The embedded default until the closed loop lands: learn a model of a real MuJoCo system.

Collects random-action transitions from a task's MuJoCo environment (the PETS cartpole by
default) into the persistent transition store, reads them back as the learner will, trains the
probabilistic ensemble, publishes it as a versioned ONNX model, and checks it through ONNX
Runtime on fresh data (one-step error, calibration, disagreement far from the data).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tomli_w

from controller.tasks import get_task
from models.ensemble import EnsembleConfig
from models.evaluate import OneStepMetrics, disagreement, one_step_metrics
from models.registry import ModelDirectory, ModelVersion
from models.runtime import OnnxEnsemble
from models.store import TransitionReader, TransitionWriter
from models.train import TrainConfig, TrainReport, train_ensemble
from models.transitions import Transitions
from sim_bridge.random_data import RandomRollouts, collect_random


@dataclass(frozen=True)
class OfflineConfig:
    """Everything one offline run depends on; saved verbatim as the run's config.toml."""

    task: str = "cartpole-swingup"
    """A task name from controller.tasks (its environment, preprocessing and env options)."""
    steps: int = 4000
    """Random-action transitions to collect for training."""
    eval_steps: int = 1000
    """Fresh transitions (another seed) for the ONNX Runtime check."""
    members: int = 5
    hidden_layers: int = 3
    hidden_units: int = 200
    max_epochs: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 100 or self.eval_steps < 10:
            raise ValueError("steps must be >= 100 and eval_steps >= 10")


@dataclass(frozen=True)
class OfflineResult:
    run_dir: Path
    model: ModelVersion
    report: TrainReport
    holdout: OneStepMetrics
    far_disagreement: float
    collect_seconds: float


def run_offline(config: OfflineConfig, run_dir: Path) -> OfflineResult:
    """Collect, store, train, export and check; every artifact goes under ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps({"offline": asdict(config)}))
    started = time.perf_counter()
    task = get_task(config.task)
    if task.env_id is None:
        raise ValueError(f"task {task.name} has no simulated environment to collect from")
    env_id, env_kwargs = task.env_id, task.env_kwargs
    data = collect_random(env_id, config.steps, seed=config.seed, env_kwargs=env_kwargs)
    collect_seconds = time.perf_counter() - started
    _store(data, run_dir / "transitions")
    stored = TransitionReader(run_dir / "transitions").read_all()

    model_config = EnsembleConfig(
        obs_dim=stored.obs.shape[1],
        act_dim=stored.act.shape[1],
        members=config.members,
        hidden_layers=config.hidden_layers,
        hidden_units=config.hidden_units,
        preprocess=task.preprocess,
    )
    train_config = TrainConfig(max_epochs=config.max_epochs, seed=config.seed)
    model, report = train_ensemble(
        stored.obs, stored.act, stored.next_obs, model_config=model_config, config=train_config
    )
    version, _ = ModelDirectory(run_dir / "models").publish(
        model, train_rows=report.train_rows, holdout=_holdout_summary(report)
    )

    runtime = OnnxEnsemble(version.path, obs_dim=model_config.obs_dim)
    fresh = collect_random(
        env_id, config.eval_steps, seed=config.seed + 10_000, env_kwargs=env_kwargs
    )
    metrics = one_step_metrics(runtime, fresh.obs, fresh.act, fresh.next_obs)
    # States ten times further out than any seen: the ensemble should disagree there.
    far = fresh.obs * 10.0
    far_disagreement = disagreement(runtime, far, fresh.act)
    result = OfflineResult(run_dir, version, report, metrics, far_disagreement, collect_seconds)
    (run_dir / "summary.json").write_text(json.dumps(_summary(result), indent=2))
    return result


def _store(data: RandomRollouts, path: Path) -> None:
    rows = Transitions(
        obs=data.obs,
        act=data.act,
        next_obs=data.next_obs,
        reward=data.reward,
        terminated=data.terminated,
        truncated=data.truncated,
        episode=data.episode,
        step=data.step,
        wall_time=np.full(len(data), time.time()),
        robot=np.full(len(data), "sim-0"),
    )
    with TransitionWriter(path, obs_dim=data.obs.shape[1], act_dim=data.act.shape[1]) as writer:
        writer.append_batch(rows)


def _holdout_summary(report: TrainReport) -> dict[str, float]:
    return {"holdout_nll": report.holdout_nll, "holdout_mse": report.holdout_mse}


def _summary(result: OfflineResult) -> dict[str, object]:
    return {
        "run_dir": str(result.run_dir),
        "model": str(result.model.path),
        "model_version": result.model.version,
        "train": result.report.to_dict(),
        "eval": result.holdout.to_dict(),
        "far_disagreement": result.far_disagreement,
        "disagreement_ratio": result.far_disagreement / max(result.holdout.disagreement, 1e-12),
        "collect_seconds": result.collect_seconds,
        "finite": bool(np.isfinite(result.holdout.nmse)),
    }
