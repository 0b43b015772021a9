"""Tests for models.sampling: shapes, seeded reproducibility, and argument checks.

The numba versions that lost to these live in benchmarks/sampling_numba.py, which checks them
bit for bit against this module on every run.

Shapes: E members, N rows, B batch, F input features, O outputs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models.sampling import bootstrap_indices, epoch_order, gather_batch

E = 5


def _data(n: int, f: int, o: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, f), dtype=np.float32),
        rng.standard_normal((n, o), dtype=np.float32),
    )


# --- bootstrap_indices ------------------------------------------------------------------------


def test_importing_sampling_does_not_load_numba() -> None:
    code = "import sys, models.sampling; sys.exit('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(("n", "members"), [(1, 1), (7, 3), (2_000, E)])
def test_bootstrap_draws_the_generators_integers(n: int, members: int) -> None:
    # The trainer's seeded results depend on this stream: one sized integers() call.
    rng, ref = np.random.default_rng(42), np.random.default_rng(42)
    np.testing.assert_array_equal(
        bootstrap_indices(rng, n, members), ref.integers(0, n, (members, n))
    )
    assert rng.integers(0, 2**62) == ref.integers(0, 2**62)


def test_bootstrap_shape_dtype_range() -> None:
    boot = bootstrap_indices(np.random.default_rng(0), 1_000, E)
    assert boot.shape == (E, 1_000)
    assert boot.dtype == np.int64
    assert boot.min() >= 0 and boot.max() < 1_000
    # With replacement: a bootstrap of 1000 rows repeats some (about 37% are left out).
    assert all(len(np.unique(row)) < 1_000 for row in boot)
    assert not np.array_equal(boot[0], boot[1])  # members get independent resamples


def test_bootstrap_reproducible_by_seed() -> None:
    a = bootstrap_indices(np.random.default_rng(7), 500, E)
    b = bootstrap_indices(np.random.default_rng(7), 500, E)
    c = bootstrap_indices(np.random.default_rng(8), 500, E)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bootstrap_accepts_numpy_integers() -> None:
    # The trainer passes sizes straight from numpy shapes and arrays.
    boot = bootstrap_indices(np.random.default_rng(3), np.int64(4), np.int32(2))  # type: ignore[arg-type]
    assert boot.shape == (2, 4)


def test_bootstrap_rejects_bad_args() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n must be"):
        bootstrap_indices(rng, 0, E)
    with pytest.raises(ValueError, match="members must be"):
        bootstrap_indices(rng, 10, 0)
    with pytest.raises(TypeError, match="Generator"):
        bootstrap_indices(np.random.RandomState(0), 10, E)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bootstrap_indices(rng, 10.0, E)  # type: ignore[arg-type]


# --- epoch_order ------------------------------------------------------------------------------


def test_epoch_order_draws_the_generators_row_permutations() -> None:
    boot = bootstrap_indices(np.random.default_rng(1), 2_000, E)
    rng, ref = np.random.default_rng(2), np.random.default_rng(2)
    np.testing.assert_array_equal(epoch_order(rng, boot), ref.permuted(boot, axis=1))
    assert rng.integers(0, 2**62) == ref.integers(0, 2**62)


def test_epoch_order_is_per_member_permutation() -> None:
    boot = bootstrap_indices(np.random.default_rng(1), 1_000, E)
    before = boot.copy()
    order = epoch_order(np.random.default_rng(2), boot)
    np.testing.assert_array_equal(boot, before)  # input untouched
    assert order.shape == boot.shape and order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order, axis=1), np.sort(boot, axis=1))
    assert not np.array_equal(order, boot)
    # Members are shuffled independently, not by one shared permutation.
    same = epoch_order(np.random.default_rng(2), np.tile(np.arange(1_000), (E, 1)))
    assert all(not np.array_equal(same[0], same[e]) for e in range(1, E))


def test_epoch_order_reproducible_and_layout_independent() -> None:
    boot = bootstrap_indices(np.random.default_rng(1), 300, E)
    a = epoch_order(np.random.default_rng(9), boot)
    np.testing.assert_array_equal(a, epoch_order(np.random.default_rng(9), boot))
    assert not np.array_equal(a, epoch_order(np.random.default_rng(10), boot))
    # Other integer dtypes and Fortran order give the same result as C-ordered int64.
    np.testing.assert_array_equal(a, epoch_order(np.random.default_rng(9), boot.astype(np.int32)))
    np.testing.assert_array_equal(a, epoch_order(np.random.default_rng(9), np.asfortranarray(boot)))


def test_epoch_order_rejects_bad_args() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2-D"):
        epoch_order(rng, np.arange(5))
    with pytest.raises(TypeError, match="integers"):
        epoch_order(rng, np.zeros((2, 3)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        epoch_order(np.random.RandomState(0), np.zeros((2, 3), np.int64))  # type: ignore[arg-type]


# --- gather_batch -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "f", "o", "b"), [(2_000, 6, 4, 256), (501, 23, 17, 100)])
def test_gather_equals_fancy_indexing(n: int, f: int, o: int, b: int) -> None:
    x, y = _data(n, f, o)
    order = epoch_order(np.random.default_rng(1), bootstrap_indices(np.random.default_rng(0), n, E))
    for idx in (order[:, b : 2 * b], order):  # a strided minibatch view and a whole epoch
        gx, gy = gather_batch(x, y, idx)
        np.testing.assert_array_equal(gx, x[idx])
        np.testing.assert_array_equal(gy, y[idx])


def test_gather_shapes_dtypes() -> None:
    x, y = _data(50, 6, 4)
    idx = np.random.default_rng(0).integers(0, 50, (E, 8), dtype=np.int32)  # any int dtype
    gx, gy = gather_batch(x, y, idx)
    assert gx.shape == (E, 8, 6) and gy.shape == (E, 8, 4)
    assert gx.dtype == np.float32 and gy.dtype == np.float32
    assert gx.flags.c_contiguous and gy.flags.c_contiguous
    np.testing.assert_array_equal(gx, x[idx])
    ex, ey = gather_batch(x, y, np.empty((E, 0), np.int64))  # an empty batch is fine
    assert ex.shape == (E, 0, 6) and ey.shape == (E, 0, 4)


def test_gather_into_preallocated_buffers() -> None:
    x, y = _data(100, 23, 17)
    ox = np.full((E, 16, 23), np.nan, np.float32)
    oy = np.full((E, 16, 17), np.nan, np.float32)
    rng = np.random.default_rng(0)
    for _ in range(2):  # reuse the same buffers across minibatches
        idx = rng.integers(0, 100, (E, 16))
        gx, gy = gather_batch(x, y, idx, ox, oy)
        assert gx is ox and gy is oy
        np.testing.assert_array_equal(ox, x[idx])
        np.testing.assert_array_equal(oy, y[idx])


@pytest.mark.parametrize("bad", [-1, 100, 2**40])
def test_gather_out_of_range_raises_and_writes_nothing(bad: int) -> None:
    x, y = _data(100, 6, 4)
    idx = np.zeros((E, 8), np.int64)
    idx[3, 5] = bad
    ox = np.full((E, 8, 6), 7.0, np.float32)
    oy = np.full((E, 8, 4), 7.0, np.float32)
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        gather_batch(x, y, idx, ox, oy)
    assert (ox == 7.0).all() and (oy == 7.0).all()
    with pytest.raises(IndexError):
        gather_batch(x[:0], y[:0], np.zeros((E, 1), np.int64))  # empty dataset: no valid index


def test_gather_rejects_bad_args() -> None:
    x, y = _data(20, 6, 4)
    idx = np.zeros((E, 4), np.int64)
    with pytest.raises(TypeError, match="float32"):
        gather_batch(x.astype(np.float64), y, idx)
    with pytest.raises(ValueError, match="rows"):
        gather_batch(x, y[:10], idx)
    with pytest.raises(ValueError, match="2-D"):
        gather_batch(x, y, idx[0])
    with pytest.raises(TypeError, match="integers"):
        gather_batch(x, y, idx.astype(np.float64))
    with pytest.raises(ValueError, match="out_in"):
        gather_batch(x, y, idx, np.empty((E, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out_tgt"):
        gather_batch(x, y, idx, None, np.empty((E, 4, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        gather_batch(x, y, idx, np.empty((E, 4, 12), np.float32)[:, :, ::2])
    readonly = np.empty((E, 4, 6), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gather_batch(x, y, idx, readonly)
