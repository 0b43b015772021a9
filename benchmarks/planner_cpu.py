"""The planner's CPU-side work per plan (everything outside the ONNX Runtime run), numpy against
numba sampling.

For realistic configurations (``bench_common.PLAN_CONFIGS``: cartpole and half-cheetah, H
15-30, A 1-6, N 200-1000, 3-5 iterations, E=5 x 200-unit ensembles, the service's ONNX Runtime
options) it times whole plans and splits each into the ONNX Runtime run, the evaluator's host
side (noise and member orders drawn for the graph, feeds, aggregation) and the rest (the
optimizer's ask and tell, the warm-start shift, the planner). Plans alternate between sampling
with numpy and with the numba kernels (``controller.planners.kernels``; the same bits),
whatever the batch size, the ratios measured in the same run (other processes share the
cores). This is the measure that sets ``kernels.MIN_ELEMENTS``. Each piece alone, numpy
against numba: ``planner_pieces.py``; the kernels' start-up: ``planner_startup.py``.

    python benchmarks/planner_cpu.py [--quick]

Times: medians over the plans. The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_common import PLAN_CONFIGS, PlanConfig, make_model, sampling_path
from controller.planners import Planner, PlannerSettings, kernels
from controller.rollout.evaluator import RolloutEvaluator
from controller.tasks import get_task
from models.registry import ModelDirectory
from models.runtime import RuntimeConfig


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


def plan_breakdown(config: PlanConfig, tmp: Path, plans: int) -> dict[str, Any]:
    """Alternating numpy and numba plans of one configuration; per part the median ms."""
    kernels.compile_now()  # else the first "numba" plans would draw with numpy until compiled
    task = get_task(config.task)
    version, _ = ModelDirectory(tmp / config.name).publish(make_model(task, config.layers))
    # RuntimeConfig's defaults are the service's: one session, no spinning.
    evaluator = RolloutEvaluator(version.path, task, options=RuntimeConfig())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer plans, same code")
    for gone in ("--skip-plans", "--skip-pieces"):  # when the pieces and start-up were here
        parser.add_argument(gone, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.skip_plans or args.skip_pieces:
        parser.error("--skip-plans and --skip-pieces are gone: this script times whole plans "
                     "only; the pieces are benchmarks/planner_pieces.py, the start-up "
                     "benchmarks/planner_startup.py")  # fmt: skip
    t_start = time.perf_counter()
    print(f"cpus={os.cpu_count()}, numpy {np.__version__}, {'quick' if args.quick else 'full'}")
    plans: list[dict[str, Any]] = []
    print("\nwhole plans, medians (cpu = everything but the ONNX Runtime run)")
    with tempfile.TemporaryDirectory() as tmp:
        for config in PLAN_CONFIGS:
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
              "plans": plans, "total_s": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
