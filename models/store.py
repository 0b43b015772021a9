"""Persistent append-only transition store, safe against crashes and concurrent readers.

Shapes: S observation dim, A action dim, N rows (transitions).

A store is a directory:
  meta.json       format version, dims, segment size, record layout (written once, atomically)
  seg-000000.bin  fixed-size little-endian records; segment k holds global rows
  seg-000001.bin  [k * segment_rows, (k + 1) * segment_rows), so a global index maps to a
  ...             (segment, offset) by arithmetic and a reader's index is O(segments)
  writer.lock     flock'ed by the one writer (the kernel releases it when the writer dies)

Each record starts with a magic number and a zlib.crc32 of the rest of the record, which holds
the record's global index (`seq`), so torn, zero-filled, random or stale bytes never validate.
Only the last segment may end in invalid bytes (a write torn by a crash, or one still in flight):
the writer fills a segment completely before it creates the next, so an invalid record in an
earlier segment is corruption and raises StoreCorruptError. Reopening a writer truncates the torn
tail and appends after the last valid record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.fileio import fsync_dir
from models.transitions import (
    COLUMNS,
    ROBOT_ID_BYTES,
    Transitions,
    _encode_robot_ids,
    check_batch,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "tickmpc-transitions"
FORMAT_VERSION = 1
MAGIC = 0x54524E31  # b"1NRT" little-endian; any fixed non-zero value rejects zero-filled blocks
DEFAULT_SEGMENT_ROWS = 1 << 16
META_FILE = "meta.json"
LOCK_FILE = "writer.lock"
_SEG_RE = re.compile(r"^seg-(\d{6,})\.bin$")
_CRC_START = 8  # the CRC covers the record after (magic, crc), seq included
_SCAN_ROWS = 8192  # rows per pread while validating: bounds temporary memory

Records = npt.NDArray[np.void]


_F32_MAX = float(np.finfo(np.float32).max)


def _scalar_kind(value: object) -> str:
    """numpy's dtype kind of a Python or numpy scalar ("" for anything else)."""
    if isinstance(value, (bool, np.bool_)):
        return "b"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (
            np.asarray(value).dtype.kind
            if isinstance(value, np.generic)
            else ("i" if isinstance(value, int) else "f")
        )
    return ""


class StoreCorruptError(RuntimeError):
    """Invalid data where only valid records may be (anything but a torn tail)."""


def record_dtype(obs_dim: int, act_dim: int) -> np.dtype[np.void]:
    """The on-disk record: little-endian, fields at natural alignment, size a multiple of 8."""
    if obs_dim < 1 or act_dim < 1:
        raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim} and {act_dim}")
    fields: list[Any] = [
        ("magic", "<u4"),
        ("crc", "<u4"),
        ("seq", "<i8"),
        ("episode", "<i8"),
        ("step", "<i8"),
        ("wall_time", "<f8"),
        ("reward", "<f4"),
        ("terminated", "?"),
        ("truncated", "?"),
        ("_pad", "V2"),
        ("robot", f"S{ROBOT_ID_BYTES}"),
        ("obs", "<f4", (obs_dim,)),
        ("act", "<f4", (act_dim,)),
        ("next_obs", "<f4", (obs_dim,)),
    ]
    if tail := -np.dtype(fields).itemsize % 8:
        fields.append(("_tail", f"V{tail}"))
    return np.dtype(fields)


def _bytes_view(rec: Records) -> memoryview:
    """rec [N] records as one flat byte buffer (no copy)."""
    return memoryview(rec.view(np.uint8).reshape(-1))  # type: ignore[arg-type]


def _fill_crc(rec: Records) -> None:
    """Set rec["crc"] [N] from each record's bytes after the CRC field."""
    size, mv, crc = rec.dtype.itemsize, _bytes_view(rec), zlib.crc32
    rec["crc"] = [crc(mv[o + _CRC_START : o + size]) for o in range(0, len(rec) * size, size)]


def _segment_path(root: Path, k: int) -> Path:
    return root / f"seg-{k:06d}.bin"


def _count_segments(root: Path) -> int:
    """Number of segment files; they must be numbered 0..K-1 without gaps."""
    ks = sorted(int(m.group(1)) for f in os.listdir(root) if (m := _SEG_RE.match(f)))
    if ks != list(range(len(ks))):
        raise StoreCorruptError(f"{root}: segment numbers have gaps: {ks[:10]}...")
    return len(ks)


def _scan(fd: int, dt: np.dtype[np.void], k: int, row: int, seg_rows: int) -> int:
    """Valid rows of segment k, checking from `row` on; stops at the first bad/partial record."""
    size = dt.itemsize
    while row < seg_rows:
        want = min(_SCAN_ROWS, seg_rows - row)
        buf = os.pread(fd, want * size, row * size)
        n = len(buf) // size
        rec = np.frombuffer(buf, dt, count=n)
        seq0 = k * seg_rows + row
        bad = np.flatnonzero((rec["magic"] != MAGIC) | (rec["seq"] != np.arange(seq0, seq0 + n)))
        m = int(bad[0]) if bad.size else n
        mv = memoryview(buf)
        crcs = [zlib.crc32(mv[o + _CRC_START : o + size]) for o in range(0, m * size, size)]
        bad = np.flatnonzero(np.asarray(crcs, np.uint32) != rec["crc"][:m])
        good = int(bad[0]) if bad.size else m
        row += good
        if good < want:
            break
    return row


@dataclass(frozen=True)
class StoreMeta:
    """The contents of meta.json."""

    obs_dim: int
    act_dim: int
    segment_rows: int

    @cached_property  # frozen, so computing the dtype once is safe
    def dtype(self) -> np.dtype[np.void]:
        return record_dtype(self.obs_dim, self.act_dim)

    def to_json(self) -> dict[str, Any]:
        dt = self.dtype
        assert dt.fields is not None
        layout = [[k, f[0].base.str, list(f[0].shape), f[1]] for k, f in dt.fields.items()]
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "segment_rows": self.segment_rows,
            "record_size": dt.itemsize,
            "magic": MAGIC,
            "crc": f"zlib.crc32 of record bytes [{_CRC_START}, record_size)",
            "layout": layout,
        }

    @staticmethod
    def load(root: Path) -> StoreMeta:
        if not (root / META_FILE).exists():
            raise FileNotFoundError(f"no transition store at {root}: {META_FILE} is missing")
        d = json.loads((root / META_FILE).read_text())
        if d.get("format") != FORMAT_NAME or d.get("version") != FORMAT_VERSION:
            raise ValueError(f"{root}: unsupported format {d.get('format')} v{d.get('version')}")
        meta = StoreMeta(int(d["obs_dim"]), int(d["act_dim"]), int(d["segment_rows"]))
        if d != meta.to_json():  # written by an incompatible build of the same version
            raise ValueError(f"{root / META_FILE}: record layout differs from this version's")
        return meta

    def create(self, root: Path) -> None:
        """Write meta.json via tmp + rename: readers see either no store or a complete one."""
        tmp = root / f"{META_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, root / META_FILE)
        fsync_dir(root)


class TransitionWriter:
    """The one appender of a store: creates it, or reopens it and truncates a torn tail.

    Rows are packed into a preallocated [flush_every] record buffer (memory stays bounded) and
    written, one os.write per segment touched, when the buffer fills, on flush() and on close().
    With durable=True every flush also fsyncs. A second live writer of a store is refused.
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
        self._buf: Records = np.zeros(flush_every, self.meta.dtype)  # zeros: pad bytes stay 0
        self._pending = 0

    def _open_meta(self, obs_dim: int, act_dim: int, segment_rows: int | None) -> StoreMeta:
        if not (self.path / META_FILE).exists():
            if _count_segments(self.path):
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
        n_seg = max(_count_segments(self.path), 1)
        for k in range(n_seg - 1):  # a full re-validation would be O(store); sizes are O(1)
            if (n := _segment_path(self.path, k).stat().st_size) != seg_rows * size:
                raise StoreCorruptError(f"{_segment_path(self.path, k)}: {n} bytes, not full")
        self._seg = n_seg - 1
        self._fd = os.open(_segment_path(self.path, self._seg), os.O_RDWR | os.O_CREAT, 0o644)
        self._seg_fill = _scan(self._fd, self.meta.dtype, self._seg, 0, seg_rows)
        self._flushed = self._seg * seg_rows + self._seg_fill
        torn = os.fstat(self._fd).st_size - self._seg_fill * size
        if torn:
            log.warning("%s: dropping %d torn bytes after row %d", self.path, torn, self._flushed)
            os.ftruncate(self._fd, self._seg_fill * size)
            os.fsync(self._fd)
        os.lseek(self._fd, self._seg_fill * size, os.SEEK_SET)
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

        wall_time defaults to time.time(). Checked like append_batch (same refusals), but
        written straight into the record buffer: the service appends one row per tick.
        """
        self._check_open()
        dims = (self.meta.obs_dim, self.meta.act_dim, self.meta.obs_dim)
        vecs = {}
        for name, v, dim in zip(
            ("obs", "act", "next_obs"), (obs, act, next_obs), dims, strict=True
        ):
            arr = np.asarray(v)
            if arr.shape != (dim,):
                raise ValueError(f"{name} must have shape ({dim},), got {arr.shape}")
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"{name} has dtype {arr.dtype}; accepted dtype kinds are 'iuf'")
            with np.errstate(over="ignore"):  # an f32 overflow becomes inf, refused below
                vecs[name] = arr.astype(np.float32)
            if not np.isfinite(vecs[name]).all():
                raise ValueError(f"{name} contains NaN or inf")
        wall = time.time() if wall_time is None else wall_time
        for name, value, kinds in (("reward", reward, "iuf"), ("terminated", terminated, "b"),
                                   ("truncated", truncated, "b"), ("episode", episode, "iu"),
                                   ("step", step, "iu"), ("wall_time", wall, "iuf")):  # fmt: skip
            # no casting: an int `terminated` or a float `step` is refused, not converted
            if _scalar_kind(value) not in kinds:
                raise ValueError(f"{name} must be a scalar of dtype kind {kinds!r}, got {value!r}")
        if not (math.isfinite(reward) and abs(reward) <= _F32_MAX and math.isfinite(wall)):
            raise ValueError(f"reward ({reward}) and wall_time ({wall}) must be finite")
        for name, value in (("episode", episode), ("step", step)):
            if not -(2**63) <= int(value) < 2**63:
                raise ValueError(f"{name} does not fit in int64")
        robot_id = _encode_robot_ids(np.asarray([robot]))[0]
        rec = self._buf[self._pending : self._pending + 1]
        rec["magic"], rec["seq"], rec["episode"], rec["step"] = MAGIC, len(self), episode, step
        rec["wall_time"], rec["reward"], rec["robot"] = wall, reward, robot_id
        rec["terminated"], rec["truncated"] = terminated, truncated
        rec["obs"], rec["act"], rec["next_obs"] = vecs["obs"], vecs["act"], vecs["next_obs"]
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
        cols = check_batch(batch, self.meta.obs_dim, self.meta.act_dim)
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
        """Write the buffered rows, one os.write per segment touched; fsync if asked or durable."""
        self._check_open()
        recs, size = self._buf[: self._pending], self.meta.dtype.itemsize
        _fill_crc(recs)
        raw, done = _bytes_view(recs), 0
        try:
            while done < len(recs):
                if self._seg_fill == self.meta.segment_rows:
                    self._roll()
                n = min(len(recs) - done, self.meta.segment_rows - self._seg_fill)
                self._write_all(raw[done * size : (done + n) * size])
                self._seg_fill += n
                self._flushed += n
                done += n
        finally:
            if done < len(recs):  # a write failed: keep the unwritten rows for a retry
                self._buf[: len(recs) - done] = self._buf[done : len(recs)].copy()
            self._pending = len(recs) - done
        if fsync or self.durable:
            os.fsync(self._fd)

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

    def _roll(self) -> None:
        """Start the next segment; the current one is complete from now on."""
        if self.durable:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._seg += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._fd = os.open(_segment_path(self.path, self._seg), flags, 0o644)
        self._seg_fill = 0
        if self.durable:
            fsync_dir(self.path)

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
        n_seg = _count_segments(self.path)
        if n_seg < len(self._rows):
            raise StoreCorruptError(f"{self.path}: segments vanished ({len(self._rows)}->{n_seg})")
        first = max(len(self._rows) - 1, 0)  # the ones before were complete and validated
        self._rows += [0] * (n_seg - len(self._rows))
        self.torn_tail_bytes = 0
        for k in range(first, n_seg):
            path = _segment_path(self.path, k)
            fd = os.open(path, os.O_RDONLY)
            try:
                self._rows[k] = _scan(fd, self._dt, k, self._rows[k], seg_rows)
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
        out, pos = _bytes_view(rec), start
        while pos < stop:
            (k, r), n = divmod(pos, seg_rows), min(stop - pos, seg_rows - pos % seg_rows)
            fd = os.open(_segment_path(self.path, k), os.O_RDONLY)
            try:  # preadv lands in the output records: no temporary copy
                got = os.preadv(
                    fd, [out[(pos - start) * size : (pos - start + n) * size]], r * size
                )
            finally:
                os.close(fd)
            if got != n * size:
                raise StoreCorruptError(f"{_segment_path(self.path, k)}: validated rows vanished")
            pos += n
        # refresh() checked the CRCs; magic and seq cheaply re-check that nothing moved since
        if (rec["magic"] != MAGIC).any() or (rec["seq"] != np.arange(start, stop)).any():
            raise StoreCorruptError(f"{self.path}: rows [{start}, {stop}) changed after validation")
        names, inv = np.unique(rec["robot"], return_inverse=True)
        robot = np.array([b.decode() for b in names.tolist()], f"<U{ROBOT_ID_BYTES}")
        cols = {k: np.ascontiguousarray(rec[k], c[2]) for k, c in COLUMNS.items() if k != "robot"}
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
