"""Smoke test of the embedded default: `tickmpc run` starts the real three-process loop (service
and learner as subprocesses, the MuJoCo bridge in the CLI), learns, swaps models and stops."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from controller.run import RunDir
from controller.tasks import get_task
from models.progress import read_records
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
from models.store import TransitionReader
from sim_bridge import lifeline

pytestmark = pytest.mark.slow  # whole `tickmpc run` processes: 12-66 s a test

EPISODES, STEPS = 4, 200
MARGIN = 20.0
"""The default run (CEM H25 N200 x3, 3x200 model) at episode 4 returned 163, 81, 170, 70 and 37
on seeds 0-4 (benchmarks/learning_curve.py), random actions 0.1-1.4; smaller planners or
shorter episodes were not reliably better than random by episode 4 (seed 0 of H15 N100 x2 made
91, seeds 1 and 2 made 0.6 and 15)."""


def test_tickmpc_run_learns_swaps_models_records_and_stops_cleanly(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--episodes", str(EPISODES),
         "--run-dir", str(run.root), "--dashboard", "--set", "run.dashboard_port=0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "processes exited: {'serve': 0, 'learn': 0}" in out.stdout
    page = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", out.stdout)
    assert page is not None, out.stdout  # served while the run ran (tests/.../test_dashboard.py)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", int(page.group(1))))  # and stopped with it
    assert run.learning_curve.stat().st_size > 10_000
    assert run.config.exists()
    data = TransitionReader(run.store).read_all()
    assert len(data.obs) == EPISODES * STEPS
    retrains = read_records(run.learner_metrics)
    assert len(retrains) >= EPISODES - 1 and all(r["accepted"] for r in retrains)
    assert ModelDirectory(run.models).versions()[-1] >= EPISODES - 1
    episodes = run.episode_lines()
    assert [e["model_version"] for e in episodes] == list(range(EPISODES))  # swapped each time
    ticks = run.tick_lines()
    assert {t["model_version"] for t in ticks} >= {0, 1}
    assert all(e["return"] is not None and e["steps"] == STEPS for e in episodes)
    # The last episode, planned through the learned model, beats random actions from the same
    # initial state by MARGIN (see its note for the measured figures).
    baseline = _random_return(seed=1000 * (EPISODES - 1), steps=STEPS)
    assert episodes[-1]["return"] > baseline + MARGIN, (episodes, baseline)


def _random_return(seed: int, steps: int) -> float:
    """Return of uniform random actions from the reset the run's episode used (same seed)."""
    env = gym.make(get_task("cartpole-swingup").env_id)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(steps):
        total += float(env.step(rng.uniform(-1.0, 1.0, size=1))[1])
    env.close()
    return total


TINY = ["--hidden-units", "32", "--population", "50", "--iterations", "1", "--horizon", "10",
        "--episode-steps", "60", "--set", "learner.min_transitions=60"]  # fmt: skip


def _start_run(*args: str) -> subprocess.Popen[str]:
    """`tickmpc run` in its own process group, as a terminal would start it: with SIGINT's
    default action, which a test run started in the background by a non-interactive shell
    (``make test &``) would otherwise pass down ignored, so that Ctrl-C reached no process."""
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    end = time.monotonic() + 120
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}: "
                                 f"{proc.stdout.read() if proc.stdout else ''}")  # fmt: skip
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rows(run: RunDir) -> int:
    return len(TransitionReader(run.store)) if (run.store / "meta.json").exists() else 0


def _models(run: RunDir) -> dict[int, str]:
    directory = ModelDirectory(run.models)
    return {v: hashlib.sha256(directory.path_of(v).read_bytes()).hexdigest()
            for v in directory.versions()}  # fmt: skip


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_group_gone(pgid: int, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not _group_gone(pgid):
        assert time.monotonic() < end, "processes of the run are still alive"
        time.sleep(0.1)


def test_resume_after_kill_9_of_the_group_or_of_the_run_alone_loses_nothing_leaves_nothing(
    tmp_path: Path,
) -> None:
    """kill -9 of the whole group loses no flushed transition or model; kill -9 of ``tickmpc
    run`` alone leaves none of its children running (sim_bridge.lifeline); ``--resume`` then
    goes on, with nobody cleaning up by hand."""
    run = RunDir(tmp_path / "run")
    proc = _start_run("--episodes", "4", "--run-dir", str(run.root), "--no-videos",
                      *TINY)  # fmt: skip
    # Mid-episode 3: models exist and part of the episode is stored.
    _wait_until(lambda: run.completed() >= 2 and _rows(run) > 130, proc, "episode 3")
    os.killpg(proc.pid, signal.SIGKILL)  # the controller, the learner and the CLI at once
    proc.wait()
    _wait_group_gone(proc.pid)
    before = TransitionReader(run.store).read_all()
    models = _models(run)
    assert len(before) > 130 and max(models) >= 2
    # Telemetry is written line by line: what the run received is on disk, whole. Every
    # stored row's STATE was answered and published; a few may still have been in flight.
    ticks = run.ticks.read_text().splitlines()
    assert len([json.loads(line) for line in ticks]) >= len(before) - 3

    # The run alone is killed (not its group): its service, learner and dashboard see their
    # parent gone and stop by themselves, within a few seconds.
    orphaned = _start_run("--resume", str(run.root), "--dashboard", "--set",
                          "run.dashboard_port=0")  # fmt: skip
    _wait_until(lambda: _rows(run) > len(before) + 5, orphaned, "the resumed episode")
    children = _children(orphaned.pid)
    assert sorted(children) == ["dashboard", "learn", "serve"], children
    os.kill(orphaned.pid, signal.SIGKILL)
    orphaned.wait()
    end = time.monotonic() + lifeline.POLL_S + lifeline.GRACE_S + 2.0
    while alive := {name for name, pid in children.items() if _alive(pid)}:
        assert time.monotonic() < end, f"{sorted(alive)} outlived the run"
        time.sleep(0.1)
    assert f"parent process {orphaned.pid} is gone" in run.log("serve").read_text()

    resumed = _start_run("--resume", str(run.root), "--no-dashboard")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    after = TransitionReader(run.store).read_all()
    assert len(after) >= len(before) + 60  # at least the rerun episode 3 and episode 4
    np.testing.assert_array_equal(after.obs[: len(before)], before.obs)
    np.testing.assert_array_equal(after.act[: len(before)], before.act)
    kept = _models(run)
    assert all(kept[v] == digest for v, digest in models.items())  # every version, unchanged
    assert max(kept) > max(models)  # and the learner went on from them
    lines = run.episode_lines()
    assert [x["episode"] for x in lines] == [1, 2, 3, 4]


def test_ctrl_c_or_sigterm_stops_every_process_and_a_dead_service_ends_the_run_with_an_error(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path / "run")
    proc = _start_run("--episodes", "6", "--run-dir", str(run.root), *TINY)
    _wait_until(lambda: _rows(run) > 90, proc, "episode 2")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "resume with --resume" in out
    _wait_group_gone(proc.pid)
    # The run directory is consistent: every part reads back whole.
    assert TransitionReader(run.store).read_all().obs.shape[1] == 4
    for line in run.episodes.read_text().splitlines():
        json.loads(line)
    for version in ModelDirectory(run.models).versions():
        OnnxEnsemble(ModelDirectory(run.models).path_of(version))
    assert "[run]" in run.config.read_text()

    # Resumed, then the service alone is killed: the run stops with an error naming it, and
    # stops the learner too.
    resumed = _start_run("--resume", str(run.root))
    rows = _rows(run)
    _wait_until(lambda: _rows(run) > rows + 30, resumed, "the resumed episode")
    serve = _child_pid(resumed.pid, "serve")
    os.kill(serve, signal.SIGKILL)
    out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 1, out
    assert "serve process exited" in out
    _wait_group_gone(resumed.pid)

    # A process manager's SIGTERM, to the run alone: it stops its children as on Ctrl-C.
    again = _start_run("--resume", str(run.root), "--dashboard", "--set",
                       "run.dashboard_port=0")  # fmt: skip
    rows = _rows(run)
    _wait_until(lambda: _rows(run) > rows + 30, again, "the episode resumed again")
    again.terminate()
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 130, out
    _wait_group_gone(again.pid)


def _children(parent: int) -> dict[str, int]:
    """The pids of ``parent``'s `tickmpc <command>` children by command, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and argv[2:3] == [b"controller.cli"]:
            found[argv[3].decode()] = int(entry.name)
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process not yet reaped is not running)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _child_pid(pgid: int, command: str) -> int:
    """The pid of the run's `tickmpc <command>` child, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.getpgid(int(entry.name)) == pgid and command.encode() in argv[2:4]:
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue
    raise AssertionError(f"no {command} process in group {pgid}")


EXAMPLE_TASK = (
    Path(__file__).resolve().parents[2] / "examples" / "tasks" / "inverted_double_pendulum.py"
)
TINY_IDP = ["--no-videos", "--hidden-units", "32", "--population", "50", "--iterations", "1",
            "--horizon", "10",
            "--episode-steps", "60", "--set", "learner.min_transitions=15"]  # fmt: skip


def test_a_task_file_runs_in_every_process_and_resume_loads_the_runs_own_copy(
    tmp_path: Path,
) -> None:
    """The service, the learner and the bridge of ``tickmpc run`` all load the task file (the
    example, InvertedDoublePendulum-v5, whose random episodes end within tens of steps); the
    run directory keeps a copy and its hash; ``--resume`` loads that copy even after the
    original changed, and refuses a copy that changed."""
    task_file = tmp_path / "idp.py"
    task_file.write_bytes(EXAMPLE_TASK.read_bytes())
    run = RunDir(tmp_path / "run")
    first = _start_run("--task", str(task_file), "--episodes", "4",
                       "--run-dir", str(run.root), *TINY_IDP)  # fmt: skip
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    copy = run.task / "idp.py"
    record = json.loads(run.task_record.read_text())
    assert copy.read_bytes() == EXAMPLE_TASK.read_bytes()
    assert record["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert record["source"] == str(task_file) and record["name"] is None  # no NAME given
    assert f'task = "{copy.resolve()}"' in run.config.read_text()
    data = TransitionReader(run.store).read_all()
    assert data.obs.shape[1] == 9 and data.terminated.any()  # the robot of the task file
    served = run.log("serve").read_text().replace("\n", "")
    assert f"serving {copy.resolve()}:" in served  # the service loaded the run's copy
    assert "serving model v" in served  # and planned with the learner's models
    assert max(ModelDirectory(run.models).versions()) >= 1

    task_file.write_text("raise RuntimeError('the original was edited')\n")
    resumed = _start_run("--resume", str(run.root), "--episodes", "5")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert run.completed() == 5

    copy.write_text(copy.read_text() + "\n# edited\n")
    refused = _start_run("--resume", str(run.root), "--episodes", "6")
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "changed since the run began" in out, out


def test_a_gymnasium_id_alone_runs_the_whole_loop_with_learned_reward_and_termination(
    tmp_path: Path,
) -> None:
    """``tickmpc run --task InvertedDoublePendulum-v5``: no task in the package defines it; the
    dims, bounds, period and episode length come from the environment, and the models the
    service plans with predict the reward and the termination from what the bridge reported."""
    run = RunDir(tmp_path / "run")
    proc = _start_run("--task", "InvertedDoublePendulum-v5", "--episodes", "5",
                      "--run-dir", str(run.root), *TINY_IDP)  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert run.learning_curve.stat().st_size > 10_000
    directory = ModelDirectory(run.models)
    latest = directory.latest()
    assert latest is not None
    config = OnnxEnsemble(latest.path).metadata.config
    assert config.predict_reward and config.predict_done and config.obs_dim == 9
    retrains = read_records(run.learner_metrics)
    assert all(r["reward_nmse"] is not None and r["done_brier"] is not None for r in retrains)
    episodes = run.episode_lines()
    assert episodes[-1]["model_version"] >= 1  # the last episode was planned, not random
    data = TransitionReader(run.store).read_all()
    assert data.terminated.sum() >= 4  # the robot's own flags, which the model learned from


def test_run_with_a_policy_trains_it_beside_the_model_and_acts_with_it(tmp_path: Path) -> None:
    """`tickmpc run --policy sac --planner policy`: the learner trains the policy after every
    retrain (G updates per real row, the run waiting for them in lockstep), publishes it beside
    the models, and the service acts with it from the first policy on."""
    from models.policy.export import PolicyDirectory, read_policy

    run = RunDir(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--episodes", "3", "--run-dir",
         str(run.root), "--policy", "sac", "--planner", "policy", "--no-videos", *TINY, "--set",
         "policy.units=16", "--set", "policy.updates_per_step=2", "--set",
         "policy.rollout_batch=200", "--set", "policy.batch_size=32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = read_records(run.policy_metrics)
    # A policy after each of the 2 retrains, each caught up: 2 updates per row the model saw.
    assert [(x["real_rows"], x["updates_total"], x["owed"]) for x in lines] == [
        (60, 120, 0), (120, 240, 0)
    ]  # fmt: skip
    latest = PolicyDirectory(run.models).latest()
    assert latest is not None and latest.version == 2
    assert latest.path.with_suffix(".pt").exists()
    assert read_policy(latest.path)[1].model_version == 2
    ticks = run.tick_lines()
    by_episode: dict[int, set[str]] = {}
    for t in ticks:
        by_episode.setdefault(t["episode"], set()).add(t["planner"])
    assert by_episode[1] == {"explore"}  # no model, no policy: random
    assert by_episode[2] == by_episode[3] == {"policy"}  # lockstep waited for each policy
    assert {t["policy_version"] for t in ticks if t["episode"] == 3} == {2}


def test_run_with_a_fleet_feeds_one_store_and_learner(tmp_path: Path) -> None:
    """`tickmpc run --robots 2`: two robots run their episodes at once into one store; in
    lockstep the retrain on both comes after each round, and both robots plan with it."""
    run = RunDir(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--episodes", "4", "--robots", "2",
         "--run-dir", str(run.root), *TINY],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = run.episode_lines()
    assert [(x["episode"], x["robot"]) for x in lines] == [
        (1, "sim-0"), (2, "sim-1"), (3, "sim-0"), (4, "sim-1")
    ]  # fmt: skip
    versions = [x["model_version"] for x in lines]  # round 2 on a model of round 1's data
    assert versions[:2] == [0, 0] and versions[2] == versions[3] >= 1
    assert lines[0]["return"] != lines[1]["return"]  # their own resets
    data = TransitionReader(run.store).read_all()
    assert len(data.obs) == 4 * 60 and len(set(data.episode.tolist())) == 4
    ticks = run.tick_lines()
    planned = [t for t in ticks if t["planner"] == "cem"]
    assert {t["robot"] for t in planned} == {"sim-0", "sim-1"}
    assert any(t["batch"] == 2 for t in planned)  # planned together
    assert "sim-1" in out.stdout  # the summary names each line's robot
    # Videos (on by default): the first episode, the best so far and the last, each robot's
    # own, listed in videos/index.json and printed in the summary.
    videos = json.loads((run.videos / "index.json").read_text())
    tagged = {tag: (v["episode"], v["robot"], v["return"]) for v in videos for tag in v["tags"]}
    best = max(lines, key=lambda x: x["return"])
    assert tagged == {"first": (1, "sim-0", lines[0]["return"]),
                      "best": (best["episode"], best["robot"], best["return"]),
                      "last": (4, "sim-1", lines[3]["return"])}  # fmt: skip
    for video in videos:
        assert video["frames"] == 61 and (run.videos / video["file"]).stat().st_size
        assert str(run.videos / video["file"]) in out.stdout
