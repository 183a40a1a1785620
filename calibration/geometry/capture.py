"""Showing the geometry stage's dot patterns and averaging the frames of each (every frame read through
the bench's retries)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.bench_fits import check_bench_fits
from drivers.exposure import capture_stack
from onn_core.errors import InputError
from onn_core.progress import progress_bar

from .patterns import GUARD_PX, DotPatterns, dot_patterns, minimum_pitch, spot_extent


@dataclass(frozen=True)
class GeometryFrames:
    """What :func:`capture_geometry` measured.

    Attributes
    ----------
    patterns : DotPatterns
    frames : np.ndarray
        (Q, rows, cols) float64: mean DN of each pattern's frames (black level included).
    dark : np.ndarray
        (rows, cols) float64: mean DN with the display black (or the dark frame given).
    saturated : np.ndarray
        (Q, rows, cols) bool: pixels at or above ``saturation_dn`` in any single frame of the pattern.
    exposure_s : float
    averages : int
        Frames averaged per pattern.
    saturation_dn : float
    """

    patterns: DotPatterns
    frames: np.ndarray
    dark: np.ndarray
    saturated: np.ndarray
    exposure_s: float
    averages: int
    saturation_dn: float

    @property
    def signal(self) -> np.ndarray:
        """Dark-subtracted pattern frames (Q, rows, cols) in DN."""
        return self.frames - self.dark


def capture_geometry(bench, system, *, pitch: int | None = None, phases: int = 3, averages: int = 4,
                     level: int | None = None, dark: np.ndarray | None = None) -> GeometryFrames:
    """Show the dot patterns on ``bench`` and average ``averages`` frames of each.

    Parameters
    ----------
    bench : drivers.bench.Bench
    system : simulator.system.OpticalSystem
        The nominal system (design, geometry, layout): what the lab knows of the optics.
    pitch : int, optional
        Display pixels between dots of one pattern (default :func:`minimum_pitch`; no smaller).
    phases : int
        Dot-grid shifts per axis; ``phases**2`` patterns.
    averages : int
        Frames averaged per pattern (and for the dark frame).
    level : int, optional
        Gray level of the dots (default: the SLM's maximum).
    dark : np.ndarray, optional
        Mean dark frame (rows, cols) in DN at the camera's current exposure; None measures one with the
        display black (which also removes stray light).
    """
    check_bench_fits(bench, system)
    if isinstance(averages, bool) or not isinstance(averages, (int, np.integer)) or averages < 1:
        raise InputError(f"averages must be an int >= 1, got {averages!r}")
    smallest = minimum_pitch(system)
    pitch = smallest if pitch is None else pitch
    if isinstance(pitch, (int, np.integer)) and not isinstance(pitch, bool) and pitch < smallest:
        raise InputError(f"pitch must be >= {smallest} display pixels (spot extent {spot_extent(system)} sensor "
                         f"pixels + {2 * GUARD_PX} guard, over s = {system.geometry.sensor_pixels_per_display_pixel}), "
                         f"got {pitch}")
    patterns = dot_patterns(system.image_shape, pitch, phases)
    slm, camera = bench.slm, bench.camera
    level = slm.max_level if level is None else level
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 1 <= level <= slm.max_level:
        raise InputError(f"level must be an int in [1, {slm.max_level}] (the SLM's {slm.bit_depth} bits), "
                         f"got {level!r}")
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float64)
        if dark.shape != tuple(system.frame_shape) or not np.isfinite(dark).all():
            raise InputError(f"dark must be a finite (rows, cols) = {tuple(system.frame_shape)} frame in DN, "
                             f"got shape {dark.shape}")
    else:
        dark, _ = _mean_frame(bench, np.zeros(slm.shape, slm.dtype), averages)
    means, saturated = [], []
    for q in progress_bar(range(len(patterns.dots)), desc="geometry patterns", unit="pattern"):
        mean, sat = _mean_frame(bench, patterns.image(q, level, slm.shape, slm.dtype), averages)
        means.append(mean)
        saturated.append(sat)
    return GeometryFrames(patterns, np.stack(means), dark, np.stack(saturated), float(camera.exposure_s),
                          int(averages), float(camera.saturation_dn))


def _mean_frame(bench, image: np.ndarray, averages: int) -> tuple[np.ndarray, np.ndarray]:
    """Show ``image`` and return the mean of ``averages`` frames (float64 DN) and where any single frame
    reached the camera's saturation."""
    stack = capture_stack(bench, averages, image)
    return stack.mean(axis=0, dtype=np.float64), (stack >= bench.camera.saturation_dn).any(axis=0)
