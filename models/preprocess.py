"""Observation preprocessing that lives inside the model graph.

A preprocessor maps raw observations [..., S] to network features [..., F] before normalization,
e.g. an angle to (sin, cos) so the network never sees the 2*pi wrap. It is a torch module, so it
is exported into the ONNX graph and planners feed raw observations. Each preprocessor has a JSON
spec, stored in the model's metadata, from which :func:`make_preprocessor` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class Identity(nn.Module):
    """Features are the raw observation."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.out_dim = obs_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def spec(self) -> dict[str, Any]:
        return {"kind": "identity", "obs_dim": self.obs_dim}


class AngleToSinCos(nn.Module):
    """Replace each angle coordinate by its (sin, cos) pair, appended after the other coordinates.

    Output layout: [non-angle coordinates in order, sin(angles)..., cos(angles)...].
    """

    _keep: torch.Tensor
    _angles: torch.Tensor

    def __init__(self, obs_dim: int, angle_indices: Sequence[int]) -> None:
        super().__init__()
        angles = sorted(set(int(i) for i in angle_indices))
        if not angles:
            raise ValueError("AngleToSinCos needs at least one angle index")
        if angles[0] < 0 or angles[-1] >= obs_dim:
            raise ValueError(f"angle_indices {angles} out of range for obs_dim={obs_dim}")
        keep = [i for i in range(obs_dim) if i not in angles]
        self.obs_dim = obs_dim
        self.angle_indices = angles
        self.out_dim = len(keep) + 2 * len(angles)
        self.register_buffer("_keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.register_buffer("_angles", torch.tensor(angles, dtype=torch.long), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        theta = obs.index_select(-1, self._angles)
        return torch.cat([obs.index_select(-1, self._keep), theta.sin(), theta.cos()], dim=-1)

    def spec(self) -> dict[str, Any]:
        return {"kind": "sincos", "obs_dim": self.obs_dim, "angle_indices": self.angle_indices}


class DropCoordinates(nn.Module):
    """Hide coordinates from the network, e.g. an unbounded position that the dynamics do not
    depend on (the model still predicts its delta; the reward may use it)."""

    _keep: torch.Tensor

    def __init__(self, obs_dim: int, drop_indices: Sequence[int]) -> None:
        super().__init__()
        drop = sorted(set(int(i) for i in drop_indices))
        if not drop or drop[0] < 0 or drop[-1] >= obs_dim or len(drop) == obs_dim:
            raise ValueError(f"drop_indices {drop} must name some, not all, of {obs_dim} coords")
        keep = [i for i in range(obs_dim) if i not in drop]
        self.obs_dim = obs_dim
        self.drop_indices = drop
        self.out_dim = len(keep)
        self.register_buffer("_keep", torch.tensor(keep, dtype=torch.long), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.index_select(-1, self._keep)

    def spec(self) -> dict[str, Any]:
        return {"kind": "drop", "obs_dim": self.obs_dim, "drop_indices": self.drop_indices}


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "identity": lambda obs_dim: Identity(obs_dim),
    "sincos": lambda obs_dim, angle_indices: AngleToSinCos(obs_dim, angle_indices),
    "drop": lambda obs_dim, drop_indices: DropCoordinates(obs_dim, drop_indices),
}


def register_preprocessor(kind: str, factory: Callable[..., nn.Module]) -> None:
    """Make a user-defined preprocessor constructible from its spec (``{"kind": kind, ...}``).

    The module must have ``out_dim`` and ``spec()``, and be exportable by ``torch.onnx``.
    """
    if kind in _FACTORIES:
        raise ValueError(f"preprocessor kind {kind!r} is already registered")
    _FACTORIES[kind] = factory


def feature_dim(preprocessor: nn.Module) -> int:
    """F: the preprocessor's output size, checked, since user-registered hooks declare it."""
    out_dim = preprocessor.__dict__.get("out_dim")
    if not isinstance(out_dim, int) or out_dim < 1:
        name = type(preprocessor).__name__
        raise ValueError(f"preprocessor {name} must set an integer out_dim >= 1, got {out_dim!r}")
    return out_dim


def make_preprocessor(spec: dict[str, Any]) -> nn.Module:
    """Build a preprocessor from its spec, e.g. ``{"kind": "sincos", "obs_dim": 4, ...}``."""
    args = dict(spec)
    kind = args.pop("kind", None)
    if kind not in _FACTORIES:
        raise ValueError(f"unknown preprocessor kind {kind!r}; known: {sorted(_FACTORIES)}")
    return _FACTORIES[kind](**args)
