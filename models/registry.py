"""A directory of versioned ONNX models: ``v000001.onnx``, ``v000002.onnx``, ... and ``LATEST``.

Publishing writes the new file under a temporary name and links it to the next free version
name, so a reader never sees a half-written model and two publishers never overwrite each other.
``LATEST`` (the newest published version number) is replaced atomically after the model file is
in place, so following it always leads to a complete file. Old versions are kept: they are the
run's history and the fallback when a new model is rejected.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from models.ensemble import GaussianEnsemble
from models.export import ModelMetadata, export_ensemble
from models.fileio import fsync_dir, write_atomic

LATEST = "LATEST"
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
