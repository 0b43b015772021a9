"""The learned dynamics model: a probabilistic ensemble of Gaussian MLPs (PETS, Chua et al. 2018).

Shapes: E ensemble members, B batch, S observation, A action, F preprocessed observation features,
O Gaussian outputs (S state-delta coordinates, plus 1 if the reward is predicted), D done logits
(1 if the termination is predicted, else 0).

Each member maps (obs, act) to a Gaussian over the state delta (and reward) and, when the
termination is predicted, to the logit of the probability that the transition ends the episode.
All members run in one batched matmul per layer: weights are shaped [E, in, out]; the done logit
is one more column of the output layer, so it shares the members' hidden features. Observation
preprocessing, input normalization and output de-normalization are part of the module
(buffers), so the exported graph takes raw observations and actions and returns the next-state
mean and log-variance in raw units (see :meth:`GaussianEnsemble.forward` for the outputs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models.checks import check_bool, check_int, check_number
from models.preprocess import feature_dim, make_preprocessor

MAX_MEMBERS = 64
MAX_LAYERS = 16
MAX_UNITS = 4096
MAX_DIM = 4096
STD_FLOOR = 1e-6


@dataclass(frozen=True)
class EnsembleConfig:
    """Architecture of a :class:`GaussianEnsemble`. Validated at construction."""

    obs_dim: int
    """S: raw observation size (1..MAX_DIM)."""
    act_dim: int
    """A: action size (1..MAX_DIM)."""
    members: int = 5
    """E: ensemble members (1..MAX_MEMBERS)."""
    hidden_layers: int = 4
    """Hidden layers per member (1..MAX_LAYERS)."""
    hidden_units: int = 200
    """Units per hidden layer (1..MAX_UNITS)."""
    predict_reward: bool = False
    """Also predict the reward as one extra Gaussian output."""
    reward_layers: int = 3
    """Hidden layers of the reward's own network, per member (with ``predict_reward``)."""
    reward_units: int = 200
    """Units per hidden layer of the reward's own network. Capacity matters: on cartpole data
    2 x 64 and 2 x 128 left a holdout reward nmse of 0.59 and 0.44, 3 x 200 0.017."""
    predict_done: bool = False
    """Also predict the probability that a transition ends the episode (``terminated``), as
    one extra logit per member trained with binary cross-entropy."""
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    """Observation preprocessing spec (see models.preprocess); empty means identity."""
    init_max_logvar: float = 0.5
    """Initial learned upper bound of the normalized log-variance (PETS soft bound)."""
    init_min_logvar: float = -20.0
    """Initial learned lower bound of the normalized log-variance."""

    def __post_init__(self) -> None:
        check_int("obs_dim", self.obs_dim, 1, MAX_DIM)
        check_int("act_dim", self.act_dim, 1, MAX_DIM)
        check_int("members", self.members, 1, MAX_MEMBERS)
        check_int("hidden_layers", self.hidden_layers, 1, MAX_LAYERS)
        check_int("hidden_units", self.hidden_units, 1, MAX_UNITS)
        check_int("reward_layers", self.reward_layers, 1, MAX_LAYERS)
        check_int("reward_units", self.reward_units, 1, MAX_UNITS)
        check_bool("predict_reward", self.predict_reward)
        check_bool("predict_done", self.predict_done)
        check_number("init_max_logvar", self.init_max_logvar, -math.inf, math.inf, low_open=True,
                     high_open=True)  # fmt: skip
        check_number("init_min_logvar", self.init_min_logvar, -math.inf, math.inf, low_open=True,
                     high_open=True)  # fmt: skip
        if not self.init_min_logvar < self.init_max_logvar:
            raise ValueError(
                f"init_min_logvar ({self.init_min_logvar}) must be below "
                f"init_max_logvar ({self.init_max_logvar})"
            )
        spec = dict(self.preprocess) or {"kind": "identity"}
        if spec.setdefault("obs_dim", self.obs_dim) != self.obs_dim:
            raise ValueError(f"preprocess obs_dim {spec['obs_dim']} != obs_dim {self.obs_dim}")
        # Store the spec in one canonical form so equal models compare equal after a round trip.
        object.__setattr__(self, "preprocess", spec)

    @property
    def out_dim(self) -> int:
        """O: Gaussian outputs per member (state delta, plus reward if predicted)."""
        return self.obs_dim + int(self.predict_reward)

    @property
    def done_dim(self) -> int:
        """D: done logits per member (1 if the termination is predicted, else 0)."""
        return int(self.predict_done)

    def preprocess_spec(self) -> dict[str, Any]:
        return dict(self.preprocess)

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "members": self.members,
            "hidden_layers": self.hidden_layers,
            "hidden_units": self.hidden_units,
            "predict_reward": self.predict_reward,
            "predict_done": self.predict_done,
            "reward_layers": self.reward_layers,
            "reward_units": self.reward_units,
            "preprocess": self.preprocess_spec(),
            "init_max_logvar": self.init_max_logvar,
            "init_min_logvar": self.init_min_logvar,
        }


@dataclass(frozen=True)
class EnsembleShape:
    """The architecture a learner trains, before the task gives the dims: what a config file
    sets (``[learner.model]``). :meth:`config` adds the dims, the outputs and the
    preprocessing, which are the task's; the result is the model file's own record."""

    members: int = 5
    """E: ensemble members (1..MAX_MEMBERS)."""
    hidden_layers: int = 3
    """Hidden layers per member (1..MAX_LAYERS)."""
    hidden_units: int = 200
    """Units per hidden layer (1..MAX_UNITS)."""
    reward_layers: int = 3
    """Hidden layers of the learned reward's own network, per member (1..MAX_LAYERS)."""
    reward_units: int = 200
    """Units per hidden layer of the learned reward's network (1..MAX_UNITS)."""

    def __post_init__(self) -> None:
        check_int("members", self.members, 1, MAX_MEMBERS)
        check_int("hidden_layers", self.hidden_layers, 1, MAX_LAYERS)
        check_int("hidden_units", self.hidden_units, 1, MAX_UNITS)
        check_int("reward_layers", self.reward_layers, 1, MAX_LAYERS)
        check_int("reward_units", self.reward_units, 1, MAX_UNITS)

    def config(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        predict_reward: bool = False,
        predict_done: bool = False,
        preprocess: Mapping[str, Any] | None = None,
    ) -> EnsembleConfig:
        """This architecture for S = ``obs_dim``, A = ``act_dim`` and the task's outputs."""
        return EnsembleConfig(
            obs_dim=obs_dim, act_dim=act_dim, members=self.members,
            hidden_layers=self.hidden_layers, hidden_units=self.hidden_units,
            predict_reward=predict_reward, reward_layers=self.reward_layers,
            reward_units=self.reward_units, predict_done=predict_done,
            preprocess=dict(preprocess or {}),
        )  # fmt: skip


class EnsembleLinear(nn.Module):
    """E independent affine maps applied in one batched matmul: [E, B, in] -> [E, B, out]."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))
        # Truncated normal with std 1/(2 sqrt(in)), the initialization of the PETS code.
        nn.init.trunc_normal_(self.weight, std=1.0 / (2.0 * math.sqrt(in_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class Prediction(NamedTuple):
    """One pass of every member: the Gaussian over the targets and the done logit."""

    mean: torch.Tensor
    """[E, B, O] state delta, then reward if predicted."""
    logvar: torch.Tensor
    """[E, B, O]."""
    done_logit: torch.Tensor
    """[E, B, D]: logit of P(terminated); D = 0 (an empty tensor) when not predicted."""


class GaussianEnsemble(nn.Module):
    """Probabilistic ensemble predicting next-state (and reward) Gaussians, and the probability
    that the transition terminates the episode, from raw inputs."""

    in_mean: torch.Tensor
    in_std: torch.Tensor
    out_mean: torch.Tensor
    out_std: torch.Tensor
    logvar_shift: torch.Tensor

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocess = make_preprocessor(config.preprocess_spec())
        feat_dim = feature_dim(self.preprocess) + config.act_dim
        e, h, o = config.members, config.hidden_units, config.out_dim
        sizes = [feat_dim] + [h] * config.hidden_layers
        self.hidden = nn.ModuleList(EnsembleLinear(e, i, j) for i, j in itertools.pairwise(sizes))
        s = config.obs_dim
        # Columns: S means, S log-variances, D done logits.
        self.head = EnsembleLinear(e, h, 2 * s + config.done_dim)
        # The reward has hidden layers of its own (per member): in shared ones the state's
        # Gaussian NLL, whose near-deterministic coordinates weigh 1/variance, starved it
        # (cartpole, trained with beta-NLL as models.train does: holdout reward nmse 0.70
        # shared, 0.017 with its own 3 x 200 layers; a plain squared-error MLP: 0.021).
        self.reward_hidden = nn.ModuleList()
        self.reward_head: EnsembleLinear | None = None
        if config.predict_reward:
            r = config.reward_units
            widths = [feat_dim] + [r] * config.reward_layers
            self.reward_hidden.extend(
                EnsembleLinear(e, i, j) for i, j in itertools.pairwise(widths)
            )
            self.reward_head = EnsembleLinear(e, r, 2)
        # Per member, so early stopping can restore each member's best bounds with its weights.
        self.max_logvar = nn.Parameter(torch.full((e, 1, o), config.init_max_logvar))
        self.min_logvar = nn.Parameter(torch.full((e, 1, o), config.init_min_logvar))
        self.register_buffer("in_mean", torch.zeros(1, feat_dim))
        self.register_buffer("in_std", torch.ones(1, feat_dim))
        self.register_buffer("out_mean", torch.zeros(1, o))
        self.register_buffer("out_std", torch.ones(1, o))
        # Post-hoc variance calibration per member and output, fit on holdout data after
        # training (see models.train); zero while training.
        self.register_buffer("logvar_shift", torch.zeros(e, 1, o))

    @property
    def feature_dim(self) -> int:
        return int(self.in_mean.shape[-1])

    def features(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Un-normalized network inputs: [..., S], [..., A] -> [..., F + A]."""
        return torch.cat([self.preprocess(obs), act], dim=-1)

    def set_normalization(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Fit input and output normalization to training data: [N, F + A] and [N, O]."""
        with torch.no_grad():
            self.in_mean.copy_(features.mean(0, keepdim=True))
            self.in_std.copy_(features.std(0, keepdim=True).clamp_min(STD_FLOOR))
            self.out_mean.copy_(targets.mean(0, keepdim=True))
            self.out_std.copy_(targets.std(0, keepdim=True).clamp_min(STD_FLOOR))

    def forward_normalized(self, x: torch.Tensor) -> Prediction:
        """Normalized inputs [E, B, F + A] -> normalized mean and log-variance [E, B, O] and the
        done logit [E, B, D]."""
        h = x
        for layer in self.hidden:
            h = F.silu(layer(h))
        out = self.head(h)
        s = self.config.obs_dim
        mean, logvar, done_logit = out[..., :s], out[..., s : 2 * s], out[..., 2 * s :]
        if self.reward_head is not None:
            for layer in self.reward_hidden:
                x = F.silu(layer(x))
            reward_mean, reward_logvar = self.reward_head(x).chunk(2, dim=-1)
            mean = torch.cat([mean, reward_mean], dim=-1)
            logvar = torch.cat([logvar, reward_logvar], dim=-1)
        # PETS soft bounds: smooth clamp into [min_logvar, max_logvar], both learned.
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return Prediction(mean, logvar + self.logvar_shift, done_logit)

    def predict_raw(self, obs: torch.Tensor, act: torch.Tensor) -> Prediction:
        """Raw-unit mean and log-variance of the targets [E, B, O] (delta, then reward if any)
        and the done logit [E, B, D].

        ``obs`` [B, S] and ``act`` [B, A] go to every member; [E, B, S] and [E, B, A] give each
        member its own batch.
        """
        x = (self.features(obs, act) - self.in_mean) / self.in_std
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.config.members, -1, -1)
        mean, logvar, done_logit = self.forward_normalized(x)
        raw_mean = mean * self.out_std + self.out_mean
        return Prediction(raw_mean, logvar + 2.0 * torch.log(self.out_std), done_logit)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every member's prediction in raw units, in the order of the exported graph's outputs
        (``models.export.ModelMetadata.output_names_of``):

        ``next_obs_mean [E, B, S]``, ``next_obs_logvar [E, B, S]``; then ``reward_mean
        [E, B, 1]``, ``reward_logvar [E, B, 1]`` when the reward is predicted; then
        ``done_prob [E, B, 1]``, the probability that the transition ends the episode, when the
        termination is predicted.
        """
        mean, logvar, done_logit = self.predict_raw(obs, act)
        s = self.config.obs_dim
        outputs: tuple[torch.Tensor, ...] = (obs + mean[..., :s], logvar[..., :s])
        if self.config.predict_reward:
            outputs += (mean[..., s:], logvar[..., s:])
        if self.config.predict_done:
            outputs += (torch.sigmoid(done_logit),)
        return outputs

    def logvar_bound_penalty(self) -> torch.Tensor:
        """The small loss term that keeps the learned log-variance bounds tight (PETS)."""
        return self.max_logvar.sum() - self.min_logvar.sum()


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-member Gaussian negative log-likelihood, doubled, constant dropped, mean over rows and
    outputs: [E, B, O] -> [E]."""
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2))


def bernoulli_nll(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-member binary cross-entropy of done logits against 0/1 flags, mean over rows:
    [E, B, 1] -> [E]."""
    return F.binary_cross_entropy_with_logits(logit, target, reduction="none").mean(dim=(1, 2))
