"""Smoke test of the embedded default: `tickmpc run` starts the real three-process loop (service
and learner as subprocesses, the MuJoCo bridge in the CLI), learns, swaps models and stops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.registry import ModelDirectory
from models.store import TransitionReader

EPISODES, STEPS = 4, 80


def test_tickmpc_run_learns_swaps_models_records_and_stops_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--episodes", str(EPISODES),
         "--episode-steps", str(STEPS), "--hidden-units", "64", "--population", "100",
         "--iterations", "2", "--horizon", "15", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "processes exited: {'serve': 0, 'learn': 0}" in out.stdout
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000
    assert (run_dir / "config.toml").exists()
    data = TransitionReader(run_dir / "store").read_all()
    assert len(data.obs) == EPISODES * STEPS
    retrains = [
        json.loads(x) for x in (run_dir / "metrics" / "learner.jsonl").read_text().split("\n") if x
    ]
    assert len(retrains) >= EPISODES - 1 and all(r["accepted"] for r in retrains)
    assert ModelDirectory(run_dir / "models").versions()[-1] >= EPISODES - 1
    episodes = [
        json.loads(x) for x in (run_dir / "metrics" / "episodes.jsonl").read_text().split("\n") if x
    ]
    assert [e["model_version"] for e in episodes] == list(range(EPISODES))  # swapped each time
    ticks = [
        json.loads(x) for x in (run_dir / "metrics" / "ticks.jsonl").read_text().split("\n") if x
    ]
    assert {t["model_version"] for t in ticks} >= {0, 1}
    assert all(e["return"] is not None and e["steps"] == STEPS for e in episodes)
    # Not yet asserted: that the last episode beats random actions. At this smoke-test scale
    # (80-step episodes, 64 units, 3 retrains) planned returns measured 0.5-33 against a random
    # 0.5, not reliably better; issue 5 continues there.
