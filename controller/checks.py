"""Validation of settings values, as the controller's settings use it.

The checks themselves live in :mod:`models.checks` (``models`` imports nothing of
``controller``, so the one place both packages check with is there); this module adds what only
the controller's entry points read: a value typed on a command line."""

from __future__ import annotations

import json
from typing import Any

from models.checks import check_bool, check_choice, check_int, check_number

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "parse_value"]


def parse_value(text: str) -> Any:
    """A value typed on a command line: JSON where it parses (numbers, true/false, null,
    lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
