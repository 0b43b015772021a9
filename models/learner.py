"""The learner: retrains the ensemble from the transition store while the controller runs.

It runs as its own process (``tickmpc learn``), so training never holds the planning loop, with
torch limited to ``torch_threads`` so the planner keeps its cores. It follows the store the
controller is writing; when ``retrain_every`` new transitions have arrived (``min_transitions``
for the first model) it trains on all of them, warm-starting from its current weights with the
normalization refit, exports the candidate to ONNX and checks it through ONNX Runtime:

- finite outputs on a check batch (the newest transitions and 10x-scaled states): every output,
  the learned reward and done probability included;
- one-step error (worst-dim normalized MSE) on the newest ``gate_rows`` transitions not worse
  than the current model's on the same rows by more than ``gate_margin`` (relative).

Those newest rows are new to the current model and mostly seen by the candidate, so the gate
favours the candidate: it is there to catch a diverged or broken training, not to rank close
models.

What the model learns besides the state is decided by the entry point, from the task:
``predict_reward`` (the task's reward is learned from the stored rewards) and ``predict_done``
(its termination is learned from the stored ``terminated`` flags). When both the candidate and
the current model predict the reward, the reward is one more "dimension" of the worst-dim gate:
the planner ranks plans by the predicted reward, so a diverged reward head misleads it as much as
a diverged state, and the state dims cannot show it. Its squared error is divided by the
variance of the rewards over all stored rows, not over the gate rows as the state deltas are: a
controller that has learned its task collects nearly constant rewards (InvertedPendulum: 1 at
every step), and against a near-zero variance any error reads as huge and the comparison is
noise. The done probability is not gated beyond being finite: the newest rows hold a handful of
terminal rows at best (none once the controller stops failing), too few for a Brier score to
rank two models; the training report's holdout Brier score, on rows of the whole store, is in
the metrics. A passing candidate becomes the next version in the model directory, and ``on_publish``
is called with it (``tickmpc learn --announce`` tells the service over its control socket, so it
loads the version at once); a failing one is logged and set aside under ``rejected/`` with a
JSON file of why beside it (:meth:`models.registry.ModelDirectory.set_aside` owns that format).
The torch weights of each version are kept beside it (``vNNNNNN.pt``), so a restarted learner
warm-starts from the newest one. The store is the single source of real data; the policy learner
(:mod:`models.policy.trainer`, MBPO or backprop through the model) consumes each accepted
version beside it.

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

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checks import check_bool, check_int, check_number
from models.ensemble import EnsembleConfig, EnsembleShape, GaussianEnsemble
from models.evaluate import OneStepMetrics, one_step_metrics
from models.export import export_ensemble
from models.progress import append_record
from models.registry import ModelDirectory, ModelVersion
from models.runtime import OnnxEnsemble, RuntimeConfig
from models.store import TransitionReader, follow
from models.train import TrainConfig, train_ensemble
from models.transitions import Transitions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerConfig:
    """Everything the learner does (the config file's ``[learner]`` table); saved in the run's
    config.toml. The architecture and the training are their own configs, composed here."""

    model: EnsembleShape = field(default_factory=EnsembleShape)
    """The ensemble's architecture (``[learner.model]``); the task adds its dims."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_seconds=60.0))
    """Each retrain's training (``[learner.train]``): ``max_epochs`` (200: holdout early
    stopping usually ends it sooner; with a few hundred rows an epoch is two or three gradient
    steps: 15 epochs on 400 cartpole rows left a model worse than predicting the mean delta, 60
    epochs one ten times better), ``max_seconds`` (60 s per retrain here) and ``seed`` (the
    n-th retrain of a process seeds with ``seed + n``)."""
    min_transitions: int = 200
    """Transitions before the first model (until then the controller acts randomly)."""
    retrain_every: int = 200
    """New transitions that trigger a retrain (one cartpole episode by default)."""
    retrain_at_episode_end: bool = True
    """Also retrain when a stored episode ended (terminated or truncated) since the last
    retrain, however few rows it added: tasks whose episodes end early (InvertedPendulum) get a
    model after every episode, as PETS trains after every trial."""
    gate_rows: int = 400
    """Newest transitions the candidate and the current model are compared on."""
    gate_margin: float = 0.5
    """A candidate may be this much (relative) worse than the current model and still go live."""
    torch_threads: int = 1
    """Torch threads of training (and ONNX Runtime threads of the gate): the planner keeps the
    other cores."""
    poll_s: float = 0.2
    """How often the store is looked at for new transitions when nothing is due (s)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, EnsembleShape):
            raise ValueError(f"model must be an EnsembleShape, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        for name in ("min_transitions", "retrain_every", "gate_rows", "torch_threads"):
            check_int(name, getattr(self, name), 1)
        check_bool("retrain_at_episode_end", self.retrain_at_episode_end)
        check_number("gate_margin", self.gate_margin, 0.0)
        check_number("poll_s", self.poll_s, 0.0, low_open=True)


@dataclass(frozen=True)
class Retrain:
    """One retrain, as written to the learner's metrics (one JSON line each)."""

    rows: int
    """Transitions trained on."""
    seconds: float
    """Wall-clock time of the retrain (training, export and gate)."""
    epochs: int
    """Epochs trained (``TrainReport.epochs``)."""
    holdout_mse: float
    """Training holdout: mean MSE of the members (normalized deltas)."""
    reward_nmse: float | None
    """Training holdout: MSE of the members' mean reward / variance of the held-out rewards
    (None when the reward is not predicted)."""
    done_brier: float | None
    """Training holdout: Brier score of the members' mean done probability (None when the
    termination is not predicted)."""
    gate_nmse: float
    """The candidate's worst-dim normalized one-step MSE on the newest rows (the reward among
    the dims when it is compared, see the module docstring)."""
    current_nmse: float | None
    """The current model's on the same rows (None for the first model)."""
    accepted: bool
    """Whether the candidate passed the gate and was published."""
    reason: str
    """Why it was accepted or rejected (the gate's comparison)."""
    version: int | None
    """The published version, or None when rejected."""
    wall_time: float
    """When the retrain ended (UNIX seconds)."""
    current_unreadable: int = 0
    """Retrains so far (this one included) whose gate could not read the current model and so
    let the candidate through unchecked against it (each one also logged at WARNING)."""


class Learner:
    """Follows the store at ``store`` and publishes models into ``models``."""

    def __init__(
        self,
        store: Path,
        models: Path,
        config: LearnerConfig,
        *,
        preprocess: Mapping[str, Any] | None = None,
        predict_reward: bool = False,
        predict_done: bool = False,
        metrics: Path | None = None,
        on_publish: Callable[[ModelVersion], None] | None = None,
    ) -> None:
        self.store, self.config, self.metrics = Path(store), config, metrics
        self.preprocess = dict(preprocess or {})
        """The task's observation preprocessing (see models.preprocess), baked into every
        exported version: it belongs to the task, not to the learner's settings."""
        self.predict_reward = predict_reward
        """Learn the reward (the task's reward is learned): models get reward outputs."""
        self.predict_done = predict_done
        """Learn the termination (the task's termination is learned): models get done_prob."""
        self.on_publish = on_publish
        self.directory = ModelDirectory(models)
        self.stop_event = threading.Event()
        self.model: GaussianEnsemble | None = None
        self.version = 0
        """The current model's version (0: none yet)."""
        self.trained_rows = 0
        self.trained: Transitions | None = None
        """The rows of the latest retrain (None before one in this process): what a policy
        trained beside the model learns from, so it follows the model's data step for step."""
        self.history: list[Retrain] = []
        self.current_unreadable = 0
        """Gates that opened because the current model could not be read (see ``_gate``)."""
        self._store_reader: TransitionReader | None = None
        self._resume()

    def run(
        self, max_retrains: int | None = None, idle: Callable[[], bool] | None = None
    ) -> list[Retrain]:
        """Retrain whenever enough new data arrived, until ``stop_event`` (or ``max_retrains``).

        ``idle`` is called whenever no retrain is due (a policy trainer's chunk of work); it
        returns whether it did something, and the learner waits ``poll_s`` only when neither
        had anything to do."""
        torch.set_num_threads(self.config.torch_threads)
        done = 0
        while not self.stop_event.is_set() and (max_retrains is None or done < max_retrains):
            if self.step():
                done += 1
            elif idle is None or not idle():
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
        model_config = self.model_config(data.obs.shape[1], data.act.shape[1])
        init = self.model if self.model is not None and self.model.config == model_config else None
        train = replace(c.train, seed=c.train.seed + len(self.history))
        log.info("retraining on %d rows", len(data))
        model, report = train_ensemble(
            data.obs, data.act, data.next_obs,
            data.reward if self.predict_reward else None,
            data.terminated if self.predict_done else None,
            model_config=model_config, config=train, init=init, stop=self.stop_event,
        )  # fmt: skip
        if report.stopped_by == "stop":
            log.info("retrain on %d rows stopped in training: nothing published", len(data))
            return None
        gate = data[slice(max(len(data) - c.gate_rows, 0), len(data))]
        self.directory.root.mkdir(parents=True, exist_ok=True)
        candidate = self.directory.root / f".candidate-{os.getpid()}.onnx"
        holdout = {"holdout_nll": report.holdout_nll, "holdout_mse": report.holdout_mse}
        for key in ("reward_nmse", "done_brier", "done_log_loss", "done_rate"):
            if (value := getattr(report, key)) is not None:
                holdout[key] = value
        try:
            export_ensemble(model, candidate, train_rows=report.train_rows, holdout=holdout,
                            member_batched=True, extra={"store_rows": len(data)})  # fmt: skip
            reward_var = float(np.var(data.reward, dtype=np.float64))
            accepted, reason, new_nmse, old_nmse = self._gate(candidate, gate, reward_var)
            if self.stop_event.is_set():  # export and gate take seconds
                log.info("retrain on %d rows stopped before publishing: nothing published",
                         len(data))  # fmt: skip
                return None
            version: int | None = None
            if accepted:
                version = self._publish(candidate, model)
            else:
                log.warning("candidate on %d rows rejected: %s", len(data), reason)
                self.directory.set_aside(candidate, len(data), reason)
        finally:
            candidate.unlink(missing_ok=True)
        self.trained_rows, self.trained = len(data), data
        result = Retrain(
            rows=len(data), seconds=time.perf_counter() - started, epochs=report.epochs,
            holdout_mse=report.holdout_mse, reward_nmse=report.reward_nmse,
            done_brier=report.done_brier, gate_nmse=new_nmse, current_nmse=old_nmse,
            accepted=accepted, reason=reason, version=version, wall_time=time.time(),
            current_unreadable=self.current_unreadable,
        )  # fmt: skip
        self.history.append(result)
        if self.metrics is not None:
            append_record(self.metrics, asdict(result))
        log.info("retrain on %d rows: version %s (%s)", len(data), version, reason)
        return result

    def _publish(self, candidate: Path, model: GaussianEnsemble) -> int:
        """Adopt the checked candidate as the next version, then announce it quietly."""
        published = self.directory.adopt(candidate)
        torch.save(model.state_dict(), published.path.with_suffix(".pt"))
        self.model, self.version = model, published.version
        if self.on_publish is not None:
            try:
                self.on_publish(published)
            except Exception as exc:  # the service finds the version in the directory anyway
                log.warning("v%d published, but announcing it failed (%s: %s); the service "
                            "will find it in %s", published.version, type(exc).__name__, exc,
                            self.directory.root)  # fmt: skip
        return published.version

    def model_config(self, obs_dim: int, act_dim: int) -> EnsembleConfig:
        """The architecture this learner trains for S = ``obs_dim``, A = ``act_dim``."""
        return self.config.model.config(obs_dim, act_dim, predict_reward=self.predict_reward,
                                        predict_done=self.predict_done,
                                        preprocess=self.preprocess)  # fmt: skip

    def _gate(
        self, candidate: Path, gate: Transitions, reward_var: float
    ) -> tuple[bool, str, float, float | None]:
        """(accepted, reason, candidate's error, current model's error) on the ``gate`` rows;
        ``reward_var``: the variance of all stored rewards (see the module docstring)."""
        options = RuntimeConfig(intra_op_threads=self.config.torch_threads, spin=False)
        runtime = OnnxEnsemble(candidate, options=options)
        far = np.concatenate([gate.obs, gate.obs * 10.0])
        outputs = runtime.predict_named(far, np.concatenate([gate.act, gate.act]))
        if bad := [name for name, o in outputs.items() if not np.isfinite(o).all()]:
            return False, f"non-finite {', '.join(bad)} on the check batch", math.nan, None
        rows = (gate.obs, gate.act, gate.next_obs, gate.reward, gate.terminated)
        metrics = one_step_metrics(runtime, *rows, reward_var=reward_var)
        alone = _gate_error(metrics, metrics.reward_nmse is not None)
        latest = self.directory.latest()
        if latest is None:
            return True, "first model", alone, None
        try:
            old_runtime = OnnxEnsemble(latest.path, options=options)
            current = one_step_metrics(old_runtime, *rows, reward_var=reward_var)
        except Exception as exc:  # an unreadable current model must not block a good new one
            # ...but the gate checked nothing against it: say so where an operator looks.
            self.current_unreadable += 1
            log.warning("the gate cannot read the current model v%d, so the candidate goes live "
                        "unchecked against it (%d time(s) so far): %s", latest.version,
                        self.current_unreadable, exc)  # fmt: skip
            return True, f"current model unreadable ({exc})", alone, None
        # The reward is compared only when both predict it (the flags may have changed).
        reward = metrics.reward_nmse is not None and current.reward_nmse is not None
        new, old = _gate_error(metrics, reward), _gate_error(current, reward)
        what = "one-step nmse (reward included)" if reward else "one-step nmse"
        if not new <= old * (1.0 + self.config.gate_margin):
            limit = f"{old:.3g} x {1 + self.config.gate_margin}"
            return False, f"{what} {new:.3g} > {limit}", new, old
        return True, f"{what} {new:.3g} vs current {old:.3g}", new, old

    def _resume(self) -> None:
        """Warm-start from the newest published version's weights, if there are any and they
        are of the architecture this learner trains (the same outputs included): otherwise the
        learner trains from scratch, on the whole store, as soon as it holds min_transitions."""
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
        wanted = self.model_config(cfg.config.obs_dim, cfg.config.act_dim)
        if cfg.config != wanted:
            changed = sorted(k for k, v in wanted.to_dict().items() if cfg.config.to_dict()[k] != v)
            log.info("model v%d has other settings (%s) than this learner's: training from "
                     "scratch", latest.version, ", ".join(changed))  # fmt: skip
            return
        self.model, self.version = model, latest.version
        self.trained_rows = int(cfg.extra.get("store_rows", 0))
        log.info("resuming from model v%d", latest.version)


def _gate_error(metrics: OneStepMetrics, with_reward: bool) -> float:
    """The gate's error: the worst state dim's normalized MSE, or ``with_reward`` the reward's
    if that is worse."""
    if with_reward and metrics.reward_nmse is not None:
        return max(metrics.nmse, metrics.reward_nmse)
    return metrics.nmse


__all__ = ["Learner", "LearnerConfig", "ModelVersion", "Retrain"]
