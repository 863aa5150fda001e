"""Range checks for values where they enter: config dataclasses and CLI options.

Each check raises `ConfigError` with one line that names the value, the allowed range and
what was given. Floats must be finite (NaN compares False with everything, so a check
written as `x < 0` lets it through); booleans are not integers (YAML `true` is not 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

from congener.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy's legacy generators and most tools take 32-bit seeds


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return "" if low is None else f" {'>' if low_open else '>='} {_num(low)}"
    if low is None:
        return f" {'<' if high_open else '<='} {_num(high)}"
    return (f" in {'(' if low_open else '['}{_num(low)}, {_num(high)}"
            f"{')' if high_open else ']'}")


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float if it is a finite real number within the bounds (None: unbounded)."""
    ok = (isinstance(value, Real) and not isinstance(value, bool)
          and math.isfinite(float(value)))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = _interval(low, high, low_open, high_open)
        raise ConfigError(f"{name} must be{bounds or ' finite'} (a finite number; "
                          f"got {value!r})")
    return float(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int if it is an integer (not a bool) within [low, high]."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ConfigError(f"{name} must be an integer{_interval(low, high, False, False)} "
                          f"(got {value!r})")
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """A random seed: an integer in [0, 2^32 - 1]."""
    return check_int(name, value, 0, MAX_SEED)


def check_ints(name: str, values: Any, low: int | None = None, high: int | None = None, *,
               unique: bool = True, what: str | None = None) -> tuple[int, ...]:
    """A non-empty list of integers within [low, high] (no repeats when `unique`) as a tuple.
    `what` describes the values in the message (default: the range)."""
    what = what or f"a non-empty list of integers{_interval(low, high, False, False)}"
    ok = not isinstance(values, str | bytes) and isinstance(values, Sequence) and bool(values)
    if ok:
        try:
            out = tuple(check_int(name, v, low, high) for v in values)
        except ConfigError:
            ok = False
    if not ok:
        raise ConfigError(f"{name} must be {what} (got {values!r})")
    if unique and len(set(out)) != len(out):
        raise ConfigError(f"{name} lists a value twice (got {list(out)})")
    return out


def check_floats(name: str, values: Any, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False, high_open: bool = False) -> tuple[float, ...]:
    """A non-empty list of finite numbers within the bounds."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list of numbers"
                          f"{_interval(low, high, low_open, high_open)} (got {values!r})")
    return tuple(check_float(name, v, low, high, low_open=low_open, high_open=high_open)
                 for v in values)
