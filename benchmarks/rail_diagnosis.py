"""Why CEM on InvertedPendulum balances a few hundred steps and then drops the pole at the end of
the cart's rail (issue 15): a drift the plan cannot see, or a model that does not know the rail.

Two explanations compete. (a) The drift lies beyond the plan: the reward is 1 per step alive,
centered or not, so nothing in a 15-step plan pulls the cart back, and the cart creeps to the
rail over more steps than the plan looks ahead. (b) The model does not know the rail: MuJoCo's
slider limit stops the cart at |x| = 1, and a model trained on few rows there may let the cart
run through it, so no plan sees the wall coming. Per run (a ``tickmpc run`` directory: its store
and its newest model; IP obs is [x, theta, xdot, thetadot]) this measures:

1. the episodes: length, return, final x, max |x|, ending at the rail (|x| >= 0.95); all and the
   last 8;
2. the drift: mean |xdot|, and in the episodes that end at the rail the steps from |x| < 0.5
   to the rail and from the rail to the fall, against the planning horizon;
3. the model at the rail: the one-step error of the members' mean on rows at the rail against
   centered rows; from real rail states moving outward, the share where the model puts x beyond
   the farthest x the store ever reached; and H-step open-loop rollouts of the model mean
   against MuJoCo from the same states ("doomed": the last H stored actions of each episode
   that fell at the rail; "push": a constant outward action from 0.85 <= |x| < 0.95): does the
   model's cart pass the rail, does its pole fall, and to which side (the rail tips it out);
4. whether the rail drops the pole: |theta| when the cart first reaches the rail, and the pole's
   outward angular acceleration at the rail against the centre;
5. the oracle: the project's CEM (N 100, 3 iterations) planning through MuJoCo itself, a
   perfect model that knows the rail, at H = 15 and 30: if it too ends at the rail at H = 15
   and not at 30, the horizon (a) is the cause, whatever the model knows.

    python benchmarks/rail_diagnosis.py [--run runs/<run> ...] [--quick]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from mujoco import rollout

import bench_common  # noqa: F401  (this checkout on sys.path)
from controller.planners.base import WarmStart, shift_warm_start
from controller.planners.optimizers.cem import CEM, CEMSettings
from controller.run import RunDir
from controller.tasks import load_task
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.store import TransitionReader
from sim_bridge.mujoco_bridge import make_env

RAIL, CENTER, LAST = 0.95, 0.5, 8
DEFAULT_GLOBS = ("/tmp/bench*/runs/inverted-pendulum*", "runs/*inverted-pendulum*")
ORACLE_HORIZONS = (15, 30)
FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS


def default_runs() -> list[Path]:
    """The CEM InvertedPendulum runs that exist under the benchmarks' usual directories."""
    found = []
    for d in sorted({Path(p) for g in DEFAULT_GLOBS for p in glob.glob(g)}):
        run = RunDir(d)
        if run.config.exists() and run.store.is_dir():
            cfg = tomllib.loads(run.config.read_text())
            if cfg.get("planner", {}).get("planner") == "cem":
                found.append(d)
    return found


def episodes(t: Any) -> list[dict[str, Any]]:
    """One row per stored episode, in order."""
    rows = []
    for e in np.unique(t.episode):
        m = t.episode == e
        x, theta = np.concatenate([t.obs[m][:1, :2], t.next_obs[m][:, :2]]).T
        rows.append({"episode": int(e), "length": int(m.sum()), "return": float(t.reward[m].sum()),
                     "final_x": float(x[-1]), "max_abs_x": float(np.abs(x).max()),
                     "at_rail": bool(abs(x[-1]) >= RAIL), "terminated": bool(t.terminated[m][-1]),
                     "x": x, "theta": theta})  # fmt: skip
    return rows


def drift(eps: list[dict[str, Any]], t: Any, horizon: int) -> dict[str, Any]:
    """How the cart reaches the rail in the episodes that end there, in steps."""
    to_rail, on_rail, theta_at_contact = [], [], []
    for ep in eps:
        if not (ep["at_rail"] and ep["terminated"]):
            continue
        ax = np.abs(ep["x"])
        contact = int(np.argmax(ax >= RAIL))
        inside = np.flatnonzero(ax[:contact] < CENTER)
        if len(inside):
            to_rail.append(contact - int(inside[-1]))
        on_rail.append(len(ax) - 1 - contact)
        theta_at_contact.append(abs(float(ep["theta"][contact])))
    med = lambda v: float(np.median(v)) if v else None  # noqa: E731
    return {"mean_abs_xdot": float(np.abs(t.obs[:, 2]).mean()), "rail_episodes": len(on_rail),
            "steps_center_to_rail_median": med(to_rail),
            "steps_center_to_rail_min": min(to_rail, default=None),
            "steps_rail_to_fall_median": med(on_rail),
            "abs_theta_at_contact_median": med(theta_at_contact), "horizon": horizon}  # fmt: skip


def mean_next(model: OnnxEnsemble, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    """The members' mean of the predicted next observation [B, S]."""
    return model.predict(obs, act)[0].mean(axis=0)


def one_step(model: OnnxEnsemble, t: Any, rows: int, rng: np.random.Generator) -> dict[str, Any]:
    """The model's one-step error at the rail against the centre, and through the rail."""
    ax = np.abs(t.obs[:, 0])
    out: dict[str, Any] = {}
    for name, mask in (("rail", ax >= RAIL), ("center", ax < CENTER)):
        idx = np.flatnonzero(mask)
        idx = rng.choice(idx, min(rows, len(idx)), replace=False) if len(idx) else idx
        out[f"{name}_rows"] = int(mask.sum())
        if len(idx):
            err = mean_next(model, t.obs[idx], t.act[idx]) - t.next_obs[idx]
            out[f"{name}_rmse"] = [round(float(v), 4) for v in np.sqrt((err**2).mean(0))]
    reach = float(np.abs(t.next_obs[:, 0]).max())
    sign = np.sign(t.obs[:, 0])
    out_rows = np.flatnonzero((ax >= RAIL) & (sign * t.obs[:, 2] > 0))
    out.update(store_max_abs_x=reach, outward_rail_rows=len(out_rows))
    if len(out_rows):
        pred = mean_next(model, t.obs[out_rows], t.act[out_rows])[:, 0] * sign[out_rows]
        real = t.next_obs[out_rows, 0] * sign[out_rows]
        out.update(outward_pred_beyond_reach=float((pred > reach).mean()),
                   outward_pred_x_mean=float(pred.mean()), outward_real_x_mean=float(real.mean()),
                   outward_pred_x_max=float(pred.max()))  # fmt: skip
    return out


def open_loop(model: OnnxEnsemble, sim: Any, start: np.ndarray, acts: np.ndarray,
              reach: float) -> dict[str, float]:  # fmt: skip
    """Model mean and MuJoCo from the same ``start [B, S]`` under the same ``acts [B, H, A]``:
    the outward x reached, whether the model's cart passes the rail, and who sees the pole fall."""
    real, pred = np.zeros((2, len(start), acts.shape[1] + 1, start.shape[1]))
    real[:, 0] = pred[:, 0] = start
    nq = sim.model.nq
    for k in range(len(start)):
        sim.set_state(start[k, :nq].astype(np.float64), start[k, nq:].astype(np.float64))
        for h in range(acts.shape[1]):
            real[k, h + 1] = sim.step(acts[k, h])[0]
    for h in range(acts.shape[1]):
        pred[:, h + 1] = mean_next(model, pred[:, h], acts[:, h])
    sign = np.sign(start[:, :1])
    out_x = lambda traj: (traj[:, :, 0] * sign).max(1)  # noqa: E731
    out: dict[str, float] = {"starts": len(start), "real_max_x": float(out_x(real).mean()),
                             "model_max_x": float(out_x(pred).mean()),
                             "model_passes_rail": float((out_x(pred) > reach).mean())}  # fmt: skip
    for name, traj in (("real", real), ("model", pred)):
        fell = np.abs(traj[:, :, 1]) > 0.2  # the first fall's side: + away from the centre
        side = sign[:, 0] * traj[np.arange(len(traj)), fell.argmax(1), 1]
        out[f"{name}_falls"] = float(fell.any(1).mean())
        out[f"{name}_falls_outward"] = float((fell.any(1) & (side > 0)).mean())
    return out


def rollouts(model: OnnxEnsemble, t: Any, eps: list[dict[str, Any]], sim: Any, horizon: int,
             starts: int, reach: float, rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """doomed: the last ``horizon`` steps of each episode that ended at the rail, replayed (the
    sequence the planner chose once the fall was within its horizon; MuJoCo falls). push: a
    constant outward action from stored states at 0.85 <= |x| < RAIL moving outward."""
    ends = np.cumsum([e["length"] for e in eps]) - 1
    doomed = [e_end - horizon + 1 for e_end, e in zip(ends, eps, strict=True)
              if e["at_rail"] and e["terminated"] and e["length"] >= horizon]  # fmt: skip
    out: dict[str, Any] = {}
    if doomed:
        rows = np.asarray(doomed)[:, None] + np.arange(horizon)
        out["doomed"] = open_loop(model, sim, t.obs[rows[:, 0]], t.act[rows], reach)
    ax, sign = np.abs(t.obs[:, 0]), np.sign(t.obs[:, 0])
    idx = np.flatnonzero((ax >= 0.85) & (ax < RAIL) & (sign * t.obs[:, 2] > 0))
    if len(idx):
        idx = rng.choice(idx, min(starts, len(idx)), replace=False)
        push = np.broadcast_to(sign[idx, None, None], (len(idx), horizon, 1)).astype(np.float32)
        out["push"] = open_loop(model, sim, t.obs[idx], push, reach)
    return out


def oracle_episode(env: Any, horizon: int, seed: int, steps: int) -> dict[str, Any]:
    """One episode of the project's CEM (population 100, 3 iterations, defaults) planning
    through MuJoCo itself, a perfect model: does the cart still drift to the rail?"""
    sim = env.unwrapped
    low, high = sim.action_space.low.astype(np.float64), sim.action_space.high.astype(np.float64)
    cem = CEM(100, 3, low, high, CEMSettings())
    fill, rng = (low + high) / 2.0, np.random.default_rng(seed)
    warm, data = WarmStart(np.broadcast_to(fill, (horizon, 1)).copy()), mujoco.MjData(sim.model)
    state, spec = np.zeros(mujoco.mj_stateSize(sim.model, FULL)), FULL
    obs, _ = env.reset(seed=seed)
    xs = [obs[0]]
    for _ in range(steps):
        mujoco.mj_getState(sim.model, sim.data, state, spec)
        cem.begin(warm, rng)
        for it in range(3):
            cand = cem.ask(it)
            traj, _ = rollout.rollout(sim.model, data, state, np.repeat(cand, sim.frame_skip, 1))
            theta = traj[:, sim.frame_skip - 1 :: sim.frame_skip, 2]  # [time, x, theta, ...]
            cem.tell(cand, np.cumprod(np.abs(theta) <= 0.2, axis=1).sum(1).astype(float))
        obs, _, term, _, _ = env.step(cem.solution()[0][0])
        warm = shift_warm_start(cem.carry(), fill, horizon)
        xs.append(obs[0])
        if term:
            break
    return {"horizon": horizon, "seed": seed, "length": len(xs) - 1,
            "final_x": round(float(xs[-1]), 3), "at_rail": bool(abs(xs[-1]) >= RAIL)}  # fmt: skip


def pole_kick(t: Any, dt: float) -> dict[str, float | None]:
    """The pole's outward angular acceleration (rad/s^2, + tips away from the centre) by zone."""
    acc = np.sign(t.obs[:, 0]) * (t.next_obs[:, 3] - t.obs[:, 3]) / dt
    ax = np.abs(t.obs[:, 0])
    zones = {"rail": ax >= RAIL, "center": ax < CENTER}
    return {f"theta_acc_out_{k}": float(acc[m].mean()) if m.any() else None
            for k, m in zones.items()}  # fmt: skip


def diagnose(run: RunDir, quick: bool) -> dict[str, Any]:
    cfg = tomllib.loads(run.config.read_text())
    task = load_task(cfg["task"])
    assert task.env_id is not None
    t = TransitionReader(run.store).read_all()
    eps = episodes(t)
    horizon = int(cfg["planner"]["horizon"])
    last = eps[-LAST:]
    summary = {"run": str(run.root), "planner": cfg["planner"]["planner"],
               "config_episodes": cfg["run"]["episodes"], "episodes": len(eps), "rows": len(t),
               "best_return": max(e["return"] for e in eps),
               "at_rail_all": sum(e["at_rail"] for e in eps),
               "at_rail_last": sum(e["at_rail"] for e in last), "last": len(last),
               "last_returns": [e["return"] for e in last],
               "drift": drift(eps, t, horizon)}  # fmt: skip
    latest = ModelDirectory(run.models).latest()
    if latest is not None:
        model = OnnxEnsemble(latest.path)
        rng = np.random.default_rng(0)
        summary["model_version"] = latest.version
        summary["one_step"] = one_step(model, t, 500 if quick else 20000, rng)
        env = make_env(task.env_id, task.env_kwargs)
        env.reset(seed=0)
        reach = summary["one_step"]["store_max_abs_x"]
        summary["rollout"] = rollouts(model, t, eps, env.unwrapped, horizon,
                                      8 if quick else 32, reach, rng)  # fmt: skip
        env.close()
    summary["pole"] = pole_kick(t, task.control_period)
    return summary | {"table": eps}


def print_run(s: dict[str, Any]) -> None:
    print(f"\n== {s['run']}  ({s['planner']}, {s['episodes']} episodes of "
          f"{s['config_episodes']}, {s['rows']} rows, best {s['best_return']:.0f}, "
          f"model v{s.get('model_version')})")  # fmt: skip
    print(" ep  len  return  final_x  max|x|  rail")
    for e in s.pop("table"):
        print(f"{e['episode']:3d} {e['length']:4d} {e['return']:7.0f} {e['final_x']:+8.3f}"
              f" {e['max_abs_x']:7.3f}  {'RAIL' if e['at_rail'] else ''}")  # fmt: skip
    last = f"last {s['last']}: {s['at_rail_last']}"
    print(f"ending at the rail: {s['at_rail_all']} of {s['episodes']}, {last}")
    for key in ("drift", "one_step", "rollout", "pole"):
        if key in s:
            print(f"{key}: " + json.dumps(s[key]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", default=None,
                        help="a tickmpc run directory (repeatable; default: the CEM "
                             "InvertedPendulum runs under /tmp/bench*/runs and runs/)")  # fmt: skip
    parser.add_argument("--oracle-seeds", type=int, default=2, help="oracle episodes per H")
    parser.add_argument("--quick", action="store_true",
                        help="500 rows, 8 rollout starts, 1 oracle seed of 200 steps")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    runs = args.run or default_runs()
    if not runs:
        raise SystemExit("no run directory: pass --run")
    results = []
    for run in runs:
        s = diagnose(RunDir(run), args.quick)
        print_run(s)
        results.append(s)
    env = make_env("InvertedPendulum-v5")
    seeds, steps = (1, 200) if args.quick else (args.oracle_seeds, 1000)
    print("\noracle (CEM through MuJoCo itself, N 100, 3 iterations):")
    oracle = []
    for horizon in ORACLE_HORIZONS:
        for seed in range(seeds):
            oracle.append(oracle_episode(env, horizon, seed, steps))
            print("  " + json.dumps(oracle[-1]), flush=True)
    print(json.dumps({"benchmark": "rail_diagnosis", "quick": args.quick,
                      "seconds": round(time.perf_counter() - started, 1), "runs": results,
                      "oracle": oracle}))  # fmt: skip


if __name__ == "__main__":
    main()
