"""Fit a :class:`GaussianEnsemble` to transitions (PETS training, Chua et al. 2018).

Gaussian negative log-likelihood on normalized state deltas, one bootstrap resample of the
training rows per member, a holdout split shared by all members, per-member early stopping that
restores each member's best weights, optional warm start from a previous model, and a report.
Everything random is drawn from ``TrainConfig.seed``, so a run is reproducible on one machine.
A ``stop`` event ends training between gradient steps (the learner's shutdown), like
``max_seconds`` does: the best weights so far are returned and the report says why.

Shapes: N rows, E members, B batch, S observation, A action, O outputs.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from models.ensemble import EnsembleConfig, GaussianEnsemble, gaussian_nll
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
    """Holdout NLL decrease (per output dim) that counts as improvement (>= 0)."""
    logvar_penalty: float = 0.01
    """Weight of the log-variance bound penalty (PETS) [0, 1]."""
    bootstrap: bool = True
    """Each member trains on its own resample with replacement (False: all on the same rows)."""
    max_seconds: float = math.inf
    """Wall-clock cap on training; the best weights so far are kept (> 0)."""
    calibrate: bool = True
    """After training, rescale each member's predicted variance per output so that the mean
    squared standardized holdout error is 1 (the maximum-likelihood scale). NLL training of the
    shared network lets the variance head lag the mean (Seitzer et al. 2022, beta-NLL); measured
    on InvertedPendulum-v5 the uncalibrated std was about twice the holdout error."""
    seed: int = 0
    """Seeds the split, the bootstrap, the shuffles and the initialization."""

    def __post_init__(self) -> None:
        checks = (
            ("max_epochs", 1 <= self.max_epochs <= 100_000, "[1, 100000]"),
            ("batch_size", 1 <= self.batch_size <= 65_536, "[1, 65536]"),
            ("learning_rate", 0 < self.learning_rate <= 1, "(0, 1]"),
            ("weight_decay", 0 <= self.weight_decay < 1, "[0, 1)"),
            ("holdout_fraction", 0 <= self.holdout_fraction <= 0.5, "[0, 0.5]"),
            ("max_holdout_rows", self.max_holdout_rows >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("min_improvement", self.min_improvement >= 0, ">= 0"),
            ("logvar_penalty", 0 <= self.logvar_penalty <= 1, "[0, 1]"),
            ("max_seconds", self.max_seconds > 0, "> 0"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be in {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class MemberReport:
    """One member's metrics at its restored best epoch (normalized target units, per dim).

    NLL includes the Gaussian constant; MSE of 1.0 equals predicting the mean target.
    """

    train_nll: float
    train_mse: float
    holdout_nll: float
    holdout_mse: float
    best_epoch: int
    variance_scale: float
    """Geometric mean over outputs of the calibration factor applied to the variance."""


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
            "member  best_epoch  train_nll  train_mse  holdout_nll  holdout_mse",
        ]
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
    *,
    model_config: EnsembleConfig,
    config: TrainConfig | None = None,
    init: GaussianEnsemble | None = None,
    stop: threading.Event | None = None,
) -> tuple[GaussianEnsemble, TrainReport]:
    """Train a new ensemble on ``obs [N, S]``, ``act [N, A]``, ``next_obs [N, S]``.

    ``reward [N]`` is required when ``model_config.predict_reward``. ``init`` warm-starts from a
    previous model with the same architecture; it is copied, never modified. Normalization is
    refit to the current data, since the data distribution moves as the robot explores.
    ``stop``, checked before every gradient step, ends training within one step once set
    (``stopped_by="stop"``; the steps of the unfinished epoch are dropped with it).
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    (obs, act), targets = _validated_arrays(obs, act, next_obs, reward, model_config)
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
    best_nll = _evaluate(model, x_eval, y_eval)[0]
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
            mean, logvar = model.forward_normalized(torch.from_numpy(buf_x))
            loss = gaussian_nll(mean, logvar, torch.from_numpy(buf_y)).sum()
            loss = loss + config.logvar_penalty * model.logvar_bound_penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if stopped():  # the best weights so far are restored below, so the epoch is dropped
            stopped_by, epoch = "stop", epoch - 1
            break
        nll = _evaluate(model, x_eval, y_eval)[0]
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
    tr_nll, tr_mse = _evaluate(model, *train_probe)
    ho_nll, ho_mse = _evaluate(model, x_eval, y_eval)
    members = tuple(
        MemberReport(
            train_nll=float(tr_nll[i]),
            train_mse=float(tr_mse[i]),
            holdout_nll=float(ho_nll[i]),
            holdout_mse=float(ho_mse[i]),
            best_epoch=int(best_epoch[i]),
            variance_scale=float(model.logvar_shift[i].mean().exp()),
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
    )
    return model, report


def _never() -> bool:
    return False


def _validated_arrays(
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    reward: np.ndarray | None,
    cfg: EnsembleConfig,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
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
    return (obs, act), make_targets(obs, next_obs, reward if cfg.predict_reward else None)


@torch.no_grad()
def _evaluate(model: GaussianEnsemble, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-member NLL (with the Gaussian constant) and MSE per output dim: [E], [E]."""
    model.eval()
    e = model.config.members
    nll = np.zeros(e)
    mse = np.zeros(e)
    for start in range(0, x.shape[0], _EVAL_CHUNK):
        xb = torch.from_numpy(x[start : start + _EVAL_CHUNK]).unsqueeze(0).expand(e, -1, -1)
        yb = torch.from_numpy(y[start : start + _EVAL_CHUNK])
        mean, logvar = model.forward_normalized(xb)
        sq = (mean - yb) ** 2
        nll += (0.5 * (sq * torch.exp(-logvar) + logvar)).sum(dim=(1, 2)).numpy()
        mse += sq.sum(dim=(1, 2)).numpy()
    count = x.shape[0] * y.shape[1]
    return nll / count + _HALF_LOG_2PI, mse / count


@torch.no_grad()
def _calibrate_variance(model: GaussianEnsemble, x: np.ndarray, y: np.ndarray) -> None:
    """Set ``logvar_shift`` [E, 1, O] to the log of the mean squared standardized error."""
    e = model.config.members
    xb = torch.from_numpy(x[:_EVAL_CHUNK]).unsqueeze(0).expand(e, -1, -1)
    mean, logvar = model.forward_normalized(xb)
    z2 = ((mean - torch.from_numpy(y[:_EVAL_CHUNK])) ** 2 * torch.exp(-logvar)).mean(1, True)
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
