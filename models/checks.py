"""Validation of settings values, the one place every config checks its fields with.

Each check raises ValueError naming the setting and the values it takes, so an operator's typo
is refused with a message that says how to fix it. It lives in ``models`` because ``models``
imports nothing of ``controller``, while ``controller`` (its planners, rollouts, service and
config file) may import ``models``: both packages check with these.
"""

from __future__ import annotations

import math


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """``value`` is True or False (not 0, 1 or "yes": a TOML or JSON value has its type)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    """An integer (not bool) in [lo, hi]; ``hi`` None: no upper bound."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, int)
        ok = lo <= value and (hi is None or value <= hi)
    if not ok:
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def check_number(
    name: str,
    value: object,
    lo: float,
    hi: float = math.inf,
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
