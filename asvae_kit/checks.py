"""The checks every config value and call argument goes through, with one wording for each.

``check_int(v, "config 'steps'", minimum=0)`` raises ``ConfigError("config 'steps' must be a
non-negative integer, got -1")``.  Booleans are never numbers here (``True`` is not a step count),
and NaN or infinity is never a valid number.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .errors import ConfigError
from .names import must_be_one_of

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_bool", "check_choice"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_phrase(minimum: int) -> str:
    return {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")


def check_int(value: Any, what: str, *, minimum: int = 1, error: type[Exception] = ConfigError, hint: str = "") -> int:
    """``value`` when it is an integer >= ``minimum``; otherwise ``error`` naming ``what`` and the value."""
    if not is_int(value) or value < minimum:
        raise error(f"{what} must be {_int_phrase(minimum)}, got {value!r}{hint}")
    return value


def check_number(
    value: Any,
    what: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    expected: str | None = None,
    error: type[Exception] = ConfigError,
) -> float:
    """``value`` when it is a finite number within the bounds; ``error`` otherwise.

    ``expected`` replaces the generated description of the range ("a number in [0, 1)")."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        if expected is None:
            if low is not None and high is not None:
                expected = f"a number in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
            elif low is not None:
                expected = "a positive number" if low == 0 and not low_inclusive else f"a number {'>=' if low_inclusive else '>'} {low:g}"
            else:
                expected = "a finite number"
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (a string: in a YAML or JSON config, write the number without quotes)"
            except ValueError:
                pass
        raise error(f"{what} must be {expected}, got {value!r}{hint}")
    return value


def check_bool(value: Any, what: str, *, error: type[Exception] = ConfigError) -> bool:
    """``value`` when it is ``True`` or ``False``; ``error`` otherwise."""
    if not isinstance(value, bool):
        raise error(f"{what} must be true or false, got {value!r}")
    return value


def check_choice(value: Any, choices: Iterable[str], what: str, *, note: str = "", error: type[Exception] = ConfigError) -> Any:
    """``value`` when it is one of ``choices``; otherwise ``error`` in the one wording of
    ``asvae_kit.names.must_be_one_of`` (the choices, the value, a did-you-mean, then ``note``)."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise error(must_be_one_of(what, value, choices, note))
    return value
