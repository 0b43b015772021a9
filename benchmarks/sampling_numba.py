"""numba against numpy for the trainer's sampling: bootstrap, epoch order, minibatch gathers.

``models.sampling`` is numpy only. The numba versions live here, bit-identical to it (checked on
every run before timing: same arrays, and the Generator advanced by the same draws), so that
the comparison can be repeated on any machine; they lost on the 2-core dev machine (figures in
``models/sampling.py``).

Shapes: E members (5), N rows, B batch (256), F input features, O outputs.

Run from the repo root::

    python benchmarks/sampling_numba.py --quick    # < 1 min including JIT
    python benchmarks/sampling_numba.py            # all sizes, more repeats
    python benchmarks/sampling_numba.py --cold-jit # also time a fresh compile of each kernel

Times are per call in microseconds, the minimum over repeats of the mean of a timed loop (the
minimum is the figure least disturbed by other processes on a small machine). Gathers write into
preallocated outputs; batch gathers walk the epoch's minibatches (``order[:, b*B:(b+1)*B]``, a
strided view, as the trainer passes them) so large datasets are not served from a warm cache.
speedup = numpy_us / numba_us (> 1: numba faster). numba wins a function only when the
geometric-mean speedup over its rows is >= WIN_FACTOR (a tie goes to numpy: no JIT, no threads).

The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

import bench_common  # noqa: F401  (this checkout on sys.path)
from models import sampling

# Checked before this module imports numba: the product must not pull it in for sampling.
PRODUCT_IMPORTS_NUMBA = "numba" in sys.modules

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

MEMBERS = 5
BATCH = 256
FEATURES_OUTPUTS = ((6, 4), (23, 17))  # (F, O): small (pendulum-like) and half-cheetah-like
WIN_FACTOR = 1.10  # numba must be >= 10% faster (geometric mean) to be called the winner

IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# The numba versions, behind the same argument checks as models.sampling.
# ----------------------------------------------------------------------------------------------


@njit(cache=True)
def _bootstrap_kernel(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    # The sized call beat a per-element rng.integers loop ~8x in numba: each scalar draw is an
    # indirect call into the bit generator. Same stream as numpy's either way.
    return rng.integers(0, n, size=(members, n))


def bootstrap_indices_numba(rng: np.random.Generator, n: int, members: int) -> IndexArray:
    n, members = sampling._check_bootstrap_args(rng, n, members)
    return _bootstrap_kernel(rng, n, members)


@njit(cache=True)
def _epoch_order_kernel(rng: np.random.Generator, rows: IndexArray) -> IndexArray:
    out = rows.copy()
    for e in range(out.shape[0]):
        # Generator.shuffle in numba uses numpy's bounded-interval draws, row by row like
        # rng.permuted(axis=1), hence identical output.
        rng.shuffle(out[e])
    return out


def epoch_order_numba(rng: np.random.Generator, boot: NDArray[np.integer]) -> IndexArray:
    return _epoch_order_kernel(rng, sampling._check_boot(rng, boot))


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


def _gather_with(kernel: Any) -> Callable[..., tuple[FloatArray, FloatArray]]:
    def gather(
        inputs: FloatArray,
        targets: FloatArray,
        idx: NDArray[np.integer],
        out_in: FloatArray | None = None,
        out_tgt: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        index, x, y = sampling._check_gather_args(inputs, targets, idx, out_in, out_tgt)
        # A contiguous idx keeps one compiled signature: minibatch slices order[:, a:b] are
        # strided and would otherwise compile (and cache) a second, 'A'-layout specialization.
        kernel(inputs, targets, np.ascontiguousarray(index), x, y)
        return x, y

    return gather


gather_batch_numba = _gather_with(_gather_kernel)
gather_batch_numba_parallel = _gather_with(_gather_kernel_parallel)


# ----------------------------------------------------------------------------------------------
# Checks and timing
# ----------------------------------------------------------------------------------------------


def check_identical() -> None:
    """Raise unless every numba version matches models.sampling bit for bit, stream included."""
    for n, members in ((1, 1), (7, 3), (2_001, MEMBERS)):
        r_np, r_nb = np.random.default_rng(42), np.random.default_rng(42)
        np.testing.assert_array_equal(
            sampling.bootstrap_indices(r_np, n, members), bootstrap_indices_numba(r_nb, n, members)
        )
        boot = sampling.bootstrap_indices(np.random.default_rng(n), n, members)
        boot_f = np.asfortranarray(boot.astype(np.int32))  # any layout and int dtype
        np.testing.assert_array_equal(
            sampling.epoch_order(r_np, boot), epoch_order_numba(r_nb, boot_f)
        )
        assert r_np.integers(0, 2**62) == r_nb.integers(0, 2**62), "streams diverged"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((501, 23), dtype=np.float32)
    y = rng.standard_normal((501, 17), dtype=np.float32)
    order = sampling.epoch_order(rng, sampling.bootstrap_indices(rng, 501, MEMBERS))
    for idx in (order[:, 100:200], order):
        want = sampling.gather_batch(x, y, idx)
        for impl in (gather_batch_numba, gather_batch_numba_parallel):
            got = impl(x, y, idx)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def _time_us(fn: Callable[[], object], repeats: int, min_loop_s: float) -> float:
    """Per-call microseconds: min over `repeats` of the mean of a loop lasting >= min_loop_s."""
    fn()  # one untimed call: first-touch page faults, lazy allocations
    loops = 1
    while True:  # calibrate the loop length, like timeit.autorange
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_loop_s or loops >= 1 << 16:
            break
        loops *= 2 if dt <= 0 else max(2, min(10, math.ceil(min_loop_s / dt)))
    best = dt / loops
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best * 1e6


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _cycle(items: list[Any]) -> Callable[[], Any]:
    it: Iterator[Any] = iter(())

    def nxt() -> Any:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(items)
            return next(it)

    return nxt


def _gather_call(
    impl: Callable[..., object],
    x: Any,
    y: Any,
    next_idx: Callable[[], Any],
    ox: Any,
    oy: Any,
) -> object:
    return impl(x, y, next_idx(), ox, oy)


def _jit_calls() -> dict[str, tuple[Any, Callable[[Any], object]]]:
    rng = np.random.default_rng(0)
    x = np.zeros((8, 3), np.float32)
    y = np.zeros((8, 2), np.float32)
    idx = np.zeros((MEMBERS, 4), np.int64)
    ox = np.empty((MEMBERS, 4, 3), np.float32)
    oy = np.empty((MEMBERS, 4, 2), np.float32)
    return {
        "bootstrap": (_bootstrap_kernel, lambda k: k(rng, 8, 2)),
        "epoch_order": (_epoch_order_kernel, lambda k: k(rng, idx)),
        "gather_serial": (_gather_kernel, lambda k: k(x, y, idx, ox, oy)),
        "gather_parallel": (_gather_kernel_parallel, lambda k: k(x, y, idx, ox, oy)),
    }


def warm_jit(cold: bool) -> dict[str, Any]:
    """First call of each kernel (compile, or load from numba's on-disk cache), in ms; with
    ``cold``, also a fresh compile of an uncached copy (what a first run on a new machine
    pays)."""
    out: dict[str, Any] = {}
    for name, (dispatcher, call) in _jit_calls().items():
        t0 = time.perf_counter()
        call(dispatcher)
        ms = (time.perf_counter() - t0) * 1e3
        hits = sum(dispatcher.stats.cache_hits.values())
        out[name] = {"first_call_ms": round(ms, 1), "cache_hit": hits > 0}
        if cold:
            fresh = numba.jit(**dispatcher.targetoptions)(dispatcher.py_func)
            t0 = time.perf_counter()
            call(fresh)
            out[name]["compile_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (< 1 min)")
    parser.add_argument(
        "--cold-jit", action="store_true", help="also time a fresh compile of each kernel"
    )
    args = parser.parse_args(argv)

    sizes = (2_000, 20_000) if args.quick else (2_000, 20_000, 200_000)
    repeats = 3 if args.quick else 7
    min_loop_s = 0.005 if args.quick else 0.02
    t_start = time.perf_counter()

    print(
        f"numpy {np.__version__}, numba {numba.__version__} "
        f"({numba.get_num_threads()} threads), cpus={os.cpu_count()}, "
        f"E={MEMBERS}, B={BATCH}, {'quick' if args.quick else 'full'}; "
        f"models.sampling imports numba: {PRODUCT_IMPORTS_NUMBA}"
    )
    jit = warm_jit(args.cold_jit)
    print("\nJIT first call (compile, or numba cache load), excluded from timings:")
    for name, v in jit.items():
        cache = "hit" if v["cache_hit"] else "miss"
        fresh = f"   fresh compile {v['compile_ms']:.1f} ms" if "compile_ms" in v else ""
        print(f"  {name:<16} {v['first_call_ms']:>9.1f} ms   cache {cache}{fresh}")
    check_identical()
    print("numba versions bit-identical to models.sampling (arrays and Generator stream)")

    def timed(fn: Callable[[], object]) -> float:
        return _time_us(fn, repeats, min_loop_s)

    rng = np.random.default_rng(12345)
    boot_rows: list[dict[str, Any]] = []
    order_rows: list[dict[str, Any]] = []
    for n in sizes:
        np_us = timed(partial(sampling.bootstrap_indices, rng, n, MEMBERS))
        nb_us = timed(partial(bootstrap_indices_numba, rng, n, MEMBERS))
        boot_rows.append({"n": n, "numpy_us": np_us, "numba_us": nb_us, "speedup": np_us / nb_us})
        boot = sampling.bootstrap_indices(rng, n, MEMBERS)
        np_us = timed(partial(sampling.epoch_order, rng, boot))
        nb_us = timed(partial(epoch_order_numba, rng, boot))
        order_rows.append({"n": n, "numpy_us": np_us, "numba_us": nb_us, "speedup": np_us / nb_us})

    impls: dict[str, Callable[..., object]] = {
        "numpy_us": sampling.gather_batch,
        "numba_us": gather_batch_numba,
        "numba_parallel_us": gather_batch_numba_parallel,
    }
    gather_rows: list[dict[str, Any]] = []
    for n in sizes:
        boot = sampling.bootstrap_indices(rng, n, MEMBERS)
        order = sampling.epoch_order(rng, boot)
        batches = [order[:, s : s + BATCH] for s in range(0, n - BATCH + 1, BATCH)]
        for f, o in FEATURES_OUTPUTS:
            x = rng.standard_normal((n, f), dtype=np.float32)
            y = rng.standard_normal((n, o), dtype=np.float32)
            for kind, rows in (("batch", BATCH), ("epoch", n)):
                ox = np.empty((MEMBERS, rows, f), np.float32)
                oy = np.empty((MEMBERS, rows, o), np.float32)
                nxt = _cycle(batches) if kind == "batch" else _cycle([order])
                row: dict[str, Any] = {"kind": kind, "n": n, "f": f, "o": o, "rows": rows}
                for label, impl in impls.items():
                    row[label] = timed(partial(_gather_call, impl, x, y, nxt, ox, oy))
                row["speedup"] = row["numpy_us"] / row["numba_us"]
                row["parallel_speedup"] = row["numba_us"] / row["numba_parallel_us"]
                gather_rows.append(row)

    # --- table -----------------------------------------------------------------------------
    print("\nbootstrap_indices / epoch_order  [E, N] int64   (us per call)")
    print(f"  {'function':<12} {'N':>8} {'numpy':>11} {'numba':>11} {'speedup':>8}")
    for name, table in (("bootstrap", boot_rows), ("epoch_order", order_rows)):
        for r in table:
            print(
                f"  {name:<12} {r['n']:>8} {r['numpy_us']:>11.1f} {r['numba_us']:>11.1f} "
                f"{r['speedup']:>7.2f}x"
            )
    print(
        "\ngather_batch  inputs [N, F] + targets [N, O] -> [E, rows, F] + [E, rows, O] float32"
        "   (us per call; numba = serial kernel; par x = numba serial / numba parallel)"
    )
    print(
        f"  {'kind':<6} {'N':>8} {'F':>3} {'O':>3} {'numpy':>11} {'numba':>11} {'speedup':>8} "
        f"{'nb parallel':>12} {'par x':>7}"
    )
    for r in gather_rows:
        print(
            f"  {r['kind']:<6} {r['n']:>8} {r['f']:>3} {r['o']:>3} {r['numpy_us']:>11.1f} "
            f"{r['numba_us']:>11.1f} {r['speedup']:>7.2f}x {r['numba_parallel_us']:>12.1f} "
            f"{r['parallel_speedup']:>6.2f}x"
        )

    # --- winners -----------------------------------------------------------------------------
    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        gm = _geomean([r["speedup"] for r in rows])
        return {"winner": "numba" if gm >= WIN_FACTOR else "numpy", "geomean_speedup": round(gm, 3)}

    winner = {
        "bootstrap": verdict(boot_rows),
        "epoch_order": verdict(order_rows),
        "gather": verdict(gather_rows),
    }
    for kind in ("batch", "epoch"):
        gm = _geomean([r["speedup"] for r in gather_rows if r["kind"] == kind])
        winner["gather"][f"geomean_speedup_{kind}"] = round(gm, 3)
    print(f"\nwinners (numba needs geomean speedup >= {WIN_FACTOR}; models.sampling is numpy):")
    for name, v in winner.items():
        flag = "   <-- numba won here: reconsider models.sampling" if v["winner"] == "numba" else ""
        print(f"  {name:<12} {v['winner']:<6} geomean speedup {v['geomean_speedup']:.2f}x{flag}")
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal {elapsed:.1f} s")

    def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                k: round(v, 3 if k.endswith("speedup") else 1) if isinstance(v, float) else v
                for k, v in r.items()
            }
            for r in rows
        ]

    result = {
        "benchmark": "sampling_numba",
        "quick": args.quick,
        "members": MEMBERS,
        "batch": BATCH,
        "threads": numba.get_num_threads(),
        "product_imports_numba": PRODUCT_IMPORTS_NUMBA,
        "jit": jit,
        "bootstrap": rounded(boot_rows),
        "epoch_order": rounded(order_rows),
        "gather": rounded(gather_rows),
        "winner": winner,
        "total_s": round(elapsed, 1),
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
