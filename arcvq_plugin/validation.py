"""Up-front checks of arguments, one vocabulary for the package: each error names the argument and what is allowed.

A bool is not accepted where an integer or a number is meant (``True`` would silently read as 1),
and a number must be finite wherever infinity would poison training (``exp(-inf * 0)`` is NaN)::

    check_int("arc_top_k", 2.5, minimum=1)
    # ValueError: arc_top_k must be an integer >= 1, got 2.5
    check_int("kernel_size", 4, minimum=3, parity="odd")
    # ValueError: kernel_size must be an odd integer >= 3, got 4
    check_int("steps", 0, minimum=1, maximum=1000)
    # ValueError: steps must be an integer in [1, 1000], got 0
    check_real("near_duplicate_cosine", 1.5, minimum=-1.0, exclusive=True, maximum=1.0)
    # ValueError: near_duplicate_cosine must be a number in (-1, 1], got 1.5
    check_choice("distance", "cosine", ("cos", "l2"))
    # ValueError: distance must be one of ('cos', 'l2'), got 'cosine'
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

__all__ = ["check_bool", "check_choice", "check_int", "check_optional_int", "check_real"]

_PARITIES = {"even": 0, "odd": 1}
"""``parity`` of :func:`check_int`: the remainder of the integer divided by 2."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it equals one of ``choices``, else ValueError naming ``name`` and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, minimum: int, maximum: Optional[int] = None,
              parity: Optional[str] = None) -> int:
    """``int(value)`` for an integer (not a bool) >= ``minimum``, <= ``maximum`` when given, and
    ``"odd"`` or ``"even"`` when ``parity`` says so, else ValueError naming ``name``."""
    if not (_is_int(value) and value >= minimum and (maximum is None or value <= maximum)
            and (parity is None or value % 2 == _PARITIES[parity])):
        kind = "an integer" if parity is None else f"an {parity} integer"
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {kind} {allowed}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int) -> Optional[int]:
    """None, or :func:`check_int`."""
    if value is None:
        return None
    if not (_is_int(value) and value >= minimum):
        raise ValueError(f"{name} must be None or an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, *, minimum: float, exclusive: bool = False, below: Optional[float] = None,
               below_text: Optional[str] = None, maximum: Optional[float] = None) -> float:
    """``float(value)`` for a finite real number (not a bool) in the range, else ValueError.

    Args:
        minimum: lower bound; ``exclusive`` makes it strict (``> minimum``).
        below: optional strict upper bound; ``below_text`` is how the message writes it (e.g. "pi").
        maximum: optional inclusive upper bound (``<= maximum``), instead of ``below``.
    """
    if below is not None and maximum is not None:
        raise TypeError("check_real takes below or maximum, not both")
    opening = "(" if exclusive else "["
    if below is not None:
        allowed = f"a number in {opening}{minimum:g}, {below_text or f'{below:g}'})"
    elif maximum is not None:
        allowed = f"a number in {opening}{minimum:g}, {maximum:g}]"
    else:
        allowed = f"a finite number {'>' if exclusive else '>='} {minimum:g}"
    ok = _is_real(value) and math.isfinite(value) and (value > minimum if exclusive else value >= minimum)
    if ok and below is not None:
        ok = value < below
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)
