"""Bootstrap resampling and minibatch gathering for training the probabilistic ensemble.

Shapes: E ensemble members, N dataset rows, B batch rows, F input features, O outputs.

Per epoch the trainer does::

    boot = bootstrap_indices(rng, n, members)      # [E, N], once per training run (PETS)
    order = epoch_order(rng, boot)                 # [E, N], once per epoch
    for b in range(n // batch):
        x, y = gather_batch(inputs, targets, order[:, b * batch:(b + 1) * batch], bx, by)
        ...                                        # x [E, B, F], y [E, B, O]

numpy throughout: numba versions of all three, bit-identical and drawing the same stream from the
same Generator, lost to these on the 2-core dev machine, so they live in
``benchmarks/sampling_numba.py`` with the figures, and importing this module does not load numba.
"""

from __future__ import annotations

import operator

import numpy as np
from numpy.typing import NDArray

__all__ = ["bootstrap_indices", "epoch_order", "gather_batch"]

IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# Validation, shared with the numba versions in benchmarks/sampling_numba.py so that both accept
# and reject exactly the same arguments.
# ----------------------------------------------------------------------------------------------


def _check_generator(rng: np.random.Generator) -> None:
    # A RandomState or a seed would also "work", but through a different stream; insist on a
    # Generator so that results are reproducible from it (and from the numba versions in the
    # benchmark, which need one).
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_bootstrap_args(rng: np.random.Generator, n: int, members: int) -> tuple[int, int]:
    _check_generator(rng)
    n = operator.index(n)
    members = operator.index(members)
    if n < 1:
        raise ValueError(f"n must be >= 1 (a bootstrap of an empty dataset is undefined), got {n}")
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    return n, members


def _check_boot(rng: np.random.Generator, boot: NDArray[np.integer]) -> IndexArray:
    _check_generator(rng)
    arr = np.asarray(boot)
    if arr.ndim != 2:
        raise ValueError(f"boot must be 2-D [E, N], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"boot must hold integers, got dtype {arr.dtype}")
    # C order fixes the row order in which the stream is consumed (rng.permuted walks rows in
    # memory order), so the result does not depend on the caller's layout.
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_out(out: FloatArray | None, shape: tuple[int, int, int], name: str) -> FloatArray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"{name} must be float32 {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return out


def _check_gather_args(
    inputs: FloatArray,
    targets: FloatArray,
    idx: NDArray[np.integer],
    out_in: FloatArray | None,
    out_tgt: FloatArray | None,
) -> tuple[IndexArray, FloatArray, FloatArray]:
    for name, arr in (("inputs", inputs), ("targets", targets)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D numpy array, got {getattr(arr, 'shape', arr)}")
        # No silent conversion: casting the whole dataset on every minibatch would cost far more
        # than the gather itself. Convert once, before the epoch loop.
        if arr.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {arr.dtype}")
    n = inputs.shape[0]
    if targets.shape[0] != n:
        raise ValueError(f"inputs and targets differ in rows: {n} != {targets.shape[0]}")
    index = np.asarray(idx)
    if index.ndim != 2:
        raise ValueError(f"idx must be 2-D [E, B], got shape {index.shape}")
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"idx must hold integers, got dtype {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if index.size:
        # np.take(mode="clip") would clamp silently (and numba would not check at all), so
        # check here. Viewed as uint64 a negative index is huge, so one max() catches both ends.
        hi = int(index.view(np.uint64).max())
        if hi >= n:
            lo, top = int(index.min()), int(index.max())
            raise IndexError(f"idx must lie in [0, {n}), got values in [{lo}, {top}]")
    members, batch = index.shape
    x = _check_out(out_in, (members, batch, inputs.shape[1]), "out_in")
    y = _check_out(out_tgt, (members, batch, targets.shape[1]), "out_tgt")
    return index, x, y


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

# Measured against bit-identical numba versions (`python benchmarks/sampling_numba.py`, 2-core
# VM, numpy 2.4, numba 0.68.1, E=5, B=256; us per call, numba warm; a full and three quick runs
# agreed within a few %):
#
#   bootstrap_indices  N=2k / 20k / 200k  numpy 18 / 148 / 1441  numba 25 / 201 / 1955  0.72x
#       the same bounded-integer algorithm on the same bit generator; numba adds dispatch.
#   epoch_order        N=2k / 20k / 200k  numpy 72 / 803 / 8644  numba 345 / 3437 / 39601  0.22x
#       numba's Generator makes an indirect bit-generator call per swap.
#   gather_batch       B=256 minibatches: 8-13 us either way at N <= 20k (0.95-1.05x), N=200k
#       F23/O17 40 vs 60 us; whole epochs numba 0.40-0.90x: np.take copies each row as one
#       chunk. parallel=True beat serial numba by up to 1.5x on whole epochs but not numpy, and
#       has been seen to wait ~8 ms per call whenever another process holds a core.
#
# numba's first call in a process also costs 0.1-3.7 s (compile, or ~0.1 s cache load).


def bootstrap_indices(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    """Bootstrap resample per ensemble member: row indices drawn uniformly with replacement.

    Args:
        rng: source of randomness; the result is a pure function of its state, which advances.
        n: N, dataset rows (>= 1).
        members: E, ensemble members (>= 1).

    Returns:
        int64 [E, N]; row e is member e's bootstrap sample of ``range(n)``.
    """
    n, members = _check_bootstrap_args(rng, n, members)
    return rng.integers(0, n, size=(members, n), dtype=np.int64)


def epoch_order(rng: np.random.Generator, boot: NDArray[np.integer]) -> IndexArray:
    """Shuffle each member's bootstrap indices independently for one epoch.

    Minibatch b of member e is ``order[e, b*B:(b+1)*B]``; every member sees its own bootstrap
    multiset exactly once per epoch, in its own random order.

    Args:
        rng: source of randomness; advances.
        boot: integer [E, N], e.g. from :func:`bootstrap_indices`; not modified.

    Returns:
        int64 [E, N], a new array whose row e is a permutation of ``boot[e]``.
    """
    rows = _check_boot(rng, boot)
    # permuted() copies, then Fisher-Yates-shuffles each row independently, in row order.
    return rng.permuted(rows, axis=1)


def gather_batch(
    inputs: FloatArray,
    targets: FloatArray,
    idx: NDArray[np.integer],
    out_in: FloatArray | None = None,
    out_tgt: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Gather the rows of all E members' minibatches into contiguous float32 arrays.

    Args:
        inputs: float32 [N, F], network inputs of the dataset.
        targets: float32 [N, O], training targets of the same rows.
        idx: integer [E, B], row indices per member (any strides, e.g. ``order[:, a:b]``);
            every value must lie in [0, N) (negative indices are rejected, not wrapped).
        out_in: optional preallocated C-contiguous float32 [E, B, F] to write into.
        out_tgt: optional preallocated C-contiguous float32 [E, B, O] to write into.

    Returns:
        (inputs [E, B, F], targets [E, B, O]), float32, C-contiguous; the given buffers if any.

    Raises:
        IndexError: an index is outside [0, N); nothing is written.
        TypeError: inputs/targets are not float32, or idx is not integer.
        ValueError: wrong dimensions, mismatched rows, or unsuitable output buffers.
    """
    index, x, y = _check_gather_args(inputs, targets, idx, out_in, out_tgt)
    # take() copies each F-float row as one chunk. mode="clip" because mode="raise" with out=
    # buffers the whole result (2-3x slower); bounds were already checked above.
    np.take(inputs, index, axis=0, out=x, mode="clip")
    np.take(targets, index, axis=0, out=y, mode="clip")
    return x, y
