"""Tests for models.policy.bptt: backpropagation of the imagined return through a hand-written
two-member linear ensemble whose dynamics are known.

Shapes: B start states, S = 1 observation, A = 1 action, E = 2 members.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from models.ensemble import EnsembleConfig
from models.policy.bptt import BPTTConfig, BPTTOptimizer

S, A = 1, 1


class Linear1D(nn.Module):
    """Both members: next_obs = a * obs + b * act, log-variance -60 (the sample is the mean).

    ``a`` and ``b`` are nn.Parameters so the tests can check the model is left untouched.
    """

    def __init__(self, a: float, b: float = 0.1) -> None:
        super().__init__()
        self.config = EnsembleConfig(obs_dim=S, act_dim=A, members=2)
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, ...]:
        mean = (self.a * obs + self.b * act).expand(2, -1, -1)
        return mean, torch.full_like(mean, -60.0)


def _neg_sq(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return -next_obs.pow(2).sum(dim=1)


def _opt(seed: int = 0, **kw: float | int) -> BPTTOptimizer:
    cfg = BPTTConfig(hidden_layers=2, hidden_units=32, seed=seed, **kw)  # type: ignore[arg-type]
    return BPTTOptimizer(cfg, S, A, -torch.ones(A), torch.ones(A), reward_fn=_neg_sq)


def _starts(n: int, seed: int) -> Tensor:
    return torch.rand(n, S, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_bptt_learns_to_drive_the_state_to_zero() -> None:
    """Measured (seed 0, H 10, 300 updates of 64 rows): mean action at x=+0.5 about -1.0, at
    x=-0.5 about +1.0 (-0.999, +0.997); mean imagined return -3.38 at the first update, -0.62 at
    the last."""
    opt = _opt(horizon=10, lr=3e-3, batch=64)
    model = Linear1D(1.0)
    gen = torch.Generator().manual_seed(0)
    first = last = 0.0
    for i in range(300):
        stats = opt.update(model, _starts(64, i), gen)
        first = stats["return"] if i == 0 else first
        last = stats["return"]
    act = opt.act(torch.tensor([[0.5], [-0.5]]))
    print("actions", act.flatten().tolist(), "return", first, "->", last)
    assert act[0, 0] < -0.5 and act[1, 0] > 0.5
    assert last > 0.5 * first


def test_clipping_bounds_the_applied_update() -> None:
    opt = _opt(horizon=20, grad_clip=1e-3, lr=1.0)
    model = Linear1D(1.5)
    before = [p.detach().clone() for p in opt.actor.parameters()]
    # Plain SGD makes the applied step lr * clipped gradient, so its norm is at most the clip.
    opt.optimizer = torch.optim.SGD(opt.actor.parameters(), lr=1.0)
    stats = opt.update(model, _starts(32, 0), torch.Generator().manual_seed(0))
    after = list(opt.actor.parameters())
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(after, before, strict=True)])
    assert stats["clipped"] == 1.0 and stats["grad_norm"] > 1e-3
    assert step.norm() <= 1e-3 * (1 + 1e-4)
    loose = _opt(horizon=1, grad_clip=1e6)
    assert loose.update(model, _starts(32, 0), torch.Generator().manual_seed(0))["clipped"] == 0.0


def test_model_is_left_unchanged() -> None:
    opt = _opt(horizon=5)
    model = Linear1D(1.0)
    model.b.requires_grad_(False)
    model.train()
    opt.update(model, _starts(16, 0), torch.Generator().manual_seed(0))
    opt.gradient_norms(model, _starts(16, 0), [1, 3])
    assert model.a.grad is None and model.b.grad is None
    assert model.a.item() == 1.0 and model.b.item() == pytest.approx(0.1)
    assert model.a.requires_grad and not model.b.requires_grad and model.training


def test_gradient_explodes_with_horizon_through_an_unstable_model() -> None:
    """x' = 1.5 x + 0.1 a. Measured (seed 0, 64 rows): |grad| 0.12 at H=1, 17 at H=5, 5.0e6
    at H=20 (reward -x^2 makes the sensitivity grow about like 1.5^(2H))."""
    opt = _opt(horizon=1)
    norms = opt.gradient_norms(Linear1D(1.5), _starts(64, 0), [1, 5, 20])
    print("norms", norms)
    assert norms[5] > 10 * norms[1] and norms[20] > 1e3 * norms[5]


def test_seeded_runs_are_reproducible() -> None:
    def run(seed: int) -> list[float]:
        opt = _opt(seed=seed, horizon=5)
        gen = torch.Generator().manual_seed(3)
        rets = [opt.update(Linear1D(1.0), _starts(16, i), gen)["return"] for i in range(5)]
        return rets + opt.act(torch.tensor([[0.3]])).flatten().tolist()

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="grad_clip"):
        BPTTConfig(grad_clip=0.0)
    with pytest.raises(ValueError, match="horizon"):
        BPTTConfig(horizon=0)


def test_a_return_no_action_moves_leaves_the_actor_as_it_was() -> None:
    """A reward of hard thresholds (the inverted pendulum's 1 per step alive) and no learned
    termination: the imagined return has no gradient; the update and the norms say 0."""
    cfg = BPTTConfig(hidden_layers=2, hidden_units=32, horizon=5)
    alive = BPTTOptimizer(cfg, S, A, -torch.ones(A), torch.ones(A),
                          reward_fn=lambda o, a, n: (n.abs().sum(1) < 1.0).float())  # fmt: skip
    before = [p.detach().clone() for p in alive.actor.parameters()]
    out = alive.update(Linear1D(0.9), _starts(64, 0), torch.Generator().manual_seed(0))
    assert out["grad_norm"] == 0.0 and out["clipped"] == 0.0
    assert all(torch.equal(p, q) for p, q in zip(alive.actor.parameters(), before, strict=True))
    assert alive.gradient_norms(Linear1D(0.9), _starts(64, 0), [1, 5]) == {1: 0.0, 5: 0.0}
