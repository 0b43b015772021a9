"""What a valid transition is: one row and a one-row batch get the same verdict and values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from models.store import TransitionReader, TransitionWriter
from models.transitions import COLUMNS, RowCheck, Transitions
from tests.models.store_writer_proc import ACT_DIM, OBS_DIM, make_rows
from tests.models.test_store import append_one

GOOD = make_rows(7, 1)
INTEGERS = [0, -5, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, np.uint64(2**63), np.int32(4),
            np.uint8(9), 3.0, True]  # fmt: skip
CANDIDATES: dict[str, list[Any]] = {
    "obs": [GOOD.obs[0], np.arange(OBS_DIM), np.full(OBS_DIM, np.nan), np.full(OBS_DIM, 1e39),
            np.full(OBS_DIM, -np.inf), np.array(["a"] * OBS_DIM), np.ones(OBS_DIM, np.uint64)],
    "act": [GOOD.act[0], np.zeros(ACT_DIM + 1), np.zeros(ACT_DIM, bool), [0.5] * ACT_DIM],
    "next_obs": [GOOD.next_obs[0], np.full(OBS_DIM, 3.4e38), np.full(OBS_DIM, 3.5e38)],
    "reward": [0.5, 3, np.float64(2.0), np.uint64(7), float("nan"), float("inf"), 1e39, True,
               "x", np.float32(-1.0)],
    "terminated": [False, True, np.bool_(True), 1, 0.0],
    "truncated": [True, np.bool_(False), "yes"],
    "episode": INTEGERS,
    "step": INTEGERS,
    "wall_time": [1.7e9, 5, float("inf"), float("nan"), 10**400, np.float32(3.0)],
    "robot": ["r", "robot-1", "", "é" * 17, "r" * 32, "a\0b", 5, np.str_("x")],
}  # fmt: skip


def _verdict(run: Any) -> tuple[str, Any]:
    """("ok", result) or ("refused", the column the ValueError names first)."""
    try:
        return "ok", run()
    except ValueError as exc:
        return "refused", str(exc).split()[0]


@settings(max_examples=300, deadline=None)
@given(varied=st.sets(st.sampled_from(list(CANDIDATES)), max_size=3), data=st.data())
def test_one_row_and_a_one_row_batch_get_the_same_verdict(
    varied: set[str], data: st.DataObject
) -> None:
    """Each candidate list starts with an accepted value; up to three columns take any."""
    values = {name: data.draw(st.sampled_from(v)) if name in varied else v[0]
              for name, v in CANDIDATES.items()}  # fmt: skip
    check = RowCheck(OBS_DIM, ACT_DIM)
    try:  # a column of the one row, as numpy would make it from a Python value
        columns = {k: np.asarray(v)[None] if COLUMNS[k].per_row else np.asarray([v])
                   for k, v in values.items()}  # fmt: skip
    except OverflowError:
        assume(False)  # numpy cannot hold the value at all; only the row path can be given it
    row = _verdict(lambda: check.row(**values))
    batch = _verdict(lambda: check.batch(Transitions(**columns)))
    event(row[0])
    assert row[0] == batch[0], (row, batch)
    if row[0] == "refused":
        assert row[1] == batch[1]
        return
    for (name, col), got, want in zip(COLUMNS.items(), row[1], batch[1].values(), strict=True):
        assert np.array_equal(np.asarray(got)[None], want), name
        if name != "robot":
            assert np.asarray(got).dtype == want.dtype == col.dtype, name


def test_row_and_batch_appends_write_the_same_bytes(tmp_path: Path) -> None:
    rows = make_rows(0, 30)
    with TransitionWriter(tmp_path / "batch", OBS_DIM, ACT_DIM, segment_rows=8) as w:
        w.append_batch(rows)
    with TransitionWriter(tmp_path / "rows", OBS_DIM, ACT_DIM, segment_rows=8) as w:
        for i in range(len(rows)):
            append_one(w, rows, i)
    for seg in sorted((tmp_path / "batch").glob("seg-*.bin")):
        assert seg.read_bytes() == (tmp_path / "rows" / seg.name).read_bytes(), seg.name
    assert len(TransitionReader(tmp_path / "rows")) == 30


def test_a_batch_not_of_transitions_is_refused() -> None:
    with pytest.raises(ValueError, match="Transitions"):
        RowCheck(OBS_DIM, ACT_DIM).batch({"obs": GOOD.obs})  # type: ignore[arg-type]
