"""Reading a store that a writer, in any process, may be appending to.

Shapes: S observation dim, A action dim, N rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.store.format import (
    MAGIC,
    META_FILE,
    Records,
    StoreCorruptError,
    StoreMeta,
    bytes_view,
    count_segments,
    scan_segment,
    segment_path,
)
from models.transitions import COLUMNS, ROBOT_ID_BYTES, Transitions


class TransitionReader:
    """Read-only view of a store that a writer, in any process, may be appending to.

    Only CRC-validated rows are visible. refresh() validates the rows flushed since it last ran,
    never re-checking older ones; the index is the valid row count of each segment. Bytes after
    the last valid record of the last segment are hidden and counted in torn_tail_bytes (a write
    torn by a crash, or one in flight while a writer is live). An invalid record in an earlier
    segment raises StoreCorruptError.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.meta = StoreMeta.load(self.path)
        self._dt = self.meta.dtype
        self._rows: list[int] = []  # valid rows per segment
        self.torn_tail_bytes = 0
        self.refresh()

    def __len__(self) -> int:
        return sum(self._rows)

    @property
    def num_segments(self) -> int:
        return len(self._rows)

    def refresh(self) -> int:
        """Validate newly flushed rows; returns how many became visible."""
        before, size, seg_rows = len(self), self._dt.itemsize, self.meta.segment_rows
        n_seg = count_segments(self.path)
        if n_seg < len(self._rows):
            raise StoreCorruptError(f"{self.path}: segments vanished ({len(self._rows)}->{n_seg})")
        first = max(len(self._rows) - 1, 0)  # the ones before were complete and validated
        self._rows += [0] * (n_seg - len(self._rows))
        self.torn_tail_bytes = 0
        for k in range(first, n_seg):
            path = segment_path(self.path, k)
            fd = os.open(path, os.O_RDONLY)
            try:
                self._rows[k] = scan_segment(fd, self._dt, k, self._rows[k], seg_rows)
                extra = os.fstat(fd).st_size - self._rows[k] * size
            finally:
                os.close(fd)
            if extra < 0 or (k < n_seg - 1 and (extra or self._rows[k] < seg_rows)):
                raise StoreCorruptError(
                    f"{path}: invalid data after row {self._rows[k]} of {seg_rows} in a segment "
                    f"that is not the last (or the file shrank)"
                )
            self.torn_tail_bytes = extra
        return len(self) - before

    def read(self, start: int, stop: int) -> Transitions:
        """Rows [start, stop) by global index, across segments: Transitions of N = stop - start."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"read({start}, {stop}) out of range for {len(self)} rows")
        size, seg_rows = self._dt.itemsize, self.meta.segment_rows
        rec: Records = np.empty(stop - start, self._dt)
        out, pos = bytes_view(rec), start
        while pos < stop:
            (k, r), n = divmod(pos, seg_rows), min(stop - pos, seg_rows - pos % seg_rows)
            fd = os.open(segment_path(self.path, k), os.O_RDONLY)
            try:  # preadv lands in the output records: no temporary copy
                got = os.preadv(
                    fd, [out[(pos - start) * size : (pos - start + n) * size]], r * size
                )
            finally:
                os.close(fd)
            if got != n * size:
                raise StoreCorruptError(f"{segment_path(self.path, k)}: validated rows vanished")
            pos += n
        # refresh() checked the CRCs; magic and seq cheaply re-check that nothing moved since
        if (rec["magic"] != MAGIC).any() or (rec["seq"] != np.arange(start, stop)).any():
            raise StoreCorruptError(f"{self.path}: rows [{start}, {stop}) changed after validation")
        names, inv = np.unique(rec["robot"], return_inverse=True)
        robot = np.array([b.decode() for b in names.tolist()], f"<U{ROBOT_ID_BYTES}")
        cols = {
            k: np.ascontiguousarray(rec[k], c.dtype) for k, c in COLUMNS.items() if k != "robot"
        }
        return Transitions(**cols, robot=robot[inv.reshape(-1)])

    def iter_chunks(
        self, chunk_rows: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Transitions]:
        """Consecutive Transitions of <= chunk_rows rows, covering [start, stop) once.

        stop defaults to len(self) when iteration starts; rows from a later refresh() are not
        included.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        stop = len(self) if stop is None else stop
        for lo in range(start, stop, chunk_rows):
            yield self.read(lo, min(lo + chunk_rows, stop))

    def read_all(self) -> Transitions:
        """Every visible row; memory grows with the store, so prefer iter_chunks for big ones."""
        return self.read(0, len(self))


def follow(
    path: str | os.PathLike[str], reader: TransitionReader | None
) -> TransitionReader | None:
    """``reader`` refreshed, or a new reader once the store at ``path`` exists (None before).

    For a process that polls a store another process writes: keep the returned reader and pass
    it back, so each poll validates only the rows flushed since (a new reader re-validates all).
    """
    if reader is not None:
        reader.refresh()
        return reader
    if not (Path(path) / META_FILE).exists():
        return None
    return TransitionReader(path)
