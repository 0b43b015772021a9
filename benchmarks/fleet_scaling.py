"""Fleet scaling: N cartpoles served by one service in realtime at 25 Hz, planned together
(batched) and one after another (sequential, the loop before batching), in the same run.

The service runs as its own process (``tickmpc serve``) over the newest model of a run that
``tickmpc run`` learned (``--run``), without a store or learner: nothing learns during the
measurement, so the cost per model row is the real one. The robots are one fleet of
``MujocoBridge`` threads in this process (as ``tickmpc bridge --robots N`` runs them), each on
the wall clock at the task's 25 Hz, with its own seed; a thread of this process reads every
telemetry record.

Per fleet size and mode: deadline misses (share of ticks), fallbacks, optimizer iterations and
model rows per tick (per robot), aggregate model rows per second (the sum of every plan's rows
over the measured wall time), robots per planning pass, plan time p99, and each robot's
swing-up return. The planner settings per fleet size are CEM with horizon 25 and 3
iterations and a population that shrinks as the fleet grows (``--populations``, one per
count); the anytime budget cuts iterations where a round does not fit.

Targets (issue 16): aggregate rows per second at 8 robots >= 1.5 x one robot's; at least 4
robots at 25 Hz with <= 1% misses and every robot's return >= 150.

    python benchmarks/fleet_scaling.py --run runs/RUN [--counts 1,2,4,8,16] [--quick]

Without ``--run`` the model is a fresh, untrained ensemble of the default size: the costs are
real, the returns are not (flagged ``"model": "untrained"``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_common import make_model, read_telemetry
from controller.run import RunDir
from controller.service.control import request
from controller.tasks import get_task
from models.registry import ModelDirectory
from sim_bridge.fleet import Fleet, fleet_ids
from sim_bridge.hardware import BridgeSettings
from sim_bridge.mujoco_bridge import MujocoBridge

TASK = get_task("cartpole-swingup")
MODES = ("batched", "sequential")


def models_dir(run: Path | None, where: Path) -> str:
    """A model directory holding one model: the run's newest, or a fresh default-size one."""
    target = ModelDirectory(where)
    if run is None:
        target.publish(make_model(TASK, 3))
        return "untrained"
    latest = ModelDirectory(RunDir(run).models).latest()
    if latest is None:
        raise SystemExit(f"{RunDir(run).models} holds no model")
    where.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(latest.path, target.path_of(latest.version))
    target.mark_latest(latest.version)
    return f"{run.name}/{latest.path.name}"


def serve(root: Path, mode: str, population: int) -> tuple[subprocess.Popen[bytes], str, str]:
    endpoint, control, telemetry = (f"ipc://{root}/{name}.sock" for name in ("r", "c", "t"))
    cmd = [sys.executable, "-m", "controller.cli", "serve", "--task", TASK.name, "--models",
           str(root / "models"), "--endpoint", endpoint, "--control", control,
           "--telemetry", telemetry]  # fmt: skip
    batched = "true" if mode == "batched" else "false"
    for setting in (f"planner.population={population}", "planner.horizon=25",
                    "planner.iterations=3", f"service.batched={batched}"):  # fmt: skip
        cmd += ["--set", setting]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        try:
            if request(control, "status", timeout_s=1.0)["model_version"] > 0:
                return proc, endpoint, telemetry
        except TimeoutError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"tickmpc serve exited ({proc.returncode})")
    proc.kill()
    raise RuntimeError("the service did not load its model within 120 s")


def measure(
    root: Path, count: int, mode: str, population: int, episodes: int, steps: int | None
) -> dict[str, Any]:
    proc, endpoint, telemetry = serve(root, mode, population)
    stop, records = threading.Event(), list[dict[str, Any]]()
    reader = read_telemetry(telemetry, stop, records.append)
    time.sleep(0.3)  # the subscription reaches the service
    settings = BridgeSettings(episode_steps=steps, connect_timeout_s=60.0)
    fleet = Fleet([MujocoBridge.for_task(TASK, name, seed=1000 * (i + 1), settings=settings)
                   for i, name in enumerate(fleet_ids("robot-0", count))])  # fmt: skip
    try:
        stats = fleet.run(endpoint, mode="realtime", episodes=episodes)
        time.sleep(0.3)  # the last records arrive
    finally:
        stop.set()
        reader.join(5)
        proc.terminate()
        proc.wait(timeout=30)
        for bridge in fleet.bridges:
            assert isinstance(bridge, MujocoBridge)
            bridge.close()
    if fleet.errors:
        raise RuntimeError(f"robots failed: {fleet.errors}")
    planned = [r for r in records if r["planner"] == "cem" or r["fallback"]]
    if not planned:
        raise RuntimeError("no plan was recorded")
    times = np.array([r["time"] for r in planned])
    wall = float(times.max() - times.min()) + TASK.control_period
    misses = sum(r["deadline_miss"] for r in planned)
    returns = [round(r, 1) for s in stats for r in s.returns if r is not None]  # all known
    return {
        "robots": count, "mode": mode, "population": population, "ticks": len(planned),
        "deadline_misses": int(misses), "miss_pct": round(100.0 * misses / len(planned), 2),
        "fallbacks": int(sum(r["fallback"] for r in planned)),
        "safe_actions": int(sum(s.safe_actions for s in stats)),
        "iterations_per_tick": round(float(np.mean([r["iterations"] for r in planned])), 2),
        "rows_per_tick": round(float(np.mean([r["rows"] for r in planned]))),
        "rows_per_s": round(sum(r["rows"] for r in planned) / wall),
        "robots_per_pass": round(float(np.mean([r["batch"] for r in planned])), 2),
        "plan_ms_p50": round(float(np.percentile([r["plan_ms"] for r in planned], 50)), 2),
        "plan_ms_p99": round(float(np.percentile([r["plan_ms"] for r in planned], 99)), 2),
        "returns": returns, "min_return": min(returns) if returns else None,
    }  # fmt: skip


def summary(rows: list[dict[str, Any]], trained: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = {r["robots"]: r for r in rows if r["mode"] == mode}
        if 1 in mine and 8 in mine:
            out[f"{mode}_rows_per_s_8_over_1"] = round(
                mine[8]["rows_per_s"] / mine[1]["rows_per_s"], 2
            )
        served = [n for n, r in mine.items() if r["miss_pct"] <= 1.0 and
                  (not trained or (r["min_return"] or 0.0) >= 150.0)]  # fmt: skip
        out[f"{mode}_most_robots_served"] = max(served, default=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a tickmpc run directory (its newest model)")
    parser.add_argument("--counts", default="1,2,4,8,16")
    parser.add_argument("--populations", default="200,200,100,50,25",
                        help="CEM population per count (horizon 25, 3 iterations)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=2, help="episodes per robot")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--quick", action="store_true", help="1, 2 and 4 robots, 1 short episode")
    args = parser.parse_args()
    counts = [int(x) for x in args.counts.split(",")]
    populations = [int(x) for x in args.populations.split(",")]
    if len(populations) != len(counts):
        raise SystemExit("--populations needs one population per count")
    episodes, steps = args.episodes, None
    if args.quick:
        counts, populations, episodes, steps = counts[:3], populations[:3], 1, 50
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = models_dir(args.run, Path(tmp) / "models")
        for count, population in zip(counts, populations, strict=True):
            for mode in args.modes.split(","):
                row = measure(Path(tmp), count, mode, population, episodes, steps)
                rows.append(row)
                print(f"{count:2d} robots {mode:10s} pop {population:3d}: misses "
                      f"{row['miss_pct']:5.2f}%  it/tick {row['iterations_per_tick']:.2f}  "
                      f"rows/tick {row['rows_per_tick']:6d}  rows/s {row['rows_per_s']:8d}  "
                      f"per pass {row['robots_per_pass']:.1f}  p99 {row['plan_ms_p99']:.1f} ms  "
                      f"min return {row['min_return']}", flush=True)  # fmt: skip
    result = {
        "benchmark": "fleet_scaling", "quick": args.quick, "model": model,
        "rate_hz": 1.0 / TASK.control_period, "episodes": episodes, "episode_steps": steps,
        "summary": summary(rows, model != "untrained"), "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
