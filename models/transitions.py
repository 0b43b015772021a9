"""Transitions: the rows the controller records and the learner trains on, and what a valid row is.

Shapes: S observation dim, A action dim, N rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ROBOT_ID_BYTES = 32
Array = npt.NDArray[Any]
_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class Column:
    """One column of a transition: how its values may be given and the dtype they become."""

    kinds: str
    """Accepted dtype kinds of the values as given; no casting across kinds, so an int flag or
    a float step is refused rather than converted."""
    dtype: Any
    """The canonical dtype (the store's record field)."""
    per_row: str
    """One row's shape: "" a scalar, "S" obs_dim values, "A" act_dim values."""
    finite: bool = False
    """NaN and inf are refused, after the cast (a float64 beyond the float32 range is inf)."""


COLUMNS: dict[str, Column] = {
    "obs": Column("iuf", np.float32, "S", finite=True),
    "act": Column("iuf", np.float32, "A", finite=True),
    "next_obs": Column("iuf", np.float32, "S", finite=True),
    "reward": Column("iuf", np.float32, "", finite=True),
    "terminated": Column("b", np.bool_, ""),
    "truncated": Column("b", np.bool_, ""),
    "episode": Column("iu", np.int64, ""),
    "step": Column("iu", np.int64, ""),
    "wall_time": Column("iuf", np.float64, "", finite=True),
    "robot": Column("UO", str, ""),
}


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
        for name, col in COLUMNS.items():
            v, ndim = getattr(self, name), 2 if col.per_row else 1
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
        return cls(**{k: np.asarray(columns[k], dtype=c.dtype) for k, c in COLUMNS.items()})


class RowCheck:
    """What a valid transition is, for S = obs_dim and A = act_dim: one validator for a single
    row (`row`, the control loop's append) and for N rows at once (`batch`).

    Both run `_check_column` on every column, so they refuse the same values with the same
    messages: a dtype kind outside the column's, a wrong shape, an episode or step outside
    int64, NaN or inf after the cast to the stored dtype, a robot id that is not 1 to
    ROBOT_ID_BYTES UTF-8 bytes without NUL. A refusal is a ValueError naming the column.
    """

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        dims = {"": (), "S": (obs_dim,), "A": (act_dim,)}
        self.row_shapes = {name: dims[col.per_row] for name, col in COLUMNS.items()}

    def row(
        self,
        obs: npt.ArrayLike,
        act: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        reward: object,
        terminated: object,
        truncated: object,
        episode: object,
        step: object,
        wall_time: object,
        robot: object,
    ) -> tuple[Any, ...]:
        """One transition checked and cast, in COLUMNS order (the robot id as bytes)."""
        given = (
            np.asarray(obs),
            np.asarray(act),
            np.asarray(next_obs),
            reward,
            terminated,
            truncated,
            episode,
            step,
            wall_time,
            robot,
        )
        shapes = self.row_shapes.items()
        with np.errstate(over="ignore"):  # an overflowing cast gives inf, refused as such
            return tuple([_check_column(n, v, s) for (n, s), v in zip(shapes, given, strict=True)])

    def batch(self, b: Transitions) -> dict[str, Array]:
        """The N rows of ``b`` checked, as columns cast to the canonical dtypes (robot ids as
        [N] bytes)."""
        if not isinstance(b, Transitions):
            raise ValueError(f"expected Transitions, got {type(b).__name__}")
        shapes = {name: (len(b), *shape) for name, shape in self.row_shapes.items()}
        with np.errstate(over="ignore"):
            return {name: _check_column(name, getattr(b, name), s) for name, s in shapes.items()}


_PYTHON_KINDS = {bool: "b", int: "i", float: "f", str: "U"}


def _dtype_kind(value: object) -> str:
    """numpy's dtype kind of an array, a numpy scalar or a Python bool, int, float or str."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind
    kind = _PYTHON_KINDS.get(type(value))
    if kind is None:  # a subclass, such as an IntEnum
        kind = next((k for t, k in _PYTHON_KINDS.items() if isinstance(value, t)), "")
    return kind


def _check_column(name: str, value: Any, shape: tuple[int, ...]) -> Any:
    """Column ``name``: an array of ``shape``, or for one row's scalar a Python or numpy scalar,
    checked and cast to the column's dtype. Call under np.errstate(over="ignore")."""
    col = COLUMNS[name]
    is_array = isinstance(value, np.ndarray)
    kind = value.dtype.kind if is_array else _dtype_kind(value)
    if kind not in col.kinds:
        raise ValueError(f"{name} has dtype kind {kind!r} ({type(value).__name__}); accepted "
                         f"dtype kinds are {col.kinds!r}")  # fmt: skip
    if (value.shape if is_array else ()) != shape:
        got = list(value.shape) if is_array else "a scalar"
        raise ValueError(f"{name} must have shape {list(shape)}, got {got}")
    if name == "robot":
        return _encode_robot_ids(value) if is_array else _robot_id(value)
    if col.dtype is np.int64 and not _fits_int64(value, kind, is_array):
        raise ValueError(f"{name} has values that do not fit in int64")
    try:
        cast = value.astype(col.dtype, copy=False) if is_array else col.dtype(value)
    except OverflowError:  # a Python int beyond any float
        raise ValueError(f"{name} contains a value out of the float range") from None
    if col.finite and not (np.isfinite(cast).all() if is_array else math.isfinite(cast)):
        raise ValueError(f"{name} contains NaN or inf")
    return cast


def _fits_int64(value: Any, kind: str, is_array: bool) -> bool:
    """Whether integers of dtype kind ``kind`` are all in int64 (casting would wrap them)."""
    if kind == "u":
        top = (int(value.max()) if value.size else 0) if is_array else int(value)
        return top <= _INT64_MAX
    if is_array or isinstance(value, np.generic):  # numpy signed integers are at most int64
        return True
    return -_INT64_MAX - 1 <= value <= _INT64_MAX


def _robot_id(robot: object) -> bytes:
    """One robot id as the stored UTF-8 bytes; refuses one that would not round-trip."""
    b = robot.encode("utf-8") if isinstance(robot, str) else b""
    if not b or b"\0" in b or len(b) > ROBOT_ID_BYTES:
        raise ValueError(
            f"robot id must be a non-empty str without NUL of at most {ROBOT_ID_BYTES} "
            f"UTF-8 bytes, got {robot!r} ({len(b)} bytes)"
        )
    return b


def _encode_robot_ids(robot: Array) -> npt.NDArray[np.bytes_]:
    """robot [N] str -> [N] fixed-size UTF-8 bytes, each distinct id encoded once."""
    uniq, inv = np.unique(robot, return_inverse=True)
    enc = [_robot_id(r) for r in uniq.tolist()]
    return np.array(enc, dtype=f"S{ROBOT_ID_BYTES}")[inv.reshape(-1)]
