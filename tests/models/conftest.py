"""Fixtures of the model tests: store writer processes that a test can read from and kill."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


class Proc:
    """A store_writer_proc process; its stdout lines arrive on a queue (so waits can time out)."""

    def __init__(self, path: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "tests.models.store_writer_proc", str(path), *args]
        self.p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.strip())

    def wait_for(self, word: str, at_least: int = 0, timeout: float = 15.0) -> int:
        """Consume lines until '<word> <n>' with n >= at_least; returns the last 'flushed' n."""
        deadline, flushed = time.monotonic() + timeout, 0
        while True:
            try:
                kind, n = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)).split()
            except queue.Empty:
                raise AssertionError(f"writer process: no '{word}' line in {timeout} s") from None
            flushed = int(n) if kind == "flushed" else flushed
            if kind == word and int(n) >= at_least:
                return flushed if word == "flushed" else int(n)

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        assert self.p.wait(timeout=10) == -signal.SIGKILL


@pytest.fixture
def proc_factory() -> Iterator[Any]:
    procs: list[Proc] = []

    def start(path: Path, *args: str) -> Proc:
        procs.append(Proc(path, *args))
        return procs[-1]

    yield start
    for pr in procs:
        if pr.p.poll() is None:
            pr.kill9()
