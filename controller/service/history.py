"""The service's learning history, which the ``history`` control command returns (a dashboard's
learning curve): the episodes its robots ended and their returns, the model and policy versions
as they went live (a model with the holdout metrics its file carries), and what was refused on
the way: the candidates the learner's gate rejected and the versions the service could not load.

What the service sees happen is kept as it happens, in memory and bounded. The learner's
refusals happen in another process, which sets each refused candidate aside in the model
directory (:meth:`models.registry.ModelDirectory.set_aside`, which owns that format); they are
read with :class:`models.registry.Refusals` when the history is asked for, each file once.

The limits below keep a reply under 1 MB: every list full is about 0.28 MB with ASCII robot ids
and reasons, and 0.77 MB in the worst case, where every character of them is one JSON escapes to
twelve bytes (tests/controller/test_history.py builds it).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.service.model_watch import VersionWatcher
from models.export import ModelMetadata
from models.registry import ModelDirectory
from sim_bridge.protocol import control_reply

log = logging.getLogger(__name__)
EPISODES_KEPT = 1000
"""Episodes in a reply: the most recent."""
VERSIONS_KEPT = 1000
"""Model versions, and policy versions, in a reply: the most recent."""
REJECTIONS_KEPT = 100
"""Refusals in a reply: the most recent."""
REASON_CHARS = 300
"""A refusal's reason is cut to this many characters (an exception's text can be long)."""


class History:
    """What the service served and refused, for the ``history`` reply; ``models``: the model
    directory, whose ``rejected/`` holds the learner's refusals (None: no model directory)."""

    def __init__(self, models: Path | None) -> None:
        self.episodes: deque[dict[str, Any]] = deque(maxlen=EPISODES_KEPT)
        self.models: deque[dict[str, Any]] = deque(maxlen=VERSIONS_KEPT)
        self.policies: deque[dict[str, Any]] = deque(maxlen=VERSIONS_KEPT)
        self.candidates = ModelDirectory(models).refusals() if models is not None else None
        self._changes = 0
        """Counts what was added, so a reply is encoded again only when it changed."""
        self._encoded: tuple[tuple[Any, ...], bytes] | None = None

    def episode_ended(self, robot: str, episode: int, episode_return: float, steps: int) -> None:
        """A robot ended an episode (its EPISODE ``end`` was read now); ``episode`` is the
        service-wide number, ``episode_return`` the service's sum of its rewards."""
        self._changes += 1
        self.episodes.append(
            {
                "robot": robot,
                "episode": episode,
                "return": finite_or_none(episode_return),
                "steps": steps,
                "time": time.time(),
            }
        )

    def model_live(self, version: int, metadata: ModelMetadata) -> None:
        """Model ``version`` (whose file says ``metadata``) serves from now on. The version
        serving, composed again with a new policy, is not a new entry."""
        if self.models and self.models[-1]["version"] == version:
            return
        self._changes += 1
        # The file's own JSON: a holdout that is not an object is shown as none, not raised
        # into the model swap.
        holdout = metadata.holdout if isinstance(metadata.holdout, Mapping) else {}
        rows = metadata.train_rows
        self.models.append(
            {
                "version": version,
                "time": time.time(),
                "holdout_mse": finite_or_none(holdout.get("holdout_mse")),
                "holdout_nll": finite_or_none(holdout.get("holdout_nll")),
                # 0: exported without saying how many rows it was trained on
                "train_rows": rows if isinstance(rows, int) and rows > 0 else None,
            }
        )

    def policy_live(self, version: int) -> None:
        """Policy ``version`` acts from now on."""
        self._changes += 1
        self.policies.append({"version": version, "time": time.time()})

    def encoded(
        self,
        task: str,
        reference_return: float | None,
        task_weights: Mapping[str, float],
        refused: Mapping[str, VersionWatcher[Any] | None],
    ) -> bytes:
        """The ``history`` reply frame, encoded again only when something was added: a full
        reply takes milliseconds to build, and it is answered between the robots' ticks."""
        candidates = self._candidates()
        key = (self._changes, task, reference_return, tuple(task_weights.items()), candidates,
               tuple(len(w.rejected) for w in refused.values() if w is not None))  # fmt: skip
        if self._encoded is None or self._encoded[0] != key:
            reply = self._reply(task, reference_return, task_weights, refused, list(candidates))
            self._encoded = (key, control_reply(**reply))
        return self._encoded[1]

    def _candidates(self) -> tuple[dict[str, Any], ...]:
        if self.candidates is None:
            return ()
        return tuple({"what": "candidate", "version": None, "reason": r.reason[:REASON_CHARS],
                      "time": r.time} for r in self.candidates.read())  # fmt: skip

    def reply(
        self,
        task: str,
        reference_return: float | None,
        task_weights: Mapping[str, float],
        refused: Mapping[str, VersionWatcher[Any] | None],
    ) -> dict[str, Any]:
        """The ``history`` reply's fields (sim_bridge.protocol.HISTORY_FIELDS): ``refused``
        maps "model" and "policy" to the watcher whose refusals are listed as such."""
        return self._reply(task, reference_return, task_weights, refused,
                           list(self._candidates()))  # fmt: skip

    def _reply(
        self,
        task: str,
        reference_return: float | None,
        task_weights: Mapping[str, float],
        refused: Mapping[str, VersionWatcher[Any] | None],
        rejected: list[dict[str, Any]],
    ) -> dict[str, Any]:
        for what, watcher in refused.items():
            if watcher is None:
                continue
            # Copies first (the watcher's thread adds to them); the time is set before the
            # reason, so every version read here has its time.
            reasons = dict(watcher.rejected)
            times = dict(watcher.rejected_at)
            rejected += [{"what": what, "version": version, "reason": reason[:REASON_CHARS],
                          "time": times.get(version)}
                         for version, reason in reasons.items()]  # fmt: skip
        rejected.sort(key=lambda r: (r["time"] is not None, r["time"] or 0.0))
        return {
            "task": task,
            "reference_return": finite_or_none(reference_return),
            "task_weights": dict(task_weights),
            "episodes": list(self.episodes),
            "models": list(self.models),
            "policies": list(self.policies),
            "rejected": rejected[-REJECTIONS_KEPT:],
        }


def finite_or_none(value: object) -> float | None:
    """``value`` as a float if it is a finite number, else None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None
