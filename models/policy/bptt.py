"""A policy trained by backpropagating the model's H-step return through time (the seeds'
section 2.2 route; PILCO, Deisenroth & Rasmussen 2011; Dreamer, Hafner et al. 2020, without the
value head).

Shapes: B batch of start states, S observation, A action, E ensemble members, H horizon.

From B start states the actor acts with reparameterized samples, and the ensemble imagines H
steps; every row draws a member per step, as :func:`models.policy.rollouts.branched_rollouts`
does, so the gradient averages over the model's disagreement instead of exploiting one member,
and the next state is the reparameterized sample mean + std * eps, so d(return)/d(actor) flows
through every imagined state. The model's parameters are frozen while the return is
differentiated (requires_grad False, restored afterwards), so only the actor moves. When the
model predicts termination, the reward of step t is weighted by the survival probability
prod_{k<t} (1 - done_prob_k), which keeps the weighting differentiable.

Long horizons through a chaotic or unstable model make the gradient explode (or vanish through
contracting dynamics); the global norm before clipping is reported by every update, and
:meth:`BPTTOptimizer.gradient_norms` measures it per horizon.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.checks import check_int, check_number
from models.policy.rollouts import EnsembleDynamics, RewardFn, drawn_outputs
from models.policy.sac import MAX_BATCH, MAX_LAYERS, MAX_UNITS, Actor, SACConfig

MAX_HORIZON = 10_000


@dataclass(frozen=True)
class BPTTConfig:
    """Hyperparameters of :class:`BPTTOptimizer`. Validated at construction."""

    horizon: int = 10
    """H: imagined steps the return is differentiated through (1..MAX_HORIZON)."""
    lr: float = 1e-3
    """Adam learning rate of the actor (0, 1]."""
    grad_clip: float = 10.0
    """Largest global L2 norm of the actor's gradient applied per update (0, inf)."""
    batch: int = 256
    """Start states per update, for the caller that draws them (1..MAX_BATCH)."""
    discount: float = 0.99
    """gamma (0, 1]."""
    hidden_layers: int = 2
    """Hidden layers of the actor (1..MAX_LAYERS)."""
    hidden_units: int = 256
    """Units per hidden layer of the actor (1..MAX_UNITS)."""
    seed: int = 0
    """Seeds the actor's initialization (under a forked global RNG)."""

    def __post_init__(self) -> None:
        check_int("horizon", self.horizon, 1, MAX_HORIZON)
        check_number("lr", self.lr, 0.0, 1.0, low_open=True)
        check_number("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True, high_open=True)
        check_int("batch", self.batch, 1, MAX_BATCH)
        check_number("discount", self.discount, 0.0, 1.0, low_open=True)
        check_int("hidden_layers", self.hidden_layers, 1, MAX_LAYERS)
        check_int("hidden_units", self.hidden_units, 1, MAX_UNITS)
        check_int("seed", self.seed, 0, 2**63 - 1)


@contextmanager
def _frozen(model: EnsembleDynamics) -> Iterator[None]:
    """Eval mode and requires_grad False on the model's parameters; both restored after."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    before = [p.requires_grad for p in params]
    was_training = model.training
    model.train(False)
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


class BPTTOptimizer:
    """An :class:`models.policy.sac.Actor` trained by gradient ascent on the imagined return."""

    def __init__(
        self,
        config: BPTTConfig,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray | Tensor,
        high: np.ndarray | Tensor,
        *,
        reward_fn: RewardFn | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.reward_fn = reward_fn
        self.obs_dim, self.act_dim = obs_dim, act_dim
        actor_cfg = SACConfig(
            hidden_layers=config.hidden_layers, hidden_units=config.hidden_units, seed=config.seed
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor = Actor(obs_dim, act_dim, low, high, actor_cfg, preprocess)
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
            self.actor.parameters(), lr=config.lr
        )

    def fit_observations(self, obs: Tensor) -> None:
        """Fit the actor's observation normalization to ``obs`` [N, S] (see
        :class:`models.policy.sac.ObsFeatures`)."""
        self.actor.features.fit(obs)

    def imagined_return(
        self,
        model: EnsembleDynamics,
        start_obs: Tensor,
        horizon: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Differentiable discounted, survival-weighted H-step return per row: [B,S] -> [B].

        The model must be frozen by the caller if only the actor is to receive gradients.
        """
        cfg = model.config
        if start_obs.dim() != 2 or start_obs.shape[1] != cfg.obs_dim:
            raise ValueError(f"start_obs must be [B, {cfg.obs_dim}], got {tuple(start_obs.shape)}")
        if self.reward_fn is None and not cfg.predict_reward:
            raise ValueError("no reward_fn given and the model does not predict the reward")
        reward_at = 2 if cfg.predict_reward else None
        done_at = 2 + 2 * int(cfg.predict_reward) if cfg.predict_done else None

        obs = start_obs.to(torch.float32)
        b = len(obs)
        ret = torch.zeros(b, device=obs.device)
        alive = torch.ones(b, device=obs.device)
        for t in range(horizon):
            act, _ = self.actor.sample(obs, generator)
            member = torch.randint(cfg.members, (b,), generator=generator).to(obs.device)
            out = drawn_outputs(model, obs, act, member)
            mean, logvar = out[0], out[1]
            eps = torch.randn(mean.shape, generator=generator).to(obs.device)
            next_obs = mean + torch.exp(0.5 * logvar) * eps
            if self.reward_fn is not None:
                reward = self.reward_fn(obs, act, next_obs)
            else:
                assert reward_at is not None
                reward = out[reward_at][:, 0]
            ret = ret + self.config.discount**t * alive * reward
            if done_at is not None:
                alive = alive * (1.0 - out[done_at][:, 0])
            obs = next_obs
        return ret

    def update(
        self, model: EnsembleDynamics, start_obs: Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        """One clipped Adam step on -mean(return) from ``start_obs`` [B,S].

        Returns ``return`` (mean imagined return before the step), ``grad_norm`` (global norm
        before clipping) and ``clipped`` (1.0 when the norm exceeded ``grad_clip``).
        """
        with _frozen(model):
            ret = self.imagined_return(model, start_obs, self.config.horizon, generator).mean()
            self.optimizer.zero_grad(set_to_none=True)
            if not ret.requires_grad:  # a reward and survival that no action moves: nothing to do
                return {"return": float(ret), "grad_norm": 0.0, "clipped": 0.0}
            (-ret).backward()
        norm = float(nn.utils.clip_grad_norm_(self.actor.parameters(), self.config.grad_clip))
        if not math.isfinite(norm):
            # Never step on a NaN/inf gradient: report it and leave the actor as it was.
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        return {
            "return": float(ret.detach()),
            "grad_norm": norm,
            "clipped": float(norm > self.config.grad_clip),
        }

    def gradient_norms(
        self, model: EnsembleDynamics, start_obs: Tensor, horizons: list[int], seed: int = 0
    ) -> dict[int, float]:
        """L2 norm of d(mean return)/d(actor parameters) for each horizon; nothing is stepped.

        Every horizon draws its noise from a generator seeded with ``seed``, so the horizons
        share their first steps' draws and differ only in length.
        """
        norms: dict[int, float] = {}
        with _frozen(model):
            for h in horizons:
                check_int("horizons", h, 1, MAX_HORIZON)
                gen = torch.Generator().manual_seed(seed)
                ret = self.imagined_return(model, start_obs, h, gen).mean()
                if not ret.requires_grad:  # e.g. a step reward of hard thresholds at H = 1
                    norms[h] = 0.0
                    continue
                grads = torch.autograd.grad(ret, list(self.actor.parameters()), allow_unused=True)
                grads = tuple(g for g in grads if g is not None)
                norms[h] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        return norms

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True) -> Tensor:
        """Action [B,A] for obs [B,S]: scale(tanh(mean)), or a sample when not deterministic."""
        if deterministic:
            return self.actor.mean_action(obs)
        return self.actor.sample(obs)[0]
