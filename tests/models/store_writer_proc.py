"""Writer process for tests/models/test_store.py: appends deterministic transitions to a store.

Run as `python -m tests.models.store_writer_proc PATH [options]` from the repository root. Row i's
values derive from i alone (see make_rows), so a test can check every row it reads. It appends in
batches (or with --single one row at a time, as the service does), flushes every --flush-every
rows and then prints "flushed <count>" (stdout flushed), so a test knows which rows reached the
files. With --kill-at, the flush that reaches that many rows is followed at once by SIGKILL to
itself. With --torn-at, once that many rows are flushed it appends half of the next record
straight to the current segment, as a write torn by a crash would leave it, prints "torn <count>"
and sleeps until killed. After --rows rows it prints "done <count>" and sleeps --linger seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import numpy as np

from models.store import MAGIC, Transitions, TransitionWriter, record_dtype

OBS_DIM = 5
ACT_DIM = 3


def make_rows(start: int, n: int) -> Transitions:
    """Rows [start, start + n) of the deterministic sequence: obs [n,S], act [n,A], ... ."""
    i = np.arange(start, start + n, dtype=np.int64)
    obs = i[:, None] * 0.25 + np.arange(OBS_DIM)  # exact in f32 for i < 2**21
    return Transitions(
        obs=obs.astype(np.float32),
        act=(-(i[:, None] % 1000) * 0.5 - np.arange(ACT_DIM)).astype(np.float32),
        next_obs=(obs + 1.0).astype(np.float32),
        reward=((i % 97) * 0.125).astype(np.float32),
        terminated=i % 50 == 49,
        truncated=i % 70 == 69,
        episode=i // 50,
        step=i % 50,
        wall_time=1.7e9 + i * 0.01,
        robot=np.array([f"robot-{k}" for k in (i % 3).tolist()], dtype=str),
    )


def tear(path: Path, seq: int) -> int:
    """Append the first half of record `seq` to the last segment; returns the bytes written."""
    rec = np.zeros(1, record_dtype(OBS_DIM, ACT_DIM))
    rec["magic"], rec["seq"], rec["obs"] = MAGIC, seq, make_rows(seq, 1).obs
    half = rec.tobytes()[: rec.dtype.itemsize // 2]
    last = max(path.glob("seg-*.bin"))
    fd = os.open(last, os.O_WRONLY | os.O_APPEND)
    try:
        return os.write(fd, half)
    finally:
        os.close(fd)


def append_row(w: TransitionWriter, i: int) -> None:
    """Append row i of the sequence through the single-row path."""
    t = make_rows(i, 1)
    w.append(
        t.obs[0], t.act[0], t.next_obs[0], float(t.reward[0]), bool(t.terminated[0]),
        bool(t.truncated[0]), episode=int(t.episode[0]), step=int(t.step[0]),
        robot=str(t.robot[0]), wall_time=float(t.wall_time[0]),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path", type=Path)
    p.add_argument("--rows", type=int, default=10**9, help="stop after this many rows")
    p.add_argument("--batch", type=int, default=10, help="rows per append_batch")
    p.add_argument("--flush-every", type=int, default=50)
    p.add_argument("--segment-rows", type=int, default=None)
    p.add_argument("--single", action="store_true", help="append one row at a time")
    p.add_argument("--kill-at", type=int, default=-1, help="SIGKILL once this many are flushed")
    p.add_argument("--torn-at", type=int, default=-1, help="tear once this many rows flushed")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after a flush")
    p.add_argument("--linger", type=float, default=60.0, help="seconds to sleep when done")
    args = p.parse_args(argv)
    # the writer's own buffer is larger than --flush-every, so every flush is one we report
    w = TransitionWriter(
        args.path,
        OBS_DIM,
        ACT_DIM,
        segment_rows=args.segment_rows,
        flush_every=args.flush_every + args.batch,
    )
    while len(w) < args.rows:
        if args.single:
            append_row(w, len(w))
        else:
            w.append_batch(make_rows(len(w), min(args.batch, args.rows - len(w))))
        if w.pending >= args.flush_every or len(w) == args.rows:
            w.flush()
            if 0 <= args.kill_at <= w.flushed:
                os.kill(os.getpid(), signal.SIGKILL)
            print(f"flushed {w.flushed}", flush=True)
            if 0 <= args.torn_at <= w.flushed:
                tear(args.path, w.flushed)
                print(f"torn {w.flushed}", flush=True)
                time.sleep(3600)  # the test kills us: a crash never closes the writer
            time.sleep(args.pause)
    w.close()
    print(f"done {len(w)}", flush=True)
    time.sleep(args.linger)


if __name__ == "__main__":
    main()
