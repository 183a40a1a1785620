"""Value checks shared by every package of the toolkit; each raises :class:`~onn_core.errors.InputError`
naming the argument, what it got and what was expected. No torch here: tensor checks live in
:mod:`simulator.validation`."""

from __future__ import annotations

import math

from .errors import InputError


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float if it is finite and > 0 (or >= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be finite and {bound}, got {value!r}")
    return v
