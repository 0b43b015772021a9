"""Tests for models.sampling: numpy and numba versions agree bit for bit, and arguments are checked.

Shapes: E members, N rows, B batch, F input features, O outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import sampling
from models.sampling import bootstrap_indices, epoch_order, gather_batch

E = 5

BOOTSTRAPS = [sampling._bootstrap_indices_numpy, sampling._bootstrap_indices_numba]
ORDERS = [sampling._epoch_order_numpy, sampling._epoch_order_numba]
GATHERS = [sampling._gather_batch_numpy, sampling._gather_batch_numba]


def _data(n: int, f: int, o: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, f), dtype=np.float32),
        rng.standard_normal((n, o), dtype=np.float32),
    )


# --- bootstrap_indices ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "members"), [(1, 1), (7, 3), (2_000, E), (20_001, E)])
def test_bootstrap_numpy_numba_identical_and_same_stream(n: int, members: int) -> None:
    r_np, r_nb = np.random.default_rng(42), np.random.default_rng(42)
    a = sampling._bootstrap_indices_numpy(r_np, n, members)
    b = sampling._bootstrap_indices_numba(r_nb, n, members)
    np.testing.assert_array_equal(a, b)
    # Both advanced the generator by the same draws, so later draws agree as well.
    assert r_np.integers(0, 2**62) == r_nb.integers(0, 2**62)


@pytest.mark.parametrize("impl", BOOTSTRAPS)
def test_bootstrap_shape_dtype_range(impl) -> None:
    boot = impl(np.random.default_rng(0), 1_000, E)
    assert boot.shape == (E, 1_000)
    assert boot.dtype == np.int64
    assert boot.min() >= 0 and boot.max() < 1_000
    # With replacement: a bootstrap of 1000 rows repeats some (about 37% are left out).
    assert all(len(np.unique(row)) < 1_000 for row in boot)
    assert not np.array_equal(boot[0], boot[1])  # members get independent resamples


@pytest.mark.parametrize("impl", BOOTSTRAPS)
def test_bootstrap_reproducible_by_seed(impl) -> None:
    a = impl(np.random.default_rng(7), 500, E)
    b = impl(np.random.default_rng(7), 500, E)
    c = impl(np.random.default_rng(8), 500, E)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bootstrap_public_matches_versions() -> None:
    np.testing.assert_array_equal(
        bootstrap_indices(np.random.default_rng(3), 300, E),
        sampling._bootstrap_indices_numpy(np.random.default_rng(3), 300, E),
    )
    assert bootstrap_indices(np.random.default_rng(3), np.int64(4), np.int32(2)).shape == (2, 4)


@pytest.mark.parametrize("impl", BOOTSTRAPS)
def test_bootstrap_rejects_bad_args(impl) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n must be"):
        impl(rng, 0, E)
    with pytest.raises(ValueError, match="members must be"):
        impl(rng, 10, 0)
    with pytest.raises(TypeError, match="Generator"):
        impl(np.random.RandomState(0), 10, E)
    with pytest.raises(TypeError):
        impl(rng, 10.0, E)


# --- epoch_order ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "members"), [(1, 1), (7, 3), (2_000, E), (20_001, E)])
def test_epoch_order_numpy_numba_identical(n: int, members: int) -> None:
    boot = bootstrap_indices(np.random.default_rng(1), n, members)
    r_np, r_nb = np.random.default_rng(2), np.random.default_rng(2)
    a = sampling._epoch_order_numpy(r_np, boot)
    b = sampling._epoch_order_numba(r_nb, boot)
    np.testing.assert_array_equal(a, b)
    assert r_np.integers(0, 2**62) == r_nb.integers(0, 2**62)


@pytest.mark.parametrize("impl", ORDERS)
def test_epoch_order_is_per_member_permutation(impl) -> None:
    boot = bootstrap_indices(np.random.default_rng(1), 1_000, E)
    before = boot.copy()
    order = impl(np.random.default_rng(2), boot)
    np.testing.assert_array_equal(boot, before)  # input untouched
    assert order.shape == boot.shape and order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order, axis=1), np.sort(boot, axis=1))
    assert not np.array_equal(order, boot)
    # Members are shuffled independently, not by one shared permutation.
    same = impl(np.random.default_rng(2), np.tile(np.arange(1_000), (E, 1)))
    assert all(not np.array_equal(same[0], same[e]) for e in range(1, E))


@pytest.mark.parametrize("impl", ORDERS)
def test_epoch_order_reproducible_and_layout_independent(impl) -> None:
    boot = bootstrap_indices(np.random.default_rng(1), 300, E)
    a = impl(np.random.default_rng(9), boot)
    np.testing.assert_array_equal(a, impl(np.random.default_rng(9), boot))
    assert not np.array_equal(a, impl(np.random.default_rng(10), boot))
    # Other integer dtypes and Fortran order give the same result as C-ordered int64.
    np.testing.assert_array_equal(a, impl(np.random.default_rng(9), boot.astype(np.int32)))
    np.testing.assert_array_equal(a, impl(np.random.default_rng(9), np.asfortranarray(boot)))
    np.testing.assert_array_equal(a, epoch_order(np.random.default_rng(9), boot))


@pytest.mark.parametrize("impl", ORDERS)
def test_epoch_order_rejects_bad_args(impl) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2-D"):
        impl(rng, np.arange(5))
    with pytest.raises(TypeError, match="integers"):
        impl(rng, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="Generator"):
        impl(np.random.RandomState(0), np.zeros((2, 3), np.int64))


# --- gather_batch -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "f", "o", "b"), [(2_000, 6, 4, 256), (501, 23, 17, 100)])
def test_gather_numpy_numba_identical(n: int, f: int, o: int, b: int) -> None:
    x, y = _data(n, f, o)
    order = epoch_order(np.random.default_rng(1), bootstrap_indices(np.random.default_rng(0), n, E))
    for idx in (order[:, b : 2 * b], order):  # a strided minibatch view and a whole epoch
        gx_np, gy_np = sampling._gather_batch_numpy(x, y, idx)
        gx_nb, gy_nb = sampling._gather_batch_numba(x, y, idx)
        np.testing.assert_array_equal(gx_np, gx_nb)
        np.testing.assert_array_equal(gy_np, gy_nb)
        np.testing.assert_array_equal(gx_np, x[idx])
        np.testing.assert_array_equal(gy_np, y[idx])
        gx, gy = gather_batch(x, y, idx)
        np.testing.assert_array_equal(gx, gx_np)
        np.testing.assert_array_equal(gy, gy_np)


def test_gather_parallel_kernel_matches_serial() -> None:
    # Not used by any public path (see the module), but kept for the benchmark: keep it right.
    x, y = _data(300, 6, 4)
    idx = np.random.default_rng(0).integers(0, 300, (E, 64))
    ox, oy = np.empty((E, 64, 6), np.float32), np.empty((E, 64, 4), np.float32)
    sampling._gather_kernel_parallel(x, y, idx, ox, oy)
    np.testing.assert_array_equal(ox, x[idx])
    np.testing.assert_array_equal(oy, y[idx])


@pytest.mark.parametrize("impl", GATHERS)
def test_gather_shapes_dtypes(impl) -> None:
    x, y = _data(50, 6, 4)
    idx = np.random.default_rng(0).integers(0, 50, (E, 8), dtype=np.int32)  # any int dtype
    gx, gy = impl(x, y, idx)
    assert gx.shape == (E, 8, 6) and gy.shape == (E, 8, 4)
    assert gx.dtype == np.float32 and gy.dtype == np.float32
    assert gx.flags.c_contiguous and gy.flags.c_contiguous
    np.testing.assert_array_equal(gx, x[idx])
    ex, ey = impl(x, y, np.empty((E, 0), np.int64))  # an empty batch is fine
    assert ex.shape == (E, 0, 6) and ey.shape == (E, 0, 4)


@pytest.mark.parametrize("impl", GATHERS)
def test_gather_into_preallocated_buffers(impl) -> None:
    x, y = _data(100, 23, 17)
    ox = np.full((E, 16, 23), np.nan, np.float32)
    oy = np.full((E, 16, 17), np.nan, np.float32)
    rng = np.random.default_rng(0)
    for _ in range(2):  # reuse the same buffers across minibatches
        idx = rng.integers(0, 100, (E, 16))
        gx, gy = impl(x, y, idx, ox, oy)
        assert gx is ox and gy is oy
        np.testing.assert_array_equal(ox, x[idx])
        np.testing.assert_array_equal(oy, y[idx])


@pytest.mark.parametrize("impl", GATHERS)
@pytest.mark.parametrize("bad", [-1, 100, 2**40])
def test_gather_out_of_range_raises_and_writes_nothing(impl, bad: int) -> None:
    x, y = _data(100, 6, 4)
    idx = np.zeros((E, 8), np.int64)
    idx[3, 5] = bad
    ox = np.full((E, 8, 6), 7.0, np.float32)
    oy = np.full((E, 8, 4), 7.0, np.float32)
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        impl(x, y, idx, ox, oy)
    assert (ox == 7.0).all() and (oy == 7.0).all()
    with pytest.raises(IndexError):
        impl(x[:0], y[:0], np.zeros((E, 1), np.int64))  # empty dataset: no valid index


@pytest.mark.parametrize("impl", GATHERS)
def test_gather_rejects_bad_args(impl) -> None:
    x, y = _data(20, 6, 4)
    idx = np.zeros((E, 4), np.int64)
    with pytest.raises(TypeError, match="float32"):
        impl(x.astype(np.float64), y, idx)
    with pytest.raises(ValueError, match="rows"):
        impl(x, y[:10], idx)
    with pytest.raises(ValueError, match="2-D"):
        impl(x, y, idx[0])
    with pytest.raises(TypeError, match="integers"):
        impl(x, y, idx.astype(np.float64))
    with pytest.raises(ValueError, match="out_in"):
        impl(x, y, idx, np.empty((E, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out_tgt"):
        impl(x, y, idx, None, np.empty((E, 4, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        impl(x, y, idx, np.empty((E, 4, 12), np.float32)[:, :, ::2])
    readonly = np.empty((E, 4, 6), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        impl(x, y, idx, readonly)
