"""The run's own copy of its task file: every process of a run loads the copy in ``task/``,
and ``--resume`` loads it again, whatever happened to the original since."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

from controller.config import Config
from controller.run.rundir import RunDir
from controller.tasks import task_source


def keep_task_copy(config: Config, run: RunDir) -> Config:
    """``config`` with its task read from a copy in ``run.task`` when the task comes from a
    file or module (:func:`resumed_task` reads it back). ``run.task_record`` beside it records
    the original reference and the copy's sha256."""
    source = task_source(config.task)
    if source is None:
        return config
    where = run.task.resolve()
    if source.path.parent == where:  # already the run's own copy
        return config
    where.mkdir(parents=True, exist_ok=True)
    copy = where / source.path.name
    shutil.copyfile(source.path, copy)
    record = {"source": config.task, "file": copy.name, "name": source.name,
              "sha256": source.sha256}  # fmt: skip
    run.task_record.write_text(json.dumps(record, indent=2) + "\n")
    return replace(config, task=_ref(copy, source.name))


def resumed_task(run: RunDir) -> str | None:
    """The task reference of the copy the run keeps (None if it keeps none); ValueError if the
    copy is missing or differs from the hash recorded when the run began."""
    if not run.task_record.exists():
        return None
    try:
        record = json.loads(run.task_record.read_text())
        copy = run.task / record["file"]
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{run.task_record}: the run's task copy cannot be read: {exc}") from None
    if digest != record["sha256"]:
        raise ValueError(f"{copy} changed since the run began (sha256 {digest[:12]}..., "
                         f"recorded {str(record['sha256'])[:12]}...)")  # fmt: skip
    return _ref(copy.resolve(), record["name"])


def _ref(path: Path, name: str | None) -> str:
    """The task reference of ``path`` and, where one was named, the attribute ``name``."""
    return f"{path}:{name}" if name else str(path)
