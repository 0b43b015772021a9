"""Progress records: append-only JSON-lines files, one record a line, and what a lockstep run
reads back from the learner's and the policy trainer's.

The learner appends one record per retrain to its metrics file (``tickmpc learn --metrics``:
:class:`models.learner.Retrain`, with ``rows`` trained on) and the policy trainer one per
published policy (``--policy-metrics``: ``real_rows`` the model it trained on saw and
``owed``, the updates it still owes for them). A lockstep run waits on those two fields
(:func:`trained_rows`, :func:`policy_caught_up`), so the format is written and read here, in
one module.

A record is appended whole, in one write, and flushed when the file closes; a reader ignores a
last line without its newline (one being written while it reads), so what it returns parses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` to ``path`` as one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every whole record of ``path``, oldest first (none when the file does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the last piece is "" or a line still being written
    return [json.loads(line) for line in lines if line]


def trained_rows(path: Path) -> int | None:
    """The rows the learner's newest retrain trained on, from its metrics file at ``path``
    (None before its first retrain)."""
    records = read_records(path)
    return int(records[-1]["rows"]) if records else None


def policy_caught_up(path: Path, rows: int) -> bool:
    """Whether the policy trainer's newest published policy, from its metrics file at
    ``path``, has every update it owes for ``rows`` real rows (False before its first)."""
    records = read_records(path)
    if not records:
        return False
    last = records[-1]
    return bool(last["real_rows"] >= rows and last["owed"] == 0)
