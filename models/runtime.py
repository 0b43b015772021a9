"""ONNX Runtime session over an exported ensemble, checked before it serves.

Loading verifies, off the hot path, that the file parses, carries tickmpc metadata of a known
format, that its graph hash matches the one recorded at export (a flipped byte in the weights is
caught here, not as odd predictions later) and that its dims match what the caller expects.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.checks import check_bool, check_choice, check_int
from models.export import ModelFileError, ModelMetadata, read_verified

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
MAX_THREADS = 256
MAX_CHUNK_ROWS = 1 << 24


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run a model in ONNX Runtime."""

    device: str = "cpu"
    """"cpu"; "cuda" (CUDA execution provider, CPU with a warning when unavailable); "auto"."""
    intra_op_threads: int = 0
    """Threads inside one operator (0: ONNX Runtime's default, one per core)."""
    inter_op_threads: int = 1
    """Threads across independent operators (0..MAX_THREADS); the ensemble graph is a chain."""
    cuda_device_id: int = 0
    """Which GPU, when running on CUDA."""
    spin: bool = False
    """Let ONNX Runtime's worker threads spin-wait between operators (its own default). Spinning
    shaves wake-up latency inside a run but burns the cores for a while after it, which the
    other processes on a small machine (the bridge, the learner) feel: off by default, as the
    service runs (benchmarks/loop_latency.py); throughput benchmarks on an idle machine turn
    it on."""
    rollout_slices: int = 1
    """Rollout evaluation (controller.rollout): cut each batch of particle rows into up to this
    many slices run at once, each on its own single-threaded session (0: one per core this
    process may use on the CPU, 1 on CUDA; 1: one session with ``intra_op_threads``). Measured
    on 2 cores, E=5 4x200, H=15: 200 candidates took 7.6 ms in one 2-thread session and 6.3 ms
    as two single-threaded halves; 7,000 particle rows 204 and 167 ms. Only batches under
    ~50 rows are faster in one multi-threaded session (20 candidates: 1.8 ms against 2.2 ms
    in halves, and 2.5 ms whole on one thread); they are a few milliseconds either way. Yet one
    session is the default, as the service runs: slices are a fixed split, so a slice whose
    core is taken holds the plan up, while one session's thread pool moves work to the free
    core. Measured with realtime cartpole on 2 cores, the learner training beside it: 4.3% and
    0.9% of ticks missed their deadline with two slices (seeds 0, 1), 0.4% and 0.3% with one
    session."""
    chunk_rows: int = 1024
    """Split larger batches into runs of at most this many rows (0: never). On the CPU the
    activations of a 10^4-row batch ([E, B, 200] floats per layer) spill out of cache and the
    elementwise ops become memory-bound: measured on 2 cores, E=5 4x200, 10^4 rows ran at 51%
    of the GEMM rate in one call and at the ~70% of 10^3-row calls when chunked."""

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_int("chunk_rows", self.chunk_rows, 0, MAX_CHUNK_ROWS)
        for name in ("intra_op_threads", "inter_op_threads", "cuda_device_id", "rollout_slices"):
            check_int(name, getattr(self, name), 0, MAX_THREADS)
        check_bool("spin", self.spin)


def select_providers(options: RuntimeConfig) -> list[str | tuple[str, dict[str, object]]]:
    """Execution providers in preference order for ``options.device``."""
    available = ort.get_available_providers()
    wants_cuda = options.device in ("cuda", "auto")
    if wants_cuda and "CUDAExecutionProvider" in available:
        cuda: tuple[str, dict[str, object]] = (
            "CUDAExecutionProvider",
            {"device_id": options.cuda_device_id},
        )
        return [cuda, "CPUExecutionProvider"]
    if options.device == "cuda":
        log.warning("CUDA asked for but onnxruntime offers only %s; using CPU", available)
    return ["CPUExecutionProvider"]


def create_session(data: bytes, options: RuntimeConfig, source: str) -> ort.InferenceSession:
    """An ONNX Runtime session for the serialized graph ``data``; ``source`` names it in errors."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not options.spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, sess_options=so, providers=select_providers(options))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelFileError(f"{source}: onnxruntime refused the model: {exc}") from exc


def read_model(path: str | os.PathLike[str]) -> tuple[bytes, ModelMetadata]:
    """Read and verify a model file: returns its bytes and metadata or raises ModelFileError."""
    return read_verified(path, "model", ModelMetadata.from_props)


class OnnxEnsemble:
    """An exported ensemble ready to predict.

    ``predict(obs [B, S], act [B, A])`` returns the graph's outputs as float32 arrays, in the
    order of ``metadata.output_names``: ``next_obs_mean [E, B, S]``, ``next_obs_logvar
    [E, B, S]``, then ``reward_mean``, ``reward_logvar [E, B, 1]`` if the model predicts the
    reward, then ``done_prob [E, B, 1]`` if it predicts the termination: 2, 3, 4 or 5 arrays.
    ``predict_named`` returns the same arrays by name.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        options: RuntimeConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self.options = options or RuntimeConfig()
        data, self.metadata = read_model(self.path)
        cfg = self.metadata.config
        checks = (("obs_dim", obs_dim, cfg.obs_dim), ("act_dim", act_dim, cfg.act_dim))
        for name, expected, actual in checks:
            if expected is not None and expected != actual:
                raise ModelFileError(f"{self.path}: model has {name}={actual}, expected {expected}")
        self.session = create_session(data, self.options, str(self.path))
        self.providers: list[str] = self.session.get_providers()
        self._output_names = list(self.metadata.output_names)

    @property
    def obs_dim(self) -> int:
        return self.metadata.config.obs_dim

    @property
    def act_dim(self) -> int:
        return self.metadata.config.act_dim

    @property
    def members(self) -> int:
        return self.metadata.config.members

    def predict(self, obs: np.ndarray, act: np.ndarray) -> list[np.ndarray]:
        """Run the model; shapes are checked and inputs converted to contiguous float32.

        A member-batched model takes [E, B, ...] inputs, or [B, ...] given to every member.
        """
        lead = 2 if self.metadata.member_batched else 1
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        act = np.ascontiguousarray(act, dtype=np.float32)
        if lead == 2 and obs.ndim == 2 and act.ndim == 2:
            # Shared rows on a member-batched graph: every member gets the same batch.
            obs = np.ascontiguousarray(np.broadcast_to(obs, (self.members, *obs.shape)))
            act = np.ascontiguousarray(np.broadcast_to(act, (self.members, *act.shape)))
        for name, arr, dim in (("obs", obs, self.obs_dim), ("act", act, self.act_dim)):
            if arr.ndim != lead + 1 or arr.shape[-1] != dim:
                want = f"[E, B, {dim}]" if lead == 2 else f"[B, {dim}]"
                raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
        if obs.shape[:-1] != act.shape[:-1]:
            raise ValueError(
                f"obs and act batch shapes differ: {obs.shape[:-1]} vs {act.shape[:-1]}"
            )
        if lead == 2 and obs.shape[0] != self.members:
            raise ValueError(f"member-batched obs needs {self.members} members, got {obs.shape[0]}")
        axis = lead - 1
        batch, chunk = obs.shape[axis], self.options.chunk_rows
        if chunk == 0 or batch <= chunk:
            return [np.asarray(o) for o in self._run(obs, act)]
        parts = [self._run(obs[..., i : i + chunk, :], act[..., i : i + chunk, :])
                 for i in range(0, batch, chunk)]  # fmt: skip
        return [np.concatenate(group, axis=1) for group in zip(*parts, strict=True)]

    def predict_named(self, obs: np.ndarray, act: np.ndarray) -> dict[str, np.ndarray]:
        """``predict``'s outputs by their names (``metadata.output_names``)."""
        return dict(zip(self._output_names, self.predict(obs, act), strict=True))

    def _run(self, obs: np.ndarray, act: np.ndarray) -> list[np.ndarray]:
        # A chunk of a member-batched input is a strided view; the session wants dense buffers.
        feeds = {"obs": np.ascontiguousarray(obs), "act": np.ascontiguousarray(act)}
        return list(self.session.run(self._output_names, feeds))
