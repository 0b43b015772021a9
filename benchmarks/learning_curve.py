"""Learning from scratch through the real closed loop (``tickmpc run``), several seeds per task.

Each run is what ``tickmpc run`` does: the MuJoCo bridge, ``tickmpc serve`` and ``tickmpc learn``
as processes on ipc:// sockets, the first episode random, a retrain after every episode. Per task
variant it prints a row per seed and a summary:

- cartpole (lockstep) and cartpole-realtime (the bridge on the wall clock at 25 Hz, the learner
  training in the background, models swapped in whenever they pass the gate): the episode at
  which the return first reaches 170 (PETS's level; the maximum is about 200) and the final
  return. Target: within 10 episodes in at least 4 of 5 seeds, and in realtime with at most 1%
  deadline misses.
- inverted-pendulum and reacher: the best return within 10 and within 30 episodes.
- ``*-learned``: the same runs with ``reward=learned`` (the ensemble predicts the reward from
  the rewards the robot reports; the task's own termination stays). Target: the final return
  within 10% of the known-reward run's, on the same seeds. Measured (3 seeds each; final
  return, then the mean of the last 3 episodes): reacher, 15 episodes: -5.9 / -5.8 learned
  against -5.6 / -5.5 known; inverted-pendulum, 15 episodes: 136 / 82 against 151 / 106;
  cartpole, 10 episodes: 9 / 6 against 180 / 181 (missed: the swing-up reward is a narrow
  bump the early episodes never reach, see docs/tasks.md).
- Gymnasium environments no built-in task defines, run by id alone (reward and termination
  learned): InvertedDoublePendulum-v5 (``idp-id``; ``idp-file`` is the same run with the
  example task file that states the environment's reward and termination) and Swimmer-v5
  (``swimmer-id``; its reward needs the x position, which its observation leaves out, so no
  task file can state it). Their summaries add the return of uniform random actions from the
  same resets. Measured (mean of episodes k-2..k at k = 10 and 30; random): idp-id 63 and
  119, idp-file 65 and 288, random 45 (3 seeds); swimmer-id (200-step episodes) 27 and 30,
  random 0.1 (1 seed).

Plan times come from the service's telemetry (``metrics/ticks.jsonl``): p99 over planned ticks,
the miss fraction, and the plan time of the first tick on each new model version (a swap costs
no tick if those look like the rest). Run directories are kept under ``--out``.

    python benchmarks/learning_curve.py [--quick] [--variants cartpole,reacher] [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

import bench_common  # noqa: F401  (this checkout on sys.path)
from controller.config import Config, parse_overrides, updated
from controller.run.loop import run_closed_loop
from controller.run.rundir import RunDir
from models.progress import read_records

THRESHOLD = 170.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def variant(*sets: str) -> Config:
    """A run config from ``--set``-style overrides of the defaults, without episode videos
    (their renders would take CPU the figures of earlier runs did not pay)."""
    return updated(Config(), parse_overrides(["run.videos=false", *sets]))


VARIANTS: dict[str, Config] = {
    "cartpole": variant("task=cartpole-swingup", "run.episodes=10"),
    "cartpole-realtime": variant("task=cartpole-swingup", "run.episodes=10", "run.realtime=true"),
    # The same with the service's rollouts cut into one slice per core (its default is one
    # session): faster on an idle machine, more deadline misses beside the learner.
    "cartpole-realtime-slices": variant(
        "task=cartpole-swingup",
        "run.episodes=10",
        "run.realtime=true",
        "service.runtime.rollout_slices=0",
    ),
    # 1000-step episodes once it balances: a cheaper plan keeps 30 episodes within minutes.
    # Random episodes last about 5 steps, so the first model comes after 50 rows, not 200.
    "inverted-pendulum": variant(
        "task=inverted-pendulum",
        "run.episodes=30",
        "planner.horizon=15",
        "planner.population=100",
        "learner.min_transitions=50",
    ),
    "reacher": variant("task=reacher", "run.episodes=30"),
    "cartpole-learned": variant("task=cartpole-swingup", "run.episodes=10", "reward=learned"),
    "inverted-pendulum-learned": variant(
        "task=inverted-pendulum",
        "run.episodes=30",
        "planner.horizon=15",
        "planner.population=100",
        "learner.min_transitions=50",
        "reward=learned",
    ),
    "reacher-learned": variant("task=reacher", "run.episodes=30", "reward=learned"),
    # Random episodes of the double pendulum last about 10 steps, like the single one's.
    "idp-id": variant(
        "task=InvertedDoublePendulum-v5",
        "run.episodes=30",
        "planner.horizon=15",
        "planner.population=100",
        "learner.min_transitions=50",
    ),
    "idp-file": variant(
        f"task={EXAMPLES / 'tasks' / 'inverted_double_pendulum.py'}",
        "run.episodes=30",
        "planner.horizon=15",
        "planner.population=100",
        "learner.min_transitions=50",
    ),
    # 1000-step episodes truncated at 200 to keep 30 episodes within minutes on 2 cores.
    "swimmer-id": variant("task=Swimmer-v5", "run.episodes=30", "run.episode_steps=200"),
}
# Acting with a policy trained beside the model (MBPO's own way of acting), against acting
# with CEM, on the same budget of real steps. The policy's networks are 2 x 128 (MBPO: 2 x
# 256): on these 2 cores a 2 x 256 SAC update takes 9 ms against 3.4 ms. Cartpole takes
# MBPO's 20 updates per real row; the inverted pendulum, with 15,000 rows, 10 (20 would make
# a seed half an hour). In lockstep the service is idle while the learner works, so the
# learner takes both cores.
POLICY = ("policy.optimizer=sac", "planner.planner=policy", "policy.units=128",
          "learner.torch_threads=2")  # fmt: skip
IP = ("task=inverted-pendulum", "learner.min_transitions=50", "run.episodes=1000",
      "run.max_steps=15000", "policy.updates_per_step=10")  # fmt: skip
IP_CEM = (*IP, "planner.horizon=15", "planner.population=100")
SAC_BESIDE = tuple(x for x in POLICY if not x.startswith("planner."))  # CEM acts
HALF_CHEETAH_CEM_VALUE = (
    "task=half-cheetah", "run.episodes=1000", "run.max_steps=25000", "planner.population=100",
    "planner.horizon=10", "planner.value_weight=1", "planner.policy_share=0.25",
    "policy.updates_per_step=10",
)  # fmt: skip
VARIANTS |= {
    # A fleet (issue 16): 4 robots feed one store and learner, their episodes at once, the
    # service planning them together; lockstep retrains after each round of 4 episodes.
    "cartpole-fleet4": variant("task=cartpole-swingup", "run.episodes=20", "run.robots=4"),
    # The same on the wall clock, the learner beside: 100 candidates per robot, as served
    # 4 robots at 25 Hz in benchmarks/fleet_scaling.py.
    "cartpole-fleet4-realtime": variant(
        "task=cartpole-swingup",
        "run.episodes=20",
        "run.robots=4",
        "run.realtime=true",
        "planner.population=100",
    ),
    "cartpole-policy": variant("task=cartpole-swingup", "run.episodes=20", *POLICY),
    "cartpole-cem-20": variant("task=cartpole-swingup", "run.episodes=20"),
    "cartpole-policy-realtime": variant(
        "task=cartpole-swingup", "run.episodes=10", "run.realtime=true", *POLICY[:-1]
    ),  # the learner keeps its one thread: the service plans in realtime beside it
    "ip-policy": variant(*IP, *POLICY),
    "ip-cem": variant(*IP, "planner.horizon=15", "planner.population=100"),
    # Planning with the policy (issue 15): CEM acts, its rollouts end in the SAC critic's
    # value and a quarter of its candidates are the policy's; SAC trains beside the model.
    "ip-cem-value": variant(
        *IP_CEM, *SAC_BESIDE, "planner.value_weight=1", "planner.policy_share=0.25"
    ),
    # The terminal value alone: what the diagnosis of CEM's fall at the rail calls for.
    "ip-cem-value-only": variant(*IP_CEM, *SAC_BESIDE, "planner.value_weight=1"),
    # The pendulum's reward is 1 per step and its termination a hard threshold, so through the
    # task's own termination the imagined return has no gradient at all: BPTT learns the
    # termination (a done probability it can differentiate through, as survival weights).
    "ip-bptt": variant(
        *IP, *POLICY, "policy.optimizer=bptt", "policy.updates_per_step=1", "termination=learned"
    ),
    # MBPO's rising rollout length: k from 1 at epoch 1 (1000 real rows) to 10 at epoch 10.
    "ip-policy-schedule": variant(
        *IP,
        *POLICY,
        "policy.k_min=1",
        "policy.k_max=10",
        "policy.epoch_start=1",
        "policy.epoch_end=10",
    ),
    # The seeds' naive Dyna: whole imagined episodes (k = 1000) from the initial states; 400
    # start states a round, not 100,000 (each runs up to 1000 steps).
    "ip-policy-naive": variant(
        *IP,
        *POLICY,
        "policy.naive=true",
        "policy.k_min=1000",
        "policy.k_max=1000",
        "policy.rollout_batch=400",
    ),
    "halfcheetah-policy": variant(
        "task=half-cheetah",
        "run.episodes=1000",
        "run.max_steps=50000",
        *POLICY,
        "policy.updates_per_step=10",
    ),
    # Planning with the policy on a harder robot (issue 15): CEM over 100 x 10 x 3 with a
    # quarter of proposals and the terminal value, at HalfCheetah's own 20 Hz in realtime
    # (the learner keeps one thread beside the service), against the same in lockstep.
    "halfcheetah-cem-value-realtime": variant(
        *HALF_CHEETAH_CEM_VALUE, "run.realtime=true", *(x for x in SAC_BESIDE if "threads" not in x)
    ),
    "halfcheetah-cem-value": variant(*HALF_CHEETAH_CEM_VALUE, *SAC_BESIDE),
}
RANDOM_BASELINE = ("idp-id", "idp-file", "swimmer-id")
"""Variants whose summary adds the return of random actions from the same resets."""
CHECKPOINTS = (10, 30)
STEP_CHECKPOINTS = (5_000, 15_000, 25_000, 50_000)
"""Real steps at which a run's return is reported (the episode that ends at or past it)."""
HELD = 3
"""Episodes in a row at the task's full return for the inverted pendulum's target."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one cartpole seed, 3 episodes")
    parser.add_argument("--variants", default="cartpole,cartpole-realtime,inverted-pendulum,"
                        "reacher", help="comma-separated: " + ", ".join(VARIANTS))  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=0, help="override (0: the variant's)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="real-step budget override (0: the variant's)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="run directories go here")
    args = parser.parse_args()
    names = ["cartpole"] if args.quick else args.variants.split(",")
    seeds = 1 if args.quick else args.seeds
    episodes = 3 if args.quick else args.episodes
    out = args.out or Path("runs") / time.strftime("bench-learning-%Y%m%d-%H%M%S")
    figures: dict[str, Any] = {}
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        runs = []
        for seed in range(args.first_seed, args.first_seed + seeds):
            sets = [f"{part}.seed={seed}" for part in ("run", "planner", "learner")]
            if episodes:
                sets.append(f"run.episodes={episodes}")
            if args.max_steps:
                sets.append(f"run.max_steps={args.max_steps}")
            sets.append(f"policy.seed={seed}")
            config = updated(VARIANTS[name], parse_overrides(sets))
            run = measure(config, out / f"{name}-seed{seed}")
            if name in RANDOM_BASELINE:
                run["random_returns"] = random_returns(config)
            runs.append(run)
            print(f"{name} seed {seed}: " + "  ".join(f"{k} {v}" for k, v in row(run).items()),
                  flush=True)  # fmt: skip
        figures[name] = summarize(name, runs)
        print(f"{name}: " + json.dumps(figures[name]), flush=True)
    print(json.dumps({"benchmark": "learning_curve", "quick": args.quick, "out": str(out),
                      "variants": figures}))  # fmt: skip


def measure(config: Config, run_dir: Path) -> dict[str, Any]:
    if run_dir.exists():  # a run directory is resumed, not restarted: its store would mix in
        raise SystemExit(f"{run_dir} exists: give another --out")
    cpu = _cpu_seconds()
    started, began = time.perf_counter(), time.time()
    run = RunDir(run_dir)
    lines, codes = run_closed_loop(config, run)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    returns = [float(x["return"]) for x in lines]
    steps = np.cumsum([int(x["steps"]) for x in lines]).tolist()
    ticks = run.tick_lines()
    planned = [t for t in ticks if t["planner"] != "explore"]
    plan_ms = np.array([t["plan_ms"] for t in planned]) if planned else np.zeros(1)
    swaps = [b["plan_ms"] for a, b in itertools.pairwise(planned)
             if b["model_version"] != a["model_version"]]  # fmt: skip
    reached = next((i + 1 for i, r in enumerate(returns) if r >= THRESHOLD), None)
    return {
        "seed": config.run.seed,
        "returns": [round(r, 1) for r in returns],
        "episodes_to_170": reached,
        "minutes_to_170": None
        if reached is None
        else round((lines[reached - 1]["wall_time"] - began) / 60, 2),
        "final_return": round(returns[-1], 1),
        "last3_mean": round(float(np.mean(returns[-3:])), 1),
        "best_at": {str(k): round(max(returns[:k]), 1) for k in CHECKPOINTS if len(returns) >= k},
        "plan_ms_p50": round(float(np.percentile(plan_ms, 50)), 1),
        "plan_ms_p99": round(float(np.percentile(plan_ms, 99)), 1),
        "planned_ticks": len(planned),
        "deadline_misses": sum(bool(t["deadline_miss"]) for t in planned),
        "safe_actions": sum(int(x["safe_actions"]) for x in lines),
        "swap_plan_ms_max": round(max(swaps), 1) if swaps else None,
        "swaps": len(swaps),
        "exit_codes": codes,
        "minutes": round(wall / 60, 2),
        "cpu_minutes": round(cpu / 60, 2),
        "steps": steps[-1] if steps else 0,
        "steps_to_1000_held3": held(returns, steps, 1000.0 - 1e-6),
        "return_at_steps": {
            str(k): round(returns[i], 1)
            for k in STEP_CHECKPOINTS
            if (i := next((j for j, s in enumerate(steps) if s >= k), None)) is not None
        },
        "policy": policy_figures(run),
    }


def held(returns: list[float], steps: list[int], level: float) -> int | None:
    """Real steps at the end of the HELD-th episode in a row with a return >= ``level``."""
    run = 0
    for r, s in zip(returns, steps, strict=True):
        run = run + 1 if r >= level else 0
        if run == HELD:
            return s
    return None


def policy_figures(run: RunDir) -> dict[str, Any] | None:
    """The policy trainer's last published line: versions, updates, the update-to-data ratio
    it sustained."""
    lines = read_records(run.policy_metrics)
    if not lines:
        return None
    last = lines[-1]
    return {"versions": len(lines), "updates": last["updates_total"],
            "real_rows": last["real_rows"], "utd": round(last["utd"], 2),
            "owed": last["owed"]}  # fmt: skip


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the service and learner)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def row(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("episodes_to_170", "minutes_to_170", "final_return", "best_at", "steps",
            "steps_to_1000_held3", "return_at_steps", "policy", "plan_ms_p99",
            "deadline_misses", "planned_ticks", "swap_plan_ms_max", "minutes", "cpu_minutes",
            "returns")  # fmt: skip
    return {k: run[k] for k in keys}


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ticks = sum(r["planned_ticks"] for r in runs)
    misses = sum(r["deadline_misses"] for r in runs)
    summary: dict[str, Any] = {
        "seeds": len(runs),
        "final_return_mean": round(float(np.mean([r["final_return"] for r in runs])), 1),
        "last3_mean": round(float(np.mean([r["last3_mean"] for r in runs])), 1),
        "plan_ms_p99_max": max(r["plan_ms_p99"] for r in runs),
        "miss_fraction": round(misses / ticks, 4) if ticks else None,
        "swap_plan_ms_max": max((r["swap_plan_ms_max"] or 0.0) for r in runs),
        "minutes": round(sum(r["minutes"] for r in runs), 1),
        "runs": runs,
    }
    if name.startswith("cartpole"):
        hits = [r["episodes_to_170"] for r in runs]
        summary["episodes_to_170"] = hits
        summary["minutes_to_170"] = [r["minutes_to_170"] for r in runs]
        summary["seeds_reaching_170_in_10"] = sum(h is not None and h <= 10 for h in hits)
        summary["seeds_reaching_170_in_20"] = sum(h is not None and h <= 20 for h in hits)
    elif name.startswith("ip-"):
        held3 = [r["steps_to_1000_held3"] for r in runs]
        summary["steps_to_1000_held3"] = held3
        summary["seeds_holding_1000_within_15000"] = sum(h is not None and h <= 15_000
                                                         for h in held3)  # fmt: skip
    else:
        for k in CHECKPOINTS:
            best = [r["best_at"][str(k)] for r in runs if str(k) in r["best_at"]]
            if best:
                summary[f"best_in_{k}_mean"] = round(float(np.mean(best)), 1)
        for k in CHECKPOINTS:  # the return at episode k (mean of episodes k-2..k)
            at = [np.mean(r["returns"][k - 3 : k]) for r in runs if len(r["returns"]) >= k]
            if at:
                summary[f"return_at_{k}_mean"] = round(float(np.mean(at)), 1)
    if name in RANDOM_BASELINE:
        randoms = [x for r in runs for x in r["random_returns"]]
        summary["random_return_mean"] = round(float(np.mean(randoms)), 1)
    return summary


def random_returns(config: Config, episodes: int = 10) -> list[float]:
    """Returns of uniform random actions from the resets of the run's first ``episodes``
    episodes (episode i resets with seed run.seed + 1000 i, as the run's bridge does)."""
    from sim_bridge.mujoco_bridge import make_env

    task = config.resolved_task()
    assert task is not None and task.env_id is not None
    env = make_env(task.env_id, task.env_kwargs)
    rng = np.random.default_rng(config.run.seed)
    out = []
    for i in range(episodes):
        env.reset(seed=config.run.seed + 1000 * i)
        total, steps, done = 0.0, 0, False
        while not done and steps < config.steps:
            action = rng.uniform(task.action_low, task.action_high).astype(np.float32)
            _, reward, terminated, truncated, _ = env.step(action)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        out.append(round(total, 1))
    env.close()
    return out


if __name__ == "__main__":
    main()
