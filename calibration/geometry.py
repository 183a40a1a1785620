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
the expected spots marked; bad arguments or a bench that contradicts the optical system raise
:class:`~onn_core.errors.InputError`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.bench_fits import check_bench_fits
from drivers.exposure import capture_stack
from onn_core.errors import InputError
from onn_core.files import atomic_write

from .errors import CalibrationError, CalibrationFileError

log = logging.getLogger(__name__)

#: Schema name and version written to (and required from) an HDF5 group.
SCHEMA = "onn_hil.calibration.geometry"
SCHEMA_VERSION = 1
#: Pixels added on every side of a predicted spot's extent to form its window.
GUARD_PX = 2
#: Fewest spots per tile a homography is fitted to (it has 8 degrees of freedom).
MIN_POINTS = 8
#: Tiles whose smoothed pattern correlates less than this with the predicted one are "not found".
MIN_CORRELATION = 0.3
#: Gaussian smoothing (sensor pixels) of the frames for the coarse tile search.
SMOOTH_SIGMA_PX = 1.0
#: ECC iterations and convergence threshold (pixels) of the sub-pixel spot refinement.
ECC_ITERATIONS = 100
ECC_EPS = 1e-6
#: File name of the diagnostic image saved on a failure.
DIAGNOSTIC_NAME = "geometry_failure.png"
#: Width (pixels) the overlay images are enlarged to, about.
OVERLAY_WIDTH_PX = 1000


# ============================================================================================ patterns
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


# ============================================================================================ spots
def intensity_centroid(patch: np.ndarray) -> np.ndarray:
    """Intensity centroid (row, col) of ``patch`` in its own pixel-centre coordinates (NaN unless its sum
    is positive)."""
    total = patch.sum()
    if not total > 0:
        return np.full(2, np.nan)
    rows, cols = np.arange(patch.shape[0]), np.arange(patch.shape[1])
    return np.array([patch.sum(axis=1) @ rows, patch.sum(axis=0) @ cols]) / total


def _spot_cutouts(signal: np.ndarray, system, patterns: DotPatterns, offsets: np.ndarray):
    """Equal windows around every spot: (P, M, n, n) cutouts of ``signal`` (Q, rows, cols) and their
    top-left frame pixels (P, M, 2). A window is the spot's nominal extent, moved by its tile's integer
    offset, plus :data:`GUARD_PX` on every side (``n = K' + s - 1 + 2 GUARD_PX``); light outside the tile
    (moved by the same offset) widened by half the gap -- a neighbour's -- counts as 0."""
    s = system.geometry.sensor_pixels_per_display_pixel
    side = _spot_extent(system) + 2 * GUARD_PX
    pad = GUARD_PX + int(np.abs(offsets).max(initial=0))
    half_gap = system.layout.gap_px // 2
    rows_all, cols_all = system.frame_shape
    counts = [len(d) for d in patterns.dots]
    cutouts = np.zeros((system.num_psfs, sum(counts), side, side))
    corners = np.zeros((system.num_psfs, sum(counts), 2), np.int64)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        dy, dx = offsets[p]
        keep = (slice(max(rows.start + dy - half_gap, 0), min(rows.stop + dy + half_gap, rows_all)),
                slice(max(cols.start + dx - half_gap, 0), min(cols.stop + dx + half_gap, cols_all)))
        corners[p] = patterns.points.astype(np.int64) * s + (rows.start, cols.start) + offsets[p] - GUARD_PX
        start = 0
        for q, count in enumerate(counts):
            masked = np.zeros((rows_all + 2 * pad, cols_all + 2 * pad))
            masked[keep[0].start + pad:keep[0].stop + pad, keep[1].start + pad:keep[1].stop + pad] = signal[q][keep]
            for m in range(start, start + count):
                r, c = corners[p, m] + pad
                cutouts[p, m] = masked[r:r + side, c:c + side]
            start += count
    return cutouts, corners


def _spot_positions(cutouts: np.ndarray, corners: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Sub-pixel spot positions (P, M, 2) in frame (row, col): per tile, the intensity centroid of the
    mean of its usable spots (the template), plus each spot's translation against that template by ECC
    (``cv2.findTransformECC``, a matched-filter estimate that uses the spot's whole structure). NaN where
    a spot is not usable or ECC does not converge."""
    import cv2

    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    positions = np.full(corners.shape, np.nan)
    for p in range(len(cutouts)):
        if not usable[p].any():
            continue
        template = cutouts[p][usable[p]].mean(axis=0)
        centre = intensity_centroid(template)
        for m in np.flatnonzero(usable[p]):
            warp = np.eye(2, 3, dtype=np.float32)
            try:
                _, warp = cv2.findTransformECC(template.astype(np.float32), cutouts[p, m].astype(np.float32), warp,
                                               cv2.MOTION_TRANSLATION, criteria, None, 1)
            except cv2.error:  # not converged (a noisy or odd spot): left out
                continue
            positions[p, m] = corners[p, m] + centre + (warp[1, 2], warp[0, 2])
    return positions


def _spot_extent(system) -> int:
    """Side (sensor pixels) of one display pixel's spot: the PSF window K' plus s - 1."""
    window = system.psf_window_px
    return window + system.geometry.sensor_pixels_per_display_pixel - 1


def minimum_pitch(system) -> int:
    """Smallest dot pitch (display pixels) at which the centroid windows of one pattern's spots do not
    overlap: ``ceil((K' + s - 1 + 2 GUARD_PX) / s)``."""
    s = system.geometry.sensor_pixels_per_display_pixel
    return math.ceil((_spot_extent(system) + 2 * GUARD_PX) / s)


# ============================================================================================ measurement
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
    from onn_core.progress import progress_bar

    check_bench_fits(bench, system)
    if isinstance(averages, bool) or not isinstance(averages, (int, np.integer)) or averages < 1:
        raise InputError(f"averages must be an int >= 1, got {averages!r}")
    smallest = minimum_pitch(system)
    pitch = smallest if pitch is None else pitch
    if isinstance(pitch, (int, np.integer)) and not isinstance(pitch, bool) and pitch < smallest:
        raise InputError(f"pitch must be >= {smallest} display pixels (spot extent {_spot_extent(system)} sensor "
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


# ============================================================================================ result
@dataclass(frozen=True)
class GeometryCalibration:
    """Where each sub-optic images the display: per tile a homography and the tile's offset.

    Coordinates are (row, col) with integer values at pixel centres (see the module docstring).

    Attributes
    ----------
    homographies : (P, 3, 3) float64
        Display (row, col) -> frame (row, col) of the spot's intensity centroid, per tile (H[2, 2] = 1).
    nominal_homographies : (P, 3, 3) float64
        The same for the nominal system's predicted frames.
    offsets_px : (P, 2) float64
        (dy, dx): mean shift of the tile's spots from their nominal positions (sensor pixels).
    rms_px : (P,) float64
        Reprojection RMS of the inlier spots (sensor pixels).
    inliers : (P,) int64
        Spots the homography was fitted to.
    display_points : (M, 2) float64
        The dots shown (display row, col), all patterns.
    sensor_points : (P, M, 2) float64
        Their measured spot centroids per tile (NaN where a spot was too weak to use).
    inlier_mask : (P, M) bool
    snr : (P,) float64
        Median spot signal-to-noise ratio per tile (window sum over its noise).
    nominal_origins_px : (P, 2) int64
        Top-left pixel of each tile in the nominal layout.
    tile_shape : (int, int)
    image_shape, frame_shape : (int, int)
        Display (H, W) and camera frame (rows, cols).
    image : (rows, cols) float32
        Sum of the dark-subtracted pattern frames (DN), for overlays.
    exposure_s : float
    averages : int
    """

    homographies: np.ndarray
    nominal_homographies: np.ndarray
    offsets_px: np.ndarray
    rms_px: np.ndarray
    inliers: np.ndarray
    display_points: np.ndarray
    sensor_points: np.ndarray
    inlier_mask: np.ndarray
    snr: np.ndarray
    nominal_origins_px: np.ndarray
    tile_shape: tuple[int, int]
    image_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    image: np.ndarray
    exposure_s: float
    averages: int

    def __post_init__(self):
        p, m = self.sensor_points.shape[:2]
        expected = {"homographies": (p, 3, 3), "nominal_homographies": (p, 3, 3), "offsets_px": (p, 2),
                    "rms_px": (p,), "inliers": (p,), "display_points": (m, 2), "sensor_points": (p, m, 2),
                    "inlier_mask": (p, m), "snr": (p,), "nominal_origins_px": (p, 2),
                    "image": tuple(self.frame_shape)}
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"GeometryCalibration.{name} must have shape {shape}, "
                                 f"got {np.shape(getattr(self, name))}")

    @property
    def num_tiles(self) -> int:
        return len(self.offsets_px)

    def project(self, tile: int, display_points) -> np.ndarray:
        """Frame (row, col) where tile ``tile`` images display points ``(n, 2)`` (row, col)."""
        return _apply(self.homographies[tile], np.asarray(display_points, dtype=np.float64))

    def residuals_px(self) -> np.ndarray:
        """(P, M, 2): measured spot centroids minus the fitted homography's projection (NaN where unused)."""
        return np.stack([self.sensor_points[p] - self.project(p, self.display_points) for p in range(self.num_tiles)])

    def tile_origins_px(self) -> np.ndarray:
        """(P, 2) float64: the fitted (sub-pixel) top-left of each tile, nominal origin + offset."""
        return self.nominal_origins_px + self.offsets_px

    def summary(self) -> dict:
        """Plain figures for logs and reports."""
        return {
            "tiles": self.num_tiles,
            "points_per_tile": int(len(self.display_points)),
            "rms_px_max": float(self.rms_px.max()),
            "rms_px_mean": float(self.rms_px.mean()),
            "inliers_min": int(self.inliers.min()),
            "snr_min": float(self.snr.min()),
            "offset_px_max": float(np.abs(self.offsets_px).max()),
            "offsets_px": self.offsets_px.round(4).tolist(),
            "exposure_s": self.exposure_s,
            "averages": self.averages,
        }

    # ---------------------------------------------------------------------------------------- HDF5
    _ARRAYS = ("homographies", "nominal_homographies", "offsets_px", "rms_px", "inliers", "display_points",
               "sensor_points", "inlier_mask", "snr", "nominal_origins_px", "image")
    _ATTRS = ("tile_shape", "image_shape", "frame_shape", "exposure_s", "averages")

    def to_hdf5(self, group) -> None:
        """Write into the empty h5py ``group``: arrays as datasets, the rest and the schema as attributes.
        Refuses a group that already holds anything; on a failure it removes what it wrote."""
        if len(group) or len(group.attrs):
            raise InputError(f"HDF5 group {group.name!r} must be empty, it holds {sorted(group)} {sorted(group.attrs)}")
        try:
            group.attrs["schema"] = SCHEMA
            group.attrs["schema_version"] = SCHEMA_VERSION
            group.attrs["convention"] = "(row, col), integer values at pixel centres; H maps display -> frame"
            for name in self._ATTRS:
                group.attrs[name] = getattr(self, name)
            for name in self._ARRAYS:
                group.create_dataset(name, data=getattr(self, name))
        except BaseException:
            for name in list(group):
                del group[name]
            for name in list(group.attrs):
                del group.attrs[name]
            raise

    @classmethod
    def from_hdf5(cls, group) -> "GeometryCalibration":
        """Read what :meth:`to_hdf5` wrote; a foreign, other-version or incomplete group raises
        :class:`~calibration.errors.CalibrationFileError` naming what is wrong."""
        where = getattr(group, "name", "?")
        schema = group.attrs.get("schema")
        if isinstance(schema, bytes):
            schema = schema.decode()
        if schema != SCHEMA:
            raise CalibrationFileError(f"HDF5 group {where!r} is not a geometry calibration (schema {schema!r}, "
                                       f"expected {SCHEMA!r})")
        version = group.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CalibrationFileError(f"HDF5 group {where!r} has geometry schema version {version!r}; this toolkit "
                                       f"reads version {SCHEMA_VERSION}")
        values = {}
        for name in cls._ATTRS:
            if name not in group.attrs:
                raise CalibrationFileError(f"HDF5 group {where!r} lacks the attribute {name!r}")
            value = group.attrs[name]
            values[name] = tuple(int(v) for v in value) if name.endswith("shape") else value.item()
        for name in cls._ARRAYS:
            if name not in group:
                raise CalibrationFileError(f"HDF5 group {where!r} lacks the dataset {name!r}")
            values[name] = group[name][()]
        try:
            return cls(**values)
        except InputError as exc:
            raise CalibrationFileError(f"HDF5 group {where!r} is inconsistent: {exc}") from exc


# ============================================================================================ fit
def fit_geometry(frames: GeometryFrames, system, *, search_px: int | None = None, min_snr: float = 10.0,
                 ransac_threshold_px: float = 0.5, diagnostics_dir=None) -> GeometryCalibration:
    """Fit the display -> camera mapping of every tile to the frames of :func:`capture_geometry`.

    Parameters
    ----------
    frames : GeometryFrames
    system : simulator.system.OpticalSystem
        The nominal system the frames were captured for.
    search_px : int, optional
        How far (sensor pixels) a tile is searched for around its nominal position (default and maximum:
        just under half the dot pitch on the sensor, beyond which a neighbouring dot would match).
    min_snr : float
        Spots below this signal-to-noise ratio are not used; a tile whose median spot is below it is not
        found, and a frame where every tile is below it is too dark.
    ransac_threshold_px : float
        Largest reprojection error (sensor pixels) of a RANSAC inlier.
    diagnostics_dir : path, optional
        Where a failure saves :data:`DIAGNOSTIC_NAME`.

    Raises
    ------
    CalibrationError
        Saturated spots, a frame too dark, tiles not found, the pattern not found.
    """
    import cv2

    patterns = frames.patterns
    search_px = _fit_settings(system, patterns.pitch, search_px, min_snr, ransac_threshold_px)
    if frames.frames.shape[1:] != tuple(system.frame_shape) or len(frames.frames) != len(patterns.dots):
        raise InputError(f"frames must be ({len(patterns.dots)}, {tuple(system.frame_shape)}) for this system's "
                         f"layout and patterns, got {frames.frames.shape}")
    num = system.num_psfs
    signal = frames.signal
    summed = signal.sum(axis=0)
    nominal = _nominal_signal(system, patterns)
    zero = np.zeros((num, 2), np.int64)
    nominal_cutouts, nominal_corners = _spot_cutouts(nominal, system, patterns, zero)
    nominal_points = _spot_positions(nominal_cutouts, nominal_corners, np.ones(nominal_corners.shape[:2], bool))
    expected = nominal_points.reshape(-1, 2)

    def fail(message: str, marks=expected) -> CalibrationError:
        path = None
        if diagnostics_dir is not None:
            path = Path(diagnostics_dir) / DIAGNOSTIC_NAME
            _write_png(path, _draw(summed, system, marks, saturated=frames.saturated.any(axis=0)))
        log.error("geometry calibration failed: %s", message)
        return CalibrationError(message, path)

    saturated_tiles = [p for p in range(num) if frames.saturated[(slice(None), *system.layout.tile_slices(p))].any()]
    if saturated_tiles:
        count = int(frames.saturated.any(axis=0).sum())
        raise fail(f"saturated: {count} pixels reached the camera's saturation ({frames.saturation_dn:g} DN) in "
                   f"tiles {saturated_tiles}; lower the exposure (now {frames.exposure_s:g} s, e.g. to "
                   f"{frames.exposure_s / 4:g} s) or the dots' gray level")

    sigma = _noise_sigma(signal, nominal, system)
    offsets, correlation = _coarse_offsets(signal[0], nominal[0], system, search_px)
    cutouts, corners = _spot_cutouts(signal, system, patterns, offsets)
    snr = cutouts.sum(axis=(2, 3)) / (sigma * cutouts.shape[-1])
    tile_snr = np.median(snr, axis=1)
    marks = (nominal_points + offsets[:, None, :]).reshape(-1, 2)
    if not (tile_snr >= min_snr).any():
        raise fail(f"frame too dark: the best tile's median spot is {tile_snr.max():.3g} sigma above the noise "
                   f"(sigma {sigma:.3g} DN per pixel), below min_snr {min_snr:g}; raise the exposure (now "
                   f"{frames.exposure_s:g} s), the averages (now {frames.averages}) or the dots' gray level", marks)
    dim = [p for p in range(num) if tile_snr[p] < min_snr]
    if dim:
        raise fail(f"tiles {dim} not found: their median spot is {', '.join(f'{tile_snr[p]:.3g}' for p in dim)} "
                   f"sigma above the noise (min_snr {min_snr:g}; the other tiles reach {np.median(tile_snr):.3g}): "
                   f"no light through those sub-optics, or they image outside their nominal tiles", marks)
    unmatched = [p for p in range(num) if correlation[p] < MIN_CORRELATION]
    if len(unmatched) == num:
        raise fail(f"pattern not found: light reaches the camera but no tile matches its predicted dot pattern "
                   f"within {search_px} px (best correlation {correlation.max():.2f} < {MIN_CORRELATION}); check "
                   f"the display orientation, the camera ROI and the layout (gap_px, origin)", marks)
    if unmatched:
        raise fail(f"pattern not found in tiles {unmatched}: correlation with the predicted dots "
                   f"{', '.join(f'{correlation[p]:.2f}' for p in unmatched)} < {MIN_CORRELATION} within "
                   f"{search_px} px of the nominal position", marks)
    at_edge = [p for p in range(num) if search_px and np.abs(offsets[p]).max() == search_px]
    if at_edge:
        raise fail(f"pattern not found in tiles {at_edge}: they match best at the edge of the search window "
                   f"(+-{search_px} px), so they may lie farther from their nominal positions; show sparser dots "
                   f"(a larger pitch) to search farther, or check the layout (origin, gap_px)", marks)

    display = patterns.points
    homographies, nominal_h = np.zeros((num, 3, 3)), np.zeros((num, 3, 3))
    rms, inliers = np.zeros(num), np.zeros(num, np.int64)
    used = _spot_positions(cutouts, corners, snr >= min_snr)
    mask = np.zeros(used.shape[:2], bool)
    failed = []
    for p in range(num):
        ok = np.isfinite(used[p]).all(axis=1)
        need = max(MIN_POINTS, (len(display) + 1) // 2)
        found = None
        if ok.sum() >= need:
            found, inlier = cv2.findHomography(display[ok], used[p][ok], cv2.RANSAC, ransac_threshold_px)
        if found is None or inlier.sum() < need:
            failed.append((p, 0 if found is None else int(inlier.sum()), int(ok.sum()), need))
            continue
        homographies[p] = found / found[2, 2]
        mask[p, np.flatnonzero(ok)[inlier.ravel().astype(bool)]] = True
        inliers[p] = mask[p].sum()
        error = used[p][mask[p]] - _apply(homographies[p], display[mask[p]])
        rms[p] = np.sqrt(np.mean(np.sum(error**2, axis=1)))
        nominal_h[p] = cv2.findHomography(display, nominal_points[p], 0)[0]
        nominal_h[p] /= nominal_h[p, 2, 2]
    if failed:
        raise fail("pattern not found: " + "; ".join(
            f"tile {p}: {k} of {n} usable spots fit one homography within {ransac_threshold_px:g} px (need {need})"
            for p, k, n, need in failed), marks)
    shift = np.stack([(_apply(homographies[p], display) - _apply(nominal_h[p], display)).mean(axis=0)
                      for p in range(num)])
    origins = np.array([[sl.start for sl in system.layout.tile_slices(p)] for p in range(num)], np.int64)
    result = GeometryCalibration(
        homographies=homographies, nominal_homographies=nominal_h, offsets_px=shift, rms_px=rms,
        inliers=inliers, display_points=display, sensor_points=used, inlier_mask=mask, snr=tile_snr,
        nominal_origins_px=origins, tile_shape=tuple(system.layout.tile_shape), image_shape=tuple(system.image_shape),
        frame_shape=tuple(system.frame_shape), image=summed.astype(np.float32), exposure_s=frames.exposure_s,
        averages=frames.averages)
    log.info("geometry: %d tiles, reprojection RMS <= %.3g px, |offset| <= %.3g px, >= %d inliers",
             num, rms.max(), np.abs(shift).max(), inliers.min())
    return result


def _fit_settings(system, pitch: int, search_px, min_snr, ransac_threshold_px) -> int:
    """Validate :func:`fit_geometry`'s settings for dots ``pitch`` apart; return ``search_px`` (its default
    filled in)."""
    s = system.geometry.sensor_pixels_per_display_pixel
    limit = (pitch * s - 1) // 2
    search_px = limit if search_px is None else search_px
    if isinstance(search_px, bool) or not isinstance(search_px, (int, np.integer)) or not 0 <= search_px <= limit:
        raise InputError(f"search_px must be an int in [0, {limit}] (under half the dot pitch on the sensor, "
                         f"{pitch * s} px), got {search_px!r}")
    for name, value in (("min_snr", min_snr), ("ransac_threshold_px", ransac_threshold_px)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)):
            raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return int(search_px)


def measure_geometry(bench, system, *, pitch: int | None = None, phases: int = 3, averages: int = 4,
                     level: int | None = None, dark: np.ndarray | None = None, search_px: int | None = None,
                     min_snr: float = 10.0, ransac_threshold_px: float = 0.5,
                     diagnostics_dir=None) -> GeometryCalibration:
    """:func:`capture_geometry` then :func:`fit_geometry` (their parameters); every setting is checked
    before anything is shown."""
    if pitch is None or (isinstance(pitch, (int, np.integer)) and not isinstance(pitch, bool)):
        _fit_settings(system, minimum_pitch(system) if pitch is None else int(pitch), search_px, min_snr,
                      ransac_threshold_px)
    frames = capture_geometry(bench, system, pitch=pitch, phases=phases, averages=averages, level=level, dark=dark)
    return fit_geometry(frames, system, search_px=search_px, min_snr=min_snr,
                        ransac_threshold_px=ransac_threshold_px, diagnostics_dir=diagnostics_dir)


def _nominal_signal(system, patterns: DotPatterns) -> np.ndarray:
    """(Q, rows, cols): the nominal system's expected photon rates of each pattern minus the black display's."""
    import torch

    channels = system.design.psfs().shape[1]
    h, w = system.image_shape
    gray = np.zeros((len(patterns.dots) + 1, channels, h, w), np.int64)
    for q, dots in enumerate(patterns.dots):
        gray[q, :, dots[:, 0], dots[:, 1]] = system.display.levels - 1
    with torch.no_grad():
        rates = system.photon_rate_frame(torch.from_numpy(gray)).double().cpu().numpy()
    return rates[:-1] - rates[-1]


def _noise_sigma(signal: np.ndarray, nominal: np.ndarray, system) -> float:
    """Per-pixel noise (DN) of the dark-subtracted frames, robustly (1.4826 MAD) from the pixels no spot
    reaches: those the nominal system predicts dark, farther than the PSF margin plus :data:`GUARD_PX`
    from any it predicts lit."""
    import cv2

    reach = 2 * (system.geometry.psf_margin_px + GUARD_PX) + 1
    lit = np.stack([cv2.dilate((n > 1e-9 * nominal.max()).astype(np.uint8), np.ones((reach, reach), np.uint8))
                    for n in nominal])
    values = signal[lit == 0]
    sigma = 1.4826 * np.median(np.abs(values - np.median(values)))
    # a noiseless frame (a simulation): the spread of the dark pixels, else the rounding of one DN
    return float(sigma or values.std() or 1 / math.sqrt(12))


def _coarse_offsets(signal: np.ndarray, nominal: np.ndarray, system, search_px: int):
    """Integer (dy, dx) per tile maximising the normalised correlation of the smoothed measured frame with
    the smoothed predicted tile, within ``search_px``; and the correlations (P,)."""
    import cv2

    smooth = lambda a: cv2.GaussianBlur(a.astype(np.float32), (0, 0), SMOOTH_SIGMA_PX)  # noqa: E731
    measured = np.pad(smooth(signal), search_px)
    predicted = smooth(nominal)
    offsets = np.zeros((system.num_psfs, 2), np.int64)
    correlation = np.zeros(system.num_psfs)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        template = predicted[rows, cols]
        region = measured[rows.start:rows.stop + 2 * search_px, cols.start:cols.stop + 2 * search_px]
        scores = np.nan_to_num(cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED), nan=-1.0)
        r, c = np.unravel_index(int(np.argmax(scores)), scores.shape)
        offsets[p] = (r - search_px, c - search_px)
        correlation[p] = scores[r, c]
    return offsets, correlation


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Homography ``h`` applied to ``points`` (n, 2)."""
    mapped = np.c_[points, np.ones(len(points))] @ h.T
    return mapped[:, :2] / mapped[:, 2:]


# ============================================================================================ images
def plot_overlay(result: GeometryCalibration, frame, path) -> Path:
    """Save the registration overlay PNG at ``path``: ``frame`` (rows, cols; None: the result's summed dot
    image) with the nominal tiles (blue), the fitted tiles (green), the measured spots (red circles), their
    fitted projections (green crosses) and each tile's RMS. Returns the path."""
    image = result.image if frame is None else np.asarray(frame, dtype=np.float64)
    if image.shape != tuple(result.frame_shape):
        raise InputError(f"frame must be {tuple(result.frame_shape)} (the calibrated camera frame), got {image.shape}")
    projected = np.concatenate([result.project(p, result.display_points) for p in range(result.num_tiles)])
    boxes = [(tuple(o), tuple(o + np.array(result.tile_shape))) for o in result.nominal_origins_px]
    fitted = [(tuple(o), tuple(o + np.array(result.tile_shape))) for o in result.tile_origins_px()]
    labels = [(tuple(o), f"{p}: {result.rms_px[p]:.3f}px") for p, o in enumerate(result.tile_origins_px())]
    canvas = _canvas(image, boxes, fitted, result.sensor_points.reshape(-1, 2), projected, labels)
    return _write_png(Path(path), canvas)


def _draw(image: np.ndarray, system, expected: np.ndarray, saturated: np.ndarray | None = None) -> np.ndarray:
    """Diagnostic canvas: ``image`` with the nominal tiles and the expected spot positions (green
    crosses) and saturated pixels (magenta)."""
    boxes = []
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        boxes.append(((rows.start, cols.start), (rows.stop, cols.stop)))
    labels = [(b[0], str(p)) for p, b in enumerate(boxes)]
    return _canvas(image, boxes, [], np.empty((0, 2)), expected, labels, saturated)


def _canvas(image, nominal_boxes, fitted_boxes, measured, projected, labels, saturated=None) -> np.ndarray:
    """BGR uint8 drawing (enlarged about :data:`OVERLAY_WIDTH_PX` wide) of a frame and marks, all in frame
    (row, col) pixel-centre coordinates."""
    import cv2

    scale = max(1, round(OVERLAY_WIDTH_PX / image.shape[1]))
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, (1, 99.9)) if finite.size else (0.0, 1.0))
    gray = np.sqrt(np.clip((np.nan_to_num(image) - low) / max(high - low, 1e-12), 0, 1))
    canvas = cv2.cvtColor((gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if saturated is not None:
        canvas[saturated] = (255, 0, 255)
    canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    def at(point):  # frame (row, col) pixel centre -> canvas (x, y)
        return int(round((point[1] + 0.5) * scale)), int(round((point[0] + 0.5) * scale))

    def corner(point):  # frame (row, col) pixel corner -> canvas (x, y)
        return int(round(point[1] * scale)), int(round(point[0] * scale))

    for boxes, colour in ((nominal_boxes, (255, 128, 0)), (fitted_boxes, (0, 200, 0))):
        for top, bottom in boxes:
            cv2.rectangle(canvas, corner(top), corner(bottom), colour, 1)
    for point in measured:
        if np.isfinite(point).all():
            cv2.circle(canvas, at(point), max(2, scale // 2), (0, 0, 255), 1)
    for point in projected:
        if np.isfinite(point).all():
            cv2.drawMarker(canvas, at(point), (0, 255, 0), cv2.MARKER_CROSS, max(4, scale), 1)
    for top, text in labels:
        x, y = corner(top)
        cv2.putText(canvas, text, (x + 3, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    return canvas


def _write_png(path: Path, canvas: np.ndarray) -> Path:
    import cv2

    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise InputError(f"OpenCV could not encode the image for {path}")
    with atomic_write(path) as fh:
        fh.write(encoded.tobytes())
    return path


__all__ = ["DIAGNOSTIC_NAME", "DotPatterns", "GeometryCalibration", "GeometryFrames", "SCHEMA", "capture_geometry",
           "dot_patterns", "fit_geometry", "measure_geometry", "minimum_pitch", "plot_overlay", "intensity_centroid"]
