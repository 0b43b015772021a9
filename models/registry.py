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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.ensemble import GaussianEnsemble
from models.export import ModelMetadata, export_ensemble
from models.fileio import fsync_dir, write_atomic

_VERSION_RE = re.compile(r"^v(\d{6,})\.onnx$")
LATEST = "LATEST"


@dataclass(frozen=True)
class ModelVersion:
    """One published model file."""

    version: int
    path: Path


class ModelDirectory:
    """Versioned model files in one directory, safe for one writer and many readers."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_of(self, version: int) -> Path:
        return self.root / f"v{version:06d}.onnx"

    def versions(self) -> list[int]:
        """All published version numbers, ascending."""
        if not self.root.is_dir():
            return []
        found = (_VERSION_RE.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> ModelVersion | None:
        """The version named by ``LATEST`` (or the highest on disk if the marker is missing)."""
        marker = self.root / LATEST
        try:
            version = int(marker.read_text().strip())
        except (FileNotFoundError, ValueError):
            versions = self.versions()
            if not versions:
                return None
            version = versions[-1]
        path = self.path_of(version)
        return ModelVersion(version, path) if path.exists() else None

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
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=self.root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            meta = export_ensemble(
                model,
                tmp,
                train_rows=train_rows,
                holdout=holdout,
                extra=extra,
                member_batched=member_batched,
            )
            version = self._link_next(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self.mark_latest(version)
        return ModelVersion(version, self.path_of(version)), meta

    def adopt(self, exported: Path) -> ModelVersion:
        """Publish an already exported (and checked) model file as the next version and point
        ``LATEST`` at it. ``exported`` must be in this directory (a hard link is made)."""
        version = self._link_next(exported)
        self.mark_latest(version)
        return ModelVersion(version, self.path_of(version))

    def mark_latest(self, version: int) -> None:
        """Atomically point ``LATEST`` at an existing version."""
        if not self.path_of(version).exists():
            raise FileNotFoundError(f"no model version {version} in {self.root}")
        write_atomic(self.root / LATEST, f"{version}\n".encode())

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
