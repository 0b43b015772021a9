"""Export a trained policy (SAC, or the BPTT optimizer's actor) to ONNX with its metadata;
read it back verified.

Shapes: B batch, S observation, A action.

The graph (:class:`PolicyGraph`) takes raw ``obs [B, S]`` (dynamic B) and returns ``action
[B, A]`` (the deterministic action scale(tanh(mean)), within the action bounds), ``action_std
[B, A]`` (the std of the pre-tanh Gaussian) and ``value [B]`` (the smaller of the twin online
critics at that action). Metadata (ONNX ``metadata_props``, keys prefixed ``tickmpc.``, with
``tickmpc.kind = "policy"`` so a dynamics model file is not mistaken for a policy) records the
dims, the bounds, the dynamics model version the policy was trained against, the training
counts, its evaluation, the creation time, the format version and ``graph_sha256``, which
:func:`read_policy` recomputes to refuse a corrupted file.

:class:`PolicyDirectory` keeps versioned files ``p000001.onnx``, ... with an atomic marker, the
way :class:`models.registry.ModelDirectory` keeps the dynamics models.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.checks import check_choice, check_int
from models.export import (
    PREFIX,
    ModelFileError,
    graph_sha256,
    read_verified,
    trace_to_onnx,
    write_with_metadata,
)
from models.policy.sac import Actor
from models.registry import ModelVersion, VersionedDirectory
from models.runtime import RuntimeConfig, create_session

FORMAT_VERSION = 1
KIND = "policy"
INPUT_NAMES = ("obs",)
OUTPUT_NAMES = ("action", "action_std", "value")
MAX_DIM = 4096
OPTIMIZERS = ("sac", "bptt")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Agent(Protocol):
    """What is exported: an actor, and the twin critics where the optimizer has them (SAC; the
    backprop-through-model optimizer has none)."""

    obs_dim: int
    act_dim: int
    actor: Actor


def optimizer_of(agent: Agent) -> str:
    """ "sac" for an agent with critics, "bptt" for an actor alone."""
    return "sac" if isinstance(getattr(agent, "critic", None), nn.Module) else "bptt"


class PolicyGraph(nn.Module):
    """What the exported graph computes: obs [B, S] -> action [B, A], action_std [B, A],
    value [B]. Holds CPU copies of the agent's actor and critics: a snapshot, so the agent can
    keep training (on any device) while, or after, this is exported. An agent without critics
    (BPTT) exports a value of 0, and its metadata says ``optimizer = "bptt"``."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.actor = copy.deepcopy(agent.actor).cpu().eval()
        critic = getattr(agent, "critic", None)
        self.critic = copy.deepcopy(critic).cpu().eval() if isinstance(critic, nn.Module) else None
        self.requires_grad_(False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One pass of the actor network for both outputs (mean_action and std would run it
        # twice), scaled by the actor's own _scale.
        mean, log_std = self.actor(obs)
        action = self.actor._scale(torch.tanh(mean))
        if self.critic is None:
            value = obs[:, 0] * 0.0
        else:
            value = torch.min(*self.critic(obs, action))
        return action, log_std.exp(), value


@dataclass(frozen=True)
class PolicyMetadata:
    """What an exported policy file says about itself. Validated at construction."""

    format_version: int
    obs_dim: int
    """S, 1..MAX_DIM."""
    act_dim: int
    """A, 1..MAX_DIM."""
    low: tuple[float, ...]
    """Lower action bounds [A], finite, below ``high``."""
    high: tuple[float, ...]
    """Upper action bounds [A], finite."""
    model_version: int
    """Version of the dynamics model (``ModelDirectory``) the policy was trained against, >= 0."""
    updates: int
    """SAC gradient updates behind this policy, >= 0."""
    real_rows: int
    """Real transitions collected when it was exported, >= 0."""
    rollout_length: int
    """Branched rollout length in use when it was exported, >= 0."""
    evaluation: Mapping[str, Any]
    """The policy's evaluation (e.g. its mean return), a JSON object without NaN or inf."""
    created_unix: float
    graph_sha256: str
    """sha256 of the serialized graph (64 lowercase hex digits)."""
    optimizer: str = "sac"
    """What trained it: "sac" (the value output is its critics') or "bptt" (backprop through
    the model: no critic, the value output is 0). Files without the key are SAC's."""

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format version {self.format_version}, this tickmpc reads {FORMAT_VERSION}"
            )
        for name, lo, hi in (
            ("obs_dim", 1, MAX_DIM),
            ("act_dim", 1, MAX_DIM),
            ("model_version", 0, 2**63 - 1),
            ("updates", 0, 2**63 - 1),
            ("real_rows", 0, 2**63 - 1),
            ("rollout_length", 0, 2**31 - 1),
        ):
            check_int(name, getattr(self, name), lo, hi)
        for name in ("low", "high"):
            bound = getattr(self, name)
            if len(bound) != self.act_dim or not all(_finite_number(x) for x in bound):
                raise ValueError(f"{name} must be {self.act_dim} finite numbers, got {bound!r}")
        if not all(lo < hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"action bounds need low < high, got {self.low}, {self.high}")
        if not isinstance(self.evaluation, Mapping):
            raise ValueError(f"evaluation must be a JSON object, got {self.evaluation!r}")
        json.dumps(dict(self.evaluation), allow_nan=False)  # raises ValueError/TypeError
        if not _finite_number(self.created_unix):
            raise ValueError(f"created_unix must be a finite number, got {self.created_unix!r}")
        if not isinstance(self.graph_sha256, str) or not _HEX64.match(self.graph_sha256):
            raise ValueError(f"graph_sha256 must be 64 hex digits, got {self.graph_sha256!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)

    def to_props(self) -> dict[str, str]:
        return {
            PREFIX + "kind": KIND,
            PREFIX + "format_version": str(self.format_version),
            PREFIX + "obs_dim": str(self.obs_dim),
            PREFIX + "act_dim": str(self.act_dim),
            PREFIX + "low": json.dumps(list(self.low)),
            PREFIX + "high": json.dumps(list(self.high)),
            PREFIX + "model_version": str(self.model_version),
            PREFIX + "updates": str(self.updates),
            PREFIX + "real_rows": str(self.real_rows),
            PREFIX + "rollout_length": str(self.rollout_length),
            PREFIX + "evaluation": json.dumps(dict(self.evaluation), sort_keys=True),
            PREFIX + "created_unix": repr(self.created_unix),
            PREFIX + "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_unix)),
            PREFIX + "graph_sha256": self.graph_sha256,
            PREFIX + "optimizer": self.optimizer,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> PolicyMetadata:
        """Parse and validate metadata properties; ``source`` names the file in errors."""
        kind = props.get(PREFIX + "kind")
        if kind != KIND:
            raise ModelFileError(f"{source}: not a tickmpc policy ({PREFIX}kind is {kind!r})")
        try:
            version = int(props[PREFIX + "format_version"])
            if version != FORMAT_VERSION:
                raise ModelFileError(
                    f"{source}: policy format version {version}, this tickmpc reads "
                    f"{FORMAT_VERSION}"
                )
            evaluation = json.loads(props[PREFIX + "evaluation"])
            if not isinstance(evaluation, dict):
                raise ValueError(f"evaluation must be a JSON object, got {evaluation!r}")
            return cls(
                format_version=version,
                obs_dim=int(props[PREFIX + "obs_dim"]),
                act_dim=int(props[PREFIX + "act_dim"]),
                low=_floats(props[PREFIX + "low"]),
                high=_floats(props[PREFIX + "high"]),
                model_version=int(props[PREFIX + "model_version"]),
                updates=int(props[PREFIX + "updates"]),
                real_rows=int(props[PREFIX + "real_rows"]),
                rollout_length=int(props[PREFIX + "rollout_length"]),
                evaluation=evaluation,
                created_unix=float(props[PREFIX + "created_unix"]),
                graph_sha256=props[PREFIX + "graph_sha256"],
                optimizer=props.get(PREFIX + "optimizer", "sac"),
            )
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{source}: bad tickmpc policy metadata: {exc!r}") from exc


def _finite_number(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _floats(text: str) -> tuple[float, ...]:
    values = json.loads(text)
    if not isinstance(values, list) or not all(_finite_number(x) for x in values):
        raise ValueError(f"expected a list of finite numbers, got {text!r}")
    return tuple(float(x) for x in values)


def to_onnx(agent: Agent) -> onnx.ModelProto:
    """Trace the agent's :class:`PolicyGraph` into an ONNX graph with a dynamic batch."""
    graph = PolicyGraph(agent)
    obs = torch.zeros(2, agent.obs_dim)  # B=2, not 1, so the exporter keeps B symbolic
    batch = torch.export.Dim("B", min=1, max=1 << 24)
    return trace_to_onnx(graph, (obs,), list(INPUT_NAMES), list(OUTPUT_NAMES), ({0: batch},))


def export_policy(
    agent: Agent,
    path: str | os.PathLike[str],
    *,
    model_version: int,
    updates: int,
    real_rows: int,
    rollout_length: int,
    evaluation: Mapping[str, Any] | None = None,
) -> PolicyMetadata:
    """Export ``agent``'s deterministic policy and critics (a SAC agent or a
    :class:`~models.policy.bptt.BPTTOptimizer`) to ``path`` atomically (temporary
    file, then rename); return the metadata written. Bad metadata raises ValueError before
    anything is traced or written."""
    meta = PolicyMetadata(
        format_version=FORMAT_VERSION,
        obs_dim=agent.obs_dim,
        act_dim=agent.act_dim,
        low=tuple(float(x) for x in agent.actor.low.tolist()),
        high=tuple(float(x) for x in agent.actor.high.tolist()),
        model_version=model_version,
        updates=updates,
        real_rows=real_rows,
        rollout_length=rollout_length,
        evaluation=dict(evaluation or {}),
        created_unix=time.time(),
        graph_sha256="0" * 64,  # placeholder until the graph exists
        optimizer=optimizer_of(agent),
    )
    proto = to_onnx(agent)
    meta = replace(meta, created_unix=time.time(), graph_sha256=graph_sha256(proto))
    write_with_metadata(proto, meta.to_props(), path)
    return meta


def read_policy(path: str | os.PathLike[str]) -> tuple[bytes, PolicyMetadata]:
    """Read and verify a policy file: its bytes and metadata, or ModelFileError naming it."""
    return read_verified(path, "policy", PolicyMetadata.from_props)


class PolicyRuntime:
    """An exported policy in an ONNX Runtime session (CPU by default), verified at load.

    ``act(obs)`` returns the deterministic action; ``predict(obs)`` the action, the pre-tanh
    std and the value. Both take ``obs [B, S]`` (outputs [B, A], [B, A], [B]) or one ``obs
    [S]`` (outputs [A], [A], []); results are float32.
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
        data, self.metadata = read_policy(self.path)
        meta = self.metadata
        for name, expected, actual in (
            ("obs_dim", obs_dim, meta.obs_dim),
            ("act_dim", act_dim, meta.act_dim),
        ):
            if expected is not None and expected != actual:
                raise ModelFileError(
                    f"{self.path}: policy has {name}={actual}, expected {expected}"
                )
        self.session: ort.InferenceSession = create_session(
            data, options or RuntimeConfig(), str(self.path)
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action: [B, S] -> [B, A] or [S] -> [A]."""
        return self._run(obs, OUTPUT_NAMES[:1])[0]

    def predict(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(action [B, A], action_std [B, A], value [B]), or [A], [A], [] for one obs [S]."""
        action, std, value = self._run(obs, OUTPUT_NAMES)
        return action, std, value

    def _run(self, obs: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        x = np.ascontiguousarray(obs, dtype=np.float32)
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.metadata.obs_dim or x.shape[0] == 0:
            raise ValueError(
                f"obs must be [S] or [B, S] with S={self.metadata.obs_dim} and B >= 1, "
                f"got {list(np.shape(obs))}"
            )
        out = [np.asarray(o) for o in self.session.run(list(names), {INPUT_NAMES[0]: x})]
        return [o[0] for o in out] if single else out


LATEST_POLICY = "LATEST_POLICY"


class PolicyDirectory(VersionedDirectory):
    """Versioned policy files ``p000001.onnx``, ... in one directory, and ``LATEST_POLICY``,
    safe for one writer and many readers (the mechanism of ``models.registry``).

    The marker is not named ``LATEST``: with their own file prefix, policies can live beside
    the dynamics models' ``v*.onnx`` files, whose marker that is.
    """

    prefix = "p"
    marker = LATEST_POLICY
    kind = "policy"

    def publish(
        self,
        agent: Agent,
        *,
        model_version: int,
        updates: int,
        real_rows: int,
        rollout_length: int,
        evaluation: Mapping[str, Any] | None = None,
    ) -> tuple[ModelVersion, PolicyMetadata]:
        """Export ``agent`` as the next version and point the marker at it."""
        return self._publish(
            lambda tmp: export_policy(
                agent,
                tmp,
                model_version=model_version,
                updates=updates,
                real_rows=real_rows,
                rollout_length=rollout_length,
                evaluation=evaluation,
            )
        )
