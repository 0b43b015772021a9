"""The host side of trajectory sampling, in numpy: how a batch's particle rows are laid out in
slices (one per rollout session), and the random draws each slice is fed (sampling noise, the
members each row goes through, the policy's noise). Everything random comes from the caller's
generator, in slice order, so a seeded plan is deterministic.

Shapes: N candidates, H horizon, A action, S observation, E members, P particles per candidate,
M particle rows of a slice (padded to a multiple of E in routed mode), Mp of them the policy's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from controller.rollout.parts import Mode
from controller.rollout.settings import RolloutSettings

MIN_SLICE_ROWS = 16
"""A batch is cut into slices of at least this many particle rows (see RuntimeConfig)."""


@dataclass
class Slice:
    """Input buffers of one slice of a batch: the particle rows ``index`` of the N x P rows
    (its policy particles first), padded to ``len(candidate)`` rows (padding rows follow the
    slice's first candidate; their returns are dropped). Buffers a graph does not take stay
    None."""

    index: np.ndarray
    """The slice's particle rows among the batch's N x P."""
    candidate: np.ndarray
    """[M] which candidate each of its (padded) rows follows."""
    policy_particle: np.ndarray
    """[Mp] the slice's rows (0..Mp-1) that the policy drives."""
    noise: np.ndarray | None = None
    gather: np.ndarray | None = None
    scatter: np.ndarray | None = None
    member_weight: np.ndarray | None = None
    policy_eps: np.ndarray | None = None


def padded_rows(real: int, mode: Mode, members: int) -> int:
    """The rows a slice of ``real`` particle rows runs: routed mode gives each of the E members
    a block of M / E rows, so it pads to a multiple of E."""
    if mode == "mixed":
        return real
    return -(-real // members) * members


def cuts(particle_rows: int, sessions: int) -> list[tuple[int, int]]:
    """[lo, hi) particle rows of each slice: as many as sessions, at least MIN_SLICE_ROWS
    rows each (one slice when the batch is smaller)."""
    k = max(1, min(sessions, particle_rows // MIN_SLICE_ROWS))
    edges = [particle_rows * i // k for i in range(k + 1)]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class Shape:
    """What a layout depends on: the batch and the graph that runs it."""

    n: int
    """N candidates."""
    h: int
    """H steps."""
    p: int
    """P particles per candidate."""
    mode: Mode
    policy_rows: int | None
    """The particle rows the policy drives, the first ones (None: a graph without the
    policy)."""


def layout(
    shape: Shape, sessions: int, members: int, obs_dim: int, act_dim: int, host_random: bool
) -> list[Slice]:
    """The slices' input buffers for a batch of ``shape`` over ``sessions`` sessions (allocate
    once per shape, reuse otherwise). Each slice takes its share of the policy's rows and of the
    others, so that the slices cost alike. ``host_random``: the graph takes its noise and member
    orders as inputs (else it draws them itself and those buffers stay None)."""
    n, h, p, mode, policy_rows = shape.n, shape.h, shape.p, shape.mode, shape.policy_rows
    candidate_of_row = np.repeat(np.arange(n, dtype=np.int64), p)
    rows = n * p
    k = len(cuts(rows, sessions))
    first = policy_rows or 0
    slices = []
    for i in range(k):
        driven = np.arange(first * i // k, first * (i + 1) // k)
        other = np.arange(first + (rows - first) * i // k, first + (rows - first) * (i + 1) // k)
        index = np.concatenate([driven, other])
        m = padded_rows(len(index), mode, members)
        cand = np.full(m, candidate_of_row[index[0]], np.int64)
        cand[: len(index)] = candidate_of_row[index]
        part = Slice(index, cand, np.arange(len(driven), dtype=np.int64))
        if mode == "mixed":
            part.member_weight = np.empty((h, members, m), np.float32)
        if host_random:
            part.noise = np.zeros((h, m, obs_dim), np.float32)
            if mode == "routed":
                part.gather = np.empty((h, m), np.int64)
                part.scatter = np.empty((h, m), np.int64)
            if policy_rows is not None:
                part.policy_eps = np.zeros((h, len(driven), act_dim), np.float32)
        slices.append(part)
    return slices


def feeds(
    part: Slice,
    shared: dict[str, np.ndarray],
    settings: RolloutSettings,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """One slice's feeds, drawing its host randomness from ``rng``. A device-random graph
    draws noise and member orders itself and takes switches instead."""
    feeds = dict(shared, particle_candidate=part.candidate)
    if part.noise is None:
        feeds["noise_scale"] = np.array(1.0 if settings.sample else 0.0, np.float32)
    elif settings.sample:
        feeds["noise"] = rng.standard_normal(dtype=np.float32, out=part.noise)
    else:
        part.noise.fill(0.0)
        feeds["noise"] = part.noise
    if part.member_weight is not None:
        member_weights(rng, part.member_weight, settings.propagation)
        feeds["member_weight"] = part.member_weight
    elif part.gather is not None and part.scatter is not None:
        routing(rng, part.gather, part.scatter, settings.propagation)
        feeds.update(gather_idx=part.gather, scatter_idx=part.scatter)
    else:
        feeds["redraw"] = np.array(1.0 if settings.propagation == "ts1" else 0.0, np.float32)
    if "policy_noise" in shared:  # a graph with the policy
        feeds["policy_particle"] = part.policy_particle
        if part.policy_eps is not None and settings.policy_noise > 0:
            feeds["policy_eps"] = rng.standard_normal(dtype=np.float32, out=part.policy_eps)
        elif part.policy_eps is not None:
            part.policy_eps.fill(0.0)
            feeds["policy_eps"] = part.policy_eps
    return feeds


def routing(
    rng: np.random.Generator, gather: np.ndarray, scatter: np.ndarray, propagation: str
) -> None:
    """Fill the per-step member orders ``gather [H, M]`` and their inverses ``scatter``."""
    h, m = gather.shape
    rows = np.broadcast_to(np.arange(m), (h, m))
    if propagation == "tsinf":
        gather[:] = rng.permutation(m)
    else:
        gather[:] = rng.permuted(rows, axis=1)
    np.put_along_axis(scatter, gather, rows, axis=1)


def member_weights(rng: np.random.Generator, weights: np.ndarray, propagation: str) -> None:
    """Fill ``weights [H, E, M]``: 1/E each (expectation) or one-hot per particle row."""
    h, e, m = weights.shape
    if propagation == "expectation":
        weights.fill(1.0 / e)
        return
    shape = (1, m) if propagation == "tsinf" else (h, m)
    member = np.broadcast_to(rng.integers(0, e, size=shape), (h, m))
    weights.fill(0.0)
    np.put_along_axis(weights, member[:, None, :], 1.0, axis=1)
