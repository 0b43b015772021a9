"""examples/hardware_bridge.py runs as a user would run it: its bridge passes the checker, and it
asks a controller what it serves."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from sim_bridge import protocol as p

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hardware_bridge.py"


def test_example_checks_itself_without_a_controller() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check", "--check-ticks", "20", "--episodes", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bridge check (realtime): ok" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(("period", "returncode"), [(0.05, 0), (0.02, 1)])
def test_example_asks_the_controller_what_it_serves(period: float, returncode: int) -> None:
    served: dict[str, Any] = {
        "task": "pendulum", "obs_dim": 3, "act_dim": 1, "control_period": period,
        "episode_steps": 200, "learns_reward": False, "action_low": (-2.0,), "action_high": (2.0,),
    }  # fmt: skip
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer() -> None:
        if router.poll(30_000):
            identity, *frames = router.recv_multipart()
            ask = p.decode(frames)
            router.send_multipart([identity, *p.encode(p.make(p.SPEC, ask.robot, **served))])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), "--describe", "--episodes", "0", "--connect", endpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        thread.join()
        router.close(linger=0)
    assert done.returncode == returncode, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[0])["served"]["control_period"] == period
