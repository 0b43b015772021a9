"""Bootstrap resampling and minibatch gathering for training the probabilistic ensemble.

Shapes: E ensemble members, N dataset rows, B batch rows, F input features, O outputs.

Per epoch the trainer does::

    boot = bootstrap_indices(rng, n, members)      # [E, N], once per training run (PETS)
    order = epoch_order(rng, boot)                 # [E, N], once per epoch
    for b in range(n // batch):
        x, y = gather_batch(inputs, targets, order[:, b * batch:(b + 1) * batch], bx, by)
        ...                                        # x [E, B, F], y [E, B, O]

Each function has a numpy version (``*_numpy``) and a numba version (``*_numba``) that produce
bit-identical results; the public name is bound to whichever measurably won
``benchmarks/sampling_numba.py`` on the 2-core dev machine (figures above the public functions).
The random functions take a :class:`numpy.random.Generator` and consume its stream identically in
both versions: numba's Generator support draws from the same bit generator with the same
algorithms, so a seed fixes the result no matter which version runs.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

__all__ = ["bootstrap_indices", "epoch_order", "gather_batch"]

IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# Validation shared by both versions, so they accept and reject exactly the same arguments.
# ----------------------------------------------------------------------------------------------


def _check_generator(rng: np.random.Generator) -> None:
    # RandomState or a seed would "work" in numpy but not in numba, and would silently change
    # the stream; insist on a Generator so results are reproducible from it.
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
    # memory order), so numpy and numba shuffle the same row with the same draws.
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
        # numba does not bounds-check and np.take(mode="clip") would clamp silently, so check
        # here. Viewed as uint64 a negative index is huge, so one max() catches both ends.
        hi = int(index.view(np.uint64).max())
        if hi >= n:
            lo, top = int(index.min()), int(index.max())
            raise IndexError(f"idx must lie in [0, {n}), got values in [{lo}, {top}]")
    members, batch = index.shape
    x = _check_out(out_in, (members, batch, inputs.shape[1]), "out_in")
    y = _check_out(out_tgt, (members, batch, targets.shape[1]), "out_tgt")
    return index, x, y


# ----------------------------------------------------------------------------------------------
# bootstrap_indices
# ----------------------------------------------------------------------------------------------


def _bootstrap_indices_numpy(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    """numpy version of :func:`bootstrap_indices`."""
    n, members = _check_bootstrap_args(rng, n, members)
    return rng.integers(0, n, size=(members, n), dtype=np.int64)


@njit(cache=True)
def _bootstrap_kernel(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    # The sized call beat a per-element rng.integers loop ~8x in numba: each scalar draw is an
    # indirect call into the bit generator. Same stream as numpy's either way.
    return rng.integers(0, n, size=(members, n))


def _bootstrap_indices_numba(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    """numba version of :func:`bootstrap_indices`."""
    n, members = _check_bootstrap_args(rng, n, members)
    return _bootstrap_kernel(rng, n, members)


# ----------------------------------------------------------------------------------------------
# epoch_order
# ----------------------------------------------------------------------------------------------


def _epoch_order_numpy(rng: np.random.Generator, boot: NDArray[np.integer]) -> IndexArray:
    """numpy version of :func:`epoch_order`."""
    rows = _check_boot(rng, boot)
    # permuted() copies, then Fisher-Yates-shuffles each row independently, in row order.
    return rng.permuted(rows, axis=1)


@njit(cache=True)
def _epoch_order_kernel(rng: np.random.Generator, rows: IndexArray) -> IndexArray:
    out = rows.copy()
    for e in range(out.shape[0]):
        # Generator.shuffle in numba uses numpy's bounded-interval draws, row by row like
        # rng.permuted(axis=1), hence identical output.
        rng.shuffle(out[e])
    return out


def _epoch_order_numba(rng: np.random.Generator, boot: NDArray[np.integer]) -> IndexArray:
    """numba version of :func:`epoch_order`."""
    rows = _check_boot(rng, boot)
    return _epoch_order_kernel(rng, rows)


# ----------------------------------------------------------------------------------------------
# gather_batch
# ----------------------------------------------------------------------------------------------


def _gather_batch_numpy(
    inputs: FloatArray,
    targets: FloatArray,
    idx: NDArray[np.integer],
    out_in: FloatArray | None = None,
    out_tgt: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """numpy version of :func:`gather_batch`."""
    index, x, y = _check_gather_args(inputs, targets, idx, out_in, out_tgt)
    # take() copies each F-float row as one chunk. mode="clip" because mode="raise" with out=
    # buffers the whole result (2-3x slower); bounds were already checked above.
    np.take(inputs, index, axis=0, out=x, mode="clip")
    np.take(targets, index, axis=0, out=y, mode="clip")
    return x, y


@njit(cache=True, nogil=True)
def _gather_kernel(
    inputs: FloatArray,
    targets: FloatArray,
    idx: IndexArray,
    out_in: FloatArray,
    out_tgt: FloatArray,
) -> None:
    members, batch = idx.shape
    n_in = inputs.shape[1]
    n_tgt = targets.shape[1]
    for e in range(members):
        for b in range(batch):
            # Unsigned row index: skips numba's negative-index wraparound (bounds checked by the
            # caller). One pass over idx fills both outputs.
            row = np.uint64(idx[e, b])
            for f in range(n_in):
                out_in[e, b, f] = inputs[row, f]
            for o in range(n_tgt):
                out_tgt[e, b, o] = targets[row, o]


@njit(cache=True, nogil=True, parallel=True)
def _gather_kernel_parallel(
    inputs: FloatArray,
    targets: FloatArray,
    idx: IndexArray,
    out_in: FloatArray,
    out_tgt: FloatArray,
) -> None:
    # Benchmark only, no public path uses it. Threads helped at most ~1.2x on the idle 2-core
    # box (whole-epoch gathers) but every call took ~8 ms instead of ~15 us once another process
    # (e.g. torch training) kept one core busy: the OpenMP join waits for a descheduled thread.
    members, batch = idx.shape
    n_in = inputs.shape[1]
    n_tgt = targets.shape[1]
    # Flattened (member, row) loop: E=5 alone would split 3:2 over 2 cores.
    for k in prange(members * batch):
        e = k // batch
        b = k - e * batch
        row = np.uint64(idx[e, b])
        for f in range(n_in):
            out_in[e, b, f] = inputs[row, f]
        for o in range(n_tgt):
            out_tgt[e, b, o] = targets[row, o]


def _gather_batch_numba(
    inputs: FloatArray,
    targets: FloatArray,
    idx: NDArray[np.integer],
    out_in: FloatArray | None = None,
    out_tgt: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """numba version of :func:`gather_batch` (serial; see _gather_kernel_parallel for why)."""
    index, x, y = _check_gather_args(inputs, targets, idx, out_in, out_tgt)
    # A contiguous idx keeps one compiled signature: minibatch slices order[:, a:b] are strided
    # and would otherwise compile (and cache) a second, 'A'-layout specialization.
    index = np.ascontiguousarray(index)
    _gather_kernel(inputs, targets, index, x, y)
    return x, y


# ----------------------------------------------------------------------------------------------
# Public API: bound to the benchmark winners.
# ----------------------------------------------------------------------------------------------

# numpy won all three, so every public function is the numpy version. numba is still imported
# (~0.14 s) for the *_numba versions, but nothing compiles unless they are called. Figures from
# `python benchmarks/sampling_numba.py` (2-core VM, numpy 2.4, numba 0.68, E=5, B=256, us/call;
# numba warm; another process intermittently busy on one core, as during training):
#
#   bootstrap_indices  N=2k / 20k / 200k   numpy 50 / 247 / 2562   numba 36 / 295 / 2849
#       geomean speedup 1.01x: a tie. Both run the same bounded-integer algorithm on the same bit
#       generator; numba only drops call overhead at small N. Tie -> numpy (no JIT).
#   epoch_order        N=2k / 20k / 200k   numpy 86 / 922 / 9844   numba 203 / 2077 / 23446
#       numba 0.43x: its Generator makes an indirect bit-generator call per swap.
#   gather_batch, batch B=256   N=2k F6/O4: 12.4 vs 11.6; N=20k F23/O17: 18.0 vs 19.5;
#       N=200k F23/O17: 50.5 vs 102.5 (numpy vs numba). Whole epoch: N=20k F6/O4 390 vs 562;
#       N=200k F23/O17 38200 vs 75125. geomean 0.78x: np.take copies each row as one chunk,
#       numba's per-float loop does not beat that. parallel=True: at best 1.15x (N=2k epoch) and
#       up to ~8 ms per call (vs ~15 us) whenever the other core was busy, so not used.


def bootstrap_indices(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    """Bootstrap resample per ensemble member: row indices drawn uniformly with replacement.

    Args:
        rng: source of randomness; the result is a pure function of its state, which advances.
        n: N, dataset rows (>= 1).
        members: E, ensemble members (>= 1).

    Returns:
        int64 [E, N]; row e is member e's bootstrap sample of ``range(n)``.
    """
    return _bootstrap_indices_numpy(rng, n, members)


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
    return _epoch_order_numpy(rng, boot)


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
    return _gather_batch_numpy(inputs, targets, idx, out_in, out_tgt)
