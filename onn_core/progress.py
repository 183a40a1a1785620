"""Console progress: the one rule every progress bar and periodic log line of the toolkit follows.

The rule
--------
* A progress bar is drawn only when its stream (standard error) is a terminal. Redirected to a file
  or a pipe (a log, CI, ``nohup``), bars are off, so logs hold log lines, not thousands of bar
  refreshes.
* A caller may switch bars off (``progress=False``, the commands' ``--no-progress``), and the user may
  force them either way: the ``hil`` command's ``--progress`` / ``--no-progress`` (which call
  :func:`set_progress`), or the environment variable :data:`ENV_VAR` (``ONN_PROGRESS=1`` on,
  ``ONN_PROGRESS=0`` off). The precedence: a caller's ``False`` > :func:`set_progress` > the
  environment > whether the stream is a terminal.
* A bar forced onto something that is not a terminal refreshes at most every
  :data:`FORCED_MININTERVAL_S` seconds (a terminal: every :data:`TERMINAL_MININTERVAL_S`).
* Periodic log lines (one per training epoch, say) go through a :class:`Throttle`: at most one every
  :data:`LOG_INTERVAL_S` seconds, the last one always.

This module imports neither torch nor any other package of the toolkit; ``tqdm`` is imported only
when a bar is made.
"""

from __future__ import annotations

import math
import os
import sys
import time

from .errors import ConfigError

__all__ = ["ENV_VAR", "LOG_INTERVAL_S", "Throttle", "format_duration", "progress_bar", "progress_enabled", "set_progress"]

#: Environment variable that forces bars on (``1``, ``true``, ``yes``, ``on``) or off (``0``, ``false``, ``no``, ``off``).
ENV_VAR = "ONN_PROGRESS"
#: Seconds between refreshes of a bar on a terminal.
TERMINAL_MININTERVAL_S = 0.5
#: Seconds between refreshes of a bar forced onto a stream that is not a terminal.
FORCED_MININTERVAL_S = 10.0
#: Least seconds between two periodic log lines of one :class:`Throttle` (e.g. per-epoch lines).
LOG_INTERVAL_S = 5.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

_forced: bool | None = None


def format_duration(seconds: float) -> str:
    """A duration for a person: ``"5.0 s"`` (under 10 s), ``"45 s"``, ``"7 min 05 s"``, ``"2 h 03 min"``;
    ``"?"`` when unknown (not finite)."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on (``True``) or off (``False``) in this process, or go back to the rule
    (``None``). The ``hil`` command calls it for ``--progress`` / ``--no-progress``."""
    global _forced
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_progress takes True, False or None, got {enabled!r}")
    _forced = enabled


def _env_setting() -> bool | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {ENV_VAR}", os.environ[ENV_VAR],
                      f"1 or 0 (one of {', '.join(_TRUE + _FALSE[:-1])}); unset it to follow the terminal")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_enabled(requested: bool | None = True, stream=None) -> bool:
    """Whether a progress bar is drawn: ``False`` when the caller says so (``requested=False``), else
    the forced setting (:func:`set_progress`, then :data:`ENV_VAR`), else whether ``stream`` (default:
    ``sys.stderr``) is a terminal. ``requested=None`` or ``True`` both mean "follow the rule"."""
    if requested is False:
        return False
    if _forced is not None:
        return _forced
    env = _env_setting()
    if env is not None:
        return env
    return _is_terminal(sys.stderr if stream is None else stream)


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 enabled: bool | None = True, leave: bool = False, stream=None, **kwargs):
    """A ``tqdm`` bar over ``iterable`` (or of ``total`` steps, updated by hand) that follows the rule:
    disabled unless :func:`progress_enabled` (``enabled`` is the caller's wish), and refreshed no more
    often than the rule allows. Further keyword arguments go to ``tqdm``. A disabled bar still
    iterates and accepts ``update``/``set_postfix``/``close``, printing nothing."""
    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    show = progress_enabled(enabled, stream)
    kwargs.setdefault("mininterval", TERMINAL_MININTERVAL_S if _is_terminal(stream) else FORCED_MININTERVAL_S)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, disable=not show, **kwargs)


class Throttle:
    """Lets a periodic event through at most once every ``interval_s`` seconds (monotonic clock).

    ``throttle.ready()`` is true for the first call and then once ``interval_s`` has passed since the
    last call that returned true; ``ready(force=True)`` is always true (use it for the last line)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic):
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self.interval_s, self._clock, self._last = float(interval_s), clock, None
        self.suppressed = 0

    def ready(self, force: bool = False) -> bool:
        now = self._clock()
        if force or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return True
        self.suppressed += 1
        return False
