"""The ensemble module and its trainer on small synthetic systems (fast, exact checks)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.preprocess import AngleToSinCos, make_preprocessor, register_preprocessor
from models.train import TrainConfig, train_ensemble

CFG = EnsembleConfig(obs_dim=2, act_dim=1, members=3, hidden_layers=2, hidden_units=32)


def _system(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A damped nonlinear oscillator step with small process noise."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-2, 2, (n, 2)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    pos, vel = obs[:, 0], obs[:, 1]
    new_vel = vel + 0.1 * (-np.sin(pos) - 0.2 * vel + act[:, 0])
    nxt = np.stack([pos + 0.1 * new_vel, new_vel], axis=1)
    nxt += rng.normal(0, 0.005, nxt.shape)
    return obs, act, nxt.astype(np.float32)


def _flat(model: GaussianEnsemble) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_config_validation_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"members must be an integer in \[1, 64\]"):
        EnsembleConfig(obs_dim=2, act_dim=1, members=0)
    with pytest.raises(ValueError, match="hidden_units"):
        EnsembleConfig(obs_dim=2, act_dim=1, hidden_units=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_min_logvar"):
        EnsembleConfig(obs_dim=2, act_dim=1, init_min_logvar=1.0, init_max_logvar=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="holdout_fraction"):
        TrainConfig(holdout_fraction=0.9)


def test_forward_shapes_shared_and_member_batched() -> None:
    model = GaussianEnsemble(CFG).eval()
    mean, logvar = model(torch.zeros(7, 2), torch.zeros(7, 1))
    assert mean.shape == logvar.shape == (3, 7, 2)
    mean_e, _ = model(torch.zeros(3, 7, 2), torch.zeros(3, 7, 1))
    torch.testing.assert_close(mean_e, mean)


def test_members_are_independent() -> None:
    """One batched matmul per layer must equal running each member alone."""
    torch.manual_seed(0)
    model = GaussianEnsemble(CFG).eval()
    x = torch.randn(3, 5, model.feature_dim)
    mean = model.forward_normalized(x).mean
    x2 = x.clone()
    x2[1] += 10.0
    mean2 = model.forward_normalized(x2).mean
    torch.testing.assert_close(mean[[0, 2]], mean2[[0, 2]])
    assert not torch.allclose(mean[1], mean2[1])


def test_logvar_is_soft_bounded() -> None:
    model = GaussianEnsemble(CFG).eval()
    with torch.no_grad():
        model.head.bias[..., 2:] = 1e4
        high = model.forward_normalized(torch.zeros(3, 4, model.feature_dim)).logvar
        model.head.bias[..., 2:] = -1e4
        low = model.forward_normalized(torch.zeros(3, 4, model.feature_dim)).logvar
    assert torch.all(high <= CFG.init_max_logvar + 1e-5)
    assert torch.all(low >= CFG.init_min_logvar - 1e-5)


def test_sincos_preprocessing() -> None:
    pre = AngleToSinCos(3, [1])
    out = pre(torch.tensor([[1.0, np.pi / 2, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 3.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    assert make_preprocessor(pre.spec()).out_dim == 4
    with pytest.raises(ValueError, match="out of range"):
        AngleToSinCos(3, [3])
    drop = make_preprocessor({"kind": "drop", "obs_dim": 3, "drop_indices": [0]})
    torch.testing.assert_close(drop(torch.tensor([[7.0, 1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="some, not all"):
        make_preprocessor({"kind": "drop", "obs_dim": 2, "drop_indices": [0, 1]})
    with pytest.raises(ValueError, match="unknown preprocessor kind"):
        make_preprocessor({"kind": "nope"})
    with pytest.raises(ValueError, match="already registered"):
        register_preprocessor("sincos", AngleToSinCos)


def test_training_learns_and_is_reproducible() -> None:
    obs, act, nxt = _system(1500)
    cfg = TrainConfig(max_epochs=40, seed=3)
    model_a, report = train_ensemble(obs, act, nxt, model_config=CFG, config=cfg)
    model_b, _ = train_ensemble(obs, act, nxt, model_config=CFG, config=cfg)
    torch.testing.assert_close(_flat(model_a), _flat(model_b), rtol=0, atol=0)
    model_c, _ = train_ensemble(
        obs, act, nxt, model_config=CFG, config=TrainConfig(max_epochs=40, seed=4)
    )
    assert not torch.equal(_flat(model_a), _flat(model_c))
    assert report.holdout_rows == 150 and report.train_rows == 1350
    assert report.holdout_mse < 0.05, report.summary()
    assert "holdout_nll" in report.summary()
    assert report.to_dict()["members"][0]["best_epoch"] >= 1


def test_members_differ_through_bootstrap() -> None:
    obs, act, nxt = _system(600)
    model, _ = train_ensemble(obs, act, nxt, model_config=CFG, config=TrainConfig(max_epochs=5))
    w = model.hidden[0].weight.detach()
    assert not torch.allclose(w[0], w[1])


def test_warm_start_copies_and_starts_better() -> None:
    obs, act, nxt = _system(1500)
    first, _ = train_ensemble(
        obs, act, nxt, model_config=CFG, config=TrainConfig(max_epochs=30, seed=0)
    )
    before = _flat(first).clone()
    obs2, act2, nxt2 = _system(1500, seed=1)
    _, cold = train_ensemble(
        obs2, act2, nxt2, model_config=CFG, config=TrainConfig(max_epochs=1, seed=1)
    )
    _, warm = train_ensemble(
        obs2, act2, nxt2, model_config=CFG, config=TrainConfig(max_epochs=1, seed=1), init=first
    )
    assert torch.equal(_flat(first), before), "warm start must not modify the init model"
    assert warm.warm_start and not cold.warm_start
    assert warm.holdout_mse < cold.holdout_mse
    other = EnsembleConfig(obs_dim=2, act_dim=1, members=3, hidden_layers=2, hidden_units=16)
    with pytest.raises(ValueError, match="different architecture"):
        train_ensemble(obs, act, nxt, model_config=other, init=first)


def test_early_stopping_restores_best_weights() -> None:
    """Tiny data and a big network overfit: the restored weights are from the best epoch."""
    obs, act, nxt = _system(120)
    cfg = TrainConfig(max_epochs=300, patience=5, learning_rate=1e-2, seed=0, calibrate=False)
    big = EnsembleConfig(obs_dim=2, act_dim=1, members=2, hidden_layers=3, hidden_units=128)
    _, report = train_ensemble(obs, act, nxt, model_config=big, config=cfg)
    assert report.stopped_by == "early_stopping"
    for member in report.members:
        assert member.best_epoch <= report.epochs - cfg.patience


def test_time_cap_and_reward_target() -> None:
    obs, act, nxt = _system(400)
    reward = -(obs**2).sum(1)
    cfg = EnsembleConfig(obs_dim=2, act_dim=1, members=2, hidden_units=16, predict_reward=True)
    model, report = train_ensemble(
        obs, act, nxt, reward, model_config=cfg, config=TrainConfig(max_seconds=1e-3)
    )
    assert report.stopped_by == "max_seconds" and report.epochs == 1
    outputs = model(torch.from_numpy(obs[:3]), torch.from_numpy(act[:3]))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 2), (2, 3, 2), (2, 3, 1), (2, 3, 1)]
    with pytest.raises(ValueError, match="no reward was given"):
        train_ensemble(obs, act, nxt, model_config=cfg)


def test_done_target_outputs_and_report() -> None:
    """The termination as a probability after the reward, trained on bool flags; the report
    scores the reward and the done probability on the holdout."""
    obs, act, nxt = _system(400)
    reward = -(obs**2).sum(1)
    done = np.abs(nxt[:, 0]) > 1.5
    cfg = EnsembleConfig(obs_dim=2, act_dim=1, members=2, hidden_units=16, predict_reward=True,
                         predict_done=True)  # fmt: skip
    model, report = train_ensemble(
        obs, act, nxt, reward, done, model_config=cfg, config=TrainConfig(max_epochs=3)
    )
    outputs = model(torch.from_numpy(obs[:3]), torch.from_numpy(act[:3]))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 2), (2, 3, 2)] + [(2, 3, 1)] * 3
    assert ((outputs[-1] > 0) & (outputs[-1] < 1)).all()
    assert tuple(model.head.weight.shape) == (2, 16, 2 * 2 + 1)  # state mean, logvar, done
    assert model.reward_head is not None  # the reward has layers of its own
    assert tuple(model.reward_head.weight.shape) == (2, model.config.reward_units, 2)
    assert tuple(model.logvar_shift.shape) == (2, 1, 3)  # calibration: Gaussian outputs only
    assert report.reward_nmse is not None and report.done_brier is not None
    assert report.done_rate is not None and 0.0 < report.done_rate < 0.5
    assert all(m.holdout_done_nll is not None for m in report.members)
    assert "brier" in report.summary() and "reward nmse" in report.summary()
    only_done = EnsembleConfig(obs_dim=2, act_dim=1, members=2, hidden_units=16,
                               predict_done=True)  # fmt: skip
    model, report = train_ensemble(
        obs, act, nxt, done=done, model_config=only_done, config=TrainConfig(max_epochs=1)
    )
    assert len(model(torch.from_numpy(obs[:3]), torch.from_numpy(act[:3]))) == 3
    assert report.reward_nmse is None and report.done_brier is not None
    with pytest.raises(ValueError, match="no done flags were given"):
        train_ensemble(obs, act, nxt, reward, model_config=cfg)
    with pytest.raises(ValueError, match="done must be 400 bools"):
        train_ensemble(obs, act, nxt, reward, done.astype(np.int8), model_config=cfg)
    with pytest.raises(ValueError, match="done_weight"):
        TrainConfig(done_weight=-1.0)


def test_a_stop_request_ends_training_within_a_step() -> None:
    obs, act, nxt = _system(2000)
    endless = TrainConfig(max_epochs=100_000, patience=100_000, max_seconds=60.0, seed=3)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    model, report = train_ensemble(obs, act, nxt, model_config=CFG, config=endless, stop=stop)
    late = time.monotonic() - started - 0.5
    assert report.stopped_by == "stop" and report.epochs >= 1
    assert late < 0.5, f"training went on {late:.2f} s after the stop request"
    assert all(1 <= m.best_epoch <= report.epochs for m in report.members)
    assert torch.isfinite(model(torch.from_numpy(obs[:5]), torch.from_numpy(act[:5]))[0]).all()

    _, report = train_ensemble(obs, act, nxt, model_config=CFG, config=endless, stop=stop)
    assert (report.stopped_by, report.epochs) == ("stop", 0)  # already set: no step at all


def test_training_input_is_validated() -> None:
    obs, act, nxt = _system(50)
    bad = obs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="obs contains NaN"):
        train_ensemble(bad, act, nxt, model_config=CFG)
    with pytest.raises(ValueError, match=r"act must have shape \[N, 1\]"):
        train_ensemble(obs, np.zeros((50, 2)), nxt, model_config=CFG)
    with pytest.raises(ValueError, match="at least 2 transitions"):
        train_ensemble(obs[:1], act[:1], nxt[:1], model_config=CFG)
