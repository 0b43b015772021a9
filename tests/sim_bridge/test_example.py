"""examples/hardware_bridge.py runs as a user would run it, and its bridge passes the checker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
