"""Tests of the persistent transition store: real files, real writer processes, SIGKILL."""

from __future__ import annotations

import json
import os
import tempfile
import time
import tracemalloc
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.store import (
    StoreCorruptError,
    TransitionReader,
    Transitions,
    TransitionWriter,
    record_dtype,
)
from tests.models.store_writer_proc import ACT_DIM, OBS_DIM, make_rows

RECORD_SIZE = record_dtype(OBS_DIM, ACT_DIM).itemsize
FIELDS = [f.name for f in fields(Transitions)]


def assert_same(got: Transitions, want: Transitions) -> None:
    assert len(got) == len(want)
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(g, w, err_msg=name)
        if name != "robot":
            assert g.dtype == w.dtype, name


def concat(parts: list[Transitions]) -> Transitions:
    return Transitions(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})


def append_one(w: TransitionWriter, t: Transitions, i: int = 0, **override: Any) -> int:
    """Append row i of t with the single-row API; override replaces arguments."""
    kw: dict[str, Any] = dict(
        obs=t.obs[i],
        act=t.act[i],
        next_obs=t.next_obs[i],
        reward=float(t.reward[i]),
        terminated=bool(t.terminated[i]),
        truncated=bool(t.truncated[i]),
        episode=int(t.episode[i]),
        step=int(t.step[i]),
        robot=str(t.robot[i]),
        wall_time=float(t.wall_time[i]),
    )
    kw.update(override)
    return w.append(**kw)


def store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.glob("seg-*.bin")))


# 1. round trip ---------------------------------------------------------------------------------


def test_round_trip_single_and_batch_across_segments(tmp_path: Path) -> None:
    want = make_rows(0, 60)
    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, segment_rows=7, flush_every=5) as w:
        assert [append_one(w, want, i) for i in range(3)] == [0, 1, 2]
        assert w.append_batch(want[3:43]) == range(3, 43)
        assert [append_one(w, want, i) for i in range(43, 45)] == [43, 44]
        assert w.append_batch(want[45:55]) == range(45, 55)
        assert len(w) == 55 and w.flushed + w.pending == 55
    assert sorted(os.listdir(tmp_path))[:2] == ["meta.json", "seg-000000.bin"]  # no tmp left
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["obs_dim"], meta["act_dim"], meta["segment_rows"]) == (OBS_DIM, ACT_DIM, 7)
    assert meta["record_size"] == RECORD_SIZE and meta["layout"][0][0] == "magic"
    assert all(p.stat().st_size <= 7 * RECORD_SIZE for p in tmp_path.glob("seg-*.bin"))

    r = TransitionReader(tmp_path)
    assert (len(r), r.num_segments, r.torn_tail_bytes, r.refresh()) == (55, 8, 0, 0)
    assert_same(r.read_all(), want[:55])
    assert_same(r.read(5, 16), want[5:16])  # crosses two segment boundaries (7 and 14)
    assert_same(r.read(13, 14), want[13:14])
    assert len(r.read(20, 20)) == 0
    chunks = list(r.iter_chunks(6))
    assert [len(c) for c in chunks] == [6] * 9 + [1]
    assert_same(concat(chunks), want[:55])
    with pytest.raises(IndexError):
        r.read(50, 56)

    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, flush_every=3) as w:  # reopen, continue
        assert w.recovered_torn_bytes == 0 and len(w) == 55
        w.append_batch(want[55:60])
    assert r.refresh() == 5
    assert_same(r.read_all(), want)


def test_durable_writer_and_close(tmp_path: Path) -> None:
    w = TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, segment_rows=4, flush_every=3, durable=True)
    w.append_batch(make_rows(0, 10))
    w.flush(fsync=True)
    assert w.flushed == len(TransitionReader(tmp_path)) == 10
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.append_batch(make_rows(10, 1))
    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM) as w:  # the lock was released
        append_one(w, make_rows(10, 1), wall_time=None)
    assert len(TransitionReader(tmp_path)) == 11


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    segment_rows=st.integers(1, 30),
    flush_every=st.integers(1, 50),
    data=st.data(),
)
def test_round_trip_property(
    sizes: list[int], segment_rows: int, flush_every: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as d:
        want = make_rows(0, sum(sizes))
        r: TransitionReader | None = None
        pos = 0
        for n in sizes:  # a new writer per batch: reopening must be seamless too
            with TransitionWriter(
                d, OBS_DIM, ACT_DIM, segment_rows=segment_rows, flush_every=flush_every
            ) as w:
                w.append_batch(want[pos : pos + n])
            pos += n
            r = TransitionReader(d) if r is None else r
            r.refresh()
            assert len(r) == pos and r.torn_tail_bytes == 0
        assert r is not None
        start = data.draw(st.integers(0, pos))
        stop = data.draw(st.integers(start, pos))
        assert_same(r.read(start, stop), want[start:stop])
        assert_same(concat([*r.iter_chunks(data.draw(st.integers(1, 20)))] or [want[:0]]), want)


# 2. concurrent reader in another process ------------------------------------------------------


def test_reader_follows_live_writer_process(tmp_path: Path, proc_factory: Any) -> None:
    rows = 20_000
    pr = proc_factory(tmp_path, f"--rows={rows}", "--batch=50", "--flush-every=200",
                      "--segment-rows=1500", "--pause=0.001")  # fmt: skip
    pr.wait_for("flushed")  # meta.json exists from here on
    r = TransitionReader(tmp_path)
    seen, growths, deadline = 0, 0, time.monotonic() + 15
    while seen < rows:
        assert time.monotonic() < deadline, f"reader saw only {seen} of {rows} rows"
        if len(r) > seen:  # every visible row is the writer's, with the right content
            growths += 1
            assert_same(r.read(seen, len(r)), make_rows(seen, len(r) - seen))
            seen = len(r)
        time.sleep(0.0005)
        new = r.refresh()
        assert new >= 0 and len(r) == seen + new
    assert pr.wait_for("done") == rows
    assert growths >= 5, "writer and reader did not overlap"
    r.refresh()
    assert (len(r), r.torn_tail_bytes) == (rows, 0)


# 4. garbage tails and corruption ----------------------------------------------------------------


def _garbage(kind: str, path: Path, row: int) -> bytes:
    """Bytes to append after `row` valid rows; `path` is a scratch directory."""
    with TransitionWriter(path, OBS_DIM, ACT_DIM) as w:  # the genuine record of `row`
        w.append_batch(make_rows(0, row + 1))
    rec = bytearray((path / "seg-000000.bin").read_bytes()[row * RECORD_SIZE :])
    if kind == "zeros":
        return bytes(4096)
    if kind == "random":
        return np.random.default_rng(1).bytes(3 * RECORD_SIZE + 5)
    if kind == "stale_record":  # a valid CRC, but the record of another index
        return (path / "seg-000000.bin").read_bytes()[:RECORD_SIZE]
    if kind == "bad_crc":  # right magic and index, one payload bit flipped
        rec[-5] ^= 1
        return bytes(rec)
    if kind == "valid":  # control: the same record unflipped is accepted
        return bytes(rec)
    assert kind == "half_record"
    return bytes(rec[: RECORD_SIZE // 2])


@pytest.mark.parametrize(
    "kind", ["zeros", "random", "stale_record", "bad_crc", "half_record", "valid"]
)
def test_garbage_tail_is_reported_not_returned(tmp_path: Path, kind: str) -> None:
    want = make_rows(0, 40)
    store = tmp_path / "store"
    with TransitionWriter(store, OBS_DIM, ACT_DIM, segment_rows=16) as w:
        w.append_batch(want[:30])
    junk = _garbage(kind, tmp_path / "scratch", 30)
    with open(store / "seg-000001.bin", "ab") as f:
        f.write(junk)
    r = TransitionReader(store)
    if kind == "valid":
        assert (len(r), r.torn_tail_bytes) == (31, 0)
        return
    assert (len(r), r.torn_tail_bytes) == (30, len(junk))
    assert_same(r.read_all(), want[:30])
    with TransitionWriter(store, OBS_DIM, ACT_DIM) as w:
        assert w.recovered_torn_bytes == len(junk)
        w.append_batch(want[30:])
    r.refresh()
    assert (len(r), r.torn_tail_bytes) == (40, 0)
    assert_same(r.read_all(), want)


def test_corruption_before_last_segment_raises(tmp_path: Path) -> None:
    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, segment_rows=10) as w:
        w.append_batch(make_rows(0, 25))
    seg = tmp_path / "seg-000000.bin"
    data = bytearray(seg.read_bytes())
    data[3 * RECORD_SIZE + 20] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=r"seg-000000\.bin"):
        TransitionReader(tmp_path)
    seg.write_bytes(bytes(data[: 5 * RECORD_SIZE]))  # a truncated full segment
    with pytest.raises(StoreCorruptError, match=r"seg-000000\.bin"):
        TransitionWriter(tmp_path, OBS_DIM, ACT_DIM)


# 5. bad input -----------------------------------------------------------------------------------

BAD_APPENDS: list[tuple[str, dict[str, Any]]] = [
    ("obs", {"obs": np.zeros(OBS_DIM + 1)}),
    ("act", {"act": np.zeros((1, ACT_DIM))}),
    ("next_obs", {"next_obs": np.full(OBS_DIM, np.nan)}),
    ("obs", {"obs": np.array([0, 0, np.inf, 0, 0])}),
    ("obs", {"obs": np.full(OBS_DIM, 1e39)}),  # finite in f64, inf in f32
    ("act", {"act": np.array(["a", "b", "c"])}),
    ("reward", {"reward": float("nan")}),
    ("robot", {"robot": "r" * 33}),
    ("robot", {"robot": "é" * 17}),  # 17 characters, 34 UTF-8 bytes
    ("robot", {"robot": ""}),
    ("terminated", {"terminated": 1}),
    ("step", {"step": 3.0}),
    ("wall_time", {"wall_time": float("inf")}),
]


def test_bad_input_is_refused_and_store_unchanged(tmp_path: Path) -> None:
    good = make_rows(0, 20)
    w = TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, segment_rows=8, flush_every=4)
    w.append_batch(good[:10])
    before = (len(w), w.pending, store_bytes(tmp_path))
    for field, override in BAD_APPENDS:
        with pytest.raises(ValueError, match=field):
            append_one(w, good, 10, **override)
    bad_obs = good.obs[10:20].copy()
    bad_obs[-1, 0] = np.nan  # only the last row is bad: none may be written
    with pytest.raises(ValueError, match="obs"):
        w.append_batch(replace(good[10:20], obs=bad_obs))
    with pytest.raises(ValueError, match="act"):
        w.append_batch(replace(good[10:20], act=good.obs[10:20]))
    with pytest.raises(ValueError, match="episode"):
        w.append_batch(replace(good[10:20], episode=good.episode[:3]))
    assert (len(w), w.pending, store_bytes(tmp_path)) == before
    w.append_batch(good[10:])
    w.close()
    assert_same(TransitionReader(tmp_path).read_all(), good)

    reopen: list[tuple[str, tuple[int, int], dict[str, Any]]] = [
        ("obs_dim", (OBS_DIM + 1, ACT_DIM), {}),
        ("act_dim", (OBS_DIM, 1), {}),
        ("segment_rows", (OBS_DIM, ACT_DIM), {"segment_rows": 9}),
    ]
    for field, dims, kw in reopen:
        with pytest.raises(ValueError, match=field):
            TransitionWriter(tmp_path, *dims, **kw)
    assert_same(TransitionReader(tmp_path).read_all(), good)
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        TransitionReader(tmp_path / "nope")


# 6. bounded memory ------------------------------------------------------------------------------


def _peaks(path: Path, rows: int, batch: Transitions) -> tuple[int, int]:
    """Traced peak bytes of writing `rows` rows in batches, and of a reader validating them."""
    tracemalloc.start()
    try:
        with TransitionWriter(path, OBS_DIM, ACT_DIM, segment_rows=20_000, flush_every=2048) as w:
            for _ in range(rows // len(batch)):
                w.append_batch(batch)
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        r = TransitionReader(path)
        for chunk in r.iter_chunks(4096):
            assert len(chunk) > 0
        return write_peak, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_as_the_store_grows(tmp_path: Path) -> None:
    batch = make_rows(0, 1000)  # reused: seq comes from the writer, content needn't differ
    small = _peaks(tmp_path / "small", 50_000, batch)
    large = _peaks(tmp_path / "large", 200_000, batch)
    assert len(TransitionReader(tmp_path / "large")) == 200_000
    for s, g in zip(small, large, strict=True):
        assert g < 1.2 * s + 64 * 1024, (small, large)
    assert max(large) < 8 * 2**20  # the store holds ~26 MB
