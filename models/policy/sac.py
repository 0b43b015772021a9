"""Soft actor-critic as MBPO uses it (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications"; Janner et al. 2019, "When to Trust Your Model").

Shapes: B batch, S observation, A action.

The actor is a Gaussian over pre-tanh actions u, squashed by tanh into [-1, 1] and mapped
affinely onto the action bounds [low, high]; its log-probability is that of the scaled action
(both Jacobians included), so the entropy target is in action units. Two Q networks over
(obs, act) with Polyak-averaged target copies give the clipped double-Q target; the entropy
temperature alpha is learned toward ``target_entropy``. Everything random is drawn from
``SACConfig.seed``: the initialization under a forked global RNG (the caller's stream is left
untouched), the action noise from the agent's own ``torch.Generator``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.checks import check_int, check_number
from models.preprocess import feature_dim, make_preprocessor

MAX_LAYERS = 16
MAX_UNITS = 4096
MAX_BATCH = 65_536
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
BATCH_KEYS = ("obs", "act", "reward", "next_obs", "done")


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of :class:`SAC`. Validated at construction.

    Defaults are those of SAC v2 and of MBPO's agent (softlearning): 2 x 256 ReLU networks,
    Adam at 3e-4 for all three losses, discount 0.99, target smoothing 0.005, batch 256,
    automatic temperature with target entropy -A.
    """

    hidden_layers: int = 2
    """Hidden layers of the actor and of each Q network (1..MAX_LAYERS)."""
    hidden_units: int = 256
    """Units per hidden layer (1..MAX_UNITS)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor (0, 1]."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics (0, 1]."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(alpha) (0, 1]."""
    discount: float = 0.99
    """gamma (0, 1]."""
    tau: float = 0.005
    """Polyak factor of the target critics per update: target += tau (online - target) (0, 1]."""
    batch_size: int = 256
    """Rows per update, for the caller that draws batches from its buffers (1..MAX_BATCH)."""
    init_alpha: float = 1.0
    """Initial entropy temperature (0, inf). 1.0 as in softlearning, the SAC code MBPO is built
    on (log alpha starts at 0): early on the policy stays broad and explores the model's
    rollouts, and the automatic tuning brings alpha down within a few thousand updates, which
    MBPO's 20-40 policy updates per environment step reach quickly. (pytorch_sac starts at
    0.1, which suits long model-free runs with few updates per step.)"""
    target_entropy: float | None = None
    """Entropy the temperature steers toward, in nats of the scaled action; None means -A."""
    seed: int = 0
    """Seeds the initialization and the action noise."""

    def __post_init__(self) -> None:
        check_int("hidden_layers", self.hidden_layers, 1, MAX_LAYERS)
        check_int("hidden_units", self.hidden_units, 1, MAX_UNITS)
        for name in ("actor_lr", "critic_lr", "alpha_lr", "discount", "tau"):
            check_number(name, getattr(self, name), 0.0, 1.0, low_open=True)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        check_number("init_alpha", self.init_alpha, 0.0, math.inf, low_open=True, high_open=True)
        if self.target_entropy is not None:
            check_number("target_entropy", self.target_entropy, -math.inf, math.inf,
                         low_open=True, high_open=True)  # fmt: skip
        check_int("seed", self.seed, 0, 2**63 - 1)


def mlp(in_dim: int, out_dim: int, cfg: SACConfig) -> nn.Sequential:
    """ReLU MLP [..., in_dim] -> [..., out_dim] with ``cfg.hidden_layers`` hidden layers."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(cfg.hidden_layers):
        layers += [nn.Linear(width, cfg.hidden_units), nn.ReLU()]
        width = cfg.hidden_units
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _log_one_minus_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), stable for large |u|: 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


FEATURE_CLIP = 10.0
"""Normalized observation features are clipped to +-FEATURE_CLIP (as SB3's VecNormalize does)."""
STD_FLOOR = 1e-3


class ObsFeatures(nn.Module):
    """What the networks see of an observation: the task's preprocessing (models.preprocess:
    an angle as sin and cos, ...), then a normalization fitted to real observations
    (:meth:`fit`; the policy trainer refits it to all real rows at each model version),
    clipped to +-FEATURE_CLIP: [B, S] -> [B, F].

    Without them a cartpole policy saw raw cart positions and unwrapped angles: the critic
    extrapolated linearly to positions never visited, valued a cart 480 m off at 4 times the
    start, and the actor learned to push one way for the whole episode. The clip bounds what
    an unvisited state can look like to the networks."""

    mean: torch.Tensor
    std: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, obs_dim: int, preprocess: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        spec = dict(preprocess or {}) or {"kind": "identity"}
        spec.setdefault("obs_dim", obs_dim)
        self.preprocess = make_preprocessor(spec)
        self.out_dim = feature_dim(self.preprocess)
        self.register_buffer("mean", torch.zeros(self.out_dim))
        self.register_buffer("std", torch.ones(self.out_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, obs: torch.Tensor) -> None:
        """Set the normalization to the mean and std of ``obs`` [N, S]'s features (N >= 2)."""
        with torch.no_grad():
            x = self.preprocess(obs.to(self.mean.dtype))
            self.mean.copy_(x.mean(0))
            self.std.copy_(x.std(0).clamp_min(STD_FLOOR))
            self.fitted.fill_(True)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = (self.preprocess(obs) - self.mean) / self.std
        return torch.clamp(x, -FEATURE_CLIP, FEATURE_CLIP)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy scaled to [low, high]."""

    center: torch.Tensor
    half_range: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray | torch.Tensor,
        high: np.ndarray | torch.Tensor,
        cfg: SACConfig,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        lo, hi = _bounds(act_dim, low, high)
        self.features = ObsFeatures(obs_dim, preprocess)
        self.net = mlp(self.features.out_dim, 2 * act_dim, cfg)
        self.register_buffer("low", lo)
        self.register_buffer("high", hi)
        self.register_buffer("center", (hi + lo) / 2)
        self.register_buffer("half_range", (hi - lo) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the pre-tanh Gaussian: [B, S] -> [B, A], [B, A].

        The log-std is bounded softly into [LOG_STD_MIN, LOG_STD_MAX] by a rescaled tanh (as in
        pytorch_sac), so its gradient never vanishes at a hard clip.
        """
        mean, raw = self.net(self.features(obs)).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def std(self, obs: torch.Tensor) -> torch.Tensor:
        """Std of the pre-tanh Gaussian: [B, S] -> [B, A]."""
        return self(obs)[1].exp()

    def _scale(self, squashed: torch.Tensor) -> torch.Tensor:
        # The clamp only catches rounding: center + half_range can land one ulp past high.
        return torch.clamp(self.center + self.half_range * squashed, self.low, self.high)

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action scale(tanh(mean)): [B, S] -> [B, A]."""
        return self._scale(torch.tanh(self(obs)[0]))

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample and its log-density: [B, S] -> action [B, A], log_prob [B].

        The log-density is that of the scaled action: the Gaussian's, minus log(1 - tanh^2) and
        log(half_range) per dimension. The noise is drawn on the CPU from ``generator`` (the
        global RNG when None), so a seeded run draws the same numbers on any device.
        """
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        noise = noise.to(mean.device)
        u = mean + log_std.exp() * noise
        log_prob = (
            -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)
        ) - _log_one_minus_tanh_sq(u)
        log_prob = log_prob.sum(-1) - torch.log(self.half_range).sum()
        return self._scale(torch.tanh(u)), log_prob


class TwinCritic(nn.Module):
    """Two independent Q networks: (obs [B, S], act [B, A]) -> (q1 [B], q2 [B])."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: SACConfig,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.features = ObsFeatures(obs_dim, preprocess)
        self.q1 = mlp(self.features.out_dim + act_dim, 1, cfg)
        self.q2 = mlp(self.features.out_dim + act_dim, 1, cfg)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.features(obs), act], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SAC(nn.Module):
    """The agent: actor, twin critics, their target copies and the learned temperature.

    ``state_dict`` holds the networks, the targets, the bounds and log(alpha); the Adam moments
    and the noise generator's position are not in it, so a loaded agent resumes with fresh
    optimizers.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray | torch.Tensor,
        high: np.ndarray | torch.Tensor,
        config: SACConfig | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = config if config is not None else SACConfig()
        check_int("obs_dim", obs_dim, 1, MAX_UNITS)
        check_int("act_dim", act_dim, 1, MAX_UNITS)
        self.config = cfg
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.actor = Actor(obs_dim, act_dim, low, high, cfg, preprocess)
            self.critic = TwinCritic(obs_dim, act_dim, cfg, preprocess)
        self.target_critic = copy.deepcopy(self.critic)
        self.target_critic.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def fit_observations(self, obs: torch.Tensor) -> None:
        """Fit the networks' observation normalization (:class:`ObsFeatures`) to ``obs``
        [N, S]: the actor's, the critics' and their targets'."""
        for module in (self.actor, self.critic, self.target_critic):
            module.features.fit(obs)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step of the critics, the actor and the temperature, then the targets.

        ``batch``: obs [B, S], act [B, A], reward [B], next_obs [B, S], done [B] (1.0 where the
        transition terminated the episode; a time-limit truncation is 0). Returns the three
        losses, alpha (after the step), the entropy estimate -mean(log pi) and the mean Q of
        the batch's actions.
        """
        obs, act, reward, next_obs, done = self._check_batch(batch)
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_act, next_log_prob = self.actor.sample(next_obs, self.generator)
            target_q = torch.min(*self.target_critic(next_obs, next_act))
            backup = reward + self.config.discount * (1.0 - done) * (
                target_q - alpha * next_log_prob
            )
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, backup) + F.mse_loss(q2, backup)
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()

        # The critics are frozen for the actor's step so its loss leaves no gradient in them.
        self.critic.requires_grad_(False)
        new_act, log_prob = self.actor.sample(obs, self.generator)
        actor_loss = (alpha * log_prob - torch.min(*self.critic(obs, new_act))).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()

        with torch.no_grad():
            for target, online in zip(
                self.target_critic.parameters(), self.critic.parameters(), strict=True
            ):
                target.lerp_(online, self.config.tau)

        return {
            "critic_loss": float(critic_loss.detach()),
            "actor_loss": float(actor_loss.detach()),
            "alpha_loss": float(alpha_loss.detach()),
            "alpha": self.alpha,
            "entropy": float(-log_prob.detach().mean()),
            "q_mean": float(torch.min(q1, q2).detach().mean()),
        }

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        """Action for one observation [S] -> [A] or a batch [B, S] -> [B, A], float32.

        ``deterministic``: scale(tanh(mean)); otherwise a sample from the agent's generator.
        """
        device = self.log_alpha.device
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [S] or [B, S] with S={self.obs_dim}, got {obs.shape}")
        if deterministic:
            a = self.actor.mean_action(x)
        else:
            a = self.actor.sample(x, self.generator)[0]
        out = a.cpu().numpy()
        return out[0] if single else out

    def _check_batch(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}")
        obs, act, reward, next_obs, done = (batch[k] for k in BATCH_KEYS)
        b = obs.shape[0]
        expected = {
            "obs": (b, self.obs_dim),
            "act": (b, self.act_dim),
            "reward": (b,),
            "next_obs": (b, self.obs_dim),
            "done": (b,),
        }
        for key, shape in expected.items():
            if tuple(batch[key].shape) != shape:
                raise ValueError(f"batch[{key!r}] must be {shape}, got {tuple(batch[key].shape)}")
        return obs, act, reward, next_obs, done.to(reward.dtype)


def _bounds(
    act_dim: int, low: np.ndarray | torch.Tensor, high: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.as_tensor(np.asarray(low, dtype=np.float32)).reshape(-1)
    hi = torch.as_tensor(np.asarray(high, dtype=np.float32)).reshape(-1)
    if lo.shape != (act_dim,) or hi.shape != (act_dim,):
        raise ValueError(
            f"low and high must have {act_dim} entries, got {tuple(lo.shape)}, {tuple(hi.shape)}"
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all()):
        raise ValueError(f"action bounds must be finite with low < high, got {lo}, {hi}")
    return lo, hi
