"""Dot patterns for the geometry stage: single lit display pixels on a grid, shifted between patterns,
spaced so that the spots one pattern makes on the sensor do not overlap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onn_core.errors import InputError

#: Pixels added on every side of a predicted spot's extent to form its window.
GUARD_PX = 2
#: Fewest spots per tile a homography is fitted to (it has 8 degrees of freedom).
MIN_POINTS = 8


@dataclass(frozen=True)
class DotPatterns:
    """Dot patterns shown on the display.

    Attributes
    ----------
    dots : tuple of (n_q, 2) int arrays
        Per pattern, the lit display pixels (row, col).
    image_shape : (int, int)
        Display (H, W) in display pixels.
    pitch : int
        Display pixels between neighbouring dots of one pattern.
    phases : int
        Shifts of the dot grid per axis (``phases**2`` patterns).
    """

    dots: tuple
    image_shape: tuple[int, int]
    pitch: int
    phases: int

    @property
    def points(self) -> np.ndarray:
        """All dots of all patterns, (M, 2) float64 display (row, col), in pattern order."""
        return np.concatenate(self.dots).astype(np.float64)

    def image(self, index: int, level: int, shape, dtype) -> np.ndarray:
        """Pattern ``index`` as a display image of ``shape`` (rows, cols[, channels]) and ``dtype``: its
        dots at ``level``, every channel, the rest 0."""
        image = np.zeros(shape, dtype)
        rows, cols = self.dots[index].T
        image[rows, cols] = level
        return image


def dot_patterns(image_shape, pitch: int, phases: int) -> DotPatterns:
    """Dots every ``pitch`` display pixels on both axes, the grid shifted by ``round(k pitch / phases)``,
    ``k = 0 .. phases - 1``, on each axis independently (``phases**2`` patterns)."""
    h, w = image_shape
    for name, value, low in (("pitch", pitch, 1), ("phases", phases, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    if phases > pitch:
        raise InputError(f"phases ({phases}) must be <= pitch ({pitch}): the shifted dot grids would repeat")
    starts = sorted({round(k * pitch / phases) for k in range(phases)})
    dots = []
    for r0 in starts:
        for c0 in starts:
            rows, cols = np.arange(r0, h, pitch), np.arange(c0, w, pitch)
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            dots.append(np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64))
    total = sum(len(d) for d in dots)
    if total < MIN_POINTS or any(len(d) == 0 for d in dots):
        raise InputError(f"a {h} x {w} display holds only {total} dots at pitch {pitch} with {phases} phases; "
                         f"at least {MIN_POINTS} are needed: lower pitch or raise phases")
    return DotPatterns(tuple(dots), (int(h), int(w)), int(pitch), int(phases))


def spot_extent(system) -> int:
    """Side (sensor pixels) of one display pixel's spot: the PSF window K' plus s - 1."""
    window = system.psf_window_px
    return window + system.geometry.sensor_pixels_per_display_pixel - 1


def minimum_pitch(system) -> int:
    """Smallest dot pitch (display pixels) at which the centroid windows of one pattern's spots do not
    overlap: ``ceil((K' + s - 1 + 2 GUARD_PX) / s)``."""
    s = system.geometry.sensor_pixels_per_display_pixel
    return math.ceil((spot_extent(system) + 2 * GUARD_PX) / s)
