"""The planner's hot CPU-side pieces, numpy against a numba version, each hot in a loop.

At the sizes of the planner configurations (``bench_common.PLAN_CONFIGS``; without --quick
also the corners of the realistic range): candidate sampling (gaussian for CEM "clip" and
MPPI, truncated normal for CEM, colored noise for iCEM, uniform for random shooting), the
elite refit, the MPPI update, the warm-start shift, and the evaluator's draws (float32 noise
[H, M, S], per-step member orders [H, M]). A piece's numba version wins when it is
bit-identical to numpy, its geometric-mean speedup is >= WIN_FACTOR and no size is below
1.0x. The product runs the sampling kernels (``controller.planners.kernels``) for large
batches only (``planner_cpu.py`` measures where they pay inside whole plans); the other numba
versions live in ``planner_numba.py``, for the reasons in its NOTES.

    python benchmarks/planner_pieces.py [--quick]

Times: per call, the minimum over interleaved repeats of a timed loop's mean. The last line
printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench_common import PLAN_CONFIGS, sampling_path
from controller.planners import kernels, noise
from controller.planners.base import shift
from controller.planners.optimizers.elites import refit
from controller.tasks import get_task
from planner_numba import NOTES, compiled, mppi_update_numpy, routing_numpy

WIN_FACTOR = 1.3
"""numba's geometric-mean speedup over a piece's sizes must reach this to replace numpy."""
PRODUCT = {"gaussian", "truncated", "colored", "uniform"}
"""Pieces whose numba version the product runs for batches of kernels.MIN_ELEMENTS or more."""


def _loop_s(fn: Callable[[], object], loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops


def time_pair(
    a: Callable[[], object], b: Callable[[], object], repeats: int, min_loop_s: float
) -> tuple[float, float]:
    """Per-call microseconds of ``a`` and ``b``: min over interleaved repeats of a loop mean."""
    a()
    b()
    loops = 1
    while _loop_s(a, loops) * loops < min_loop_s and loops < 1 << 14:
        loops *= 4
    best_a = best_b = math.inf
    for _ in range(repeats):
        best_a = min(best_a, _loop_s(a, loops))
        best_b = min(best_b, _loop_s(b, loops))
    return best_a * 1e6, best_b * 1e6


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def piece_sizes(quick: bool) -> list[tuple[int, int, int]]:
    """(N, H, A) of the configurations, plus the corners of the realistic range."""
    sizes = {(c.population, c.horizon, get_task(c.task).act_dim) for c in PLAN_CONFIGS}
    if not quick:
        sizes |= {(200, 15, 6), (1000, 15, 1), (1000, 30, 1)}
    return sorted(sizes)


Draw = Callable[[np.random.Generator], Any]


def _on(path: str, fn: Draw) -> Draw:
    def run(rng: np.random.Generator) -> Any:
        with sampling_path(path):
            return fn(rng)

    return run


Case = tuple[str, tuple[int, ...], Draw, Draw]


def cases(n: int, h: int, a: int) -> list[Case]:
    """(piece, size, numpy version, numba version) at one (N, H, A); each takes the rng."""
    kernels.compile_now()
    nb = compiled()
    data = np.random.default_rng(1)
    low, high = -np.ones(a), np.ones(a)
    mean = data.uniform(-0.5, 0.5, (h, a))
    std = np.full((h, a), 0.4)
    candidates = data.uniform(-1, 1, (n, h, a))
    scores = data.standard_normal(n)
    n_elites = max(1, round(0.1 * n))
    elites = candidates[np.argpartition(-scores, n_elites - 1)[:n_elites]]
    kept = elites[: max(1, round(0.3 * n_elites))]
    min_std, fill = np.full(a, 0.01), np.zeros(a)
    # The evaluator's draws for one TS1 iteration: M = N rows padded to E=5, S = 4 or 18.
    m, s = -(-n // 5) * 5, 4 if a == 1 else 18
    buf = np.empty((h, m, s), np.float32)
    gather, scatter = np.empty((h, m), np.int64), np.empty((h, m), np.int64)

    def routed(fn: Callable[..., None]) -> Draw:
        def run(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            fn(rng, gather, scatter)
            return gather.copy(), scatter.copy()

        return run

    size: tuple[int, ...] = (n, h, a)
    product: dict[str, Draw] = {
        "gaussian": lambda r: noise.gaussian_candidates(r, mean, std, low, high, n),
        "truncated": lambda r: noise.truncated_candidates(r, mean, std, low, high, n),
        "colored": lambda r: noise.colored_candidates(r, 2.0, mean, std, low, high, n),
        "uniform": lambda r: noise.uniform_candidates(r, low, high, n, h),
    }
    out: list[Case] = [
        (name, size, _on("numpy", fn), _on("numba", fn)) for name, fn in product.items()
    ]
    out += [
        ("refit", size,
         lambda r: refit(mean, std, elites, 0.1, min_std),
         lambda r: nb["refit"](mean, std, elites, 0.1, min_std)),
        ("mppi_update", size,
         lambda r: mppi_update_numpy(mean, candidates, scores, 1.0),
         lambda r: nb["mppi_update"](mean, candidates, scores, 1.0)),
        ("shift", size,
         lambda r: (shift(mean, fill, h), shift(kept, fill, h)),
         lambda r: (nb["shift"](mean, fill), nb["shift"](kept, fill))),
        ("eval_noise", (h, m, s),
         lambda r: r.standard_normal(dtype=np.float32, out=buf).copy(),
         lambda r: nb["noise_f32"](r, buf).copy()),
        ("eval_routing", (h, m), routed(routing_numpy), routed(nb["routing"])),
    ]  # fmt: skip
    return out


def same(np_fn: Draw, nb_fn: Draw) -> bool:
    """Same arrays from the same seed, and the generator left in the same state."""
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    a, b = np_fn(r1), nb_fn(r2)
    pairs = list(zip(a, b, strict=True)) if isinstance(a, tuple) else [(a, b)]
    arrays = all(np.array_equal(x, y) for x, y in pairs)
    return bool(arrays and r1.integers(1 << 62) == r2.integers(1 << 62))


def pieces(quick: bool, repeats: int, min_loop_s: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for n, h, a in piece_sizes(quick):
        for piece, size, np_fn, nb_fn in cases(n, h, a):
            np_us, nb_us = time_pair(partial(np_fn, rng), partial(nb_fn, rng), repeats,
                                     min_loop_s)  # fmt: skip
            rows.append({"piece": piece, "size": list(size), "numpy_us": round(np_us, 2),
                         "numba_us": round(nb_us, 2), "speedup": round(np_us / nb_us, 3),
                         "identical": same(np_fn, nb_fn)})  # fmt: skip
    return rows


def verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for piece in dict.fromkeys(r["piece"] for r in rows):
        mine = [r for r in rows if r["piece"] == piece]
        speedups = [r["speedup"] for r in mine]
        identical = all(r["identical"] for r in mine)
        gm = _geomean(speedups)
        wins = identical and gm >= WIN_FACTOR and min(speedups) >= 1.0
        out[piece] = {"geomean_speedup": round(gm, 3), "min_speedup": round(min(speedups), 3),
                      "max_speedup": round(max(speedups), 3), "identical": identical,
                      "numba_wins": wins, "product": "numba" if piece in PRODUCT else "numpy",
                      "note": NOTES.get(piece, "")}  # fmt: skip
    return out


def print_pieces(rows: list[dict[str, Any]], verdict: dict[str, Any]) -> None:
    print("\npieces, us per call (speedup = numpy / numba; identical = same bits and stream)")
    print(f"  {'piece':<13} {'size':<16} {'numpy':>10} {'numba':>10} {'speedup':>8} identical")
    for r in rows:
        print(f"  {r['piece']:<13} {'x'.join(map(str, r['size'])):<16} {r['numpy_us']:>10.1f} "
              f"{r['numba_us']:>10.1f} {r['speedup']:>7.2f}x {r['identical']}")  # fmt: skip
    print(f"\nverdicts (numba needs bit-identical, geomean >= {WIN_FACTOR}x, no size < 1.0x):")
    for piece, v in verdict.items():
        flag = f"   ({v['note']})" if v["note"] else ""
        if v["numba_wins"] != (v["product"] == "numba") and not v["note"]:
            flag = "   <-- the product disagrees"
        print(f"  {piece:<13} geomean {v['geomean_speedup']:.2f}x "
              f"[{v['min_speedup']:.2f}-{v['max_speedup']:.2f}] identical {v['identical']}, "
              f"product uses {v['product']}{flag}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats, same code")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    repeats, min_loop_s = (5, 0.01) if args.quick else (9, 0.03)
    print(f"cpus={os.cpu_count()}, numpy {np.__version__}, {'quick' if args.quick else 'full'}")
    rows = pieces(args.quick, repeats, min_loop_s)
    verdict = verdicts(rows)
    print_pieces(rows, verdict)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal {elapsed:.1f} s")
    result = {"benchmark": "planner_pieces", "quick": args.quick, "cpus": os.cpu_count(),
              "win_factor": WIN_FACTOR, "pieces": rows, "verdicts": verdict,
              "total_s": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
