"""The numba versions of the planner's CPU-side pieces that the product does not run, kept so
that ``planner_pieces.py`` can time them against numpy on any machine, with the numpy code they
would replace where it is not the product's own (``NOTES`` says why each stays numpy).

The product's sampling kernels are in ``controller/planners/kernels.py``; the numba versions
of the trainer's sampling in ``sampling_numba.py``. Not a benchmark: run as a script, it does
nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NOTES = {
    "refit": "in plans ~0.1 ms per plan; not worth loading numba into small configurations",
    "mppi_update": "numba sums in another order than BLAS: not bit-identical, stays numpy",
    "shift": "a few us per plan; controller/planners/base.py keeps numpy",
    "eval_noise": "controller/rollout/evaluator.py draws it; a candidate for that module",
    "eval_routing": "numba's Generator.shuffle costs an indirect call per swap",
}
"""Why a piece whose numba version wins stays numpy, or why numba loses."""


def _mppi_update(
    mean: np.ndarray, candidates: np.ndarray, scores: np.ndarray, temperature: float
) -> np.ndarray:
    n, h, a = candidates.shape
    top = -np.inf
    for i in range(n):
        if np.isfinite(scores[i]) and scores[i] > top:
            top = scores[i]
    w = np.empty(n)
    total = 0.0
    for i in range(n):
        w[i] = np.exp((scores[i] - top) / temperature) if np.isfinite(scores[i]) else 0.0
        total += w[i]
    out = mean.copy()
    for i in range(n):
        wi = w[i] / total
        for t in range(h):
            for j in range(a):
                out[t, j] += wi * (candidates[i, t, j] - mean[t, j])
    return out


def mppi_update_numpy(
    mean: np.ndarray, candidates: np.ndarray, scores: np.ndarray, temperature: float
) -> np.ndarray:
    # MPPI.tell's arithmetic.
    finite = np.isfinite(scores)
    z = np.where(finite, scores - scores[finite].max(), -np.inf) / temperature
    w = np.exp(z)
    w /= w.sum()
    return mean + np.tensordot(w, candidates - mean, axes=1)


def _refit(
    mean: np.ndarray, std: np.ndarray, elites: np.ndarray, alpha: float, min_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    k, h, a = elites.shape
    new_mean = np.empty((h, a))
    new_std = np.empty((h, a))
    for t in range(h):
        for j in range(a):
            # numpy reduces over the leading axis row after row: the same sums, in order.
            s = elites[0, t, j]
            for e in range(1, k):
                s += elites[e, t, j]
            m = s / k
            d = elites[0, t, j] - m
            q = d * d
            for e in range(1, k):
                d = elites[e, t, j] - m
                q += d * d
            new_mean[t, j] = alpha * mean[t, j] + (1.0 - alpha) * m
            v = alpha * std[t, j] + (1.0 - alpha) * np.sqrt(q / k)
            new_std[t, j] = min_std[j] if v < min_std[j] else v
    return new_mean, new_std


def _shift(seq: np.ndarray, fill: np.ndarray) -> np.ndarray:
    h, a = seq.shape[-2], seq.shape[-1]
    flat = seq.reshape(-1, h, a)
    out = np.empty_like(flat)
    for k in range(flat.shape[0]):
        for t in range(h - 1):
            for j in range(a):
                out[k, t, j] = flat[k, t + 1, j]
        for j in range(a):
            out[k, h - 1, j] = fill[j]
    return out.reshape(seq.shape)


def _noise_f32(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    flat = out.reshape(-1)
    draws = rng.standard_normal(flat.size, dtype=np.float32)
    for i in range(flat.size):
        flat[i] = draws[i]
    return out


def _routing(rng: np.random.Generator, gather: np.ndarray, scatter: np.ndarray) -> None:
    h, m = gather.shape
    for t in range(h):
        for i in range(m):
            gather[t, i] = i
        rng.shuffle(gather[t])
        for i in range(m):
            scatter[t, gather[t, i]] = i


def routing_numpy(rng: np.random.Generator, gather: np.ndarray, scatter: np.ndarray) -> None:
    # The evaluator's TS1 routing (controller.rollout.evaluator._routing).
    h, m = gather.shape
    rows = np.broadcast_to(np.arange(m), (h, m))
    gather[:] = rng.permuted(rows, axis=1)
    np.put_along_axis(scatter, gather, rows, axis=1)


_COMPILED: dict[str, Any] = {}


def compiled() -> dict[str, Any]:
    """The numba versions by piece (refit, mppi_update, shift, noise_f32, routing), compiled
    on the first call (from numba's cache after a machine's first run)."""
    if not _COMPILED:
        import numba

        jit = numba.njit(cache=True)
        for fn in (_refit, _mppi_update, _shift, _noise_f32, _routing):
            _COMPILED[fn.__name__.lstrip("_")] = jit(fn)
    return _COMPILED
