"""Exposure handling in one place: choosing an exposure (:func:`auto_exposure`), keeping the camera's
exposure across a measurement (:func:`exposure_held`) and capturing stacks of frames
(:func:`capture_stack`). Torch-free; they use only a camera's public interface (``exposure_s``,
``snap``/``grab``) or a bench's (``measure``/``read``), so they work on every backend.

The exposure search
-------------------
:func:`auto_exposure` brings a frame statistic -- the peak, or a high percentile that ignores a few
hot pixels -- inside an optional region to ``target_fraction`` of the range between the black level
and the saturation level (or ``limit_dn``). From the camera's current exposure it brackets: a
saturated frame divides the exposure by :data:`STEP_FACTOR`, a frame with less than
:data:`MIN_SIGNAL_FRACTION` of the range multiplies it; a frame in between predicts the target
exposure linearly (signal proportional to the exposure). Once a saturated (too long) and an
unsaturated (too short) exposure are known, the next guess is kept between them (their geometric
mean when the linear guess falls outside), so a non-linear response still converges. It stops at the
first frame within ``tolerance`` of the target, or after ``max_frames`` frames with the best one seen.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import numpy as np

from onn_core.errors import InputError

from .errors import ExposureError

log = logging.getLogger(__name__)

#: Default fraction of the black-to-saturation range the statistic is brought to.
DEFAULT_TARGET_FRACTION = 0.7
#: Default relative tolerance on reaching the target fraction.
DEFAULT_TOLERANCE = 0.1
#: Default largest number of frames the search reads.
DEFAULT_MAX_FRAMES = 12
#: Factor by which the exposure steps while the frame is saturated or too dark to extrapolate from.
STEP_FACTOR = 10.0
#: Below this fraction of the range the signal is too weak to predict the exposure from.
MIN_SIGNAL_FRACTION = 0.02


def _check_region(region, shape) -> tuple[slice, slice]:
    """``(row0, col0, rows, cols)`` inside a frame of ``shape`` -> slices (None: the whole frame)."""
    if region is None:
        return slice(None), slice(None)
    try:
        r0, c0, nr, nc = (int(v) for v in region)
    except (TypeError, ValueError):
        raise InputError(f"region must be (row0, col0, rows, cols), got {region!r}") from None
    rows, cols = shape[:2]
    if r0 < 0 or c0 < 0 or nr < 1 or nc < 1 or r0 + nr > rows or c0 + nc > cols:
        raise InputError(f"region {region!r} must lie inside the {rows} x {cols} frame with rows, cols >= 1")
    return slice(r0, r0 + nr), slice(c0, c0 + nc)


def auto_exposure(camera, *, read: Callable | None = None, target_fraction: float = DEFAULT_TARGET_FRACTION,
                  percentile: float = 100.0, region=None, limit_dn: float | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, max_frames: int = DEFAULT_MAX_FRAMES) -> float:
    """Choose the exposure at which a frame statistic reaches ``target_fraction`` of the camera's range
    (module docstring); :meth:`drivers.camera.Camera.auto_exposure` and
    :meth:`drivers.bench.Bench.auto_exposure` call it.

    Parameters
    ----------
    camera : drivers.camera.Camera
        Its exposure is set (within ``exposure_limits_s``) and left at the chosen value.
    read : callable, optional
        Returns one :class:`~drivers.frames.Frame` at the current exposure (default ``camera.snap``; a
        bench passes its retried, fresh ``measure`` of the image to expose for).
    target_fraction : float
        Wanted ``(statistic - black_level) / (limit - black_level)``, in (0, 1).
    percentile : float
        The statistic: 100 is the peak; e.g. 99.9 ignores the brightest 0.1 % (hot pixels).
    region : (row0, col0, rows, cols), optional
        Where the statistic is taken (default: the whole frame).
    limit_dn : float, optional
        The top of the range (DN; default the camera's ``saturation_dn``), e.g. the end of a measured
        linear range; a statistic at or above it counts as saturated.
    tolerance : float
        Relative deviation from ``target_fraction`` accepted, in (0, 1).
    max_frames : int
        Most frames read (>= 1).

    Returns
    -------
    float
        The chosen exposure (s, as read back from the camera), which is left set (after an error the
        exposure the camera had is restored).

    Raises
    ------
    ExposureError
        Even the shortest exposure saturates (``saturated`` True), the longest stays too dark (below
        :data:`MIN_SIGNAL_FRACTION` of the range), or no usable frame came within ``max_frames``.
    InputError
        A bad argument.
    """
    for name, value in (("target_fraction", target_fraction), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise InputError(f"{name} must be a number in (0, 1), got {value!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise InputError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    black = float(camera.black_level)
    limit = float(camera.saturation_dn if limit_dn is None else limit_dn)
    if not limit > black:
        raise InputError(f"limit_dn must be above the black level {black:g} DN, got {limit:g}")
    read = camera.snap if read is None else read
    rows, cols = _check_region(region, camera.shape)
    low, high = camera.exposure_limits_s
    statistic = "peak" if percentile == 100 else f"{percentile:g}th percentile"
    with _restoring(camera, always=False):
        too_short, too_long = 0.0, math.inf  # the bracket: the target exposure lies between them
        best = None                       # (|fraction / target - 1|, exposure) of the best unsaturated frame
        exposure = min(max(float(camera.exposure_s), low), high)
        for _ in range(int(max_frames)):
            camera.exposure_s = exposure
            exposure = float(camera.exposure_s)  # as read back
            image = np.asarray(read().image)
            level = float(np.percentile(image[rows, cols], percentile))
            fraction = (level - black) / (limit - black)
            if level >= limit:
                if exposure <= low:
                    raise ExposureError(f"the {statistic} saturates ({level:g} >= {limit:g} DN) even at the shortest "
                                        f"exposure {low:g} s: dim the display or the light", device=camera.name,
                                        saturated=True)
                too_long = exposure
                guess = exposure / STEP_FACTOR
            elif fraction < MIN_SIGNAL_FRACTION:
                if exposure >= high:
                    raise ExposureError(_too_dark(image, statistic, level - black, fraction, high), device=camera.name,
                                        saturated=False)
                too_short = exposure
                guess = exposure * STEP_FACTOR
            else:
                error = abs(fraction / target_fraction - 1)
                if error <= tolerance:
                    return exposure
                best = min(best, (error, exposure)) if best is not None else (error, exposure)
                if fraction < target_fraction:
                    too_short = exposure
                else:
                    too_long = exposure
                guess = exposure * target_fraction / fraction
                if (exposure >= high and fraction < target_fraction) or (exposure <= low and fraction > target_fraction):
                    log.warning("%s: the %s reaches %.0f %% of the range at the exposure limit %g s (target %.0f %%; "
                                "widen camera.exposure_limits_s in the bench YAML if the camera allows)",
                                camera.name, statistic, 100 * fraction, exposure, 100 * target_fraction)
                    return exposure
            if not too_short < guess < too_long:  # outside the bracket: bisect it (geometrically)
                guess = math.sqrt(too_short * too_long)
            exposure = min(max(guess, low), high)
        if best is None:
            raise ExposureError(f"no exposure in {max_frames} frames gave a usable signal (neither saturated nor "
                                f"below {MIN_SIGNAL_FRACTION:.0%} of the range); raise max_frames", device=camera.name,
                                saturated=None)
        camera.exposure_s = best[1]
        log.info("%s: exposure %g s after %d frames, %.1f %% from the target", camera.name, best[1], max_frames,
                 100 * best[0])
        return float(camera.exposure_s)


def _too_dark(image: np.ndarray, statistic: str, signal_dn: float, fraction: float, longest_s: float) -> str:
    if not image.any():
        return (f"the frames are all 0 even at the longest exposure {longest_s:g} s: the camera delivers empty "
                f"frames (check its connection, gain and black level)")
    return (f"no light: the {statistic} is only {signal_dn:.3g} DN above black ({fraction:.1%} of the range) at "
            f"the longest exposure {longest_s:g} s; check that the camera sees the light (cap, focus, aperture)")


def exposure_held(camera):
    """Context manager: restore the camera's exposure when the block ends, however it ends; yields the
    exposure (s).

    If the block raised and the restore fails too (e.g. the camera disconnected), the restore's failure
    is logged and the block's exception propagates.
    """
    return _restoring(camera, always=True)


@contextlib.contextmanager
def _restoring(camera, *, always: bool):
    """Restore the exposure after the block: always, or (``always`` False) only when it raised."""
    original = float(camera.exposure_s)
    try:
        yield original
    except BaseException:
        try:
            _restore(camera, original)
        except Exception as exc:
            log.warning("%s: could not restore the exposure %g s: %s", camera.name, original, exc)
        raise
    if always:
        _restore(camera, original)


def _restore(camera, exposure_s: float) -> None:
    if not camera.closed and camera.exposure_s != exposure_s:
        camera.exposure_s = exposure_s


def capture_stack(source, n: int, image=None, *, timeout_s: float | None = None) -> np.ndarray:
    """``n`` consecutive monochrome frames as one (frame, row, col) array of the camera's dtype.

    Parameters
    ----------
    source : drivers.bench.Bench or drivers.camera.Camera
        A bench shows ``image`` and reads every frame through its retry policy (the first with
        :meth:`~drivers.bench.Bench.measure`, the others with :meth:`~drivers.bench.Bench.read`: each
        fresh after the image settled); a bare camera grabs ``n`` frames (no retries).
    n : int
        Frames (>= 1).
    image : array_like, optional
        What the bench's SLM shows (required with a bench, refused with a camera).
    timeout_s : float, optional
        Per-frame timeout (s) beyond the exposure (default: the bench's or camera's).

    Raises
    ------
    InputError
        A bad ``n``, ``image`` missing (bench) or given (camera), colour frames.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if hasattr(source, "measure"):
        if image is None:
            raise InputError("capture_stack from a bench needs the image to show")
        frames = [source.measure(image, timeout_s=timeout_s).frame]
        frames += [source.read(timeout_s=timeout_s) for _ in range(int(n) - 1)]
    else:
        if image is not None:
            raise InputError("capture_stack from a camera shows nothing: pass a bench to show an image")
        frames = source.grab(int(n), timeout_s)
    stack = np.stack([f.image for f in frames])
    if stack.ndim != 3:
        raise InputError(f"the camera delivers {stack.shape[1:]} frames; a stack needs monochrome (rows, cols) "
                         f"frames (set the camera's pixel format to mono)")
    return stack


__all__ = ["auto_exposure", "capture_stack", "exposure_held"]
