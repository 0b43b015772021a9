"""How good is a model? One-step accuracy, calibration and disagreement, through ONNX Runtime.

These are the checks that say a learned model is fit to plan with:
- normalized MSE: one-step error of the ensemble mean against the variance of the true state
  delta, per dimension (1.0 is no better than predicting the average delta);
- calibration: the share of errors within one predicted standard deviation (68% for a perfectly
  calibrated Gaussian);
- disagreement: the variance of the member means, the epistemic signal a planner penalizes.

Shapes: E members, B batch, S observation, A action.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.runtime import OnnxEnsemble


@dataclass(frozen=True)
class OneStepMetrics:
    """One-step metrics on a batch of real transitions."""

    nmse_per_dim: tuple[float, ...]
    """Ensemble-mean squared error / variance of the true delta, per state dim."""
    nmse: float
    """Worst dimension's normalized MSE."""
    within_1std: float
    """Share of (member, row, dim) errors within that member's predicted std."""
    disagreement: float
    """Mean over rows and dims of the variance of the member means."""
    rows: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def one_step_metrics(
    model: OnnxEnsemble, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray
) -> OneStepMetrics:
    """Evaluate ``model`` on real transitions: obs [B, S], act [B, A], next_obs [B, S]."""
    mean, logvar = model.predict(obs, act)[:2]
    truth = np.asarray(next_obs, np.float32)
    delta = truth - np.asarray(obs, np.float32)
    err = mean.mean(axis=0) - truth
    spread = np.maximum(delta.var(axis=0), 1e-12)
    nmse = (err**2).mean(axis=0) / spread
    within = np.abs(mean - truth[None]) <= np.exp(0.5 * logvar)
    return OneStepMetrics(
        nmse_per_dim=tuple(float(v) for v in nmse),
        nmse=float(nmse.max()),
        within_1std=float(within.mean()),
        disagreement=float(mean.var(axis=0).mean()),
        rows=int(obs.shape[0]),
    )


def disagreement(model: OnnxEnsemble, obs: np.ndarray, act: np.ndarray) -> float:
    """Mean variance of the member means over rows and state dims."""
    mean = model.predict(obs, act)[0]
    return float(mean.var(axis=0).mean())
