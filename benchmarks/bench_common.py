"""Timing helpers and the planner benchmarks' model, shared by the benchmark scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import zmq

from controller.tasks.base import Task
from models.ensemble import EnsembleConfig, GaussianEnsemble
from sim_bridge import protocol as p


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
