"""Plan latency of the planners over the rollout graph, against the same rows in torch eager.

For each configuration in ``CONFIGS`` (each with the target it is measured against) it builds
an ensemble of the stated shape, publishes it the way the learner does, and times
``Planner.plan`` with no budget (all iterations) from a fixed state. It reports plan time
p50/p99, member-rows per second, the FLOP rate of those rows as a fraction of this machine's
float32 GEMM rate (measured in the same run), and ``eager_ratio``: the time of the same
rollouts done as a torch eager host loop (one model call per step, as
mbrl-lib does) divided by the plan time (> 1: the rollout graph is faster).

Also measured, because the design depends on them:
- the horizon design: the Loop graph against the same step unrolled for a fixed horizon, and
  what building and loading an unrolled graph for a new horizon would stall;
- how the batch is cut: one iteration of the reduced and the PETS configuration evaluated in
  one session using every core, and cut into 2 and 4 slices run at once on single-threaded
  sessions (``RuntimeConfig.rollout_slices``);
- the anytime margin: plans given half their usual time, and how far past the budget they end.

    python benchmarks/plan_latency.py [--quick] [--device cuda]

``--device cuda`` runs the configurations on ONNX Runtime's CUDA execution provider (the
device-random graph through IOBinding; needs onnxruntime-gpu, the ``gpu`` extra); the
reported ``device`` says where they actually ran.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from bench_common import gemm_gflops, make_model, time_call
from controller.planners import Planner, PlannerSettings
from controller.planners.base import Plan
from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.graph import ModelGraph, build_rollout_graph
from controller.rollout.settings import RolloutSettings
from controller.tasks import get_task
from controller.tasks.base import Task
from controller.tasks.export import reward_graph
from models.ensemble import GaussianEnsemble
from models.policy.export import PolicyDirectory
from models.policy.sac import SAC, SACConfig
from models.registry import ModelDirectory
from models.runtime import RuntimeConfig, create_session, read_model


@dataclass(frozen=True)
class Config:
    name: str
    task: str
    layers: int
    settings: PlannerSettings
    reps: int
    quick_reps: int
    target: str
    policy: bool = False
    """Plan with a SAC policy (2 x 256, untrained: the cost does not depend on the weights)
    composed into the rollout graph, as ``settings`` asks (proposals, terminal value)."""


WITH_POLICY: dict[str, Any] = dict(policy_share=0.25, policy_noise=0.1, value_weight=1.0)
CONFIGS = [
    Config(
        "default-cartpole-cem",
        "cartpole-swingup",
        4,
        PlannerSettings(planner="cem", population=200, horizon=25, iterations=3),
        100,
        10,
        "today's default: the reference of the policy configurations",
    ),
    *(
        Config(
            f"policy-cartpole-cem{suffix}",
            "cartpole-swingup",
            4,
            PlannerSettings().changed(
                planner="cem", population=population, horizon=25, iterations=3, **WITH_POLICY
            ),
            reps,
            reps // 10,
            target,
            policy=True,
        )
        for suffix, population, reps, target in (
            ("", 200, 100, "the default with proposals and value: its cost over the default's"),
            ("-1/4", 50, 200, "1/4 of the default's rows: time against the default's"),
            ("-1/16", 12, 200, "1/16 of the default's rows: time against the default's"),
        )
    ),
    Config(
        "reduced-cartpole-cem",
        "cartpole-swingup",
        4,
        PlannerSettings(planner="cem", population=200, horizon=15, iterations=3),
        200,
        20,
        "p99 <= 17 ms",
    ),
    Config(
        "pets-cartpole-cem",
        "cartpole-swingup",
        4,
        PlannerSettings().changed(
            planner="cem",
            population=350,
            horizon=15,
            iterations=5,
            particles=20,
            propagation="tsinf",
        ),
        10,
        2,
        "within 15% of the GEMM limit for the rows",
    ),
    Config(
        "realtime-cartpole-icem",
        "cartpole-swingup",
        3,
        PlannerSettings(planner="icem", population=200, horizon=25, iterations=3),
        200,
        20,
        "p99 < 20 ms",
    ),
    Config(
        "pets-halfcheetah-cem",
        "half-cheetah",
        4,
        PlannerSettings().changed(
            planner="cem",
            population=400,
            horizon=30,
            iterations=5,
            particles=20,
            propagation="tsinf",
        ),
        3,
        1,
        "GPU figure of merit: p99 <= 10 ms on a GPU",
    ),
    Config(
        "policy-halfcheetah-cem",
        "half-cheetah",
        4,
        PlannerSettings().changed(
            planner="cem", population=100, horizon=10, iterations=3, **WITH_POLICY
        ),
        50,
        5,
        "HalfCheetah at 20 Hz with the policy: p99 well inside the 50 ms period on 2 cores",
        policy=True,
    ),
]


def flops_per_row(model: GaussianEnsemble) -> int:
    layers = [*model.hidden, model.head]
    return sum(2 * int(layer.weight.shape[1]) * int(layer.weight.shape[2]) for layer in layers)


def linear_flops(module: torch.nn.Module) -> int:
    linear = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return sum(2 * m.in_features * m.out_features for m in linear)


def policy_work(
    plans: list[Plan], evaluator: RolloutEvaluator, settings: PlannerSettings, agent: SAC
) -> tuple[int, int]:
    """(policy-network rows, their FLOPs) of one plan: the actor for each proposal particle
    at each step, actor and twin critics at every particle's last state (terminal value)."""
    p, h = settings.rollout.particles, settings.horizon
    proposals = evaluator.proposals(settings.population, settings.rollout) * settings.iterations
    steps, finals = proposals * h * p, plans[0].candidates * p
    actor, critic = linear_flops(agent.actor), linear_flops(agent.critic)
    return steps + finals, steps * actor + finals * (actor + critic)


def start_state(task: Task) -> np.ndarray:
    obs = np.zeros(task.obs_dim)
    if task.name == "cartpole-swingup":
        obs[1] = math.pi  # hanging down
    return obs


def eager_plan_seconds(
    model: GaussianEnsemble, task: Task, settings: PlannerSettings, obs: np.ndarray, reps: int
) -> float:
    """Median seconds of the plan's rollouts as a torch host loop, one model call per step.

    Same rows as the rollout graph: iterations x H steps of M particle rows routed to their
    members ([E, M / E, ...] per call), Gaussian sampling, the task reward; the optimizer's
    own numpy work is left out (it is the same for both).
    """
    e, h, p = model.config.members, settings.horizon, settings.rollout.particles
    generator = torch.Generator().manual_seed(0)
    populations = [settings.population] * settings.iterations
    if settings.planner == "icem":
        populations = [
            math.ceil(settings.population * settings.options.population_decay**-i)
            for i in range(settings.iterations)
        ]
    weights = dict(task.weights)

    def one_plan() -> None:
        with torch.inference_mode():
            for n in populations:
                m = -(-n * p // e) * e
                actions = torch.rand(m, h, task.act_dim, generator=generator) * 2 - 1
                x = torch.from_numpy(obs).float().expand(m, -1).contiguous()
                ret = torch.zeros(m)
                perm = torch.randperm(m, generator=generator)
                back = torch.argsort(perm)
                for t in range(h):
                    if settings.rollout.propagation == "ts1":
                        perm = torch.randperm(m, generator=generator)
                        back = torch.argsort(perm)
                    a = actions[:, t]
                    mean, logvar = model(
                        x[perm].view(e, -1, task.obs_dim), a[perm].view(e, -1, task.act_dim)
                    )
                    mean = mean.reshape(m, -1)[back]
                    std = logvar.reshape(m, -1)[back].mul(0.5).exp()
                    nxt = mean + std * torch.randn(m, task.obs_dim, generator=generator)
                    ret += task.reward(x, a, nxt, weights)
                    x = nxt

    return float(np.median(time_call(one_plan, min_seconds=0.0, min_calls=reps)))


def measure_config(
    config: Config, tmp: Path, quick: bool, gemm: float, options: RuntimeConfig
) -> dict[str, object]:
    task = get_task(config.task)
    model = make_model(task, config.layers)
    directory = tmp / config.name.replace("/", "_")
    version, _ = ModelDirectory(directory).publish(model)
    policy = policy_path = None
    if config.policy:
        low, high = np.asarray(task.action_low), np.asarray(task.action_high)
        policy = SAC(task.obs_dim, task.act_dim, low, high, SACConfig(seed=0))
        published, _ = PolicyDirectory(directory).publish(
            policy, model_version=version.version, updates=0, real_rows=0, rollout_length=1
        )
        policy_path = published.path
    evaluator = RolloutEvaluator(version.path, task, options=options, policy_path=policy_path)
    planner = Planner(evaluator, config.settings)
    obs = start_state(task)
    planner.warmup(obs)
    reps = config.quick_reps if quick else config.reps
    plans = [planner.plan(obs) for _ in range(reps)]
    times = np.array([p.elapsed_s for p in plans])
    rows = plans[0].rows
    p50 = float(np.median(times))
    rows_per_s = rows / p50
    flops = rows * flops_per_row(model)
    extra = 0
    if policy is not None:
        extra, policy_flops = policy_work(plans, evaluator, config.settings, policy)
        flops += policy_flops
    eager = None  # the eager loop has no policy to compare with
    if policy is None:
        eager_reps = max(1, min(reps, 3 if rows > 100_000 else 20))
        eager = eager_plan_seconds(model, task, config.settings, obs, eager_reps)
    return {
        "config": config.name,
        "planner": config.settings.planner,
        "population": config.settings.population,
        "horizon": config.settings.horizon,
        "iterations": config.settings.iterations,
        "particles": config.settings.rollout.particles,
        "propagation": config.settings.rollout.propagation,
        "model": f"E5_{config.layers}x200",
        "device": evaluator.device,
        "sessions": len(evaluator.sessions["routed", False]),
        "rows_per_plan": rows,
        "plans": reps,
        "p50_ms": round(p50 * 1e3, 2),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        "policy_rows_per_plan": extra,
        "rows_per_s": round(rows_per_s),
        "gemm_fraction": round(flops / p50 / 1e9 / gemm, 3),
        "gemm_limit_ms": round(flops / (gemm * 1e9) * 1e3, 1),
        "eager_ms": round(eager * 1e3, 2) if eager is not None else None,
        "eager_ratio": round(eager / p50, 2) if eager is not None else None,
        "target": config.target,
    }


def horizon_design(tmp: Path, threads: int, reps: int) -> dict[str, float]:
    """Loop graph vs an unrolled graph for one horizon (cartpole, N=200, H=15, TS1)."""
    task = get_task("cartpole-swingup")
    version, _ = ModelDirectory(tmp / "horizon").publish(make_model(task, 4))
    data, _ = read_model(version.path)
    model = ModelGraph(onnx.load_from_string(data), 5, task.obs_dim, task.act_dim, True)
    options = RuntimeConfig(intra_op_threads=threads, spin=True, rollout_slices=0)
    n, h = 200, 15
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(n) for _ in range(h)])
    feeds = {
        "obs": np.tile(start_state(task).astype(np.float32), (n, 1)),
        "actions": rng.uniform(-1, 1, (n, h, 1)).astype(np.float32),
        "particle_candidate": np.arange(n, dtype=np.int64),
        "noise": rng.standard_normal((h, n, task.obs_dim)).astype(np.float32),
        "weights": np.asarray(list(task.weights.values()), np.float32),
        "discount": np.array(1.0, np.float32),
        "gather_idx": perms,
        "scatter_idx": np.argsort(perms, axis=1),
    }
    result: dict[str, float] = {}
    for label, unroll in (("loop", None), ("unrolled", h)):
        t0 = time.perf_counter()
        graph = build_rollout_graph(model, reward_graph(task.name), "routed", unroll=unroll)
        session = create_session(graph.SerializeToString(), options, label)
        result[f"{label}_build_load_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        run = functools.partial(session.run, ["returns"], feeds)
        seconds = time_call(run, min_seconds=0.0, min_calls=reps)
        result[f"{label}_run_ms"] = round(float(np.median(seconds)) * 1e3, 2)
    return result


def slicing(tmp: Path, threads: int, reps: int) -> list[dict[str, object]]:
    """One iteration's evaluation in one session using ``threads`` cores, and cut into 2 and
    4 slices run at once on single-threaded sessions."""
    task = get_task("cartpole-swingup")
    version, _ = ModelDirectory(tmp / "slices").publish(make_model(task, 4))
    obs = start_state(task)
    rng = np.random.default_rng(0)
    cases = [
        ("reduced N=200 H=15 TS1", 200, RolloutSettings()),
        ("PETS N=350 P=20 H=15 TS-inf", 350, RolloutSettings(particles=20, propagation="tsinf")),
    ]
    out: list[dict[str, object]] = []
    for label, n, settings in cases:
        actions = rng.uniform(-1, 1, (n, 15, 1)).astype(np.float32)
        ms: dict[int, float] = {}
        for slices in (1, 2, 4):
            options = RuntimeConfig(intra_op_threads=threads, spin=True, rollout_slices=slices)
            evaluator = RolloutEvaluator(version.path, task, options=options)
            run = functools.partial(evaluator.evaluate, obs, actions, settings, rng)
            calls = reps if n * settings.particles < 1000 else max(1, reps // 20)
            seconds = float(np.median(time_call(run, min_seconds=0.0, min_calls=calls)))
            ms[slices] = round(seconds * 1e3, 2)
        row: dict[str, object] = {"case": label, **{f"ms_{k}": v for k, v in ms.items()}}
        out.append(row | {"speedup_2": round(ms[1] / ms[2], 2)})
    return out


def anytime_margin(tmp: Path, threads: int, plans: int) -> dict[str, float]:
    """Reduced cartpole CEM given half its usual plan time: iterations done and overrun."""
    task = get_task("cartpole-swingup")
    version, _ = ModelDirectory(tmp / "anytime").publish(make_model(task, 4))
    evaluator = RolloutEvaluator(
        version.path,
        task,
        options=RuntimeConfig(intra_op_threads=threads, spin=True, rollout_slices=0),
    )
    planner = Planner(evaluator, PlannerSettings(population=200, horizon=15, iterations=3))
    obs = start_state(task)
    planner.warmup(obs)
    full = float(np.median([planner.plan(obs).elapsed_s for _ in range(10)]))
    budget = full / 2
    results = [planner.plan(obs, budget_s=budget) for _ in range(plans)]
    overrun = np.array([r.elapsed_s - budget for r in results])
    return {
        "budget_ms": round(budget * 1e3, 2),
        "mean_iterations": round(float(np.mean([r.iterations for r in results])), 2),
        "overrun_p50_ms": round(float(np.median(overrun)) * 1e3, 3),
        "overrun_p99_ms": round(float(np.percentile(overrun, 99)) * 1e3, 3),
        "misses": int(sum(r.deadline_miss for r in results)),
        "plans": plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, same configs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--configs", default="",
                        help="comma-separated configuration names (default: all)")  # fmt: skip
    parser.add_argument("--no-design", action="store_true",
                        help="only the configurations: skip the horizon, slicing and anytime "
                        "measurements")  # fmt: skip
    args = parser.parse_args()
    chosen = [c for c in CONFIGS if not args.configs or c.name in args.configs.split(",")]
    if not chosen:
        parser.error(f"no configuration among {[c.name for c in CONFIGS]} in {args.configs!r}")
    # An idle benchmark process: spinning workers and one slice per core (the service runs
    # neither; see RuntimeConfig), as the figures in docs/planning.md were measured.
    options = RuntimeConfig(
        device=args.device, intra_op_threads=args.threads, spin=True, rollout_slices=0
    )
    torch.set_num_threads(args.threads)
    gemm_rates = gemm_gflops(min_seconds=0.2 if args.quick else 1.0)
    gemm = max(gemm_rates.values())
    print(f"float32 GEMM 1024^3: {gemm:.1f} GFLOP/s ({args.threads} threads)")
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for config in chosen:
            r = measure_config(config, tmp, args.quick, gemm, options)
            results.append(r)
            eager = "" if r["eager_ms"] is None else (
                f"  eager {r['eager_ms']:.1f} ms = {r['eager_ratio']}x"
            )  # fmt: skip
            print(
                f"{r['config']:<24} rows/plan {r['rows_per_plan']:>9,}  p50 {r['p50_ms']:>8.2f} ms"
                f"  p99 {r['p99_ms']:>8.2f} ms  {r['rows_per_s']:>9,} rows/s"
                f"  {r['gemm_fraction']:.0%} of GEMM (limit {r['gemm_limit_ms']} ms)"
                f"{eager}  [{r['target']}]"
            )
        design = cuts = margin = None
        if not args.no_design:
            design = horizon_design(tmp, args.threads, 10 if args.quick else 100)
            print("horizon design (N=200, H=15):", design)
            cuts = slicing(tmp, args.threads, 20 if args.quick else 100)
            print("one iteration, whole or in slices:", cuts)
            margin = anytime_margin(tmp, args.threads, 20 if args.quick else 200)
            print("anytime at half budget:", margin)
    print(json.dumps({
        "benchmark": "plan_latency",
        "quick": args.quick,
        "threads": args.threads,
        "device": args.device,
        "gemm_gflops": round(gemm, 1),
        "results": results,
        "horizon_design": design,
        "slicing": cuts,
        "anytime": margin,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
