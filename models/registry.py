"""A directory of versioned ONNX models: ``v000001.onnx``, ``v000002.onnx``, ... and ``LATEST``.

Publishing writes the new file under a temporary name and links it to the next free version
name, so a reader never sees a half-written model and two publishers never overwrite each other.
``LATEST`` (the newest published version number) is replaced atomically after the model file is
in place, so following it always leads to a complete file. Old versions are kept: they are the
run's history and the fallback when a new model is rejected.

A candidate the learner's gate refused is set aside under ``rejected/`` with why beside it:
``rejected/rowsNNNNNNNN-TIME[-K].onnx`` and a JSON file of the same stem (``rows``,
``reason``, ``time``), read by the service for its ``history`` (:class:`Refusals`). ``TIME`` is
the whole UNIX second; ``-K`` (2, 3, ...) tells apart the refusals of one second on as many
rows, which would otherwise share a name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from models.ensemble import GaussianEnsemble
from models.export import ModelMetadata, export_ensemble
from models.fileio import fsync_dir, write_atomic

log = logging.getLogger(__name__)
LATEST = "LATEST"
REJECTED = "rejected"
"""The folder of set-aside candidates, in the model directory."""
MAX_REFUSAL_BYTES = 64 * 1024
"""A larger file in ``rejected/`` is not one the learner wrote."""
T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersion:
    """One published model file."""

    version: int
    path: Path


class VersionedDirectory:
    """Versioned ONNX files ``<prefix>000001.onnx``, ... in one directory and a marker file
    naming the newest, safe for one writer and many readers. Subclasses set the file prefix,
    the marker's name and what a file holds (for messages): the models here, the policies in
    :mod:`models.policy.export`."""

    prefix = "v"
    marker = LATEST
    kind = "model"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._pattern = re.compile(rf"^{re.escape(self.prefix)}(\d{{6,}})\.onnx$")

    def path_of(self, version: int) -> Path:
        return self.root / f"{self.prefix}{version:06d}.onnx"

    def versions(self) -> list[int]:
        """All published version numbers, ascending."""
        if not self.root.is_dir():
            return []
        found = (self._pattern.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> ModelVersion | None:
        """The version named by the marker (or the highest on disk if the marker is missing)."""
        try:
            version = int((self.root / self.marker).read_text().strip())
        except (FileNotFoundError, ValueError):
            versions = self.versions()
            if not versions:
                return None
            version = versions[-1]
        path = self.path_of(version)
        return ModelVersion(version, path) if path.exists() else None

    def mark_latest(self, version: int) -> None:
        """Atomically point the marker at an existing version."""
        if not self.path_of(version).exists():
            raise FileNotFoundError(f"no {self.kind} version {version} in {self.root}")
        write_atomic(self.root / self.marker, f"{version}\n".encode())

    def _publish(self, export: Callable[[Path], T]) -> tuple[ModelVersion, T]:
        """Run ``export`` into a temporary file here, link it to the next free version name
        and point the marker at it; returns the version and what ``export`` returned."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=self.root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            meta = export(tmp)
            version = self._link_next(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self.mark_latest(version)
        return ModelVersion(version, self.path_of(version)), meta

    def _link_next(self, tmp: Path) -> int:
        version = (self.versions() or [0])[-1] + 1
        while True:
            try:
                # link() fails if the name exists: no publisher can overwrite another's version.
                os.link(tmp, self.path_of(version))
            except FileExistsError:
                version += 1
                continue
            fsync_dir(self.root)
            return version


class ModelDirectory(VersionedDirectory):
    """Versioned model files ``v000001.onnx``, ... and ``LATEST`` in one directory."""

    def publish(
        self,
        model: GaussianEnsemble,
        *,
        train_rows: int = 0,
        holdout: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        member_batched: bool = True,
    ) -> tuple[ModelVersion, ModelMetadata]:
        """Export ``model`` as the next version and point ``LATEST`` at it."""
        return self._publish(
            lambda tmp: export_ensemble(
                model,
                tmp,
                train_rows=train_rows,
                holdout=holdout,
                extra=extra,
                member_batched=member_batched,
            )
        )

    def adopt(self, exported: Path) -> ModelVersion:
        """Publish an already exported (and checked) model file as the next version and point
        ``LATEST`` at it. ``exported`` must be in this directory (a hard link is made)."""
        version = self._link_next(exported)
        self.mark_latest(version)
        return ModelVersion(version, self.path_of(version))

    def set_aside(self, candidate: Path, rows: int, reason: str) -> Path:
        """Keep a refused ``candidate`` (trained on ``rows``) under ``rejected/`` with a JSON
        file of why beside it, and remove ``candidate``; returns the kept file. The name is
        claimed with a hard link, so two refusals never overwrite each other. The reason is
        written atomically (the service may read it any time); failing to write it is logged
        (the reason is in the learner's log and metrics too), not raised."""
        rejected = self.root / REJECTED
        rejected.mkdir(parents=True, exist_ok=True)
        now = time.time()
        base = f"rows{rows:08d}-{int(now)}"
        for k in range(1, 1_000_000):
            kept = rejected / (f"{base}.onnx" if k == 1 else f"{base}-{k}.onnx")
            try:
                os.link(candidate, kept)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - a million refusals in one second
            raise FileExistsError(f"no free name for {base} in {rejected}")
        candidate.unlink()
        refusal = {"rows": rows, "reason": reason, "time": now}
        try:
            write_atomic(kept.with_suffix(".json"), json.dumps(refusal).encode())
        except OSError as exc:
            log.warning("cannot write why beside %s: %s", kept, exc)
        return kept

    def refusals(self) -> Refusals:
        """A reader of the refusals set aside here (see :class:`Refusals`)."""
        return Refusals(self.root / REJECTED)


@dataclass(frozen=True)
class Refusal:
    """One candidate the learner's gate refused, as its JSON file says."""

    rows: int
    """Transitions it was trained on."""
    reason: str
    """Why the gate refused it."""
    time: float
    """When (UNIX seconds)."""


class Refusals:
    """The refusals in a model directory's ``rejected/``, each JSON file read once, known by
    name and inode (a file replaced under its name is read again). A file there that is not
    such a refusal is skipped and logged once: a stray file must not cost a reader the rest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._entries: dict[tuple[str, int], Refusal | None] = {}
        """(name, inode) -> its refusal, or None for a file that is not one."""
        self._unreadable = False

    def read(self) -> list[Refusal]:
        """The refusals now in the directory (none while it does not exist)."""
        try:
            with os.scandir(self.directory) as found:
                files = [(e.name, e.inode()) for e in found
                         if e.name.endswith(".json") and not e.name.startswith(".")]  # fmt: skip
        except FileNotFoundError:
            return []
        except OSError as exc:
            if not self._unreadable:  # said once; each read would say it again
                log.warning("cannot list the learner's refusals in %s: %s", self.directory, exc)
                self._unreadable = True
            return []
        self._unreadable = False
        known = self._entries
        self._entries = {key: known[key] if key in known else self._parse(key[0]) for key in files}
        return [entry for entry in self._entries.values() if entry is not None]

    def _parse(self, name: str) -> Refusal | None:
        path = self.directory / name
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_REFUSAL_BYTES + 1)
            if len(raw) > MAX_REFUSAL_BYTES:
                raise ValueError(f"over {MAX_REFUSAL_BYTES} bytes")
            refusal = json.loads(raw)
            if not isinstance(refusal, dict):
                raise ValueError("not a JSON object")
            rows, reason, when = refusal["rows"], refusal["reason"], refusal["time"]
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ValueError(f"rows is {rows!r}")
            if not isinstance(reason, str):
                raise ValueError(f"reason is {reason!r}")
            if isinstance(when, bool) or not isinstance(when, (int, float)):
                raise ValueError(f"time is {when!r}")
            if not math.isfinite(float(when)):
                raise ValueError(f"time is {when!r}")
        except FileNotFoundError:  # removed since it was listed: gone from the next listing
            return None
        except (OSError, ValueError, KeyError, RecursionError, OverflowError) as exc:
            log.warning("%s is not a refusal of the learner (rows, reason, time): skipped (%s)",
                        path, exc)  # fmt: skip
            return None
        return Refusal(rows=rows, reason=reason, time=float(when))
