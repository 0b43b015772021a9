"""The planner's CPU-side work per plan (everything outside the ONNX Runtime run), numpy vs numba.

Three parts, all ratios measured in the same run (other processes share the cores):

1. **Plan breakdown.** For realistic configurations (cartpole and half-cheetah, H 15-30, A 1-6,
   N 200-1000, 3-5 iterations, E=5 x 200-unit ensembles, the service's ONNX Runtime options)
   it times whole plans and splits each into the ONNX Runtime run, the evaluator's host side
   (noise and member orders drawn for the graph, feeds, aggregation) and the rest (the
   optimizer's ask and tell, the warm-start shift, the planner). Plans alternate between
   sampling with numpy and with the numba kernels (``controller.planners.kernels``; the same
   bits), whatever the batch size. This is the measure that sets ``kernels.MIN_ELEMENTS``.
2. **Pieces.** Each hot piece at the configurations' sizes, numpy against a numba version, hot
   in a loop: candidate sampling (gaussian for CEM "clip" and MPPI, truncated normal for CEM,
   colored noise for iCEM, uniform for random shooting), the elite refit, the MPPI update, the
   warm-start shift, and the evaluator's draws (float32 noise [H, M, S], per-step member orders
   [H, M]). A piece's numba version wins when it is bit-identical to numpy, its geometric-mean
   speedup is >= WIN_FACTOR and no size is below 1.0x. The product runs the sampling kernels
   for large batches only (part 1); the other numba versions live here, for the reasons in
   NOTES.
3. **Start-up.** ``import controller.planners`` (numba is not imported), compiling the kernels
   from numba's cache and cold, and the cost of a cold compile in the background to a loop of
   half-cheetah-sized draws.

    python benchmarks/planner_cpu.py [--quick]

Times: per call, the minimum over interleaved repeats of a timed loop's mean. The last line
printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script from the repo root without relying on the editable install.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from bench_common import make_model  # noqa: E402
from controller.planners import Planner, PlannerSettings, kernels, noise  # noqa: E402
from controller.planners.base import shift  # noqa: E402
from controller.planners.optimizers.elites import refit  # noqa: E402
from controller.rollout.evaluator import RolloutEvaluator  # noqa: E402
from controller.tasks import get_task  # noqa: E402
from models.registry import ModelDirectory  # noqa: E402
from models.runtime import RuntimeOptions  # noqa: E402

WIN_FACTOR = 1.3
"""numba's geometric-mean speedup over a piece's sizes must reach this to replace numpy."""
PRODUCT = {"gaussian", "truncated", "colored", "uniform"}
"""Pieces whose numba version the product runs for batches of kernels.MIN_ELEMENTS or more."""
NOTES = {
    "refit": "in plans ~0.1 ms per plan; not worth loading numba into small configurations",
    "mppi_update": "numba sums in another order than BLAS: not bit-identical, stays numpy",
    "shift": "a few us per plan; controller/planners/base.py keeps numpy",
    "eval_noise": "controller/rollout/evaluator.py draws it; a candidate for that module",
    "eval_routing": "numba's Generator.shuffle costs an indirect call per swap",
}
"""Why a piece whose numba version wins stays numpy, or why numba loses."""


@dataclass(frozen=True)
class Config:
    name: str
    task: str
    planner: str
    population: int
    horizon: int
    iterations: int
    layers: int
    plans: int
    quick_plans: int


CONFIGS = [
    Config("cartpole-cem", "cartpole-swingup", "cem", 200, 15, 3, 4, 100, 25),
    Config("cartpole-icem", "cartpole-swingup", "icem", 200, 25, 3, 3, 100, 25),
    Config("cartpole-mppi", "cartpole-swingup", "mppi", 500, 25, 3, 3, 40, 10),
    Config("cheetah-mppi", "half-cheetah", "mppi", 200, 25, 3, 3, 40, 10),
    Config("cheetah-cem", "half-cheetah", "cem", 400, 30, 5, 4, 15, 4),
    Config("cheetah-icem", "half-cheetah", "icem", 1000, 30, 5, 3, 15, 4),
]


# ----------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------


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


@contextmanager
def sampling_path(path: str) -> Iterator[None]:
    """Sample every batch with numpy or with the numba kernels, whatever its size (the product
    switches at kernels.MIN_ELEMENTS)."""
    saved = kernels.MIN_ELEMENTS
    kernels.MIN_ELEMENTS = 0 if path == "numba" else 1 << 62
    try:
        yield
    finally:
        kernels.MIN_ELEMENTS = saved


# ----------------------------------------------------------------------------------------------
# numba versions kept here only (see NOTES)
# ----------------------------------------------------------------------------------------------


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


def _mppi_update_numpy(
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


def _routing_numpy(rng: np.random.Generator, gather: np.ndarray, scatter: np.ndarray) -> None:
    # The evaluator's TS1 routing (controller.rollout.particles.routing).
    h, m = gather.shape
    rows = np.broadcast_to(np.arange(m), (h, m))
    gather[:] = rng.permuted(rows, axis=1)
    np.put_along_axis(scatter, gather, rows, axis=1)


_BENCH_ONLY: dict[str, Any] = {}


def bench_only_kernels() -> dict[str, Any]:
    if not _BENCH_ONLY:
        import numba

        jit = numba.njit(cache=True)
        for fn in (_refit, _mppi_update, _shift, _noise_f32, _routing):
            _BENCH_ONLY[fn.__name__.lstrip("_")] = jit(fn)
    return _BENCH_ONLY


# ----------------------------------------------------------------------------------------------
# Part 1: whole plans
# ----------------------------------------------------------------------------------------------


class _TimedSession:
    """An ONNX Runtime session that adds the seconds spent in ``run`` to a shared counter."""

    def __init__(self, session: Any, clock: list[float]) -> None:
        self.session, self.clock = session, clock

    def run(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.clock[0] += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _timed_method(obj: Any, name: str, clock: list[float]) -> None:
    method = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            clock[0] += time.perf_counter() - t0

    setattr(obj, name, timed)


PARTS = ("plan", "cpu", "evaluator_host", "ask", "tell", "planner_rest")
"""Per plan: the whole; all but the ONNX Runtime run; the evaluator's share of that; the
optimizer's ask and tell; the planner's own (warm-start shift, budget, Plan)."""


def plan_breakdown(config: Config, tmp: Path, plans: int) -> dict[str, Any]:
    """Alternating numpy and numba plans of one configuration; per part the median ms."""
    kernels.compile_now()  # else the first "numba" plans would draw with numpy until compiled
    task = get_task(config.task)
    version, _ = ModelDirectory(tmp / config.name).publish(make_model(task, config.layers))
    # RuntimeOptions' defaults are the service's: one session, no spinning.
    evaluator = RolloutEvaluator(version.path, task, options=RuntimeOptions())
    ort, evaluate, ask, tell = [0.0], [0.0], [0.0], [0.0]
    for mode, sessions in evaluator.sessions.items():
        evaluator.sessions[mode] = [_TimedSession(s, ort) for s in sessions]
    _timed_method(evaluator, "evaluate", evaluate)
    settings = PlannerSettings(
        planner=config.planner,
        population=config.population,
        horizon=config.horizon,
        iterations=config.iterations,
    )
    planner = Planner(evaluator, settings)
    optimizer = planner._optimizer
    _timed_method(optimizer, "ask", ask)
    _timed_method(optimizer, "tell", tell)
    obs = np.zeros(task.obs_dim)
    if task.name == "cartpole-swingup":
        obs[1] = math.pi
    parts: dict[str, dict[str, list[float]]] = {
        path: {key: [] for key in PARTS} for path in ("numpy", "numba")
    }
    for path in ("numpy", "numba", "numpy", "numba"):  # warm both paths
        with sampling_path(path):
            planner.plan(obs)
    for i in range(2 * plans):
        path = ("numpy", "numba")[i % 2]
        for clock in (ort, evaluate, ask, tell):
            clock[0] = 0.0
        with sampling_path(path):
            t0 = time.perf_counter()
            planner.plan(obs)
            elapsed = time.perf_counter() - t0
        row = parts[path]
        row["plan"].append(elapsed)
        row["cpu"].append(elapsed - ort[0])
        row["evaluator_host"].append(evaluate[0] - ort[0])
        row["ask"].append(ask[0])
        row["tell"].append(tell[0])
        row["planner_rest"].append(elapsed - evaluate[0] - ask[0] - tell[0])
    elements = config.population * config.horizon * task.act_dim
    product = "numba" if elements >= kernels.MIN_ELEMENTS else "numpy"
    out: dict[str, Any] = {"config": config.name, "planner": config.planner,
                           "n": config.population, "h": config.horizon, "a": task.act_dim,
                           "iterations": config.iterations, "plans": plans,
                           "elements": elements, "product_samples_with": product}  # fmt: skip
    for path, row in parts.items():
        ms = {key: float(np.median(values)) * 1e3 for key, values in row.items()}
        out[path] = {f"{key}_ms": round(value, 3) for key, value in ms.items()}
        out[path]["cpu_share"] = round(ms["cpu"] / ms["plan"], 4)
    out["cpu_speedup"] = round(out["numpy"]["cpu_ms"] / out["numba"]["cpu_ms"], 3)
    out["plan_speedup"] = round(out["numpy"]["plan_ms"] / out["numba"]["plan_ms"], 3)
    out["ask_tell_speedup"] = round(
        (out["numpy"]["ask_ms"] + out["numpy"]["tell_ms"])
        / (out["numba"]["ask_ms"] + out["numba"]["tell_ms"]),
        3,
    )
    return out


# ----------------------------------------------------------------------------------------------
# Part 2: pieces
# ----------------------------------------------------------------------------------------------


def piece_sizes(quick: bool) -> list[tuple[int, int, int]]:
    """(N, H, A) of the configurations, plus the corners of the realistic range."""
    sizes = {(c.population, c.horizon, get_task(c.task).act_dim) for c in CONFIGS}
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
    nb = bench_only_kernels()
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
         lambda r: _mppi_update_numpy(mean, candidates, scores, 1.0),
         lambda r: nb["mppi_update"](mean, candidates, scores, 1.0)),
        ("shift", size,
         lambda r: (shift(mean, fill, h), shift(kept, fill, h)),
         lambda r: (nb["shift"](mean, fill), nb["shift"](kept, fill))),
        ("eval_noise", (h, m, s),
         lambda r: r.standard_normal(dtype=np.float32, out=buf).copy(),
         lambda r: nb["noise_f32"](r, buf).copy()),
        ("eval_routing", (h, m), routed(_routing_numpy), routed(nb["routing"])),
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


# ----------------------------------------------------------------------------------------------
# Part 3: start-up
# ----------------------------------------------------------------------------------------------

_IMPORT = (
    "import sys, time; t = time.perf_counter(); import controller.planners; "
    "print(time.perf_counter() - t, 'numba' in sys.modules)"
)
_COMPILE = (
    "import time; from controller.planners import kernels; t = time.perf_counter(); "
    "kernels.compile_now(); print(time.perf_counter() - t)"
)
_BACKGROUND = """
import time, numpy as np
from controller.planners import kernels, noise
rng = np.random.default_rng(0)
mean, std = np.zeros((30, 6)), np.full((30, 6), 0.5)
low, high = -np.ones(6), np.ones(6)
t0 = time.perf_counter()
during, after = [], []
while True:
    t = time.perf_counter()
    noise.truncated_candidates(rng, mean, std, low, high, 400)
    time.sleep(0.002)  # the rest of a tick, off the GIL like an ONNX Runtime run
    dt = time.perf_counter() - t
    ready = kernels.for_batch(kernels.MIN_ELEMENTS) is not None
    (after if ready else during).append(dt)
    if len(after) >= 200:
        break
print(time.perf_counter() - t0 - sum(after), max(during), float(np.median(during)),
      float(np.median(after)), len(during))
"""


def _python(code: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=_ROOT, env={**os.environ, **(env or {})})  # fmt: skip
    return out.stdout.split()


def _background(env: dict[str, str] | None) -> dict[str, Any]:
    window, worst, during, after, count = _python(_BACKGROUND, env)
    return {
        "window_s": round(float(window), 2),
        "calls_during": int(count),
        "tick_ms_median_during": round(float(during) * 1e3, 3),
        "tick_ms_max_during": round(float(worst) * 1e3, 3),
        "tick_ms_median_after": round(float(after) * 1e3, 3),
    }


def startup(runs: int) -> dict[str, Any]:
    imports = [_python(_IMPORT) for _ in range(runs)]
    cached = [float(_python(_COMPILE)[0]) for _ in range(runs)]
    with tempfile.TemporaryDirectory() as cold_dir:
        cold = float(_python(_COMPILE, {"NUMBA_CACHE_DIR": cold_dir})[0])
        background_cold = _background({"NUMBA_CACHE_DIR": cold_dir + "/again"})
    return {
        "import_planners_s": round(min(float(t) for t, _ in imports), 3),
        "import_loads_numba": any(flag == "True" for _, flag in imports),
        "compile_cached_s": round(min(cached), 3),
        "compile_cold_s": round(cold, 3),
        "background_cached": _background(None),
        "background_cold": background_cold,
    }


# ----------------------------------------------------------------------------------------------


def print_startup(up: dict[str, Any]) -> None:
    print(
        f"\nimport controller.planners {up['import_planners_s']:.3f} s (numba loaded: "
        f"{up['import_loads_numba']}); kernels from numba's cache {up['compile_cached_s']:.3f} s,"
        f" cold {up['compile_cold_s']:.3f} s"
    )
    print("compile in the background, a loop of truncated 400x30x6 draws + 2 ms sleep:")
    for kind in ("cached", "cold"):
        bg = up[f"background_{kind}"]
        print(
            f"  {kind:<6} {bg['window_s']} s on numpy: median {bg['tick_ms_median_during']} ms, "
            f"max {bg['tick_ms_max_during']} ms per pass; {bg['tick_ms_median_after']} ms after"
        )


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
    parser.add_argument("--quick", action="store_true", help="fewer plans and sizes, same code")
    parser.add_argument("--skip-plans", action="store_true", help="leave out whole plans")
    parser.add_argument("--skip-pieces", action="store_true", help="leave out the pieces")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    repeats, min_loop_s = (5, 0.01) if args.quick else (9, 0.03)
    print(f"cpus={os.cpu_count()}, numpy {np.__version__}, {'quick' if args.quick else 'full'}")

    up: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    verdict: dict[str, Any] = {}
    if not args.skip_pieces:
        up = startup(2 if args.quick else 5)
        print_startup(up)
        rows = pieces(args.quick, repeats, min_loop_s)
        verdict = verdicts(rows)
        print_pieces(rows, verdict)

    plans: list[dict[str, Any]] = []
    if not args.skip_plans:
        print("\nwhole plans, medians (cpu = everything but the ONNX Runtime run)")
        with tempfile.TemporaryDirectory() as tmp:
            for config in CONFIGS:
                r = plan_breakdown(config, Path(tmp), config.quick_plans if args.quick
                                   else config.plans)  # fmt: skip
                plans.append(r)
                for path in ("numpy", "numba"):
                    p = r[path]
                    print(f"  {r['config']:<14} {path:<5} plan {p['plan_ms']:>8.2f} ms, cpu "
                          f"{p['cpu_ms']:>7.3f} ms = {p['cpu_share']:>6.1%}: evaluator host "
                          f"{p['evaluator_host_ms']:.3f}, ask {p['ask_ms']:.3f}, tell "
                          f"{p['tell_ms']:.3f}, planner {p['planner_rest_ms']:.3f} ms")  # fmt: skip
                print(f"  {'':<14} numpy/numba: ask+tell {r['ask_tell_speedup']:.2f}x, cpu-side "
                      f"{r['cpu_speedup']:.2f}x, plan {r['plan_speedup']:.3f}x; N x H x A = "
                      f"{r['elements']:,}: the product samples with "
                      f"{r['product_samples_with']}")  # fmt: skip

    elapsed = time.perf_counter() - t_start
    print(f"\ntotal {elapsed:.1f} s")
    result = {"benchmark": "planner_cpu", "quick": args.quick, "cpus": os.cpu_count(),
              "win_factor": WIN_FACTOR, "startup": up, "pieces": rows, "verdicts": verdict,
              "plans": plans, "total_s": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
