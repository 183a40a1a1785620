"""Measuring a display's latency and settle time through the camera (`hil timing`), for ``slm.latency_s``
and ``slm.settle_s`` of a bench config.

The model (that of :class:`~drivers.slm.SLM` and the simulated SLM): an image shown at ``t`` (when
``show`` returns) starts to appear at ``t + latency_s`` and is steady from ``t + latency_s +
settle_s``. :func:`measure_timing` shows a uniform ``low`` image until it is steady, switches to
``high`` and follows the camera's frames by their exposure timestamps until the image is steady again;
it does so ``repeats`` times, each time starting to read frames a little later (by a fraction of the
frame interval), so that the exposures sample the transition densely.

Each frame's exposure ``[start, start + exposure_s]`` gives one number, the fraction of the change it
saw, ``f = <frame - low, high - low> / <high - low, high - low>`` (the frames of the steady images as
references, so every pixel counts by how much it changes). Then, with ``eps`` the change threshold
(:data:`MIN_THRESHOLD` or 5 noise sigmas of ``f``, whichever is larger):

- the change began between the end of the last exposure that saw none (``f < eps``) and the end of the
  first that did; the latency is the midpoint (minus the show time);
- the image was steady between the start of the last exposure that saw it unsteady (``f < 1 - eps``) and
  the start of the first steady one after it.

Both are bracketed, and the brackets are returned: their width is the resolution (about the exposure
over ``repeats`` where the frames are dense). From their midpoints, a least-squares fit of a linear
ramp (``latency_s``, ``settle_s``) to every frame's ``f`` (the ramp's mean over its exposure) gives the
values: the thresholds would read a change late and a steady image early by the part of an exposure in
which too little changes to see. A display whose light changes very slowly at the start
of its transition (a dark ``low`` level through a gamma curve) reads a little late: the default levels
are half and full scale. The camera must timestamp its exposures (device timestamps, or a software
trigger: ``Frame.timing`` "device" or "triggered"); a free-running camera without them cannot tell
when a frame was exposed, and is refused. Only the bench's public methods and the clock are used, so
this works on every backend (torch-free).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from onn_core.errors import HilError, InputError

log = logging.getLogger(__name__)

__all__ = ["MIN_THRESHOLD", "TimingError", "TimingResult", "measure_timing"]

#: Smallest fraction of the change that counts as a change (and as unsteady).
MIN_THRESHOLD = 0.005
#: Frames averaged for each steady reference image.
REFERENCE_FRAMES = 4


class TimingError(HilError):
    """The display's timing could not be measured (no change seen, never steady, no timestamps)."""


@dataclass(frozen=True)
class TimingResult:
    """What :func:`measure_timing` measured.

    Attributes
    ----------
    latency_s, settle_s : float
        The values for ``slm.latency_s`` and ``slm.settle_s`` (s): the fitted ramp.
    latency_bounds_s, settle_bounds_s : (float, float)
        The brackets of the change's start (after the show) and of the steady image (after that start),
        by thresholds (s).
    exposure_s : float
        The camera's exposure (s).
    threshold : float
        The fraction of the change that counted as one (``eps``).
    starts_s, fractions : ndarray
        Every frame's exposure start after its show (s) and the fraction of the change it saw.
    """

    latency_s: float
    settle_s: float
    latency_bounds_s: tuple[float, float]
    settle_bounds_s: tuple[float, float]
    exposure_s: float
    threshold: float
    starts_s: np.ndarray
    fractions: np.ndarray

    def settings(self) -> dict:
        """The values to write as the bench config's ``slm`` fields, and how they were measured."""
        return {"slm": {"latency_s": self.latency_s, "settle_s": self.settle_s},
                "measured": {"latency_bounds_s": list(self.latency_bounds_s),
                             "settle_bounds_s": list(self.settle_bounds_s), "exposure_s": self.exposure_s,
                             "threshold": self.threshold, "frames": int(self.fractions.size)}}


def _uniform(slm, level: int, name: str) -> np.ndarray:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= slm.max_level:
        raise InputError(f"{name} must be a gray level in [0, {slm.max_level}], got {level!r}")
    return slm.to_frame(np.full(slm.shape, level, dtype=slm.dtype))


def _mean_frame(camera, frames: int) -> np.ndarray:
    return np.mean([camera.snap().image for _ in range(frames)], axis=0, dtype=np.float64)


def measure_timing(bench, *, low: int | None = None, high: int | None = None, repeats: int = 8,
                   max_wait_s: float = 1.0) -> TimingResult:
    """Measure the latency and settle time of ``bench``'s display through its camera (module docstring).

    Parameters
    ----------
    bench : drivers.bench.Bench
        At the camera's current exposure (short exposures resolve finer).
    low, high : int, optional
        Gray levels shown before and after the change (default: half and full scale).
    repeats : int
        Transitions followed, each read from a later start (by ``1 / repeats`` of the frame interval).
    max_wait_s : float
        Longest time (s) the display may take to become steady after a show; each image is held this
        long before it counts as steady.

    Raises
    ------
    TimingError
        The camera gives no exposure timestamps, the frames do not see the change, or the image is not
        steady within ``max_wait_s``.
    InputError
        A bad argument.
    """
    slm, camera, clock = bench.slm, bench.camera, bench.clock
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not max_wait_s > 0:
        raise InputError(f"max_wait_s must be > 0 s, got {max_wait_s!r}")
    low_image = _uniform(slm, slm.max_level // 2 if low is None else low, "low")
    high_image = _uniform(slm, slm.max_level if high is None else high, "high")
    exposure = camera.exposure_s

    def steady(image) -> np.ndarray:
        slm.show(image)
        clock.sleep(max_wait_s)
        return _mean_frame(camera, REFERENCE_FRAMES)

    first = camera.snap()
    if first.timing not in ("device", "triggered"):
        raise TimingError(f"{camera.name} gives no exposure timestamps (frame timing {first.timing!r}): a "
                          "free-running camera without them cannot tell when a frame was exposed; use a software "
                          "trigger")
    reference_low, reference_high = steady(low_image), steady(high_image)
    change = reference_high - reference_low
    norm = float((change**2).sum())

    def fraction(image) -> float:
        return float(((image - reference_low) * change).sum() / norm) if norm > 0 else 0.0

    reference = [fraction(camera.snap().image) for _ in range(REFERENCE_FRAMES)]  # the steady high image
    noise = float(np.std(reference, ddof=1)) if len(reference) > 1 else 0.0
    if norm == 0 or not abs(np.mean(reference) - 1) < 0.5:
        raise TimingError(f"the camera does not see the display change from level {int(low_image.max())} to "
                          f"{int(high_image.max())} (exposure {exposure:g} s): is the light on, the exposure right?")
    threshold = max(MIN_THRESHOLD, 5 * noise)
    interval = max(float(np.median(np.diff([camera.snap().timestamp_s for _ in range(3)]))), exposure) / repeats
    starts, fractions = [], []
    for k in range(repeats):
        steady(low_image)
        slm.show(high_image)
        shown = slm.shown_at_s
        clock.sleep(k * interval)
        run = 0
        while run < 3:
            frame = camera.snap()
            value = fraction(frame.image.astype(np.float64))
            starts.append(frame.timestamp_s - shown)
            fractions.append(value)
            run = run + 1 if abs(value - 1) < threshold else 0
            if frame.timestamp_s - shown > max_wait_s:
                raise TimingError(f"the image was not steady within max_wait_s = {max_wait_s:g} s of the show "
                                  f"(last frame saw {value:.2f} of the change)")
    slm.show(low_image)
    starts, fractions = np.asarray(starts), np.asarray(fractions)
    latency_bounds = _change_start(starts, fractions, exposure, threshold)
    settle_bounds = _steady_from(starts, fractions, threshold)
    latency, settle = _fit_ramp(starts, fractions, exposure, sum(latency_bounds) / 2,
                                max(sum(settle_bounds) / 2 - sum(latency_bounds) / 2, 0.0))
    log.info("latency %.4g s in [%.4g, %.4g], settle %.4g s (steady in [%.4g, %.4g] s after the show), %d frames",
             latency, *latency_bounds, settle, *settle_bounds, starts.size)
    return TimingResult(latency, settle, latency_bounds, (settle_bounds[0] - latency, settle_bounds[1] - latency),
                        exposure, threshold, starts, fractions)


def _ramp_mean(t0: float, duration: float, starts: np.ndarray, exposure: float) -> np.ndarray:
    """Mean over each exposure ``[start, start + exposure]`` of the ramp ``clip((t - t0) / duration, 0, 1)``."""
    d = max(duration, 1e-12)

    def integral(t):  # of the ramp from -inf (0 before t0) to t
        u = np.clip(t - t0, 0.0, d)
        return u**2 / (2 * d) + np.maximum(t - t0 - d, 0.0)

    return (integral(starts + exposure) - integral(starts)) / exposure


def _fit_ramp(starts: np.ndarray, fractions: np.ndarray, exposure: float, latency: float, settle: float):
    """(latency, settle) of the linear ramp whose exposure means fit the frames' fractions best (least
    squares, from the brackets' midpoints): unbiased by the threshold for a display whose light changes
    linearly, and close to the brackets' midpoints otherwise."""
    from scipy.optimize import least_squares

    fit = least_squares(lambda p: _ramp_mean(p[0], p[1], starts, exposure) - fractions, [latency, settle],
                        bounds=([0.0, 0.0], [np.inf, np.inf]), x_scale=[max(exposure, 1e-6)] * 2)
    return float(fit.x[0]), float(fit.x[1])


def _change_start(starts: np.ndarray, fractions: np.ndarray, exposure: float, threshold: float):
    """(earliest, latest) time after the show at which the change began: between the end of the last
    exposure that saw none and the end of the first that saw it."""
    ends = starts + exposure
    seen = fractions >= threshold
    if not seen.any():
        raise TimingError("no frame saw the change")
    latest = float(ends[seen].min())
    before = ends[~seen & (ends <= latest)]
    earliest = float(before.max()) if before.size else 0.0
    if not before.size:
        log.warning("every frame saw the change: the latency is at most %.4g s (start reading frames sooner)", latest)
    return max(earliest, 0.0), latest


def _steady_from(starts: np.ndarray, fractions: np.ndarray, threshold: float):
    """(earliest, latest) time after the show from which the image was steady: between the start of the
    last unsteady exposure and the start of the first steady one after it."""
    unsteady = np.abs(fractions - 1) >= threshold
    if not unsteady.any():
        return (0.0, float(starts.min()))
    last = float(starts[unsteady].max())
    after = starts[~unsteady & (starts > last)]
    if not after.size:
        raise TimingError("the image was never steady after the change")
    return (last, float(after.min()))
