"""Clocks: where devices and the bench read the time and wait.

Every device and the :class:`~drivers.bench.Bench` take a clock, so waiting is data, not hidden
``time.sleep`` calls. :class:`RealClock` is the wall (monotonic) clock; :class:`VirtualClock` only moves
when someone sleeps on it, so tests of timing logic run instantly and deterministically. Simulated
devices and the bench must share one clock.
"""

from __future__ import annotations

import time

from onn_core.validation import check_positive


class Clock:
    """Interface: ``now()`` in seconds (monotonic, arbitrary origin) and ``sleep(s)``."""

    def now(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def sleep_until(self, t_s: float) -> None:
        """Sleep until ``now() >= t_s`` (returns at once if that time has passed)."""
        remaining = t_s - self.now()
        if remaining > 0:
            self.sleep(remaining)

    def shares_timeline(self, other: "Clock") -> bool:
        """True when times read from ``self`` and ``other`` can be compared."""
        return other is self


class RealClock(Clock):
    """The process's monotonic clock (``time.perf_counter``) and real sleeping."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def shares_timeline(self, other: Clock) -> bool:
        return isinstance(other, RealClock)

    def __repr__(self) -> str:
        return "RealClock()"


class VirtualClock(Clock):
    """A clock that advances only when slept on (or advanced); never sleeps for real.

    Parameters
    ----------
    start_s : float
        Initial time in seconds.
    """

    def __init__(self, start_s: float = 0.0):
        self._now = float(start_s)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += float(seconds)

    def sleep_until(self, t_s: float) -> None:
        """Jump to ``t_s`` exactly (if it is in the future), so deadlines compare exactly."""
        if t_s > self._now:
            self._now = float(t_s)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), as if something else had waited."""
        self._now += check_positive("seconds", seconds, allow_zero=True)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"


def make_clock(kind: str) -> Clock:
    """``"real"`` -> :class:`RealClock`, ``"virtual"`` -> :class:`VirtualClock`."""
    if kind == "real":
        return RealClock()
    if kind == "virtual":
        return VirtualClock()
    raise ValueError(f"clock must be 'real' or 'virtual', got {kind!r}")
