"""Transitions: the rows the controller records and the learner trains on, and their checks.

Shapes: S observation dim, A action dim, N rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ROBOT_ID_BYTES = 32
Array = npt.NDArray[Any]

# column -> (ndim, accepted dtype kinds, canonical dtype)
COLUMNS: dict[str, tuple[int, str, Any]] = {
    "obs": (2, "iuf", np.float32),
    "act": (2, "iuf", np.float32),
    "next_obs": (2, "iuf", np.float32),
    "reward": (1, "iuf", np.float32),
    "terminated": (1, "b", np.bool_),
    "truncated": (1, "b", np.bool_),
    "episode": (1, "iu", np.int64),
    "step": (1, "iu", np.int64),
    "wall_time": (1, "iuf", np.float64),
    "robot": (1, "UO", str),
}
_FINITE = ("obs", "act", "next_obs", "reward", "wall_time")


@dataclass(frozen=True, eq=False)
class Transitions:
    """Column arrays of N transitions.

    obs [N,S] f32, act [N,A] f32, next_obs [N,S] f32, reward [N] f32, terminated [N] bool,
    truncated [N] bool, episode [N] int64, step [N] int64, wall_time [N] f64 (seconds since the
    epoch), robot [N] str (at most ROBOT_ID_BYTES UTF-8 bytes each).
    """

    obs: Array
    act: Array
    next_obs: Array
    reward: Array
    terminated: Array
    truncated: Array
    episode: Array
    step: Array
    wall_time: Array
    robot: Array

    def __post_init__(self) -> None:
        n = len(self.obs) if isinstance(self.obs, np.ndarray) else 0
        for name, (ndim, _, _) in COLUMNS.items():
            v = getattr(self, name)
            if not isinstance(v, np.ndarray):
                raise ValueError(f"Transitions.{name} must be a numpy array, not {type(v)}")
            if v.ndim != ndim or len(v) != n:
                raise ValueError(f"Transitions.{name} has shape {v.shape}: need {ndim}-D, {n} rows")
        if self.next_obs.shape != self.obs.shape:
            raise ValueError(f"next_obs shape {self.next_obs.shape} != obs {self.obs.shape}")

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, idx: slice | npt.NDArray[np.integer[Any]]) -> Transitions:
        """Rows `idx` (a slice or an index array [M]) of every column."""
        return Transitions(**{name: getattr(self, name)[idx] for name in COLUMNS})

    @classmethod
    def from_lists(cls, **columns: Any) -> Transitions:
        """Build from per-row sequences, one keyword per column, cast to the canonical dtypes."""
        if set(columns) != set(COLUMNS):
            raise ValueError(f"from_lists needs exactly the columns {list(COLUMNS)}")
        return cls(**{k: np.asarray(columns[k], dtype=c[2]) for k, c in COLUMNS.items()})


def _encode_robot_ids(robot: Array) -> npt.NDArray[np.bytes_]:
    """robot [N] str -> [N] fixed-size UTF-8 bytes; refuses ids that would not round-trip."""
    if len(robot) == 1:  # np.unique would be the slowest step of a one-row append
        uniq, inv = robot, np.zeros(1, np.intp)
    else:  # ids repeat: encode each distinct one once
        uniq, inv = np.unique(robot, return_inverse=True)
    enc = []
    for r in uniq.tolist():
        b = r.encode("utf-8") if isinstance(r, str) else b""
        if not b or b"\0" in b or len(b) > ROBOT_ID_BYTES:
            raise ValueError(
                f"robot id must be a non-empty str without NUL of at most {ROBOT_ID_BYTES} "
                f"UTF-8 bytes, got {r!r} ({len(b)} bytes)"
            )
        enc.append(b)
    return np.array(enc, dtype=f"S{ROBOT_ID_BYTES}")[inv.reshape(-1)]


def check_batch(b: Transitions, obs_dim: int, act_dim: int) -> dict[str, Array]:
    """Validate a batch against the store dims; returns its columns cast to the record dtypes."""
    if not isinstance(b, Transitions):
        raise ValueError(f"expected Transitions, got {type(b).__name__}")
    for name, dim in (("obs", obs_dim), ("act", act_dim), ("next_obs", obs_dim)):
        if getattr(b, name).shape[1] != dim:
            raise ValueError(f"{name} must have shape [N, {dim}], got {getattr(b, name).shape}")
    cols: dict[str, Array] = {}
    for name, (_, kinds, dtype) in COLUMNS.items():
        v = getattr(b, name)
        if v.dtype.kind not in kinds:
            raise ValueError(f"{name} has dtype {v.dtype}; accepted dtype kinds are {kinds!r}")
        if v.dtype.kind == "u" and v.size and v.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} has values that do not fit in int64")
        if name != "robot":
            with np.errstate(over="ignore"):  # an f32 overflow becomes inf, refused just below
                cols[name] = v.astype(dtype, copy=False)
        if name in _FINITE and not np.isfinite(cols[name]).all():  # after the f32 cast: overflow
            raise ValueError(f"{name} contains NaN or inf")
    cols["robot"] = _encode_robot_ids(b.robot)
    return cols
