"""The learner: retrains the ensemble from the transition store while the controller runs.

It runs as its own process (``tickmpc learn``), so training never holds the planning loop, with
torch limited to ``torch_threads`` so the planner keeps its cores. It follows the store the
controller is writing; when ``retrain_every`` new transitions have arrived (``min_transitions``
for the first model) it trains on all of them, warm-starting from its current weights with the
normalization refit, exports the candidate to ONNX and checks it through ONNX Runtime:

- finite outputs on a check batch (the newest transitions and 10x-scaled states);
- one-step error (worst-dim normalized MSE) on the newest ``gate_rows`` transitions not worse
  than the current model's on the same rows by more than ``gate_margin`` (relative).

Those newest rows are new to the current model and mostly seen by the candidate, so the gate
favours the candidate: it is there to catch a diverged or broken training, not to rank close
models. A passing candidate becomes the next version in the model directory, and ``on_publish``
is called with it (``tickmpc learn --announce`` tells the service over its control socket, so it
loads the version at once); a failing one is kept under ``rejected/`` and logged.
The torch weights of each version are kept beside it (``vNNNNNN.pt``), so a restarted learner
warm-starts from the newest one. The store is the single source of real data; model-generated
rollouts (MBPO) can be added as another consumer of the current model.

Stopping and announcing, decided so that a dying service costs the learner nothing:

- A stop request (``stop_event``; ``tickmpc learn`` sets it on SIGTERM, which is how it hears
  that the service died) interrupts a running retrain within one gradient step: the training
  loop checks the event, and a retrain stopped in training, or while its candidate was being
  exported and checked, publishes nothing, records no Retrain and is logged at INFO, not as a
  failure. Finishing it instead would hold shutdown for up to ``max_seconds`` (60 s) to
  publish a model nobody is waiting for; the store keeps the rows, so a restarted learner
  trains on them anyway.
- Announcing is a courtesy, so it is published quietly: an ``on_publish`` that raises (a
  TimeoutError when no service answers) costs one WARNING line without a traceback, and the
  learner goes on. The version is already in the model directory by then, and the service
  polls that directory and reads it on start, so it finds the version without the announcement.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.evaluate import one_step_metrics
from models.export import export_ensemble
from models.registry import ModelDirectory, ModelVersion
from models.runtime import OnnxEnsemble, RuntimeOptions
from models.store import TransitionReader, follow
from models.train import TrainConfig, train_ensemble
from models.transitions import Transitions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerConfig:
    """Everything the learner does; saved in the run's config.toml."""

    members: int = 5
    hidden_layers: int = 3
    hidden_units: int = 200
    min_transitions: int = 200
    """Transitions before the first model (until then the controller acts randomly)."""
    retrain_every: int = 200
    """New transitions that trigger a retrain (one cartpole episode by default)."""
    retrain_at_episode_end: bool = True
    """Also retrain when a stored episode ended (terminated or truncated) since the last
    retrain, however few rows it added: tasks whose episodes end early (InvertedPendulum) get a
    model after every episode, as PETS trains after every trial."""
    max_epochs: int = 200
    """Epochs per retrain (holdout early stopping usually ends it sooner). With a few hundred
    rows an epoch is two or three gradient steps: 15 epochs on 400 cartpole rows left a model
    worse than predicting the mean delta, 60 epochs one ten times better."""
    max_seconds: float = 60.0
    """Wall-clock cap per retrain."""
    gate_rows: int = 400
    """Newest transitions the candidate and the current model are compared on."""
    gate_margin: float = 0.5
    """A candidate may be this much (relative) worse than the current model and still go live."""
    torch_threads: int = 1
    poll_s: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("members", "hidden_layers", "hidden_units", "min_transitions",
                     "retrain_every", "max_epochs", "gate_rows", "torch_threads"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.retrain_at_episode_end, bool):
            raise ValueError(f"retrain_at_episode_end must be true or false, "
                             f"got {self.retrain_at_episode_end!r}")  # fmt: skip
        if not (self.max_seconds > 0 and self.gate_margin >= 0 and self.poll_s > 0):
            raise ValueError("max_seconds and poll_s must be > 0, gate_margin >= 0")


@dataclass(frozen=True)
class Retrain:
    """One retrain, as written to the learner's metrics (one JSON line each)."""

    rows: int
    """Transitions trained on."""
    seconds: float
    epochs: int
    holdout_mse: float
    gate_nmse: float
    """The candidate's worst-dim normalized one-step MSE on the newest rows."""
    current_nmse: float | None
    """The current model's on the same rows (None for the first model)."""
    accepted: bool
    reason: str
    version: int | None
    """The published version, or None when rejected."""
    wall_time: float


class Learner:
    """Follows the store at ``store`` and publishes models into ``models``."""

    def __init__(
        self,
        store: Path,
        models: Path,
        config: LearnerConfig,
        *,
        preprocess: Mapping[str, Any] | None = None,
        metrics: Path | None = None,
        on_publish: Callable[[ModelVersion], None] | None = None,
    ) -> None:
        self.store, self.config, self.metrics = Path(store), config, metrics
        self.preprocess = dict(preprocess or {})
        """The task's observation preprocessing (see models.preprocess), baked into every
        exported version: it belongs to the task, not to the learner's settings."""
        self.on_publish = on_publish
        self.directory = ModelDirectory(models)
        self.stop_event = threading.Event()
        self.model: GaussianEnsemble | None = None
        self.trained_rows = 0
        self.history: list[Retrain] = []
        self._store_reader: TransitionReader | None = None
        self._resume()

    def run(self, max_retrains: int | None = None) -> list[Retrain]:
        """Retrain whenever enough new data arrived, until ``stop_event`` (or ``max_retrains``)."""
        torch.set_num_threads(self.config.torch_threads)
        done = 0
        while not self.stop_event.is_set() and (max_retrains is None or done < max_retrains):
            if self.step():
                done += 1
            else:
                self.stop_event.wait(self.config.poll_s)
        return self.history

    def step(self) -> bool:
        """Retrain once if enough new transitions arrived; True if it did (to the end)."""
        reader = self._reader()
        if reader is None:
            return False
        rows = len(reader)
        if not self._due(reader, rows):
            return False
        return self.retrain(reader.read(0, rows)) is not None

    def _due(self, reader: TransitionReader, rows: int) -> bool:
        new = rows - self.trained_rows
        if self.model is None:  # after a rejected first candidate, wait for as many again
            return new >= self.config.min_transitions
        if new >= self.config.retrain_every:
            return True
        if not self.config.retrain_at_episode_end or new <= 0:
            return False
        fresh = reader.read(self.trained_rows, rows)
        return bool(fresh.terminated.any() or fresh.truncated.any())

    def retrain_now(self) -> Retrain | None:
        """Retrain on everything in the store now, whatever arrived since the last time (None
        if a stop request interrupted it)."""
        reader = self._reader()
        if reader is None:
            raise FileNotFoundError(f"no transition store at {self.store}")
        return self.retrain(reader.read(0, len(reader)))

    def _reader(self) -> TransitionReader | None:
        """The store's reader, opened once and then refreshed (see models.store.follow)."""
        self._store_reader = follow(self.store, self._store_reader)
        return self._store_reader

    def retrain(self, data: Transitions) -> Retrain | None:
        """Train on ``data``, check the candidate and publish it or set it aside.

        Returns None, having published and recorded nothing, when ``stop_event`` was set
        during the retrain.
        """
        c = self.config
        started = time.perf_counter()
        model_config = EnsembleConfig(
            obs_dim=data.obs.shape[1], act_dim=data.act.shape[1], members=c.members,
            hidden_layers=c.hidden_layers, hidden_units=c.hidden_units, preprocess=self.preprocess,
        )  # fmt: skip
        init = self.model if self.model is not None and self.model.config == model_config else None
        train = TrainConfig(max_epochs=c.max_epochs, max_seconds=c.max_seconds,
                            seed=c.seed + len(self.history))  # fmt: skip
        log.info("retraining on %d rows", len(data))
        model, report = train_ensemble(
            data.obs, data.act, data.next_obs, model_config=model_config, config=train,
            init=init, stop=self.stop_event,
        )  # fmt: skip
        if report.stopped_by == "stop":
            log.info("retrain on %d rows stopped in training: nothing published", len(data))
            return None
        gate = data[slice(max(len(data) - c.gate_rows, 0), len(data))]
        self.directory.root.mkdir(parents=True, exist_ok=True)
        candidate = self.directory.root / f".candidate-{os.getpid()}.onnx"
        holdout = {"holdout_nll": report.holdout_nll, "holdout_mse": report.holdout_mse}
        try:
            export_ensemble(model, candidate, train_rows=report.train_rows, holdout=holdout,
                            member_batched=True, extra={"store_rows": len(data)})  # fmt: skip
            accepted, reason, new_nmse, old_nmse = self._gate(candidate, gate)
            if self.stop_event.is_set():  # export and gate take seconds
                log.info("retrain on %d rows stopped before publishing: nothing published",
                         len(data))  # fmt: skip
                return None
            version: int | None = None
            if accepted:
                version = self._publish(candidate, model)
            else:
                rejected = self.directory.root / "rejected"
                rejected.mkdir(exist_ok=True)
                os.replace(candidate, rejected / f"rows{len(data):08d}-{int(time.time())}.onnx")
                log.warning("candidate on %d rows rejected: %s", len(data), reason)
        finally:
            candidate.unlink(missing_ok=True)
        self.trained_rows = len(data)
        result = Retrain(
            rows=len(data), seconds=time.perf_counter() - started, epochs=report.epochs,
            holdout_mse=report.holdout_mse, gate_nmse=new_nmse, current_nmse=old_nmse,
            accepted=accepted, reason=reason, version=version, wall_time=time.time(),
        )  # fmt: skip
        self.history.append(result)
        if self.metrics is not None:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(asdict(result)) + "\n")
        log.info("retrain on %d rows: version %s (%s)", len(data), version, reason)
        return result

    def _publish(self, candidate: Path, model: GaussianEnsemble) -> int:
        """Adopt the checked candidate as the next version, then announce it quietly."""
        published = self.directory.adopt(candidate)
        torch.save(model.state_dict(), published.path.with_suffix(".pt"))
        self.model = model
        if self.on_publish is not None:
            try:
                self.on_publish(published)
            except Exception as exc:  # the service finds the version in the directory anyway
                log.warning("v%d published, but announcing it failed (%s: %s); the service "
                            "will find it in %s", published.version, type(exc).__name__, exc,
                            self.directory.root)  # fmt: skip
        return published.version

    def _gate(self, candidate: Path, gate: Transitions) -> tuple[bool, str, float, float | None]:
        options = RuntimeOptions(intra_op_threads=self.config.torch_threads, spin=False)
        runtime = OnnxEnsemble(candidate, options=options)
        far = np.concatenate([gate.obs, gate.obs * 10.0])
        outputs = runtime.predict(far, np.concatenate([gate.act, gate.act]))
        if not all(np.isfinite(o).all() for o in outputs):
            return False, "non-finite outputs on the check batch", math.nan, None
        new = one_step_metrics(runtime, gate.obs, gate.act, gate.next_obs).nmse
        latest = self.directory.latest()
        if latest is None:
            return True, "first model", new, None
        try:
            old_runtime = OnnxEnsemble(latest.path, options=options)
            old = one_step_metrics(old_runtime, gate.obs, gate.act, gate.next_obs).nmse
        except Exception as exc:  # an unreadable current model must not block a good new one
            return True, f"current model unreadable ({exc})", new, None
        if not new <= old * (1.0 + self.config.gate_margin):
            limit = f"{old:.3g} x {1 + self.config.gate_margin}"
            return False, f"one-step nmse {new:.3g} > {limit}", new, old
        return True, f"one-step nmse {new:.3g} vs current {old:.3g}", new, old

    def _resume(self) -> None:
        """Warm-start from the newest published version's weights, if there are any."""
        latest = self.directory.latest()
        if latest is None or not latest.path.with_suffix(".pt").exists():
            return
        try:
            state = torch.load(latest.path.with_suffix(".pt"), weights_only=True)
            cfg = OnnxEnsemble(latest.path).metadata
            model = GaussianEnsemble(cfg.config)
            model.load_state_dict(state)
        except Exception as exc:  # corrupt weights: train from scratch instead
            log.warning("cannot resume from %s: %s", latest.path, exc)
            return
        self.model = model
        self.trained_rows = int(cfg.extra.get("store_rows", 0))
        log.info("resuming from model v%d", latest.version)


__all__ = ["Learner", "LearnerConfig", "ModelVersion", "Retrain"]
