"""The one appender of a store: TransitionWriter.

Shapes: S observation dim, A action dim, N rows.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.fileio import fsync_dir
from models.store.format import (
    DEFAULT_SEGMENT_ROWS,
    LOCK_FILE,
    MAGIC,
    META_FILE,
    Records,
    StoreCorruptError,
    StoreMeta,
    bytes_view,
    count_segments,
    fill_crc,
    record_values,
    scan_segment,
    segment_path,
)
from models.transitions import RowCheck, Transitions

log = logging.getLogger(__name__)


class TransitionWriter:
    """The one appender of a store: creates it, or reopens it and truncates a torn tail.

    Rows are packed into a preallocated [flush_every] record buffer (memory stays bounded) and
    written, one os.write per segment touched, when the buffer fills, on flush() and on close();
    a written row survives the writer's death. flush(fsync=True), or every flush with
    durable=True, also fsyncs, so the rows survive a power loss. A second live writer of a
    store is refused.
    segment_rows (default DEFAULT_SEGMENT_ROWS) is fixed at creation; None on reopen means keep.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        obs_dim: int,
        act_dim: int,
        *,
        segment_rows: int | None = None,
        flush_every: int = 1024,
        durable: bool = False,
    ) -> None:
        if flush_every < 1 or (segment_rows is not None and segment_rows < 1):
            raise ValueError(f"flush_every={flush_every}, segment_rows={segment_rows}: need >= 1")
        self.path, self.durable = Path(path), durable
        self._fd = -1
        # What the next sync must fsync: segments from this one on (None: nothing) and the
        # directory. Opening may have created the last segment, so the first sync does both.
        self._unsynced_from: int | None = None
        self._dir_unsynced = True
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.meta = self._open_meta(obs_dim, act_dim, segment_rows)
            self.recovered_torn_bytes = self._recover()
        except BaseException as e:
            self.close()
            if isinstance(e, BlockingIOError):
                raise RuntimeError(f"{self.path} is open in another TransitionWriter") from None
            raise
        self._rows = RowCheck(self.meta.obs_dim, self.meta.act_dim)
        self._buf: Records = np.zeros(flush_every, self.meta.dtype)  # zeros: pad bytes stay 0
        self._pending = 0

    def _open_meta(self, obs_dim: int, act_dim: int, segment_rows: int | None) -> StoreMeta:
        if not (self.path / META_FILE).exists():
            if count_segments(self.path):
                raise StoreCorruptError(f"{self.path}: segment files but no {META_FILE}")
            meta = StoreMeta(obs_dim, act_dim, segment_rows or DEFAULT_SEGMENT_ROWS)
            meta.to_json()  # validates the dims before anything is written
            meta.create(self.path)
            return meta
        meta = StoreMeta.load(self.path)
        asked = {"obs_dim": obs_dim, "act_dim": act_dim, "segment_rows": segment_rows}
        for name, want in asked.items():
            if want is not None and want != (have := getattr(meta, name)):
                raise ValueError(f"store {self.path} has {name}={have}, but {name}={want} given")
        return meta

    def _recover(self) -> int:
        """Open the last segment and truncate what follows its last valid record; returns bytes."""
        size, seg_rows = self.meta.dtype.itemsize, self.meta.segment_rows
        n_seg = max(count_segments(self.path), 1)
        for k in range(n_seg - 1):  # a full re-validation would be O(store); sizes are O(1)
            if (n := segment_path(self.path, k).stat().st_size) != seg_rows * size:
                raise StoreCorruptError(f"{segment_path(self.path, k)}: {n} bytes, not full")
        self._seg = n_seg - 1
        self._fd = os.open(segment_path(self.path, self._seg), os.O_RDWR | os.O_CREAT, 0o644)
        self._seg_fill = scan_segment(self._fd, self.meta.dtype, self._seg, 0, seg_rows)
        self._flushed = self._seg * seg_rows + self._seg_fill
        torn = os.fstat(self._fd).st_size - self._seg_fill * size
        if torn:
            log.warning("%s: dropping %d torn bytes after row %d", self.path, torn, self._flushed)
            os.ftruncate(self._fd, self._seg_fill * size)
            os.fsync(self._fd)
        os.lseek(self._fd, self._seg_fill * size, os.SEEK_SET)
        self._unsynced_from = self._seg
        return torn

    def __len__(self) -> int:
        """Rows appended (flushed + buffered); the next row gets this global index."""
        return self._flushed + self._pending

    @property
    def flushed(self) -> int:
        """Rows written to the segment files, visible to readers."""
        return self._flushed

    @property
    def pending(self) -> int:
        """Rows buffered in memory, not yet written."""
        return self._pending

    def append(
        self,
        obs: npt.ArrayLike,
        act: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        reward: float,
        terminated: bool,
        truncated: bool,
        *,
        episode: int,
        step: int,
        robot: str,
        wall_time: float | None = None,
    ) -> int:
        """Append one transition (obs [S], act [A], next_obs [S]); returns its global index.

        wall_time defaults to time.time(). Checked by the same RowCheck as append_batch (the
        same refusals, see models.transitions), then packed into the record buffer with one
        assignment: the service appends one row per tick.
        """
        self._check_open()
        wall = time.time() if wall_time is None else wall_time
        row = self._rows.row(obs, act, next_obs, reward, terminated, truncated, episode, step,
                             wall, robot)  # fmt: skip
        self._buf[self._pending] = record_values(self._buf.dtype, len(self), row)
        self._pending += 1
        index = len(self) - 1
        if self._pending == len(self._buf):
            self.flush()
        return index

    def append_batch(self, batch: Transitions) -> range:
        """Append the N rows of `batch`; returns their global indices.

        Raises ValueError naming the field on a wrong shape or dtype, NaN/inf in obs, act,
        next_obs, reward or wall_time, or a bad robot id. The whole batch is checked first, so a
        refused batch leaves the store and the buffer untouched.
        """
        self._check_open()
        cols = self._rows.batch(batch)
        first, lo = len(self), 0
        while lo < len(batch):
            n = min(len(batch) - lo, len(self._buf) - self._pending)
            dst = self._buf[self._pending : self._pending + n]
            dst["magic"] = MAGIC
            dst["seq"] = np.arange(len(self), len(self) + n)
            for name, v in cols.items():
                dst[name] = v[lo : lo + n]
            self._pending += n
            lo += n
            if self._pending == len(self._buf):
                self.flush()
        return range(first, len(self))

    def flush(self, fsync: bool = False) -> None:
        """Write the buffered rows, one os.write per segment touched: from then on they survive
        the writer's death (kill -9), not a power loss. With fsync=True (or durable) every row
        flushed so far is also fsynced, so it survives that too.

        A flush with nothing buffered (and, with fsync, nothing unsynced) makes no syscall, so a
        loop may call it after every pass.
        """
        self._check_open()
        sync = fsync or self.durable
        if self._pending:
            self._write_pending(sync)
        if sync and self._unsynced_from is not None:
            self._sync()

    def _write_pending(self, sync: bool) -> None:
        recs, size = self._buf[: self._pending], self.meta.dtype.itemsize
        fill_crc(recs)
        raw, done = bytes_view(recs), 0
        try:
            while done < len(recs):
                if self._seg_fill == self.meta.segment_rows:
                    self._roll(sync)
                if self._unsynced_from is None:
                    self._unsynced_from = self._seg
                n = min(len(recs) - done, self.meta.segment_rows - self._seg_fill)
                self._write_all(raw[done * size : (done + n) * size])
                self._seg_fill += n
                self._flushed += n
                done += n
        finally:
            if done < len(recs):  # a write failed: keep the unwritten rows for a retry
                self._buf[: len(recs) - done] = self._buf[done : len(recs)].copy()
            self._pending = len(recs) - done

    def _write_all(self, data: memoryview) -> None:
        start = self._seg_fill * self.meta.dtype.itemsize
        try:
            written = 0
            while written < len(data):  # short writes happen (full disk, signals)
                written += os.write(self._fd, data[written:])
        except BaseException:
            os.ftruncate(self._fd, start)  # leave no partial record behind
            os.lseek(self._fd, start, os.SEEK_SET)
            raise

    def _roll(self, sync: bool) -> None:
        """Start the next segment; the current one is complete from now on."""
        if sync and self._unsynced_from is not None:
            # After a power loss too, every segment but the last must be complete on disk:
            # the current one is, before the next one exists.
            self._sync()
        os.close(self._fd)
        self._fd = -1
        self._seg += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._fd = os.open(segment_path(self.path, self._seg), flags, 0o644)
        self._seg_fill = 0
        self._dir_unsynced = True

    def _sync(self) -> None:
        """fsync, oldest first, each segment written since the last sync (segments rolled over
        by flushes without fsync included), then the directory if a segment was created."""
        assert self._unsynced_from is not None
        for k in range(self._unsynced_from, self._seg):
            fd = os.open(segment_path(self.path, k), os.O_RDONLY)
            try:
                os.fsync(fd)  # fsync through any descriptor writes back the file's pages
            finally:
                os.close(fd)
        os.fsync(self._fd)
        if self._dir_unsynced:
            fsync_dir(self.path)
            self._dir_unsynced = False
        self._unsynced_from = None

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"TransitionWriter for {self.path} is closed")

    def close(self) -> None:
        """Flush (fsync if durable), then release the segment file and the writer lock."""
        try:
            if self._fd >= 0 and hasattr(self, "_buf"):
                self.flush()
        finally:
            for attr in ("_fd", "_lock_fd"):
                if getattr(self, attr) >= 0:
                    os.close(getattr(self, attr))  # closing the lock fd releases the flock
                    setattr(self, attr, -1)

    def __enter__(self) -> TransitionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
