"""The ensemble learns a real MuJoCo system, checked through the exported ONNX model.

Data: random actions in gymnasium's InvertedPendulum-v5 (real MuJoCo physics). Evaluation is on
fresh transitions from another seed, through ONNX Runtime, i.e. what a planner will consume.

Bounds, and why:
- one-step error: the ensemble-mean squared error of every state dim is below 1% of the variance
  of that dim's true one-step delta (R^2 > 0.99). A planner compounds this error over a 15-30
  step horizon, so it must be a small fraction of the per-step change; 1% of the variance is an
  error std of 10% of the typical delta. Measured: about 1e-4..1e-5.
- calibration: the share of errors within one predicted std lies in [0.55, 0.85] (68.3% for a
  perfect Gaussian; the band allows for the heavier-than-Gaussian tails of model error).
  Measured: about 0.75.
- disagreement: the variance of the member means on states ten times outside the data is more
  than 10x that on fresh in-distribution states. Measured: thousands of times.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.ensemble import EnsembleConfig
from models.evaluate import OneStepMetrics, disagreement, one_step_metrics
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.train import TrainConfig, TrainReport, train_ensemble
from sim_bridge.random_data import collect_random

pytestmark = pytest.mark.slow  # trains an ensemble on MuJoCo data

ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def learned(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[OnnxEnsemble, TrainReport, OneStepMetrics, float]:
    data = collect_random(ENV, 3000, seed=0)
    cfg = EnsembleConfig(obs_dim=4, act_dim=1, members=5, hidden_layers=3, hidden_units=128)
    model, report = train_ensemble(
        data.obs,
        data.act,
        data.next_obs,
        model_config=cfg,
        config=TrainConfig(seed=0, max_epochs=150, patience=20, min_improvement=0.0),
    )
    version, _ = ModelDirectory(tmp_path_factory.mktemp("models")).publish(
        model, train_rows=report.train_rows
    )
    runtime = OnnxEnsemble(version.path, obs_dim=4, act_dim=1)
    fresh = collect_random(ENV, 1000, seed=12345)
    metrics = one_step_metrics(runtime, fresh.obs, fresh.act, fresh.next_obs)
    far = fresh.obs * 10.0
    far_disagreement = disagreement(runtime, far, fresh.act)
    return runtime, report, metrics, far_disagreement


def test_one_step_error_is_small_against_delta_spread(learned: tuple) -> None:
    _, report, metrics, _ = learned
    assert metrics.rows == 1000
    assert metrics.nmse < 0.01, metrics.nmse_per_dim
    assert report.holdout_mse < 0.01


def test_predicted_std_is_calibrated(learned: tuple) -> None:
    _, _, metrics, _ = learned
    assert 0.55 <= metrics.within_1std <= 0.85, metrics.within_1std


def test_disagreement_grows_far_from_data(learned: tuple) -> None:
    _, _, metrics, far_disagreement = learned
    assert far_disagreement > 10.0 * metrics.disagreement, (far_disagreement, metrics)


def test_report_describes_the_run(learned: tuple) -> None:
    runtime, report, _, _ = learned
    assert len(report.members) == 5
    assert report.train_rows + report.holdout_rows == 3000
    assert 1 <= report.epochs <= 150
    assert all(1 <= m.best_epoch <= report.epochs for m in report.members)
    assert all(np.isfinite([m.holdout_nll, m.train_mse]).all() for m in report.members)
    assert runtime.metadata.train_rows == report.train_rows
