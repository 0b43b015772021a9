"""Start-up cost of the planner's numba kernels: ``import controller.planners`` (which must not
import numba), compiling the kernels (``controller.planners.kernels``) from numba's cache and
cold, and what a cold compile in the background costs a loop of half-cheetah-sized draws.

Each figure is measured in a fresh interpreter (the minimum over runs where there are several).

    python benchmarks/planner_startup.py [--quick]

The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_common import ROOT

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
                         check=True, cwd=ROOT, env={**os.environ, **(env or {})})  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, same code")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    print(f"cpus={os.cpu_count()}, {'quick' if args.quick else 'full'}")
    up = startup(2 if args.quick else 5)
    print_startup(up)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal {elapsed:.1f} s")
    result = {"benchmark": "planner_startup", "quick": args.quick, "cpus": os.cpu_count(),
              "startup": up, "total_s": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
