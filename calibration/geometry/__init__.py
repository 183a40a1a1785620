"""Calibration stage 3, geometry: where each sub-optic images the display on the camera.

The display shows sparse dot patterns (single lit pixels on a grid, shifted between patterns); every
sub-optic ``p`` images each dot as one spot (its PSF) on its tile of the sensor. From a dark frame and
the pattern frames:

1. **Coarse location of every tile** (intensity matching): the dark-subtracted frame of the first pattern,
   smoothed, is matched (OpenCV ``matchTemplate``, normalised correlation) against the tile the nominal
   system predicts, within ``search_px`` of the tile's nominal position: an integer offset per tile.
2. **Spots** (sub-pixel): around each predicted spot (moved by its tile's coarse offset) a window holds
   the whole spot. Per tile, the mean of its spot windows is a template of the fabricated spot; a spot's
   position is the template's intensity centroid plus the spot's translation against the template
   (``cv2.findTransformECC``, an intensity refinement that uses the spot's whole structure). The example
   PSFs are scattered signed-kernel parts, not discs, so no circle detector applies.
3. **Mapping**: per tile, a homography from the dots' display coordinates to the spot centroids
   (``cv2.findHomography`` with RANSAC, then Levenberg-Marquardt on the inliers), with its reprojection
   RMS over the inliers.
4. **Tile offsets**: the same spot positions and homographies computed on the nominal system's noise-free
   predicted frames give the spots' nominal positions; a tile's offset ``(dy, dx)`` is the mean, over the
   dots, of measured minus nominal mapping. It is (0, 0) for a device built exactly to the design and
   equals the shift of the tile's content (for a fabricated shift ``shift_px``: exactly that shift; other
   PSF errors add what they do to the spot's centroid).

Why the template is the measured mean spot and not the design's: the fabricated PSF differs from the
design (kernel error, blur, aberration, rotation), so the best match of the design's spot is biased by
that difference, while the centroid of the light actually there is the well-defined "where the light
goes" that cutting the tiles needs. The design is matched only where that is robust: to find each tile.

Conventions
-----------
Coordinates are (row, col), in pixels, with integer values at pixel centres (pixel ``(i, j)`` spans
``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``). A homography ``H`` maps a display point ``(r, c)`` to the
sensor point ``(R / w, C / w)`` where ``(R, C, w) = H @ (r, c, 1)``; sensor coordinates are those of the
whole camera frame (not of the tile). A display point maps to the intensity centroid of its spot, so
``H`` includes the PSF's own centroid. Offsets are ``(dy, dx)`` in sensor pixels, +dy down, +dx right.

Failures raise :class:`~calibration.errors.CalibrationError` saying why (saturated, too dark, a tile
not found, the pattern not found) and, when ``diagnostics_dir`` is given, save a PNG of the frame with
the expected spots marked; bad arguments raise :class:`~onn_core.errors.InputError` and a bench that
contradicts the optical system :class:`~drivers.bench_fits.BenchMismatch`.

Modules: :mod:`~calibration.geometry.patterns` (the dot patterns and their spacing),
:mod:`~calibration.geometry.capture` (showing them and averaging frames),
:mod:`~calibration.geometry.fit` (spots, tiles, homographies, offsets),
:mod:`~calibration.geometry.result` (:class:`GeometryCalibration` and its HDF5 group) and
:mod:`~calibration.geometry.overlay` (the registration overlay and failure images).
"""

from .capture import GeometryFrames, capture_geometry
from .fit import fit_geometry, intensity_centroid, measure_geometry
from .overlay import DIAGNOSTIC_NAME
from .patterns import GUARD_PX, DotPatterns, dot_patterns, minimum_pitch
from .result import SCHEMA, GeometryCalibration

__all__ = ["DIAGNOSTIC_NAME", "GUARD_PX", "DotPatterns", "GeometryCalibration", "GeometryFrames", "SCHEMA",
           "capture_geometry", "dot_patterns", "fit_geometry", "intensity_centroid", "measure_geometry",
           "minimum_pitch"]
