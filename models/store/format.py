"""The store's files: record layout and CRC, segment files, meta.json, the segment scan.

Shapes: S observation dim, A action dim, N rows (records).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.fileio import fsync_dir
from models.transitions import ROBOT_ID_BYTES

FORMAT_NAME = "tickmpc-transitions"
FORMAT_VERSION = 1
MAGIC = 0x54524E31  # b"1NRT" little-endian; any fixed non-zero value rejects zero-filled blocks
DEFAULT_SEGMENT_ROWS = 1 << 16
META_FILE = "meta.json"
LOCK_FILE = "writer.lock"
CRC_START = 8  # the CRC covers the record after (magic, crc), seq included
_SEG_RE = re.compile(r"^seg-(\d{6,})\.bin$")
_SCAN_ROWS = 8192  # rows per pread while validating: bounds temporary memory

Records = npt.NDArray[np.void]


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


def record_values(dt: np.dtype[np.void], seq: int, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The fields of record ``seq`` in ``dt``'s order, for one element assignment (the fastest
    way numpy fills a record): ``row`` in models.transitions.COLUMNS order, as RowCheck.row
    returns it. The CRC is left 0 (flush fills it); pad bytes are zero."""
    obs, act, next_obs, reward, terminated, truncated, episode, step, wall_time, robot = row
    rec = (MAGIC, 0, seq, episode, step, wall_time, reward, terminated, truncated, b"", robot,
           obs, act, next_obs)  # fmt: skip
    return rec if len(rec) == len(dt.names or ()) else (*rec, b"")  # the _tail pad field


def bytes_view(rec: Records) -> memoryview:
    """rec [N] records as one flat byte buffer (no copy)."""
    return memoryview(rec.view(np.uint8).reshape(-1))  # type: ignore[arg-type]


def fill_crc(rec: Records) -> None:
    """Set rec["crc"] [N] from each record's bytes after the CRC field."""
    size, mv, crc = rec.dtype.itemsize, bytes_view(rec), zlib.crc32
    rec["crc"] = [crc(mv[o + CRC_START : o + size]) for o in range(0, len(rec) * size, size)]


def segment_path(root: Path, k: int) -> Path:
    return root / f"seg-{k:06d}.bin"


def count_segments(root: Path) -> int:
    """Number of segment files; they must be numbered 0..K-1 without gaps."""
    ks = sorted(int(m.group(1)) for f in os.listdir(root) if (m := _SEG_RE.match(f)))
    if ks != list(range(len(ks))):
        raise StoreCorruptError(f"{root}: segment numbers have gaps: {ks[:10]}...")
    return len(ks)


def scan_segment(fd: int, dt: np.dtype[np.void], k: int, row: int, seg_rows: int) -> int:
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
        crcs = [zlib.crc32(mv[o + CRC_START : o + size]) for o in range(0, m * size, size)]
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
            "crc": f"zlib.crc32 of record bytes [{CRC_START}, record_size)",
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
