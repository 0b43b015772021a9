"""How good is a model? One-step accuracy, calibration and disagreement, through ONNX Runtime.

These are the checks that say a learned model is fit to plan with:
- normalized MSE: one-step error of the ensemble mean against the variance of the true state
  delta, per dimension (1.0 is no better than predicting the average delta);
- calibration: the share of errors within one predicted standard deviation (68% for a perfectly
  calibrated Gaussian);
- disagreement: the variance of the member means, the epistemic signal a planner penalizes;
- where the model predicts them, the reward's normalized MSE (the members' mean reward against
  the variance of the true rewards) and the done probability's Brier score (the members' mean
  probability against the ``terminated`` flags; the base-rate predictor scores
  ``rate * (1 - rate)``).

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
    reward_nmse: float | None = None
    """Members' mean reward squared error / variance of the true reward; None when the model
    does not predict the reward or no rewards were given."""
    done_brier: float | None = None
    """Mean squared error of the members' mean done probability against the terminated
    flags; None when the model does not predict the termination or no flags were given."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def one_step_metrics(
    model: OnnxEnsemble,
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    reward: np.ndarray | None = None,
    terminated: np.ndarray | None = None,
    *,
    reward_var: float | None = None,
) -> OneStepMetrics:
    """Evaluate ``model`` on real transitions: obs [B, S], act [B, A], next_obs [B, S], and
    the reward [B] and terminated [B] flags for the outputs the model has. ``reward_var``
    replaces the variance of ``reward`` as the reward's normalizer (the learner's gate passes
    that of the whole store)."""
    out = model.predict_named(obs, act)
    mean, logvar = out["next_obs_mean"], out["next_obs_logvar"]
    truth = np.asarray(next_obs, np.float32)
    delta = truth - np.asarray(obs, np.float32)
    err = mean.mean(axis=0) - truth
    spread = np.maximum(delta.var(axis=0), 1e-12)
    nmse = (err**2).mean(axis=0) / spread
    within = np.abs(mean - truth[None]) <= np.exp(0.5 * logvar)
    reward_nmse = done_brier = None
    if "reward_mean" in out and reward is not None:
        true_reward = np.asarray(reward, np.float64).reshape(-1)
        err = out["reward_mean"].mean(axis=0)[:, 0] - true_reward
        spread = float(true_reward.var()) if reward_var is None else reward_var
        reward_nmse = float((err**2).mean() / max(spread, 1e-12))
    if "done_prob" in out and terminated is not None:
        flags = np.asarray(terminated, np.float64).reshape(-1)
        done_brier = float(((out["done_prob"].mean(axis=0)[:, 0] - flags) ** 2).mean())
    return OneStepMetrics(
        nmse_per_dim=tuple(float(v) for v in nmse),
        nmse=float(nmse.max()),
        within_1std=float(within.mean()),
        disagreement=float(mean.var(axis=0).mean()),
        rows=int(obs.shape[0]),
        reward_nmse=reward_nmse,
        done_brier=done_brier,
    )


def disagreement(model: OnnxEnsemble, obs: np.ndarray, act: np.ndarray) -> float:
    """Mean variance of the member means over rows and state dims."""
    mean = model.predict(obs, act)[0]
    return float(mean.var(axis=0).mean())
