"""Follows a model directory and loads each new version off the hot path.

A background thread polls ``LATEST`` every ``poll_s`` and at once when the learner announces a
version (a ``model`` request on the control socket calls :meth:`ModelWatcher.poke`); a newer
version is read, verified, composed into rollout graphs, loaded into ONNX Runtime and run once
on a dummy batch, all in that thread. The service
then takes the ready evaluator between ticks (a pointer swap). A version that fails to load is
logged, remembered and skipped; the previous model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from controller.rollout.evaluator import RolloutEvaluator, RolloutSettings
from controller.tasks import Task
from models.registry import ModelDirectory
from models.runtime import RuntimeOptions

log = logging.getLogger(__name__)


class ModelWatcher:
    """Loads new model versions of ``root`` for ``task`` in a daemon thread."""

    def __init__(
        self, root: Path, task: Task, options: RuntimeOptions, poll_s: float = 0.5
    ) -> None:
        self.directory = ModelDirectory(root)
        self.task, self.options, self.poll_s = task, options, poll_s
        self.rejected: dict[int, str] = {}
        """Version -> why it was not loaded."""
        self._lock = threading.Lock()
        self._ready: tuple[int, RolloutEvaluator] | None = None
        self._seen = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def load_now(self) -> None:
        """Look once, in the caller's thread (used at start-up so the first tick has a model)."""
        self._check()

    def poke(self) -> None:
        """Look now rather than at the next poll (a new version was announced)."""
        self._wake.set()

    def take(self) -> tuple[int, RolloutEvaluator] | None:
        """The newest loaded (version, evaluator) not taken yet, or None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._check()

    def _check(self) -> None:
        latest = self.directory.latest()
        if latest is None or latest.version <= self._seen or latest.version in self.rejected:
            return
        try:
            evaluator = RolloutEvaluator(latest.path, self.task, options=self.options)
            obs = np.zeros(self.task.obs_dim)
            actions = np.zeros((2, 2, self.task.act_dim))
            scores = evaluator.evaluate(
                obs, actions, RolloutSettings(), np.random.default_rng(0), None
            )
            if not np.isfinite(scores).all():
                raise ValueError("it predicts non-finite returns from the zero state")
        except Exception as exc:  # any failure of a new model must leave the old one serving
            self.rejected[latest.version] = str(exc)
            log.error("model v%d rejected, keeping the current one: %s", latest.version, exc)
            return
        self._seen = latest.version
        with self._lock:
            self._ready = (latest.version, evaluator)
        log.info("model v%d loaded from %s", latest.version, latest.path)
