"""The checks vocabulary (``asvae_kit.checks``): what passes, and the one wording of what fails."""

from __future__ import annotations

import math

import pytest

from asvae_kit.checks import check_bool, check_int, check_number, is_int, is_number
from asvae_kit.errors import ConfigError, UnsupportedShapeError


def test_ints_are_never_bools():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert check_int(0, "x", minimum=0) == 0 and check_int(5, "x") == 5
    for bad, minimum, phrase in [(True, 1, "a positive integer"), (0, 1, "a positive integer"), (-1, 0, "a non-negative integer"), (1, 2, "an integer >= 2"), ("3", 1, "a positive integer")]:
        with pytest.raises(ConfigError, match=f"config 'steps' must be {phrase}, got {bad!r}"):
            check_int(bad, "config 'steps'", minimum=minimum)


def test_the_error_type_and_a_hint_are_the_callers():
    with pytest.raises(UnsupportedShapeError, match=r"latent_dim must be a positive integer, got 0 \(or null\)$"):
        check_int(0, "latent_dim", error=UnsupportedShapeError, hint=" (or null)")


def test_numbers_are_finite_and_within_bounds():
    assert is_number(0.5) and not is_number(True) and not is_number(math.nan) and not is_number(math.inf)
    assert check_number(0.0, "h", low=0, high=1) == 0.0
    cases = [
        (dict(low=0, high=1), 1.0, r"a number in \[0, 1\)"),
        (dict(low=0, low_inclusive=False), 0, "a positive number"),
        (dict(low=0), -1e-9, "a number >= 0"),
        (dict(), math.nan, "a finite number"),
        (dict(low=1, expected="0 (off) or a number > 1"), 0.5, r"0 \(off\) or a number > 1"),
    ]
    for bounds, value, phrase in cases:
        with pytest.raises(ConfigError, match=f"v must be {phrase}, got"):
            check_number(value, "v", **bounds)


def test_bools_are_only_bools():
    assert check_bool(False, "b") is False
    with pytest.raises(ValueError, match="b must be true or false, got 1"):
        check_bool(1, "b", error=ValueError)
