"""Where backprop through the model works and where it fails: the norm of d(imagined return) /
d(policy parameters) against the horizon H, through a learned model.

The seeds (section 2.2) predict that the gradient of a long model rollout explodes or vanishes,
since it is a product of H Jacobians of the dynamics. This measures it on a model a run learned
(``tickmpc run``'s ``models/vNNNNNN.pt`` and its store): for H in 1, 2, 5, 10, 20, 50, 100 the
gradient norm of a fresh BPTT actor's mean return from 256 real start states (the task's
reward; the model's done probability as survival weights, so the model should predict the
termination: a hard threshold has no gradient), the median and largest over a few noise
draws, and the share of draws whose norm is not finite. Without a run directory a small model
with a done head is learned from random transitions first (same code path after that).

    python benchmarks/bptt_gradients.py --run runs/<run> [--task inverted-pendulum] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import bench_common  # noqa: F401  (this checkout on sys.path)
from controller.run import RunDir
from controller.tasks import load_task
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.policy.bptt import BPTTConfig, BPTTOptimizer
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.store import TransitionReader
from models.train import TrainConfig, train_ensemble
from sim_bridge.mujoco_bridge import make_env

HORIZONS = (1, 2, 5, 10, 20, 50, 100)


def learned_model(run: RunDir) -> tuple[GaussianEnsemble, np.ndarray, int]:
    """The newest model of a run, its store's observations, and its version."""
    latest = ModelDirectory(run.models).latest()
    if latest is None:
        raise SystemExit(f"{run.root} has no model")
    model = GaussianEnsemble(OnnxEnsemble(latest.path).metadata.config)
    model.load_state_dict(torch.load(latest.path.with_suffix(".pt"), weights_only=True))
    return model, TransitionReader(run.store).read_all().obs, latest.version


def random_model(task_name: str, rows: int) -> tuple[GaussianEnsemble, np.ndarray, int]:
    """A small model trained on ``rows`` random transitions of the task's environment."""
    task = load_task(task_name)
    assert task.env_id is not None
    env = make_env(task.env_id, task.env_kwargs)
    rng = np.random.default_rng(0)
    obs, act, nxt, done = [], [], [], []
    o, _ = env.reset(seed=0)
    for i in range(rows):
        a = rng.uniform(task.action_low, task.action_high).astype(np.float32)
        o2, _, term, trunc, _ = env.step(a)
        obs.append(o)
        act.append(a)
        nxt.append(o2)
        done.append(term)
        o = o2 if not (term or trunc) else env.reset(seed=i)[0]
    config = EnsembleConfig(obs_dim=task.obs_dim, act_dim=task.act_dim, members=3,
                            hidden_units=64, preprocess=dict(task.preprocess),
                            predict_done=True)  # fmt: skip
    x, u, y = (np.asarray(v, np.float32) for v in (obs, act, nxt))
    model, _ = train_ensemble(x, u, y, None, np.asarray(done), model_config=config,
                              config=TrainConfig(max_epochs=30, max_seconds=30.0))  # fmt: skip
    return model, x, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a tickmpc run directory")
    parser.add_argument("--task", default="inverted-pendulum")
    parser.add_argument("--draws", type=int, default=5, help="noise draws per horizon")
    parser.add_argument("--quick", action="store_true", help="3 draws, up to H = 50")
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = load_task(args.task)
    started = time.perf_counter()
    if args.run is not None:
        model, states, version = learned_model(RunDir(args.run))
    else:
        model, states, version = random_model(args.task, 2000 if args.quick else 5000)
    horizons = [h for h in HORIZONS if not args.quick or h <= 50]
    draws = 3 if args.quick else args.draws
    optimizer = BPTTOptimizer(BPTTConfig(), task.obs_dim, task.act_dim,
                              np.asarray(task.action_low), np.asarray(task.action_high),
                              reward_fn=task.reward, preprocess=task.preprocess)  # fmt: skip
    rng = np.random.default_rng(0)
    start = torch.as_tensor(states[rng.integers(len(states), size=256)], dtype=torch.float32)
    optimizer.fit_observations(torch.as_tensor(states, dtype=torch.float32))
    figures: dict[str, dict[str, float | None]] = {}
    for h in horizons:
        norms = [optimizer.gradient_norms(model, start, [h], seed=d)[h] for d in range(draws)]
        finite = [n for n in norms if math.isfinite(n)]
        figures[str(h)] = {
            "grad_norm_median": float(np.median(finite)) if finite else None,
            "grad_norm_max": max(finite) if finite else None,
            "nonfinite_share": 1.0 - len(finite) / len(norms),
        }
        print(f"H={h:4d}  " + "  ".join(f"{k} {v}" for k, v in figures[str(h)].items()),
              flush=True)  # fmt: skip
    print(json.dumps({"benchmark": "bptt_gradients", "quick": args.quick, "task": args.task,
                      "run": str(args.run) if args.run else None, "model_version": version,
                      "seconds": round(time.perf_counter() - started, 1),
                      "horizons": figures}))  # fmt: skip


if __name__ == "__main__":
    main()
