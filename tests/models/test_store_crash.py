"""The store when its writer dies: kill -9 at any point, right after a flush, mid-write; and
what flush costs in syscalls (the service flushes after every loop pass that appended)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from models.store import TransitionReader, TransitionWriter
from tests.models.store_writer_proc import ACT_DIM, OBS_DIM, make_rows
from tests.models.test_store import RECORD_SIZE, append_one, assert_same


def test_kill9_after_torn_write(tmp_path: Path, proc_factory: Any) -> None:
    pr = proc_factory(tmp_path, "--flush-every=37", "--batch=10", "--segment-rows=100",
                      "--torn-at=555")  # fmt: skip
    flushed = pr.wait_for("torn")
    assert flushed == 560  # flushes happen at 40, 80, ... rows
    with pytest.raises(RuntimeError, match="another TransitionWriter"):
        TransitionWriter(tmp_path, OBS_DIM, ACT_DIM)  # the live process holds the lock
    pr.kill9()

    r = TransitionReader(tmp_path)
    assert (len(r), r.torn_tail_bytes) == (flushed, RECORD_SIZE // 2)
    assert_same(r.read_all(), make_rows(0, flushed))

    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, flush_every=16) as w:
        assert (w.recovered_torn_bytes, len(w)) == (RECORD_SIZE // 2, flushed)
        w.append_batch(make_rows(flushed, 100))
    assert r.refresh() == 100 and r.torn_tail_bytes == 0
    assert_same(r.read_all(), make_rows(0, flushed + 100))
    assert_same(TransitionReader(tmp_path).read_all(), make_rows(0, flushed + 100))


def test_kill9_while_writing(tmp_path: Path, proc_factory: Any) -> None:
    pr = proc_factory(tmp_path, "--flush-every=64", "--batch=16", "--segment-rows=500")
    reported = pr.wait_for("flushed", at_least=3000)
    pr.kill9()
    r = TransitionReader(tmp_path)
    n = len(r)
    assert n >= reported  # a flush cut short by the kill may add rows, or a hidden torn tail
    assert_same(r.read_all(), make_rows(0, n))
    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM) as w:
        assert (w.recovered_torn_bytes, len(w)) == (r.torn_tail_bytes, n)
        w.append_batch(make_rows(n, 10))
    assert r.refresh() == 10
    assert_same(r.read(n - 5, n + 10), make_rows(n - 5, 15))


@pytest.mark.parametrize(("mode", "flushed"), [("--single", 333), ("--batch=7", 336)])
def test_every_row_flushed_before_a_sigkill_is_readable(
    tmp_path: Path, proc_factory: Any, mode: str, flushed: int
) -> None:
    """The service's pattern: append, flush, and the process dies right after flush returns."""
    pr = proc_factory(tmp_path, mode, "--flush-every=1", "--segment-rows=50", "--kill-at=333")
    assert pr.p.wait(timeout=30) == -signal.SIGKILL
    r = TransitionReader(tmp_path)
    assert (len(r), r.torn_tail_bytes) == (flushed, 0)
    assert_same(r.read_all(), make_rows(0, flushed))
    with TransitionWriter(tmp_path, OBS_DIM, ACT_DIM) as w:
        assert (w.recovered_torn_bytes, len(w)) == (0, flushed)


def _record_syscalls(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """Log each os.write and os.fsync (with the synced file's name) to ``calls``."""
    write, fsync = os.write, os.fsync

    def logged_write(fd: int, data: Any) -> int:
        calls.append("write")
        return write(fd, data)

    def logged_fsync(fd: int) -> None:
        calls.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        fsync(fd)

    monkeypatch.setattr(os, "write", logged_write)
    monkeypatch.setattr(os, "fsync", logged_fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced files via /proc")
def test_flush_is_one_write_and_fsyncs_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, calls = make_rows(0, 3), list[str]()
    w = TransitionWriter(tmp_path, OBS_DIM, ACT_DIM)
    w.flush(fsync=True)  # the first sync also covers creating the segment file
    _record_syscalls(monkeypatch, calls)

    def syscalls(action: Any) -> list[str]:
        calls.clear()
        action()
        return list(calls)

    assert syscalls(lambda: append_one(w, rows, 0)) == []
    assert syscalls(w.flush) == ["write"]
    assert syscalls(w.flush) == []  # nothing pending: nothing to do
    assert syscalls(lambda: w.flush(fsync=True)) == ["fsync seg-000000.bin"]  # the row above
    assert syscalls(lambda: w.flush(fsync=True)) == []  # nothing unsynced
    append_one(w, rows, 1)
    assert syscalls(lambda: w.flush(fsync=True)) == ["write", "fsync seg-000000.bin"]
    w.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced files via /proc")
def test_a_sync_flush_fsyncs_every_segment_written_since_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments filled by flushes without fsync are synced too, and each one before the next
    is created, so after a power loss no segment but the last is incomplete."""
    calls: list[str] = []
    w = TransitionWriter(tmp_path, OBS_DIM, ACT_DIM, segment_rows=4, flush_every=64)
    w.flush(fsync=True)
    w.append_batch(make_rows(0, 6))
    w.flush()  # seg 0 full, seg 1 holds 2 rows: nothing synced
    w.append_batch(make_rows(6, 5))
    _record_syscalls(monkeypatch, calls)
    w.flush(fsync=True)  # 2 rows complete seg 1, 3 go to a new seg 2
    assert calls == [
        "write", "fsync seg-000000.bin", "fsync seg-000001.bin", f"fsync {tmp_path.name}",
        "write", "fsync seg-000002.bin", f"fsync {tmp_path.name}",
    ]  # fmt: skip
    w.close()
    assert_same(TransitionReader(tmp_path).read_all(), make_rows(0, 11))
