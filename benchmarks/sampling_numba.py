"""Benchmark numpy vs numba for models.sampling (bootstrap, epoch order, minibatch gathers).

Shapes: E members (5), N rows, B batch (256), F input features, O outputs.

Run from the repo root::

    python benchmarks/sampling_numba.py --quick    # < 1 min including JIT
    python benchmarks/sampling_numba.py            # all sizes, more repeats

Times are per call in microseconds, the minimum over repeats of the mean of a timed loop (the
minimum is the figure least disturbed by other processes on a small machine). Gathers write into
preallocated outputs; batch gathers walk the epoch's minibatches (``order[:, b*B:(b+1)*B]``, a
strided view, as the trainer passes them) so large datasets are not served from a warm cache.
speedup = numpy_us / numba_us (> 1: numba faster). A function's winner is numba only when the
geometric-mean speedup over its rows is >= WIN_FACTOR; otherwise numpy wins (a tie goes to numpy:
no JIT, no threads).

The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

# Run as a script from the repo root without relying on the editable install.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

MEMBERS = 5
BATCH = 256
FEATURES_OUTPUTS = ((6, 4), (23, 17))  # (F, O): small (pendulum-like) and half-cheetah-like
WIN_FACTOR = 1.10  # numba must be >= 10% faster (geometric mean) to be called the winner


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


def _warm_jit(sampling: Any, np: Any) -> dict[str, Any]:
    """First call of each numba path (compile, or load from numba's on-disk cache), in ms."""
    rng = np.random.default_rng(0)
    x = np.zeros((8, 3), np.float32)
    y = np.zeros((8, 2), np.float32)
    idx = np.zeros((MEMBERS, 4), np.int64)
    ox = np.empty((MEMBERS, 4, 3), np.float32)
    oy = np.empty((MEMBERS, 4, 2), np.float32)
    calls: dict[str, tuple[Any, Callable[[], object]]] = {
        "bootstrap": (
            sampling._bootstrap_kernel,
            lambda: sampling._bootstrap_indices_numba(rng, 8, 2),
        ),
        "epoch_order": (
            sampling._epoch_order_kernel,
            lambda: sampling._epoch_order_numba(rng, idx),
        ),
        "gather_serial": (
            sampling._gather_kernel,
            lambda: sampling._gather_kernel(x, y, idx, ox, oy),
        ),
        "gather_parallel": (
            sampling._gather_kernel_parallel,
            lambda: sampling._gather_kernel_parallel(x, y, idx, ox, oy),
        ),
    }
    out: dict[str, Any] = {}
    for name, (dispatcher, call) in calls.items():
        t0 = time.perf_counter()
        call()
        ms = (time.perf_counter() - t0) * 1e3
        hits = sum(dispatcher.stats.cache_hits.values())
        out[name] = {"first_call_ms": round(ms, 1), "cache_hit": hits > 0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (< 1 min)")
    parser.add_argument(
        "--cold-jit",
        action="store_true",
        help="compile into an empty numba cache dir, so first-call times are true compile times",
    )
    args = parser.parse_args(argv)
    if args.cold_jit:
        # Must be set before numba is imported (numba reads its config at import).
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")

    import numba
    import numpy as np

    from models import sampling

    sizes = (2_000, 20_000) if args.quick else (2_000, 20_000, 200_000)
    repeats = 3 if args.quick else 7
    min_loop_s = 0.005 if args.quick else 0.02
    t_start = time.perf_counter()

    print(
        f"numpy {np.__version__}, numba {numba.__version__} "
        f"({numba.get_num_threads()} threads), cpus={os.cpu_count()}, "
        f"E={MEMBERS}, B={BATCH}, {'quick' if args.quick else 'full'}"
    )
    jit = _warm_jit(sampling, np)
    print("\nJIT first call (compile, or numba cache load), excluded from timings:")
    for name, v in jit.items():
        cache = "hit" if v["cache_hit"] else "miss"
        print(f"  {name:<16} {v['first_call_ms']:>9.1f} ms   cache {cache}")

    def timed(fn: Callable[[], object]) -> float:
        return _time_us(fn, repeats, min_loop_s)

    rng = np.random.default_rng(12345)
    boot_rows: list[dict[str, Any]] = []
    order_rows: list[dict[str, Any]] = []
    for n in sizes:
        np_us = timed(partial(sampling._bootstrap_indices_numpy, rng, n, MEMBERS))
        nb_us = timed(partial(sampling._bootstrap_indices_numba, rng, n, MEMBERS))
        boot_rows.append({"n": n, "numpy_us": np_us, "numba_us": nb_us, "speedup": np_us / nb_us})
        boot = sampling._bootstrap_indices_numpy(rng, n, MEMBERS)
        np_us = timed(partial(sampling._epoch_order_numpy, rng, boot))
        nb_us = timed(partial(sampling._epoch_order_numba, rng, boot))
        order_rows.append({"n": n, "numpy_us": np_us, "numba_us": nb_us, "speedup": np_us / nb_us})

    def gather_parallel(x: Any, y: Any, idx: Any, ox: Any, oy: Any) -> None:
        # The threaded kernel behind the same validation as _gather_batch_numba; measured to
        # show whether parallel=True pays on this machine (it is not used by the module).
        index, bx, by = sampling._check_gather_args(x, y, idx, ox, oy)
        sampling._gather_kernel_parallel(x, y, np.ascontiguousarray(index), bx, by)

    impls: dict[str, Callable[..., object]] = {
        "numpy_us": sampling._gather_batch_numpy,
        "numba_us": sampling._gather_batch_numba,
        "numba_parallel_us": gather_parallel,
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
    def verdict(
        rows: list[dict[str, Any]], bound_to: Callable[..., Any], name: str
    ) -> dict[str, Any]:
        gm = _geomean([r["speedup"] for r in rows])
        winner = "numba" if gm >= WIN_FACTOR else "numpy"
        bound = "numba" if f"_{name}_numba" in bound_to.__code__.co_names else "numpy"
        return {"winner": winner, "geomean_speedup": round(gm, 3), "bound": bound}

    winner = {
        "bootstrap": verdict(boot_rows, sampling.bootstrap_indices, "bootstrap_indices"),
        "epoch_order": verdict(order_rows, sampling.epoch_order, "epoch_order"),
        "gather": verdict(gather_rows, sampling.gather_batch, "gather_batch"),
    }
    for kind in ("batch", "epoch"):
        gm = _geomean([r["speedup"] for r in gather_rows if r["kind"] == kind])
        winner["gather"][f"geomean_speedup_{kind}"] = round(gm, 3)
    print(f"\nwinners (numba needs geomean speedup >= {WIN_FACTOR}):")
    for name, v in winner.items():
        flag = "" if v["winner"] == v["bound"] else "   <-- models.sampling binds the other one"
        print(
            f"  {name:<12} {v['winner']:<6} geomean speedup {v['geomean_speedup']:.2f}x, "
            f"public function uses {v['bound']}{flag}"
        )
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
        "quick": args.quick,
        "members": MEMBERS,
        "batch": BATCH,
        "threads": numba.get_num_threads(),
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
