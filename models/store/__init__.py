"""Persistent append-only transition store, safe against crashes and concurrent readers.

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

Modules: `format` (records, CRC, segment files, meta.json), `writer` (TransitionWriter),
`reader` (TransitionReader, follow). What a valid row is lives in models.transitions.
"""

from models.store.format import (
    DEFAULT_SEGMENT_ROWS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAGIC,
    META_FILE,
    StoreCorruptError,
    StoreMeta,
    record_dtype,
)
from models.store.reader import TransitionReader, follow
from models.store.writer import TransitionWriter
from models.transitions import Transitions

__all__ = [
    "DEFAULT_SEGMENT_ROWS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "META_FILE",
    "StoreCorruptError",
    "StoreMeta",
    "TransitionReader",
    "TransitionWriter",
    "Transitions",
    "follow",
    "record_dtype",
]
