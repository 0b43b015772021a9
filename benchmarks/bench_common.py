"""What the benchmark scripts share: the repository on ``sys.path``, timing helpers, the planner
benchmarks' configurations and model, and a telemetry reader.

Every script imports this module before any package of the product: run as a script
(``python benchmarks/NAME.py``), it then imports this checkout's ``controller``, ``models`` and
``sim_bridge``, not an installed copy's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (a benchmark's subprocesses run there)."""
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zmq  # noqa: E402

from controller.tasks.base import Task  # noqa: E402
from models.ensemble import EnsembleConfig, GaussianEnsemble  # noqa: E402
from sim_bridge import protocol as p  # noqa: E402


@dataclass(frozen=True)
class PlanConfig:
    """One planner configuration of the CPU-side benchmarks (planner_cpu, planner_pieces)."""

    name: str
    task: str
    planner: str
    population: int
    horizon: int
    iterations: int
    layers: int
    """Hidden layers of the E=5 x 200-unit ensemble (make_model)."""
    plans: int
    """Plans timed per sampling path."""
    quick_plans: int
    """The same with --quick."""


PLAN_CONFIGS = [
    PlanConfig("cartpole-cem", "cartpole-swingup", "cem", 200, 15, 3, 4, 100, 25),
    PlanConfig("cartpole-icem", "cartpole-swingup", "icem", 200, 25, 3, 3, 100, 25),
    PlanConfig("cartpole-mppi", "cartpole-swingup", "mppi", 500, 25, 3, 3, 40, 10),
    PlanConfig("cheetah-mppi", "half-cheetah", "mppi", 200, 25, 3, 3, 40, 10),
    PlanConfig("cheetah-cem", "half-cheetah", "cem", 400, 30, 5, 4, 15, 4),
    PlanConfig("cheetah-icem", "half-cheetah", "icem", 1000, 30, 5, 3, 15, 4),
]
"""Realistic configurations: cartpole and half-cheetah, H 15-30, A 1-6, N 200-1000, 3-5
iterations."""


@contextmanager
def sampling_path(path: str) -> Iterator[None]:
    """Sample every batch with numpy or with the numba kernels (``controller.planners.kernels``),
    whatever its size (the product switches at ``kernels.MIN_ELEMENTS``)."""
    from controller.planners import kernels

    saved = kernels.MIN_ELEMENTS
    kernels.MIN_ELEMENTS = 0 if path == "numba" else 1 << 62
    try:
        yield
    finally:
        kernels.MIN_ELEMENTS = saved


def time_call(fn: Callable[[], object], *, min_seconds: float, min_calls: int = 3) -> np.ndarray:
    """Call ``fn`` repeatedly (after one warm-up) until both minimums are met; seconds per call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def gemm_gflops(size: int = 1024, min_seconds: float = 0.5) -> dict[str, float]:
    """Float32 matrix-multiply rate of this machine, through numpy's BLAS and through torch."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    np_t = float(np.median(time_call(lambda: a @ b, min_seconds=min_seconds)))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_t = float(np.median(time_call(lambda: torch.mm(ta, tb), min_seconds=min_seconds)))
    return {"numpy": flops / np_t / 1e9, "torch": flops / torch_t / 1e9}


def make_model(task: Task, layers: int) -> GaussianEnsemble:
    """A fresh E=5 ensemble of ``layers`` x 200 for ``task``, seeded, predicting small steps."""
    torch.manual_seed(0)
    cfg = EnsembleConfig(
        obs_dim=task.obs_dim,
        act_dim=task.act_dim,
        members=5,
        hidden_layers=layers,
        hidden_units=200,
        preprocess=task.preprocess,
    )
    model = GaussianEnsemble(cfg).eval()
    with torch.no_grad():  # small predicted steps keep rollouts in a realistic range
        model.out_std.mul_(0.05)
    return model


def read_telemetry(
    telemetry: str, stop: threading.Event, on_record: Callable[[dict[str, Any]], None]
) -> threading.Thread:
    """A started thread that parses every telemetry record of the service at ``telemetry``
    and hands it to ``on_record``, until ``stop``."""

    def run() -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        with context.socket(zmq.SUB) as sub:
            sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
            sub.connect(telemetry)
            while not stop.is_set():
                if sub.poll(100):
                    on_record(p.parse_telemetry(sub.recv_multipart()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
