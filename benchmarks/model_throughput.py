"""Throughput of the exported ensemble: ONNX Runtime vs torch eager vs the machine's GEMM rate.

A "row" is one (observation, action) pair through one ensemble member, the unit a planner
consumes (N candidates x H steps x P particles, each particle on one member). The shared-input
graph evaluates every member on the batch, so rows per call = E x B. FLOPs per row count the
multiply-adds of all layers (2 x in x out each); activations are not counted. The float32 GEMM
rate (1024^3, numpy BLAS and torch) is measured in the same run, and ``gemm_fraction`` is
ONNX Runtime's FLOP rate over the better of the two.

Model: the cartpole swing-up shapes (obs 4 with the angle as sin/cos, action 1), E=5, SiLU MLPs
of 4x200 and 3x200.

    python benchmarks/model_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench_common import gemm_gflops, time_call
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.export import export_ensemble
from models.runtime import OnnxEnsemble, RuntimeConfig


def flops_per_row(model: GaussianEnsemble) -> int:
    layers = [*model.hidden, model.head]
    return sum(2 * int(layer.weight.shape[1]) * int(layer.weight.shape[2]) for layer in layers)


def measure(
    runtime: OnnxEnsemble, model: GaussianEnsemble, batch: int, min_s: float
) -> tuple[float, float]:
    """Member-rows per second of one batch through ONNX Runtime and through torch eager."""
    rng = np.random.default_rng(batch)
    obs = rng.standard_normal((batch, 4), dtype=np.float32)
    act = rng.uniform(-1, 1, (batch, 1)).astype(np.float32)
    t_obs, t_act = torch.from_numpy(obs), torch.from_numpy(act)

    def eager() -> None:
        with torch.inference_mode():
            model(t_obs, t_act)

    ort_t = float(np.median(time_call(lambda: runtime.predict(obs, act), min_seconds=min_s)))
    torch_t = float(np.median(time_call(eager, min_seconds=min_s)))
    rows = batch * model.config.members
    return rows / ort_t, rows / torch_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timing")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    batches = [1, 100, 10_000] if args.quick else [1, 10, 100, 1000, 10_000]
    min_s = 0.15 if args.quick else 1.0
    torch.set_num_threads(args.threads)
    gemm = gemm_gflops(min_seconds=min_s)
    gemm_best = max(gemm.values())
    print(f"float32 GEMM 1024^3: numpy {gemm['numpy']:.1f} GFLOP/s, torch {gemm['torch']:.1f}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (4, 3):
            cfg = EnsembleConfig(
                obs_dim=4,
                act_dim=1,
                members=5,
                hidden_layers=layers,
                hidden_units=200,
                preprocess={"kind": "sincos", "angle_indices": [1]},
            )
            torch.manual_seed(0)
            model = GaussianEnsemble(cfg).eval()
            path = Path(tmp) / f"e5_{layers}x200.onnx"
            export_ensemble(model, path)
            runtime = OnnxEnsemble(
                path, options=RuntimeConfig(intra_op_threads=args.threads, spin=True)
            )
            fpr = flops_per_row(model)
            print(f"\nE=5 {layers}x200: {fpr / 1e3:.1f} kFLOP per member-row")
            print(f"{'batch':>7} {'ort rows/s':>12} {'torch rows/s':>13} {'ort/torch':>9} "
                  f"{'ort GFLOP/s':>11} {'of GEMM':>8}")  # fmt: skip
            for batch in batches:
                ort_rps, torch_rps = measure(runtime, model, batch, min_s)
                ort_gflops = ort_rps * fpr / 1e9
                results.append({
                    "model": f"E5_{layers}x200",
                    "batch": batch,
                    "ort_rows_per_s": round(ort_rps),
                    "torch_rows_per_s": round(torch_rps),
                    "ort_gflops": round(ort_gflops, 2),
                    "gemm_fraction": round(ort_gflops / gemm_best, 3),
                })  # fmt: skip
                fraction = ort_gflops / gemm_best
                print(
                    f"{batch:>7} {ort_rps:>12,.0f} {torch_rps:>13,.0f} "
                    f"{ort_rps / torch_rps:>9.2f} {ort_gflops:>11.1f} {fraction:>8.1%}"
                )
    summary = {
        "benchmark": "model_throughput",
        "quick": args.quick,
        "threads": args.threads,
        "gemm_gflops": round(gemm_best, 1),
        "gemm_gflops_numpy": round(gemm["numpy"], 1),
        "gemm_gflops_torch": round(gemm["torch"], 1),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
