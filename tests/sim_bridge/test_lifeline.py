"""Children that end with their parent (sim_bridge.lifeline): real processes, a real SIGKILL of
the parent, /proc read for what is left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim_bridge import lifeline

PARENT = """
import subprocess, sys, time
from sim_bridge.lifeline import child_env
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=child_env(),
                         stdout=open(sys.argv[2], "w"), stderr=subprocess.STDOUT)
print(child.pid, flush=True)
time.sleep(60)
"""
CHILD = """
import os, signal, sys, time
from sim_bridge.lifeline import PARENT_ENV, watch_parent
watch_parent(grace_s=1.0)
print("variable kept:", PARENT_ENV in os.environ, flush=True)
signal.signal(signal.SIGTERM, {on_term})
print("watching", flush=True)
time.sleep(60)
"""
ORDERLY = "lambda *_: (print('orderly stop', flush=True), sys.exit(0))"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process not yet reaped is not running)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _orphan(tmp_path: Path, on_term: str) -> tuple[int, float, Path]:
    """Start a parent with a watching child, SIGKILL the parent once the child watches; the
    child's pid, the time of the kill and the child's output."""
    out = tmp_path / "child.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD.format(on_term=on_term), str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    end = time.monotonic() + 30
    while "watching" not in out.read_text():
        assert time.monotonic() < end and _alive(child), out.read_text()
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    return child, time.monotonic(), out


def _gone_within(pid: int, since: float, seconds: float) -> float:
    while _alive(pid):
        assert time.monotonic() - since < seconds, f"{pid} outlived its parent by {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - since


def test_a_child_stops_in_order_once_its_parent_is_killed(tmp_path: Path) -> None:
    child, killed, out = _orphan(tmp_path, ORDERLY)
    _gone_within(child, killed, lifeline.POLL_S + 1.0)  # before the grace ran out
    log = out.read_text()
    assert "variable kept: False" in log  # its own children have another parent
    assert "is gone: stopping" in log and "orderly stop" in log  # by its SIGTERM handler


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    child, killed, out = _orphan(tmp_path, "signal.SIG_IGN")
    took = _gone_within(child, killed, lifeline.POLL_S + 1.0 + 2.0)  # grace_s=1.0
    assert took >= 1.0, took  # SIGTERM first, then the kill
    assert "is gone: stopping" in out.read_text()


@pytest.mark.parametrize(
    "entry",
    [["sim_bridge.video", "model.mjb", "job.npz", "out.webm", "--fps", "25"], ["controller.cli"]],
    ids=["render", "tickmpc"],
)
def test_a_child_whose_parent_is_already_gone_does_not_start(entry: list[str]) -> None:
    """The render process and ``python -m controller.cli`` (how ``tickmpc run`` starts the
    service, the learner and the dashboard) check the parent named before anything else."""
    gone = os.getppid()  # not the parent of the process started here
    out = subprocess.run(
        [sys.executable, "-m", *entry], capture_output=True, text=True, timeout=60,
        env={**os.environ, lifeline.PARENT_ENV: str(gone)},
    )  # fmt: skip
    assert out.returncode == 1, out
    assert f"parent process {gone} is gone: not starting" in out.stderr


def test_a_process_started_by_no_watching_parent_is_not_watched() -> None:
    env = {k: v for k, v in os.environ.items() if k != lifeline.PARENT_ENV}
    code = "from sim_bridge.lifeline import watch_parent; watch_parent(); print('ran')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "ran"
