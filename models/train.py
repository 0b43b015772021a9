"""Fit a :class:`GaussianEnsemble` to transitions (PETS training, Chua et al. 2018).

Gaussian negative log-likelihood on normalized state deltas (and the reward), binary
cross-entropy of the done logit against the stored ``terminated`` flags when the termination is
predicted, one bootstrap resample of the training rows per member, a holdout split shared by all
members, per-member early stopping that restores each member's best weights, optional warm start
from a previous model, and a report. Everything random is drawn from ``TrainConfig.seed``, so a
run is reproducible on one machine. A ``stop`` event ends training between gradient steps (the
learner's shutdown), like ``max_seconds`` does: the best weights so far are returned and the
report says why.

With the termination predicted, each member's loss adds ``TrainConfig.done_weight`` times the
cross-entropy of its done logit to its Gaussian NLL (the mean over the O outputs), and early
stopping watches the same sum on the holdout. The cross-entropy is plain, not re-weighted by
class, although terminal rows are rare (one in 6-20 on InvertedPendulum-v5 with random
actions): up-weighting the rare class would bias the predicted probability upwards, and the
rollout needs calibrated probabilities (it multiplies them into the chance of still being
alive). ``done_weight`` weighs the two tasks in the hidden layers they share, and nothing else:
Adam's step on the logit's own column of the output layer does not depend on it.

Shapes: N rows, E members, B batch, S observation, A action, O Gaussian outputs (S, +1 with the
reward), D done logits (1 with the termination, else 0).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from models.checks import check_bool, check_int, check_number
from models.ensemble import (
    EnsembleConfig,
    GaussianEnsemble,
    Prediction,
    bernoulli_nll,
    gaussian_nll,
)
from models.sampling import bootstrap_indices, epoch_order, gather_batch

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EVAL_CHUNK = 8192


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. Validated at construction."""

    max_epochs: int = 200
    """Upper bound on passes over each member's bootstrap sample (1..100000)."""
    batch_size: int = 256
    """Rows per member per gradient step (1..65536)."""
    learning_rate: float = 1e-3
    """Adam step size (0, 1]."""
    weight_decay: float = 5e-5
    """Decoupled weight decay (AdamW) [0, 1)."""
    holdout_fraction: float = 0.1
    """Share of rows held out for early stopping and the report [0, 0.5]."""
    max_holdout_rows: int = 5000
    """Cap on held-out rows, so evaluation stays cheap as data grows (>= 1)."""
    patience: int = 20
    """A member stops after this many epochs without holdout improvement (>= 1)."""
    min_improvement: float = 1e-4
    """Holdout score decrease that counts as improvement (>= 0): the NLL per Gaussian output
    dim, plus ``done_weight`` times the done cross-entropy per row when predicted."""
    done_weight: float = 5.0
    """Weight of the done flag's cross-entropy (per row) against the Gaussian NLL (mean over
    output dims) in the loss and the early-stopping score, when the termination is predicted
    [0, inf). Measured on InvertedPendulum-v5 (3,000 random-action rows, 3 members of 2x64, 200
    epochs; fresh episodes, seeds 0-2): weight 0.25 (the done flag as one more output dim of
    five) left the probabilities timid, 0.55-0.75 predicted where 0.7-0.96 happened (Brier
    0.032-0.036 against the base rate's 0.140, expected calibration error 0.029-0.030); weight
    1: Brier 0.020-0.025, ECE 0.017-0.020; 5: Brier 0.010-0.013, ECE 0.010-0.014; 10: Brier
    0.007-0.008, ECE 0.009-0.012, but the worst state dim's one-step error grew from 1-2e-5
    (weight 1) to 4-8e-5 of its variance."""
    logvar_penalty: float = 0.01
    """Weight of the log-variance bound penalty (PETS) [0, 1]."""
    bootstrap: bool = True
    """Each member trains on its own resample with replacement (False: all on the same rows)."""
    max_seconds: float = math.inf
    """Wall-clock cap on training; the best weights so far are kept (> 0)."""
    calibrate: bool = True
    """After training, rescale each member's predicted variance per Gaussian output (the done
    probability is left as trained: cross-entropy is already calibrated) so that the mean
    squared standardized holdout error is 1 (the maximum-likelihood scale). NLL training of the
    shared network lets the variance head lag the mean (Seitzer et al. 2022, beta-NLL); measured
    on InvertedPendulum-v5 the uncalibrated std was about twice the holdout error."""
    seed: int = 0
    """Seeds the split, the bootstrap, the shuffles and the initialization."""

    def __post_init__(self) -> None:
        check_int("max_epochs", self.max_epochs, 1, 100_000)
        check_int("batch_size", self.batch_size, 1, 65_536)
        check_number("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0, high_open=True)
        check_number("holdout_fraction", self.holdout_fraction, 0.0, 0.5)
        check_int("max_holdout_rows", self.max_holdout_rows, 1)
        check_int("patience", self.patience, 1)
        check_number("min_improvement", self.min_improvement, 0.0)
        check_number("done_weight", self.done_weight, 0.0, math.inf, high_open=True)
        check_number("logvar_penalty", self.logvar_penalty, 0.0, 1.0)
        check_bool("bootstrap", self.bootstrap)
        check_number("max_seconds", self.max_seconds, 0.0, low_open=True)
        check_bool("calibrate", self.calibrate)
        check_int("seed", self.seed, 0, 2**63 - 1)


@dataclass(frozen=True)
class MemberReport:
    """One member's metrics at its restored best epoch (normalized target units, per Gaussian
    output dim).

    NLL includes the Gaussian constant; MSE of 1.0 equals predicting the mean target.
    """

    train_nll: float
    train_mse: float
    holdout_nll: float
    holdout_mse: float
    best_epoch: int
    variance_scale: float
    """Geometric mean over outputs of the calibration factor applied to the variance."""
    train_done_nll: float | None = None
    """Cross-entropy of the done logit per row (nats); None when not predicted."""
    holdout_done_nll: float | None = None


@dataclass(frozen=True)
class TrainReport:
    """What a training run did."""

    members: tuple[MemberReport, ...]
    epochs: int
    seconds: float
    train_rows: int
    holdout_rows: int
    warm_start: bool
    stopped_by: str
    """"early_stopping", "max_epochs", "max_seconds" or "stop" (the stop event was set)."""
    reward_nmse: float | None = None
    """Holdout MSE of the members' mean predicted reward / variance of the held-out rewards
    (1.0 is no better than predicting the average reward); None when not predicted."""
    done_brier: float | None = None
    """Holdout Brier score (mean squared error) of the members' mean done probability against
    the terminated flags; None when not predicted."""
    done_log_loss: float | None = None
    """Holdout cross-entropy (nats per row) of the members' mean done probability."""
    done_rate: float | None = None
    """Share of held-out rows that terminate: the base-rate predictor's Brier score is
    ``done_rate * (1 - done_rate)``."""

    @property
    def holdout_nll(self) -> float:
        return float(np.mean([m.holdout_nll for m in self.members]))

    @property
    def holdout_mse(self) -> float:
        return float(np.mean([m.holdout_mse for m in self.members]))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["members"] = [asdict(m) for m in self.members]
        out["holdout_nll"] = self.holdout_nll
        out["holdout_mse"] = self.holdout_mse
        return out

    def summary(self) -> str:
        lines = [
            f"trained {len(self.members)} members on {self.train_rows} rows "
            f"({self.holdout_rows} held out) in {self.epochs} epochs, {self.seconds:.1f} s, "
            f"stopped by {self.stopped_by}{', warm start' if self.warm_start else ''}",
        ]
        if self.reward_nmse is not None:
            lines.append(f"holdout reward nmse {self.reward_nmse:.4f}")
        if self.done_brier is not None:
            base = self.done_rate * (1.0 - self.done_rate) if self.done_rate is not None else 0.0
            lines.append(
                f"holdout done: brier {self.done_brier:.4f} (base rate {base:.4f}), "
                f"log-loss {self.done_log_loss:.4f}, terminal share {self.done_rate:.4f}"
            )
        lines.append("member  best_epoch  train_nll  train_mse  holdout_nll  holdout_mse")
        for i, m in enumerate(self.members):
            lines.append(
                f"{i:>6}  {m.best_epoch:>10}  {m.train_nll:>9.3f}  {m.train_mse:>9.4f}"
                f"  {m.holdout_nll:>11.3f}  {m.holdout_mse:>11.4f}"
            )
        return "\n".join(lines)


def make_targets(obs: np.ndarray, next_obs: np.ndarray, reward: np.ndarray | None) -> np.ndarray:
    """Training targets [N, O]: the state delta, then the reward if given."""
    delta = np.asarray(next_obs, np.float32) - np.asarray(obs, np.float32)
    if reward is None:
        return delta
    return np.concatenate([delta, np.asarray(reward, np.float32).reshape(-1, 1)], axis=1)


def train_ensemble(
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    reward: np.ndarray | None = None,
    done: np.ndarray | None = None,
    *,
    model_config: EnsembleConfig,
    config: TrainConfig | None = None,
    init: GaussianEnsemble | None = None,
    stop: threading.Event | None = None,
) -> tuple[GaussianEnsemble, TrainReport]:
    """Train a new ensemble on ``obs [N, S]``, ``act [N, A]``, ``next_obs [N, S]``.

    ``reward [N]`` is required when ``model_config.predict_reward``, ``done [N]`` (bool: the
    transition terminated the episode; a truncation is not a termination) when
    ``model_config.predict_done``. ``init`` warm-starts from a previous model with the same
    architecture; it is copied, never modified. Normalization is refit to the current data,
    since the data distribution moves as the robot explores. ``stop``, checked before every
    gradient step, ends training within one step once set (``stopped_by="stop"``; the steps of
    the unfinished epoch are dropped with it).
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    (obs, act), targets, flags = _validated_arrays(obs, act, next_obs, reward, done, model_config)
    n = obs.shape[0]
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    model = GaussianEnsemble(model_config)
    if init is not None:
        if init.config != model_config:
            raise ValueError("warm start model has a different architecture than model_config")
        model.load_state_dict(copy.deepcopy(init.state_dict()))
    with torch.no_grad():
        model.logvar_shift.zero_()

    n_hold = min(config.max_holdout_rows, round(n * config.holdout_fraction))
    perm = rng.permutation(n)
    hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    with torch.no_grad():
        raw_feat = model.features(torch.from_numpy(obs), torch.from_numpy(act))
    model.set_normalization(raw_feat[train_idx], torch.from_numpy(targets[train_idx]))
    x_all = ((raw_feat - model.in_mean) / model.in_std).numpy().astype(np.float32)
    y_all = ((torch.from_numpy(targets) - model.out_mean) / model.out_std).numpy()
    # The done flags ride along as the last target column (0/1, not normalized), so the
    # bootstrap and the minibatches gather them with the rest of the row.
    y_all = np.concatenate([y_all, flags], axis=1, dtype=np.float32)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    # With no holdout, early stopping watches the training rows instead.
    x_eval, y_eval = (x_all[hold_idx], y_all[hold_idx]) if n_hold else (x_train, y_train)

    e = model_config.members
    n_train = x_train.shape[0]
    boot = (
        bootstrap_indices(rng, n_train, e)
        if config.bootstrap
        else np.broadcast_to(np.arange(n_train), (e, n_train)).copy()
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    best_nll = _evaluate(model, x_eval, y_eval, config.done_weight).score
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = np.zeros(e, dtype=np.int64)
    stale = np.zeros(e, dtype=np.int64)
    bs = min(config.batch_size, n_train)
    buf_x = np.empty((e, bs, x_train.shape[1]), np.float32)
    buf_y = np.empty((e, bs, y_train.shape[1]), np.float32)
    stopped = stop.is_set if stop is not None else _never
    stopped_by, epoch = "max_epochs", 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = epoch_order(rng, boot)
        for start in range(0, n_train - bs + 1, bs):
            if stopped():
                break
            gather_batch(x_train, y_train, order[:, start : start + bs], buf_x, buf_y)
            pred = model.forward_normalized(torch.from_numpy(buf_x))
            loss = _member_loss(pred, torch.from_numpy(buf_y), config.done_weight,
                                model.config.predict_reward).sum()  # fmt: skip
            loss = loss + config.logvar_penalty * model.logvar_bound_penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if stopped():  # the best weights so far are restored below, so the epoch is dropped
            stopped_by, epoch = "stop", epoch - 1
            break
        nll = _evaluate(model, x_eval, y_eval, config.done_weight).score
        improved = nll < best_nll - config.min_improvement
        if improved.any():
            _copy_members(model.state_dict(), best_state, np.flatnonzero(improved), e)
            best_nll = np.where(improved, nll, best_nll)
            best_epoch[improved] = epoch
        stale = np.where(improved, 0, stale + 1)
        if (stale >= config.patience).all():
            stopped_by = "early_stopping"
            break
        if time.perf_counter() - started > config.max_seconds:
            stopped_by = "max_seconds"
            break
    model.load_state_dict(best_state)
    model.eval()
    if config.calibrate:
        _calibrate_variance(model, x_eval, y_eval)

    train_probe = x_train[: config.max_holdout_rows], y_train[: config.max_holdout_rows]
    tr = _evaluate(model, *train_probe)
    ho = _evaluate(model, x_eval, y_eval)
    with_done = model_config.predict_done
    members = tuple(
        MemberReport(
            train_nll=float(tr.nll[i]),
            train_mse=float(tr.mse[i]),
            holdout_nll=float(ho.nll[i]),
            holdout_mse=float(ho.mse[i]),
            best_epoch=int(best_epoch[i]),
            variance_scale=float(model.logvar_shift[i].mean().exp()),
            train_done_nll=float(tr.done_nll[i]) if with_done else None,
            holdout_done_nll=float(ho.done_nll[i]) if with_done else None,
        )
        for i in range(e)
    )
    report = TrainReport(
        members=members,
        epochs=epoch,
        seconds=time.perf_counter() - started,
        train_rows=int(n_train),
        holdout_rows=int(n_hold),
        warm_start=init is not None,
        stopped_by=stopped_by,
        **_ensemble_metrics(model, x_eval, y_eval),
    )
    return model, report


def _never() -> bool:
    return False


def _validated_arrays(
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    reward: np.ndarray | None,
    done: np.ndarray | None,
    cfg: EnsembleConfig,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """(obs, act), the Gaussian targets [N, O] and the done flags as float32 [N, D]."""
    obs = np.asarray(obs, np.float32)
    act = np.asarray(act, np.float32)
    next_obs = np.asarray(next_obs, np.float32)
    n = obs.shape[0] if obs.ndim == 2 else -1
    expected = {"obs": (n, cfg.obs_dim), "act": (n, cfg.act_dim), "next_obs": (n, cfg.obs_dim)}
    for name, arr in (("obs", obs), ("act", act), ("next_obs", next_obs)):
        if arr.shape != expected[name]:
            raise ValueError(f"{name} must have shape [N, {expected[name][1]}], got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if n < 2:
        raise ValueError(f"need at least 2 transitions to train, got {max(n, 0)}")
    if cfg.predict_reward:
        if reward is None:
            raise ValueError("the model predicts the reward, but no reward was given")
        reward = np.asarray(reward, np.float32).reshape(-1)
        if reward.shape != (n,) or not np.isfinite(reward).all():
            raise ValueError(f"reward must be {n} finite values, got shape {reward.shape}")
    flags = np.zeros((n, 0), np.float32)
    if cfg.predict_done:
        if done is None:
            raise ValueError("the model predicts the termination, but no done flags were given")
        done = np.asarray(done)
        if done.dtype != np.bool_ or done.shape != (n,):
            raise ValueError(f"done must be {n} bools, got {done.dtype} of shape {done.shape}")
        flags = done.astype(np.float32).reshape(n, 1)
    targets = make_targets(obs, next_obs, reward if cfg.predict_reward else None)
    return (obs, act), targets, flags


def _member_loss(
    pred: Prediction, y: torch.Tensor, done_weight: float, reward: bool = False
) -> torch.Tensor:
    """Each member's training loss [E]: twice its score (see ``_Scores.score``), the done flags
    being y's last D columns. Without them this is ``gaussian_nll`` as PETS trains it.

    With the reward (the last Gaussian column), its term is weighted by its own detached
    variance: beta-NLL with beta = 1 (Seitzer et al. 2022), whose gradient on the mean is the
    squared error's. Under plain NLL the model explained the rows where the reward varies as
    noise and fit the rest: on cartpole, where most rows are far from any reward, the holdout
    reward nmse was 0.74, against 0.02 for a plain squared-error MLP on the same rows."""
    o, d = pred.mean.shape[-1], pred.done_logit.shape[-1]
    if reward:
        per = ((pred.mean - y[..., :o]) ** 2) * torch.exp(-pred.logvar) + pred.logvar
        weight = torch.exp(pred.logvar[..., -1:]).detach()
        gauss = torch.cat([per[..., :-1], per[..., -1:] * weight], dim=-1).mean(dim=(1, 2))
    else:
        gauss = gaussian_nll(pred.mean, pred.logvar, y[..., :o])
    if d == 0:
        return gauss
    return gauss + 2.0 * done_weight * bernoulli_nll(pred.done_logit, y[..., o:])


@dataclass(frozen=True)
class _Scores:
    """Per-member scores [E] on some rows."""

    nll: np.ndarray
    """Gaussian NLL per output dim, with the constant."""
    mse: np.ndarray
    """Squared error per Gaussian output dim (normalized units)."""
    done_nll: np.ndarray
    """Cross-entropy of the done logit per row (zeros when not predicted)."""
    score: np.ndarray
    """What early stopping watches: ``nll + done_weight * done_nll``."""


@torch.no_grad()
def _evaluate(
    model: GaussianEnsemble, x: np.ndarray, y: np.ndarray, done_weight: float = 1.0
) -> _Scores:
    """Per-member scores on normalized inputs ``x`` [N, F + A] and targets ``y`` [N, O + D]."""
    model.eval()
    e, o, d = model.config.members, model.config.out_dim, model.config.done_dim
    nll, mse, done_nll = np.zeros(e), np.zeros(e), np.zeros(e)
    for start in range(0, x.shape[0], _EVAL_CHUNK):
        xb = torch.from_numpy(x[start : start + _EVAL_CHUNK]).unsqueeze(0).expand(e, -1, -1)
        yb = torch.from_numpy(y[start : start + _EVAL_CHUNK])
        mean, logvar, done_logit = model.forward_normalized(xb)
        sq = (mean - yb[:, :o]) ** 2
        nll += (0.5 * (sq * torch.exp(-logvar) + logvar)).sum(dim=(1, 2)).numpy()
        mse += sq.sum(dim=(1, 2)).numpy()
        if d:
            rows = yb.shape[0]
            done_nll += rows * bernoulli_nll(done_logit, yb[:, o:].expand(e, -1, -1)).numpy()
    n = x.shape[0]
    nll, mse, done_nll = nll / (n * o) + _HALF_LOG_2PI, mse / (n * o), done_nll / n
    return _Scores(nll, mse, done_nll, score=nll + done_weight * done_nll if d else nll)


@torch.no_grad()
def _ensemble_metrics(model: GaussianEnsemble, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The members' mean predictions scored on held-out rows: reward nmse and the done
    probability's Brier score and log-loss (the keys of TrainReport for what is predicted)."""
    cfg = model.config
    e, s, o = cfg.members, cfg.obs_dim, cfg.out_dim
    xb = torch.from_numpy(x[:_EVAL_CHUNK]).unsqueeze(0).expand(e, -1, -1)
    yb = torch.from_numpy(y[:_EVAL_CHUNK]).double()
    pred = model.forward_normalized(xb)
    out: dict[str, float] = {}
    if cfg.predict_reward:
        # Normalization is affine, so the ratio is the same in raw units.
        truth = yb[:, s]
        err = pred.mean[:, :, s].double().mean(0) - truth
        out["reward_nmse"] = float(err.pow(2).mean() / truth.var(correction=0).clamp_min(1e-12))
    if cfg.predict_done:
        flag = yb[:, o]
        logit = pred.done_logit[..., 0].double()
        # log of the members' mean probability, exactly: logsumexp of their log-probabilities.
        log_p = torch.logsumexp(F.logsigmoid(logit), 0) - math.log(e)
        log_q = torch.logsumexp(F.logsigmoid(-logit), 0) - math.log(e)
        out["done_brier"] = float((log_p.exp() - flag).pow(2).mean())
        out["done_log_loss"] = float(-(flag * log_p + (1.0 - flag) * log_q).mean())
        out["done_rate"] = float(flag.mean())
    return out


@torch.no_grad()
def _calibrate_variance(model: GaussianEnsemble, x: np.ndarray, y: np.ndarray) -> None:
    """Set ``logvar_shift`` [E, 1, O] to the log of the mean squared standardized error of the
    Gaussian outputs (y's first O columns)."""
    e, o = model.config.members, model.config.out_dim
    xb = torch.from_numpy(x[:_EVAL_CHUNK]).unsqueeze(0).expand(e, -1, -1)
    mean, logvar, _ = model.forward_normalized(xb)
    z2 = ((mean - torch.from_numpy(y[:_EVAL_CHUNK, :o])) ** 2 * torch.exp(-logvar)).mean(1, True)
    # Bounded, so a tiny or degenerate holdout cannot blow the variance up or collapse it.
    model.logvar_shift.copy_(torch.log(z2.clamp_min(1e-12)).clamp(-_MAX_SHIFT, _MAX_SHIFT))


_MAX_SHIFT = 4.0


def _copy_members(
    src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor], members: np.ndarray, e: int
) -> None:
    """Copy the slices of ``members`` from ``src`` into ``dst`` (member-major tensors only)."""
    index = torch.from_numpy(members)
    for name, tensor in src.items():
        if tensor.dim() > 0 and tensor.shape[0] == e and name not in _SHARED_BUFFERS:
            dst[name][index] = tensor[index]


# Normalization buffers are shared by all members and fixed during training.
_SHARED_BUFFERS = frozenset({"in_mean", "in_std", "out_mean", "out_std", "logvar_shift"})
