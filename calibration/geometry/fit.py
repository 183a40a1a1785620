"""The geometry stage's fit: every tile found (template matching), every spot placed (ECC against the
tile's own mean spot), a homography per tile (RANSAC), and each tile's offset from the nominal layout
(:mod:`calibration.geometry` describes the method)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from onn_core.errors import InputError

from ..errors import CalibrationError
from .capture import GeometryFrames, capture_geometry
from .overlay import DIAGNOSTIC_NAME, save_diagnostic
from .patterns import GUARD_PX, MIN_POINTS, DotPatterns, minimum_pitch, spot_extent
from .result import GeometryCalibration, apply_homography

log = logging.getLogger(__name__)

#: Tiles whose smoothed pattern correlates less than this with the predicted one are "not found".
MIN_CORRELATION = 0.3
#: Gaussian smoothing (sensor pixels) of the frames for the coarse tile search.
SMOOTH_SIGMA_PX = 1.0
#: ECC iterations and convergence threshold (pixels) of the sub-pixel spot refinement.
ECC_ITERATIONS = 100
ECC_EPS = 1e-6


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
    side = spot_extent(system) + 2 * GUARD_PX
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
            path = save_diagnostic(Path(diagnostics_dir) / DIAGNOSTIC_NAME, summed, system, marks,
                                   saturated=frames.saturated.any(axis=0))
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
        error = used[p][mask[p]] - apply_homography(homographies[p], display[mask[p]])
        rms[p] = np.sqrt(np.mean(np.sum(error**2, axis=1)))
        nominal_h[p] = cv2.findHomography(display, nominal_points[p], 0)[0]
        nominal_h[p] /= nominal_h[p, 2, 2]
    if failed:
        raise fail("pattern not found: " + "; ".join(
            f"tile {p}: {k} of {n} usable spots fit one homography within {ransac_threshold_px:g} px (need {need})"
            for p, k, n, need in failed), marks)
    shift = np.stack([(apply_homography(homographies[p], display) - apply_homography(nominal_h[p], display)).mean(axis=0)
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
    # 1e-6 of the peak: above the round-off of a float32 FFT convolution (~1e-7 of it), far below any light
    lit = np.stack([cv2.dilate((n > 1e-6 * nominal.max()).astype(np.uint8), np.ones((reach, reach), np.uint8))
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
