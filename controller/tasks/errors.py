"""Errors of a user's task code in one line, for the messages that refuse a task file."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe(exc: BaseException) -> str:
    """``exc`` in one line: its innermost cause (the exporter wraps the error that matters),
    without terminal colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [x.strip() for x in _ANSI.sub("", str(exc)).splitlines() if x.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]
