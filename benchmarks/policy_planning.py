"""Fewer rows for the same return: the plain planner against the planner with policy proposals
and a terminal value, at rows per plan from the default down to 1/16 of it.

Every row of the table uses one run's store, newest model and newest policy (``tickmpc run
--policy sac`` or ``benchmarks/learning_curve.py --variants ip-policy`` leave them in the run
directory), so only the planner differs. Each configuration plans, in lockstep and in this
process, for episodes of the task's real simulation from the same initial states (seeds
1000, 1001, ...), and the table reports the mean real return over those episodes.

Rows per plan are candidates x horizon x iterations (one particle): the default is CEM's
200 x 25 x 3 = 15,000 member-rows, and each level below it halves the population (100, 50,
25, 12). The planner with the policy gives ``--share`` of the candidates to policy proposals
(noise ``--noise``) and weighs the terminal value by ``--value-weight``; its proposals are
counted in its rows like any other candidate.

    python benchmarks/policy_planning.py --run RUN [--run RUN2 ...] [--episodes 20] [--quick]

Prints one line per configuration and run, a summary per task (the smallest rows per plan at
which each planner's return, averaged over the runs, stays within ``--tolerance`` of the
plain planner's at the default), and a JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench_common  # noqa: F401  (this checkout on sys.path)
from controller.planners import Planner, PlannerSettings
from controller.rollout.evaluator import RolloutEvaluator
from controller.run import RunDir
from controller.tasks import load_task
from controller.tasks.base import Task
from models.policy.export import PolicyDirectory
from models.registry import ModelDirectory
from sim_bridge.mujoco_bridge import make_env

DEFAULT = dict(planner="cem", population=200, horizon=25, iterations=3)
POPULATIONS = (200, 100, 50, 25, 12)


@dataclass(frozen=True)
class Level:
    kind: str
    """"plain", "policy" (proposals and terminal value) or "value" (the terminal value
    alone)."""
    population: int

    def settings(self, args: argparse.Namespace, seed: int) -> PlannerSettings:
        changes: dict[str, Any] = dict(DEFAULT, population=self.population, seed=seed)
        changes.update(horizon=args.horizon)
        if self.kind == "policy":
            changes.update(policy_share=args.share, policy_noise=args.noise)
        if self.kind in ("policy", "value"):
            changes.update(value_weight=args.value_weight)
        return PlannerSettings().changed(changes)


def load_run(run: RunDir) -> tuple[Task, Path, Path]:
    """A run's task, newest model file and newest policy file."""
    config = tomllib.loads(run.config.read_text())
    task = load_task(config["task"])
    model = ModelDirectory(run.models).latest()
    policy = PolicyDirectory(run.models).latest()
    if model is None or policy is None:
        raise SystemExit(f"{run.root}: needs a model and a policy (run it with --policy sac)")
    return task, model.path, policy.path


def episode(
    env: Any, planner: Planner, task: Task, seed: int, max_steps: int
) -> tuple[float, int, list[float]]:
    """One real episode planned from scratch: (return, steps, plan times in ms)."""
    obs, _ = env.reset(seed=seed)
    planner.reset()
    total, times = 0.0, list[float]()
    while len(times) < max_steps:
        plan = planner.plan(np.asarray(obs, np.float64))
        times.append(plan.elapsed_s * 1000.0)
        obs, reward, terminated, truncated, _ = env.step(plan.action.astype(np.float32))
        total += float(reward)
        if terminated or truncated:
            break
    return total, len(times), times


def measure(
    run: Path, levels: list[Level], args: argparse.Namespace
) -> tuple[str, list[dict[str, Any]]]:
    task, model_path, policy_path = load_run(RunDir(run))
    evaluator = RolloutEvaluator(model_path, task, policy_path=policy_path)
    env = make_env(task.env_id or task.name, task.env_kwargs)
    max_steps = args.max_steps or task.episode_steps
    rows = []
    for level in levels:
        planner = Planner(evaluator, level.settings(args, seed=0))
        planner.warmup()
        returns, times, steps = [], [], 0
        start = time.perf_counter()
        for i in range(args.episodes):
            ret, n, ms = episode(env, planner, task, 1000 + i, max_steps)
            returns.append(ret)
            times += ms
            steps += n
        s = planner.settings
        row = {
            "task": task.name,
            "run": run.name,
            "model": model_path.name,
            "policy": policy_path.name,
            "planner": level.kind,
            "population": level.population,
            "rows_per_plan": s.population * s.horizon * s.iterations,
            "proposals": evaluator.proposals(s.population, s.rollout),
            "mean_return": round(float(np.mean(returns)), 1),
            "std_return": round(float(np.std(returns)), 1),
            "returns": [round(r, 1) for r in returns],
            "plan_ms_p50": round(float(np.percentile(times, 50)), 2),
            "plan_ms_p99": round(float(np.percentile(times, 99)), 2),
            "steps": steps,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{task.name:18s} {run.name:24s} {level.kind:6s} rows {row['rows_per_plan']:6d}  "
            f"return {row['mean_return']:8.1f} +- {row['std_return']:6.1f}  "
            f"plan p50 {row['plan_ms_p50']:6.2f} ms  ({row['seconds']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    env.close()
    return task.name, rows


def summary(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per task: each planner's return averaged over the runs at each rows level, and the
    fewest rows at which it stays within ``tolerance`` (a fraction) of the plain planner's
    return at the default."""
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        table: dict[str, dict[int, float]] = {}
        for kind in sorted({r["planner"] for r in mine}):
            levels = sorted({r["rows_per_plan"] for r in mine if r["planner"] == kind})
            table[kind] = {
                n: float(np.mean([r["mean_return"] for r in mine
                                  if r["planner"] == kind and r["rows_per_plan"] == n]))
                for n in levels
            }  # fmt: skip
        baseline = table.get("plain") or table[min(table)]  # without plain: the first kind
        default_rows = max(baseline)
        reference = baseline[default_rows]
        bar = reference - tolerance * abs(reference)
        fewest = {
            kind: min((n for n, ret in t.items() if ret >= bar), default=None)
            for kind, t in table.items()
        }
        out[task] = {
            "plain_default_return": round(reference, 1),
            "bar": round(bar, 1),
            "returns": {k: {str(n): round(v, 1) for n, v in t.items()} for k, t in table.items()},
            "fewest_rows": fewest,
            "reduction_with_policy": (
                round(default_rows / policy_rows, 1)
                if (policy_rows := fewest.get("policy"))
                else None
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True,
                        help="a run directory with models and a policy (repeatable)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=0, help="cap per episode (0: the task's)")
    parser.add_argument("--share", type=float, default=0.25, help="policy_share")
    parser.add_argument("--noise", type=float, default=0.1, help="policy_noise")
    parser.add_argument("--value-weight", type=float, default=1.0, help="value_weight")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="a return within this fraction of the default's keeps it")  # fmt: skip
    parser.add_argument("--populations", default=",".join(map(str, POPULATIONS)))
    parser.add_argument("--planners", default="plain,policy",
                        help="plain, policy (proposals and value), value (the value)")  # fmt: skip
    parser.add_argument("--horizon", type=int, default=DEFAULT["horizon"])
    parser.add_argument("--quick", action="store_true",
                        help="2 episodes of at most 100 steps; the default and 1/16")  # fmt: skip
    args = parser.parse_args()
    populations = [int(x) for x in args.populations.split(",")]
    if args.quick:
        args.episodes, args.max_steps = 2, args.max_steps or 100
        populations = [populations[0], populations[-1]]
    levels = [Level(k, n) for k in args.planners.split(",") for n in populations]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for run in args.run:
        rows += measure(run, levels, args)[1]
    result = {
        "benchmark": "policy_planning",
        "quick": args.quick,
        "episodes": args.episodes,
        "max_steps": args.max_steps,
        "share": args.share,
        "noise": args.noise,
        "value_weight": args.value_weight,
        "default": DEFAULT,
        "summary": summary(rows, args.tolerance),
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for task, s in result["summary"].items():
        print(f"{task}: plain default {s['plain_default_return']}, bar {s['bar']}; fewest rows "
              f"keeping it: {s['fewest_rows']}; reduction with the policy "
              f"{s['reduction_with_policy']}")  # fmt: skip
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()
