"""Branched model rollouts and the buffer that keeps them (MBPO, Janner et al. 2019).

Shapes: N start states, B rows still running, M produced transitions, S observation, A action,
E ensemble members.

From real start states, the policy acts and the learned ensemble imagines k steps ahead; each
row draws a member at random at every step (the ensemble's disagreement is the model's
uncertainty) and samples the next state from that member's Gaussian. A row stops at its first
terminal transition, so nothing is imagined past a state the task ends in. The reward and the
termination come in as functions from the entry point (the task's weighted terms); without them
the model's own learned reward and done probability are used.

The "naive" Dyna variant, whole episodes imagined from the initial states, is the same call
with ``RolloutSchedule.constant(episode_length)`` and ``initial_states(transitions)`` as the
start states.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from models.checks import check_int
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.transitions import Transitions

Array = npt.NDArray[Any]
RewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(obs [B,S], act [B,A], next_obs [B,S]) -> reward [B]."""
DoneFn = Callable[[Tensor], Tensor]
"""next_obs [B,S] -> terminated [B] bool."""
PolicyFn = Callable[[Tensor], Tensor]
"""obs [B,S] -> act [B,A]."""

MAX_ROLLOUT_LENGTH = 100_000
MAX_EPOCH = 10**9
MAX_VERSIONS = 10_000


class EnsembleDynamics(Protocol):
    """What the rollouts need of a model: a :class:`models.ensemble.GaussianEnsemble`'s
    ``config`` and ``forward`` outputs, and nn.Module's train/eval switch."""

    @property
    def config(self) -> EnsembleConfig: ...

    @property
    def training(self) -> bool: ...

    def train(self, mode: bool = True) -> Any: ...

    def __call__(self, obs: Tensor, act: Tensor) -> tuple[Tensor, ...]: ...


@dataclass(frozen=True, eq=False)
class Rollouts:
    """M imagined transitions, as numpy columns.

    obs [M,S] f32, act [M,A] f32, reward [M] f32, next_obs [M,S] f32, done [M] bool, start [M]
    int64 (index of the row's start state), step [M] int64 (0 for the first imagined step).
    """

    obs: Array
    act: Array
    reward: Array
    next_obs: Array
    done: Array
    start: Array
    step: Array

    def __post_init__(self) -> None:
        m = len(self.obs)
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, np.ndarray) or len(v) != m:
                raise ValueError(f"Rollouts.{f.name} must be a numpy array of {m} rows")

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, idx: slice | npt.NDArray[np.integer[Any]]) -> Rollouts:
        return Rollouts(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """The rows of ``parts`` (at least one) in order."""
        if not parts:
            raise ValueError("Rollouts.concat needs at least one part")
        names = [f.name for f in fields(Rollouts)]
        return Rollouts(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


def branched_rollouts(
    model: EnsembleDynamics,
    start_obs: Tensor,
    policy: PolicyFn,
    k: int,
    generator: torch.Generator,
    reward_fn: RewardFn | None = None,
    done_fn: DoneFn | None = None,
) -> Rollouts:
    """k-step rollouts of ``policy`` through ``model`` from ``start_obs`` [N,S].

    Each step, every running row draws a member uniformly (from ``generator``) and samples
    next_obs = mean + std * N(0,1) from it. The reward is ``reward_fn`` if given, else the drawn
    member's reward mean (needs ``config.predict_reward``); the termination is ``done_fn`` if
    given, else done ~ Bernoulli(the drawn member's done_prob) with ``config.predict_done``,
    else never. A row's terminal transition is kept (done True) and the row stops there.
    Transitions come step by step: all rows' step 0, then step 1 of the rows still running...
    The model runs in eval mode without gradients; its mode is restored afterwards.
    """
    cfg = model.config
    check_int("k", k, 1, MAX_ROLLOUT_LENGTH)
    if start_obs.dim() != 2 or start_obs.shape[1] != cfg.obs_dim:
        raise ValueError(f"start_obs must be [N, {cfg.obs_dim}], got {tuple(start_obs.shape)}")
    if reward_fn is None and not cfg.predict_reward:
        raise ValueError("no reward_fn given and the model does not predict the reward")
    reward_at = 2 if cfg.predict_reward else None
    done_at = 2 + 2 * int(cfg.predict_reward) if cfg.predict_done else None

    was_training = model.training
    model.train(False)
    parts: list[Rollouts] = []
    try:
        with torch.no_grad():
            obs = start_obs.to(torch.float32)
            start = torch.arange(len(obs), device=obs.device)
            for t in range(k):
                if len(obs) == 0:
                    break
                act = policy(obs)
                b = len(obs)
                member = _draw(torch.randint(cfg.members, (b,), generator=generator), obs)
                out = drawn_outputs(model, obs, act, member)
                mean, logvar = out[0], out[1]
                noise = _draw(torch.randn(mean.shape, generator=generator), obs)
                next_obs = mean + torch.exp(0.5 * logvar) * noise
                if reward_fn is not None:
                    reward = reward_fn(obs, act, next_obs)
                else:
                    assert reward_at is not None
                    reward = out[reward_at][:, 0]
                if done_fn is not None:
                    done = done_fn(next_obs).to(torch.bool)
                elif done_at is not None:
                    prob = out[done_at][:, 0].to(generator.device)
                    done = _draw(torch.bernoulli(prob, generator=generator), obs).to(torch.bool)
                else:
                    done = torch.zeros(b, dtype=torch.bool, device=obs.device)
                if reward.shape != (b,) or done.shape != (b,):
                    raise ValueError(
                        f"reward and done must be [{b}], got {tuple(reward.shape)} and "
                        f"{tuple(done.shape)}"
                    )
                parts.append(
                    Rollouts(
                        obs=_np(obs, np.float32),
                        act=_np(act, np.float32),
                        reward=_np(reward, np.float32),
                        next_obs=_np(next_obs, np.float32),
                        done=_np(done, np.bool_),
                        start=_np(start, np.int64),
                        step=np.full(b, t, dtype=np.int64),
                    )
                )
                running = ~done
                obs, start = next_obs[running], start[running]
    finally:
        model.train(was_training)
    if not parts:
        return _empty(cfg.obs_dim, cfg.act_dim)
    return Rollouts.concat(parts)


def drawn_outputs(
    model: EnsembleDynamics, obs: Tensor, act: Tensor, member: Tensor
) -> tuple[Tensor, ...]:
    """Each row's outputs from its drawn member: obs [B,S], act [B,A], member [B] -> the model's
    outputs, each [B, ...] (the member dim taken).

    A :class:`~models.ensemble.GaussianEnsemble` takes a batch per member, so each member runs
    on its own rows only (padded to the largest group): E times fewer rows than running every
    member on every row and keeping one, which made a 100,000-row rollout step 8 s on one
    core. Another model runs every member on every row."""
    rows = torch.arange(len(obs), device=obs.device)
    if not isinstance(model, GaussianEnsemble):
        return tuple(o[member, rows] for o in model(obs, act))
    e = model.config.members
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=e)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(member)
    slot[order] = rows - first[member[order]]
    # Row index per (member, slot); the padding slots repeat row 0 and are never read.
    index = torch.zeros(e, max(int(counts.max()), 1), dtype=torch.long, device=obs.device)
    index[member, slot] = rows
    return tuple(o[member, slot] for o in model(obs[index], act[index]))


def _draw(sample: Tensor, like: Tensor) -> Tensor:
    """A sample drawn on the generator's device, moved to where the rollout runs."""
    return sample.to(like.device)


def _np(x: Tensor, dtype: Any) -> Array:
    return np.asarray(x.detach().cpu().numpy(), dtype=dtype)


def _empty(obs_dim: int, act_dim: int) -> Rollouts:
    z = np.zeros(0, dtype=np.int64)
    return Rollouts(
        obs=np.zeros((0, obs_dim), np.float32),
        act=np.zeros((0, act_dim), np.float32),
        reward=np.zeros(0, np.float32),
        next_obs=np.zeros((0, obs_dim), np.float32),
        done=np.zeros(0, np.bool_),
        start=z,
        step=z.copy(),
    )


def initial_states(transitions: Transitions) -> Array:
    """obs [n,S] of the rows that open an episode (step == 0): the start states of the naive
    Dyna rollouts."""
    return np.asarray(transitions.obs[transitions.step == 0])


class ModelBuffer:
    """The imagined transitions of the last ``capacity_versions`` model versions.

    MBPO keeps a few model epochs' rollouts so the policy does not chase the newest model
    alone. Versions only go forward; when more than ``capacity_versions`` are held, the oldest
    version's rows are dropped whole.
    """

    def __init__(self, capacity_versions: int) -> None:
        if (
            isinstance(capacity_versions, bool)
            or not isinstance(capacity_versions, int)
            or not 1 <= capacity_versions <= MAX_VERSIONS
        ):
            raise ValueError(
                f"capacity_versions must be an integer in [1, {MAX_VERSIONS}], "
                f"got {capacity_versions!r}"
            )
        self.capacity_versions = capacity_versions
        self._parts: OrderedDict[int, list[Rollouts]] = OrderedDict()
        self._all: Rollouts | None = None  # concatenation of every held row, rebuilt lazily

    @property
    def versions(self) -> list[int]:
        """The model versions held, oldest first."""
        return list(self._parts)

    def __len__(self) -> int:
        return sum(len(p) for parts in self._parts.values() for p in parts)

    def add(self, version: int, rollouts: Rollouts) -> None:
        """Keep ``rollouts`` under ``version`` (the newest held, or a newer one)."""
        if self._parts and version < next(reversed(self._parts)):
            raise ValueError(f"version {version} is older than the newest held")
        self._parts.setdefault(version, []).append(rollouts)
        while len(self._parts) > self.capacity_versions:
            self._parts.popitem(last=False)
        self._all = None

    def sample(self, batch_size: int, generator: torch.Generator) -> Rollouts:
        """``batch_size`` rows drawn uniformly with replacement (indices from ``generator``)."""
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample an empty ModelBuffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self._all is None:
            self._all = Rollouts.concat([p for parts in self._parts.values() for p in parts])
        idx = torch.randint(n, (batch_size,), generator=generator).cpu().numpy()
        return self._all[idx]


@dataclass(frozen=True)
class RolloutSchedule:
    """MBPO's rollout length: k_min up to epoch_start, rising linearly to k_max at epoch_end,
    k_max after. ``constant(k)`` holds one k throughout; with k the episode length and
    ``initial_states`` as the start states it is naive Dyna (whole imagined episodes)."""

    k_min: int
    """Length up to epoch_start (1..MAX_ROLLOUT_LENGTH)."""
    k_max: int
    """Length from epoch_end on (k_min..MAX_ROLLOUT_LENGTH)."""
    epoch_start: int
    """Epoch where the rise begins (0..MAX_EPOCH)."""
    epoch_end: int
    """Epoch where the rise ends (epoch_start..MAX_EPOCH)."""

    def __post_init__(self) -> None:
        check_int("k_min", self.k_min, 1, MAX_ROLLOUT_LENGTH)
        check_int("k_max", self.k_max, self.k_min, MAX_ROLLOUT_LENGTH)
        check_int("epoch_start", self.epoch_start, 0, MAX_EPOCH)
        check_int("epoch_end", self.epoch_end, self.epoch_start, MAX_EPOCH)

    @classmethod
    def constant(cls, k: int) -> RolloutSchedule:
        return cls(k_min=k, k_max=k, epoch_start=0, epoch_end=0)

    def length(self, epoch: int) -> int:
        """The rollout length k at ``epoch`` (>= 0), rounded down as MBPO does."""
        check_int("epoch", epoch, 0, MAX_EPOCH)
        if epoch <= self.epoch_start:
            return self.k_min
        if epoch >= self.epoch_end:
            return self.k_max
        # Integer arithmetic: a float fraction can land just below a whole k and lose a step.
        rise = (epoch - self.epoch_start) * (self.k_max - self.k_min)
        return self.k_min + rise // (self.epoch_end - self.epoch_start)
