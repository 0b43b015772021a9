"""Socket loop overhead: bridge -> controller -> bridge round trip minus the plan time.

The controller runs as its own process (``tickmpc serve``, as in production) with a transition
store, so every tick also decodes, records, encodes and publishes telemetry. The bridge side is
this process: a lockstep loop over :class:`sim_bridge.link.BridgeLink` that sends a STATE and
waits for the ACTION answering it. The round trip is timed on the bridge from just before the
send to just after the reply is decoded; the controller reports its plan time in the ACTION
(``plan_ms``), and the overhead is the difference, per tick.

Phases: ``explore`` (no model: the planner is a uniform draw, so the round trip is almost
all overhead) and ``planner`` (a freshly initialized E=5 4x200 ensemble published to the model
directory, CEM with a tiny population, so the ONNX Runtime path and the planner's host work run
in the service process between receive and send). The service writes each pass's transitions
to the store before its ACTIONs go out; to show what that write costs, the planner phase also
runs without a store (``planner-nostore``) and with ``--durable`` (an fsync per pass,
``planner-durable``), in the same run. The headline figures are the planner phase's.
``planner-telemetry`` adds a subscriber to the telemetry (a thread of this process reading
every record, as ``tickmpc run`` does): the service builds a record per tick, with the task's
reward terms, only while someone subscribes. ``policy`` serves the same model and a freshly
initialized SAC policy (2 x 256) from the same directory with ``planner=policy`` (explore, as
MBPO collects): each ACTION is one draw from the policy, no plan, so its plan time is what the
policy costs per tick where the planner phase's is a (tiny) plan's. ``planner-dashboard`` runs
``tickmpc dashboard`` against the service: its cost to the service is one more telemetry
subscriber and a status request every 0.5 s (history every 2 s); its p99 against the planner
phase's is the dashboard's figure (target: within 0.5 ms). ``planner-dashboard-page`` also opens
the page in headless Chromium on the same machine, where its drawing competes with the service
for the cores (an operator's browser is usually on another machine). Every phase reports its
plan time p50 and p99 (``plan_ms`` of the ACTIONs) beside the overhead.
Target (DESIGN.md): p99 <= 0.5 ms on this machine.

    python benchmarks/loop_latency.py [--quick] [--phases planner,planner-dashboard]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench_common import read_telemetry
from controller.service.control import request
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.policy.export import PolicyDirectory
from models.policy.sac import SAC
from models.registry import ModelDirectory
from sim_bridge import protocol as p
from sim_bridge.link import BridgeLink, RobotSpec

SPEC = RobotSpec("bench", "cartpole-swingup", 4, 1, (-1.0,), (1.0,), 0.04)
TINY_PLAN = ["planner.population=20", "planner.horizon=5", "planner.iterations=1"]


@dataclass(frozen=True)
class Phase:
    model: bool
    """A model (and for planner "policy", a policy) in the model directory."""
    store: list[str] | None = field(default_factory=list)
    """The service's store flags; None: no store."""
    telemetry: bool = False
    """A thread of this process subscribes to the telemetry."""
    planner: str = "cem"
    dashboard: bool = False
    """``tickmpc dashboard`` follows the service."""
    page: bool = False
    """... with its page open in headless Chromium, on this machine."""


PHASES = {
    "explore": Phase(model=False),
    "planner": Phase(model=True),
    "planner-nostore": Phase(model=True, store=None),
    "planner-durable": Phase(model=True, store=["--durable"]),
    "planner-telemetry": Phase(model=True, telemetry=True),
    "policy": Phase(model=True, planner="policy"),
    "planner-dashboard": Phase(model=True, dashboard=True),
    "planner-dashboard-page": Phase(model=True, dashboard=True, page=True),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(root: Path, ph: Phase, transport: str) -> tuple[subprocess.Popen[bytes], str, str, str]:
    if transport == "ipc":
        endpoint, control, telemetry = (f"ipc://{root}/{name}" for name in ("r", "c", "t"))
    else:
        endpoint, control, telemetry = (f"tcp://127.0.0.1:{_port()}" for _ in range(3))
    cmd = [sys.executable, "-m", "controller.cli", "serve", "--endpoint", endpoint]
    cmd += ["--control", control, "--telemetry", telemetry]
    if ph.store is not None:
        cmd += ["--store", str(root / "store"), *ph.store]
    if ph.model:
        cmd += ["--models", str(root / "models")]
    for setting in [*TINY_PLAN, f"planner.planner={ph.planner}"]:
        cmd += ["--set", setting]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, endpoint, control, telemetry


class Page:
    """``tickmpc dashboard`` in a subprocess and its page in headless Chromium (when there is
    one: the page's polling goes through the dashboard process either way)."""

    def __init__(self, control: str, telemetry: str) -> None:
        cmd = [sys.executable, "-m", "controller.cli", "dashboard", "--port", "0",
               "--control", control, "--telemetry", telemetry]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().split()[-1]
        self.driver: Any = None

    def open(self) -> None:
        from controller.dashboard import browser

        if browser.missing() is None:
            self.driver = browser.chromium()
            self.driver.get(self.url)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not self.driver.execute_script(
                "return document.getElementById('connection').textContent === 'live'"
            ):
                time.sleep(0.1)

    def ticks_seen(self, robot: str) -> int:
        """The ticks of ``robot`` the dashboard received, as it reports them."""
        with urllib.request.urlopen(self.url + "api/state", timeout=10) as reply:
            return int(json.load(reply)["stats"][robot]["received"])

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
        self.process.terminate()
        self.process.wait(timeout=30)


def phase(name: str, ticks: int, transport: str) -> dict[str, Any]:
    ph = PHASES[name]
    stop, received = threading.Event(), list[dict[str, Any]]()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if ph.model:
            config = EnsembleConfig(
                obs_dim=4, act_dim=1, preprocess={"kind": "sincos", "angle_indices": [1]}
            )
            ModelDirectory(root / "models").publish(GaussianEnsemble(config))
        if ph.planner == "policy":
            agent = SAC(4, 1, np.array(SPEC.action_low), np.array(SPEC.action_high))
            PolicyDirectory(root / "models").publish(
                agent, model_version=1, updates=0, real_rows=0, rollout_length=0
            )
        proc, endpoint, control, telemetry = _serve(root, ph, transport)
        link = BridgeLink(endpoint, SPEC, "lockstep")
        if ph.telemetry:
            read_telemetry(telemetry, stop, received.append)
        page = Page(control, telemetry) if ph.dashboard else None
        try:
            link.connect(120.0)
            if page is not None and ph.page:
                page.open()
            rng = np.random.default_rng(0)
            planners: set[str] = set()
            warmup = min(200, ticks // 5)
            for step in range(warmup + ticks):
                if step == warmup:
                    link.stats.round_trip_s.clear()
                    link.stats.plan_s.clear()
                obs = rng.standard_normal(4)
                applied = {} if step == 0 else {"applied": rng.uniform(-1, 1, 1)}
                state = link.message(p.STATE, 1, step=step, reward=0.0, terminated=False,
                                     truncated=False, obs=obs, **applied)  # fmt: skip
                link.send(state)
                while True:
                    reply = link.receive(10.0)
                    if reply is None:
                        raise RuntimeError("the service stopped answering")
                    if reply.type == p.ACTION and reply["answers"] == state.seq:
                        break
                if step >= warmup:
                    planners.add(reply["planner"])
            status = request(control, "status")
            seen = page.ticks_seen("bench") if page is not None else None
        finally:
            if page is not None:
                page.close()
            stop.set()
            link.close()
            proc.terminate()
            proc.wait(timeout=30)
    if ph.model and planners != {ph.planner}:  # a phase must measure what it is named for
        raise RuntimeError(f"phase {name}: the ACTIONs came from {sorted(planners)}")
    dashboard = None if page is None else {"page_open": page.driver is not None, "ticks_seen": seen}
    rt = np.asarray(link.stats.round_trip_s) * 1e6
    plan = np.asarray(link.stats.plan_s) * 1e6
    over = rt - plan
    robot = status["robots"]["bench"]
    return {
        "phase": name,
        "transport": transport,
        "ticks": len(over),
        "p50_us": round(float(np.percentile(over, 50)), 1),
        "p99_us": round(float(np.percentile(over, 99)), 1),
        "max_us": round(float(over.max()), 1),
        "round_trip_p50_us": round(float(np.percentile(rt, 50)), 1),
        "plan_p50_us": round(float(np.percentile(plan, 50)), 1),
        "plan_p99_us": round(float(np.percentile(plan, 99)), 1),
        "dropped": int(robot["dropped_stale"]),
        "recorded": int(status["transitions"]),
        "telemetry_records": len(received),
        "dashboard": dashboard,
        "model_version": int(robot["model_version"]),
        "policy_version": int(status["policy_version"]),
        "planners": sorted(planners),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks, same code path")
    parser.add_argument("--ticks", type=int, default=None, help="ticks per phase")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every phase, interleaved; medians reported")  # fmt: skip
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of {list(PHASES)}")  # fmt: skip
    args = parser.parse_args()
    names = [n for n in args.phases.split(",") if n]
    if unknown := sorted(set(names) - set(PHASES)):
        parser.error(f"unknown phases {unknown}; phases: {list(PHASES)}")
    ticks = args.ticks or (500 if args.quick else 4000)
    rounds = args.rounds or (1 if args.quick else 3)
    # Interleaved rounds: a p99 over a few thousand ticks on a shared 2-core machine moves by
    # 100-300 us from run to run, more than the differences between the phases.
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            r = phase(name, ticks, args.transport)
            runs[name].append(r)
            print(f"{name:17s} overhead p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us  "
                  f"max {r['max_us']:8.1f} us  (round trip p50 {r['round_trip_p50_us']:.0f} "
                  f"us, plan p50 {r['plan_p50_us']:.0f} us p99 {r['plan_p99_us']:.0f} us, "
                  f"{r['ticks']} ticks, dropped {r['dropped']}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    results = [
        {"phase": name, "rounds": len(rs),
         **{k: round(float(np.median([r[k] for r in rs])), 1)
            for k in ("p50_us", "p99_us", "plan_p50_us", "plan_p99_us")},
         "p99_us_each": [r["p99_us"] for r in rs], "dropped": sum(r["dropped"] for r in rs)}
        for name, rs in runs.items()
    ]  # fmt: skip
    for r in results:
        print(f"median of {r['rounds']}: {r['phase']:17s} p50 {r['p50_us']:7.1f} us  "
              f"p99 {r['p99_us']:7.1f} us  plan p50 {r['plan_p50_us'] / 1000:.3f} ms "
              f"p99 {r['plan_p99_us'] / 1000:.3f} ms")  # fmt: skip
    by_name = {r["phase"]: r for r in results}
    head = by_name.get("planner", results[0])
    figures: dict[str, Any] = {}
    if "planner" in by_name and "planner-dashboard" in by_name:
        # The dashboard's cost: its phase against the planner phase of the same rounds.
        figures["dashboard_p99_delta_us"] = round(
            by_name["planner-dashboard"]["p99_us"] - by_name["planner"]["p99_us"], 1
        )
        figures["dashboard_target_delta_us"] = 500.0
        figures["dashboard"] = [r["dashboard"] for r in runs["planner-dashboard"]]
    if "planner" in by_name and "planner-dashboard-page" in by_name:
        figures["dashboard_page_p99_delta_us"] = round(
            by_name["planner-dashboard-page"]["p99_us"] - by_name["planner"]["p99_us"], 1
        )
    print(json.dumps({
        "p50_us": head["p50_us"], "p99_us": head["p99_us"], "ticks": ticks, "rounds": rounds,
        "dropped": head["dropped"], "target_p99_us": 500.0, **figures, "phases": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
