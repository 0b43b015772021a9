"""Export a trained :class:`GaussianEnsemble` to ONNX with its metadata.

The graph takes raw ``obs [B, S]`` and ``act [B, A]`` (dynamic B), or with ``member_batched``
``obs [E, B, S]`` and ``act [E, B, A]``, and returns per-member ``next_obs_mean [E, B, S]`` and
``next_obs_logvar [E, B, S]``, then ``reward_mean``/``reward_logvar [E, B, 1]`` if the model
predicts the reward, then ``done_prob [E, B, 1]`` (the probability that the transition ends the
episode) if it predicts the termination (:meth:`ModelMetadata.output_names_of`). Preprocessing
and normalization are inside the graph.

Metadata (ONNX ``metadata_props``, all strings, keys prefixed ``tickmpc.``) records the dims, the
member count, the training data size and holdout metrics, the creation time, a hash of the model
code, the format version and ``graph_sha256``: a hash of the serialized graph that
:mod:`models.runtime` recomputes to refuse a corrupted file. ``extra.delta_std`` [S], the scale
of each state delta, is required: the rollout's disagreement penalty divides by it, so a file
without a valid one is refused rather than read as ones (which would change the penalty's units).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import onnx
import torch
from torch import nn

from models import ensemble as _ensemble_module
from models import preprocess as _preprocess_module
from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.fileio import write_atomic

FORMAT_VERSION = 1
PREFIX = "tickmpc."
OPSET = 20


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or does not match what the caller expects."""


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model file says about itself."""

    format_version: int
    config: EnsembleConfig
    member_batched: bool
    train_rows: int
    holdout: Mapping[str, Any]
    created_unix: float
    code_sha256: str
    graph_sha256: str
    extra: Mapping[str, Any]

    @property
    def delta_std(self) -> tuple[float, ...]:
        """Scale of each state delta [S] (a learned model's target std), checked at load."""
        return tuple(float(x) for x in self.extra["delta_std"])

    @property
    def input_names(self) -> tuple[str, str]:
        return ("obs", "act")

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.output_names_of(self.config)

    @staticmethod
    def output_names_of(config: EnsembleConfig) -> tuple[str, ...]:
        """The graph's outputs, in order: the next-state Gaussian [E, B, S] twice, then the
        reward Gaussian [E, B, 1] twice if predicted, then ``done_prob [E, B, 1]`` (the
        probability the transition ends the episode) if predicted."""
        names: tuple[str, ...] = ("next_obs_mean", "next_obs_logvar")
        if config.predict_reward:
            names += ("reward_mean", "reward_logvar")
        if config.predict_done:
            names += ("done_prob",)
        return names

    def to_props(self) -> dict[str, str]:
        return {
            PREFIX + "format_version": str(self.format_version),
            PREFIX + "obs_dim": str(self.config.obs_dim),
            PREFIX + "act_dim": str(self.config.act_dim),
            PREFIX + "members": str(self.config.members),
            PREFIX + "predict_reward": json.dumps(self.config.predict_reward),
            PREFIX + "predict_done": json.dumps(self.config.predict_done),
            PREFIX + "config": json.dumps(self.config.to_dict(), sort_keys=True),
            PREFIX + "member_batched": json.dumps(self.member_batched),
            PREFIX + "train_rows": str(self.train_rows),
            PREFIX + "holdout": json.dumps(dict(self.holdout), sort_keys=True),
            PREFIX + "created_unix": repr(self.created_unix),
            PREFIX + "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_unix)),
            PREFIX + "code_sha256": self.code_sha256,
            PREFIX + "graph_sha256": self.graph_sha256,
            PREFIX + "extra": json.dumps(dict(self.extra), sort_keys=True),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> ModelMetadata:
        """Parse and validate metadata properties; ``source`` names the file in errors."""
        if PREFIX + "format_version" not in props:
            raise ModelFileError(f"{source}: not a tickmpc model (no {PREFIX}format_version)")
        try:
            version = int(props[PREFIX + "format_version"])
            if version != FORMAT_VERSION:
                raise ModelFileError(
                    f"{source}: format version {version}, this tickmpc reads {FORMAT_VERSION}"
                )
            config_dict = json.loads(props[PREFIX + "config"])
            config = EnsembleConfig(**config_dict)
            extra = json.loads(props.get(PREFIX + "extra", "{}"))
            if problem := delta_std_problem(extra, config.obs_dim):
                raise ModelFileError(f"{source}: {problem}")
            return cls(
                format_version=version,
                config=config,
                member_batched=bool(json.loads(props[PREFIX + "member_batched"])),
                train_rows=int(props[PREFIX + "train_rows"]),
                holdout=json.loads(props[PREFIX + "holdout"]),
                created_unix=float(props[PREFIX + "created_unix"]),
                code_sha256=props[PREFIX + "code_sha256"],
                graph_sha256=props[PREFIX + "graph_sha256"],
                extra=extra,
            )
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{source}: bad tickmpc metadata: {exc!r}") from exc


def delta_std_problem(extra: object, obs_dim: int) -> str | None:
    """What is wrong with the ``delta_std`` of a model's ``extra`` metadata, None if nothing:
    it must be a list of obs_dim finite numbers > 0."""
    if not isinstance(extra, Mapping) or "delta_std" not in extra:
        return "no delta_std (the scale of each state delta) in the metadata's extra"
    value = extra["delta_std"]
    if not isinstance(value, list):
        return f"delta_std must be a list of {obs_dim} numbers, got {value!r}"
    if len(value) != obs_dim:
        return f"delta_std has {len(value)} values, the model's obs_dim is {obs_dim}"
    if not all(_positive_finite(x) for x in value):
        return f"delta_std must be finite numbers > 0, got {value}"
    return None


def _positive_finite(x: object) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return 0.0 < float(x) < math.inf  # NaN compares false
    except OverflowError:  # an int beyond any float
        return False


def graph_sha256(model: onnx.ModelProto) -> str:
    """Hash of the serialized graph (nodes and weights), independent of the metadata."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def code_sha256() -> str:
    """Hash of the source that defines the exported computation."""
    digest = hashlib.sha256()
    for module in (_ensemble_module, _preprocess_module):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def config_of(model: nn.Module) -> EnsembleConfig:
    """The :class:`EnsembleConfig` a dynamics module declares as ``config``.

    Any module with a ``config`` and the ensemble's ``forward(obs, act)`` contract exports the
    same way: a trained :class:`GaussianEnsemble`, or a known model written in torch (the
    planner tests export an analytic pendulum).
    """
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, EnsembleConfig):
        raise TypeError(f"{type(model).__name__} has no EnsembleConfig `config` to export with")
    return cfg


def to_onnx(model: nn.Module, *, member_batched: bool = False) -> onnx.ModelProto:
    """Trace ``model`` into an ONNX graph with a dynamic batch dimension."""
    cfg = config_of(model)
    lead = (cfg.members, 2) if member_batched else (2,)
    obs = torch.zeros(*lead, cfg.obs_dim)
    act = torch.zeros(*lead, cfg.act_dim)
    batch = torch.export.Dim("B", min=1, max=1 << 24)
    axis = 1 if member_batched else 0
    names = list(ModelMetadata.output_names_of(cfg))
    was_training = model.training
    model.eval()
    try:
        return trace_to_onnx(
            model, (obs, act), ["obs", "act"], names, ({axis: batch}, {axis: batch})
        )
    finally:
        model.train(was_training)


def trace_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict[int, Any] | None, ...],
) -> onnx.ModelProto:
    """Export ``module`` at ``args`` with the dynamo exporter (opset OPSET, one file, quiet)."""
    # The exporter logs and warns about optional packages (torchvision) it does not need.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                None,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    assert program is not None
    return program.model_proto


def _delta_std(model: nn.Module) -> list[float]:
    """A learned ensemble's target std of the state deltas. A hand-written model predicts in
    raw units: its own ``delta_std`` attribute if it declares one, else ones."""
    if isinstance(model, GaussianEnsemble):
        return model.out_std[0, : model.config.obs_dim].tolist()
    declared = getattr(model, "delta_std", None)
    if declared is not None:
        return [float(x) for x in declared]
    return [1.0] * config_of(model).obs_dim


def export_ensemble(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    train_rows: int = 0,
    holdout: Mapping[str, Any] | None = None,
    member_batched: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    """Export ``model`` to ``path`` atomically (temporary file, then rename); return metadata.

    ``extra`` is recorded as given, after ``delta_std`` (a learned ensemble's target std, a
    hand-written module's own ``delta_std`` attribute, else ones), which it may override. A
    file without a valid ``delta_std`` would be refused at load, so none is written.
    """
    cfg = config_of(model)
    extra = {"delta_std": _delta_std(model), **(extra or {})}
    if problem := delta_std_problem(extra, cfg.obs_dim):
        raise ValueError(f"cannot export {path}: {problem}")
    proto = to_onnx(model, member_batched=member_batched)
    meta = ModelMetadata(
        format_version=FORMAT_VERSION,
        config=cfg,
        member_batched=member_batched,
        train_rows=int(train_rows),
        holdout=dict(holdout or {}),
        created_unix=time.time(),
        code_sha256=code_sha256(),
        graph_sha256=graph_sha256(proto),
        extra=extra,
    )
    write_with_metadata(proto, meta.to_props(), path)
    return meta


def write_with_metadata(
    proto: onnx.ModelProto, props: Mapping[str, str], path: str | os.PathLike[str]
) -> None:
    """Replace ``proto``'s metadata with ``props`` and write it atomically (temporary file,
    then rename): how every tickmpc ONNX file (a model, a policy) is written."""
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "tickmpc"
    write_atomic(Path(path), proto.SerializeToString())


class _Hashed(Protocol):
    @property
    def graph_sha256(self) -> str: ...


M = TypeVar("M", bound=_Hashed)


def read_verified(
    path: str | os.PathLike[str], kind: str, parse: Callable[[dict[str, str], str], M]
) -> tuple[bytes, M]:
    """Read a tickmpc ONNX file holding a ``kind`` ("model", "policy"): its bytes and its
    metadata as ``parse(props, source)`` reads it, after checking the graph against the hash
    the metadata records; ModelFileError naming the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read {kind} file: {exc.strerror}") from exc
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise ModelFileError(f"{path}: not a valid ONNX file ({exc})") from exc
    meta = parse({p.key: p.value for p in proto.metadata_props}, str(path))
    actual = graph_sha256(proto)
    if actual != meta.graph_sha256:
        raise ModelFileError(
            f"{path}: corrupt {kind}: graph hash {actual[:12]} != recorded {meta.graph_sha256[:12]}"
        )
    return data, meta
