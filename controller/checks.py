"""Validation of settings values: each check raises ValueError naming the setting and the
allowed range, so an operator's typo is refused with a message that says how to fix it."""

from __future__ import annotations

import json
from typing import Any


def parse_value(text: str) -> Any:
    """A value typed on a command line: JSON where it parses (numbers, true/false, null,
    lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_number(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A real number (not bool, not NaN) in the interval; open ends are excluded."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        assert isinstance(value, (int, float))
        above = lo < value if low_open else lo <= value
        below = value < hi if high_open else value <= hi
        ok = above and below
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {left}{lo}, {hi}{right}, got {value!r}")
