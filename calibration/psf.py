"""PSF capture: point sources on the display, seen through every sub-optic at once.

A lit display pixel at ``(i, j)`` appears in tile ``p`` as the fabricated PSF ``p`` with its window's
top-left corner at tile pixel ``(i s, j s)`` (``s`` sensor pixels per display pixel, "full"
convolution; :mod:`simulator.system`). :func:`measure_psfs` lights a grid of such points, spaced so
that their windows do not overlap, and records for every exposure of a bracket the mean of
``averages`` frames with the points lit and of as many with the display black (the "dark" frame:
sensor offset, dark current and stray light, all removed by the subtraction). Per pixel, the longest
exposure at which no frame saturated gives the signal rate

    rate = (mean lit - mean dark) / exposure_s            (DN/s, black subtracted)

with its variance from the noise model (Poisson-Gaussian in DN, :class:`PixelNoise`), so cores stay
below saturation and tails rise above the noise. The result carries everything the mismatch fit
(:mod:`calibration.fit`) needs: the displayed pattern, the rate frame, its variance and the mask of
pixels inside the PSF windows.

Held-out frames (:class:`HoldoutFrames`, ``measure_psfs(..., holdout=True)``, the default): frames the
fit never sees, for :attr:`~calibration.fit.MismatchFit.holdout_residual_over_noise`: the point grid
moved by half its spacing (another phase of the grid: every point lands where no fitted point was)
and a few images (``holdout_images``, e.g. the dataset's; default :func:`default_holdout_images`),
each at its own auto exposure, black subtracted as above, over the tiles' pixels (the grid: over its
PSF windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from onn_core.progress import progress_bar

from drivers.bench_fits import check_bench_fits
from drivers.exposure import capture_stack, exposure_held
from onn_core.errors import InputError
from simulator.system import OpticalSystem

from .errors import CalibrationError
from .hdf5 import read_dataclass, write_dataclass
from .noise import PixelNoise

SCHEMA, SCHEMA_VERSION = "onn_hil.calibration.psf", 1
#: Schema of the held-out frames (a subgroup ``holdout`` of a PSF measurement; absent in older files).
HOLDOUT_SCHEMA, HOLDOUT_SCHEMA_VERSION = "onn_hil.calibration.psf_holdout", 1
#: Held-out images shown by default (:func:`default_holdout_images`) and the seed that draws them.
HOLDOUT_IMAGES, HOLDOUT_SEED = 2, 19
#: Fraction of the saturation level the brightest pixel may reach at the bracket's shortest exposure.
PEAK_FRACTION = 0.7
#: Signal-to-noise ratio below which a PSF counts as not seen.
MIN_SNR = 5.0


@dataclass(frozen=True)
class HoldoutFrames:
    """Frames the fit never sees (module docstring), ``N`` of them.

    kinds : N names, ``"point_grid"`` or ``"image"``
    patterns : (N, H, W) uint gray levels shown
    exposures_s : (N,) the exposure of each
    rate, variance : (N, rows, cols) signal rate (DN/s, black subtracted) and its variance
    mask : (N, rows, cols) bool, the pixels to compare (inside the tiles or windows, unsaturated)
    """

    kinds: list
    patterns: np.ndarray
    exposures_s: np.ndarray
    rate: np.ndarray
    variance: np.ndarray
    mask: np.ndarray

    def to_hdf5(self, group) -> None:
        write_dataclass(group, self, HOLDOUT_SCHEMA, HOLDOUT_SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "HoldoutFrames":
        return read_dataclass(cls, group, HOLDOUT_SCHEMA, HOLDOUT_SCHEMA_VERSION)


@dataclass(frozen=True)
class _PSFFrames:
    """Point sources seen through the optics (see the module docstring).

    pattern : (H, W) uint gray levels shown (the lit points at ``level``, 0 elsewhere)
    points : (Q, 2) display pixels (row, col) of the lit points
    exposures_s : (E,) the bracket, ascending
    lit, dark : (E, rows, cols) mean frames (DN) with the points lit / the display black
    rate, variance : (rows, cols) signal rate (DN/s) and its variance ((DN/s)^2)
    saturated : (rows, cols) bool, saturated at every exposure (such a pixel is excluded)
    mask : (rows, cols) bool, pixels inside some PSF window of some tile
    averages : frames averaged per mean
    snr : (P,) signal-to-noise ratio of each PSF's total light
    """

    pattern: np.ndarray
    points: np.ndarray
    exposures_s: np.ndarray
    lit: np.ndarray
    dark: np.ndarray
    rate: np.ndarray
    variance: np.ndarray
    saturated: np.ndarray
    mask: np.ndarray
    averages: int
    snr: np.ndarray


@dataclass(frozen=True)
class PSFMeasurement(_PSFFrames):
    """Point sources seen through the optics (:class:`_PSFFrames`' fields), and ``holdout``: the
    :class:`HoldoutFrames` the fit does not see (None when not measured)."""

    holdout: HoldoutFrames | None = None

    def summary(self) -> dict:
        out = {"points": len(self.points), "exposures_s": self.exposures_s.tolist(), "averages": self.averages,
               "snr_min": float(self.snr.min()), "snr_median": float(np.median(self.snr)),
               "saturated_pixels": int(self.saturated.sum()), "fit_pixels": int(self.mask.sum())}
        if self.holdout is not None:
            out["holdout_frames"] = list(self.holdout.kinds)
        return out

    def to_hdf5(self, group) -> None:
        frames = _PSFFrames(**{f.name: getattr(self, f.name) for f in fields(_PSFFrames)})
        write_dataclass(group, frames, SCHEMA, SCHEMA_VERSION)
        if self.holdout is not None:
            self.holdout.to_hdf5(group.create_group("holdout"))

    @classmethod
    def from_hdf5(cls, group) -> "PSFMeasurement":
        """Read what :meth:`to_hdf5` wrote (:class:`~calibration.errors.CalibrationFileError` if not)."""
        frames = read_dataclass(_PSFFrames, group, SCHEMA, SCHEMA_VERSION)
        holdout = HoldoutFrames.from_hdf5(group["holdout"]) if "holdout" in group else None
        return cls(**{f.name: getattr(frames, f.name) for f in fields(_PSFFrames)}, holdout=holdout)


def point_grid(system: OpticalSystem) -> np.ndarray:
    """Display pixels (Q, 2) of a centred grid of points whose PSF windows do not overlap in a tile."""
    s = system.geometry.sensor_pixels_per_display_pixel
    window = system.psf_window_px + s - 1  # sensor pixels one lit display pixel covers
    spacing = math.ceil(window / s)
    axes = []
    for size in system.image_shape:
        count = (size - 1) // spacing + 1
        start = (size - 1 - (count - 1) * spacing) // 2
        axes.append(start + spacing * np.arange(count))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)


def holdout_grid(system: OpticalSystem) -> np.ndarray:
    """The point grid of :func:`point_grid` moved by half its spacing along both axes (points that would
    leave the display move the other way): a phase of the grid the fit never sees."""
    points = point_grid(system)
    s = system.geometry.sensor_pixels_per_display_pixel
    half = math.ceil((system.psf_window_px + s - 1) / s) // 2
    size = np.asarray(system.image_shape)
    moved = points + half
    return np.where(moved <= size - 1, moved, np.maximum(points - half, 0))


def default_holdout_images(shape, count: int = HOLDOUT_IMAGES, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """``count`` smooth random images (count, rows, cols) in [0, 1], seeded: white noise low-passed by a
    Gaussian of 2 display pixels, stretched to [0, 1] (dataset-like: structure at every tile pixel)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    low_pass = np.exp(-2 * math.pi**2 * 2.0**2 * (fy**2 + fx**2))
    out = []
    for _ in range(count):
        image = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * low_pass).real
        out.append((image - image.min()) / (image.max() - image.min()))
    return np.stack(out)


def tile_mask(system: OpticalSystem) -> np.ndarray:
    """Frame pixels inside some tile (bool, frame shape)."""
    mask = np.zeros(system.frame_shape, dtype=bool)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        mask[rows, cols] = True
    return mask


def window_mask(system: OpticalSystem, points: np.ndarray) -> np.ndarray:
    """Frame pixels inside the window of any point's PSF in any tile (bool, frame shape)."""
    s = system.geometry.sensor_pixels_per_display_pixel
    window = system.psf_window_px + s - 1
    mask = np.zeros(system.frame_shape, dtype=bool)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        for i, j in points:
            mask[rows.start + i * s: rows.start + i * s + window, cols.start + j * s: cols.start + j * s + window] = True
    return mask


def measure_psfs(bench, system: OpticalSystem, *, noise: PixelNoise | None = None, averages: int = 8,
                 exposures_s=None, bracket_factor: float = 8.0, level: int | None = None,
                 progress: bool | None = None, holdout: bool = True, holdout_images=None) -> PSFMeasurement:
    """Capture the PSFs of every sub-optic on ``bench`` (module docstring).

    Parameters
    ----------
    bench : drivers.bench.Bench
    system : OpticalSystem
        The nominal optics (design, geometry, layout); only its layout and sizes are used here.
    noise : PixelNoise, optional
        The pixels' noise model (default: nominal, from ``system.sensor``; better, a sensor
        calibration's :attr:`~calibration.sensor.SensorCalibration.pixel_noise`).
    averages : int
        Frames averaged per mean (lit and dark).
    exposures_s : sequence of float, optional
        The bracket; default: the exposure at which the brightest pixel reaches :data:`PEAK_FRACTION`
        of saturation (found from the camera's current exposure) and ``bracket_factor`` times it.
    level : int, optional
        Gray level of the lit points (default: the display's maximum).
    holdout : bool
        Also capture the held-out frames (:func:`measure_holdout`; module docstring).
    holdout_images : array (N, H, W) in [0, 1], optional
        The held-out images (default :func:`default_holdout_images`).
    """
    if isinstance(averages, bool) or not isinstance(averages, int) or averages < 1:
        raise InputError(f"averages must be an int >= 1, got {averages!r}")
    check_bench_fits(bench, system)
    camera = bench.camera
    noise = noise or PixelNoise.from_sensor(system.sensor)
    level = (2**bench.slm.bit_depth - 1) if level is None else int(level)
    points = point_grid(system)
    pattern = np.zeros(bench.slm.shape, dtype=np.uint8 if bench.slm.bit_depth <= 8 else np.uint16)
    pattern[points[:, 0], points[:, 1]] = level
    black = np.zeros_like(pattern)
    with exposure_held(camera):
        exposures = (sorted(float(e) for e in exposures_s) if exposures_s is not None
                     else _auto_bracket(bench, pattern, bracket_factor))
        lit, dark, clipped = [], [], []
        for exposure in progress_bar(exposures, desc="PSF capture", unit="exposure", enabled=progress):
            camera.exposure_s = exposure
            for frames, image in ((lit, pattern), (dark, black)):
                stack = capture_stack(bench, averages, image).astype(np.float64)
                frames.append(stack.mean(axis=0))
                if frames is lit:
                    clipped.append((stack >= camera.saturation_dn).any(axis=0))
    lit, dark, clipped = np.stack(lit), np.stack(dark), np.stack(clipped)
    exposures = np.asarray(exposures, dtype=np.float64)
    rate, variance, saturated = _combine(lit, dark, clipped, exposures, noise, averages)
    windows = window_mask(system, points)
    mask = windows & ~saturated
    snr = _psf_snr(system, rate, variance, mask)
    if not np.isfinite(snr).all() or snr.max() < MIN_SNR:
        raise CalibrationError(f"no PSF rises above the noise (best SNR {snr.max():.2g} < {MIN_SNR}): the frames are "
                               "too dark; raise the exposure or the light level")
    if saturated[windows].mean() > 0.01:
        raise CalibrationError(f"{int(saturated.sum())} PSF pixels saturate even at the shortest exposure "
                               f"{exposures[0]:.3g} s: shorten it or lower the light level")
    held_out = (measure_holdout(bench, system, noise=noise, averages=averages, level=level, images=holdout_images)
                if holdout else None)
    return PSFMeasurement(pattern=pattern, points=points, exposures_s=exposures, lit=lit, dark=dark, rate=rate,
                          variance=variance, saturated=saturated, mask=mask, averages=averages, snr=snr,
                          holdout=held_out)


def measure_holdout(bench, system: OpticalSystem, *, noise: PixelNoise | None = None, averages: int = 8,
                    level: int | None = None, images=None) -> HoldoutFrames:
    """The held-out frames (module docstring): the point grid of :func:`holdout_grid` at gray ``level``
    (default the display's maximum) and ``images`` (N, H, W) in [0, 1] (default
    :func:`default_holdout_images`) as gray levels, each at the exposure that takes its brightest pixel
    to :data:`PEAK_FRACTION` of saturation, ``averages`` frames lit and as many black."""
    camera = bench.camera
    noise = noise or PixelNoise.from_sensor(system.sensor)
    top = 2**bench.slm.bit_depth - 1
    level = top if level is None else int(level)
    dtype = np.uint8 if bench.slm.bit_depth <= 8 else np.uint16
    grid = np.zeros(bench.slm.shape, dtype=dtype)
    points = holdout_grid(system)
    grid[points[:, 0], points[:, 1]] = level
    images = default_holdout_images(tuple(bench.slm.shape)) if images is None else np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or tuple(images.shape[1:]) != tuple(bench.slm.shape) or not np.isfinite(images).all():
        raise InputError(f"holdout_images must be (N, {bench.slm.shape[0]}, {bench.slm.shape[1]}) finite values in "
                         f"[0, 1], got shape {images.shape}")
    shown = [grid] + [np.round(np.clip(image, 0.0, 1.0) * top).astype(dtype) for image in images]
    kinds = ["point_grid"] + ["image"] * len(images)
    regions = [window_mask(system, points)] + [tile_mask(system)] * len(images)
    black = np.zeros_like(grid)
    rates, variances, masks, exposures = [], [], [], []
    with exposure_held(camera):
        for pattern, region in zip(shown, regions):
            exposure = bench.auto_exposure(pattern, target_fraction=PEAK_FRACTION)
            lit = capture_stack(bench, averages, pattern).astype(np.float64)
            dark = capture_stack(bench, averages, black).astype(np.float64).mean(axis=0)
            clipped = (lit >= camera.saturation_dn).any(axis=0)
            rate, variance, saturated = _combine(lit.mean(axis=0)[None], dark[None], clipped[None],
                                                 np.asarray([exposure]), noise, averages)
            rates.append(rate)
            variances.append(variance)
            masks.append(region & ~saturated)
            exposures.append(exposure)
    return HoldoutFrames(kinds=kinds, patterns=np.stack(shown), exposures_s=np.asarray(exposures, dtype=np.float64),
                         rate=np.stack(rates), variance=np.stack(variances), mask=np.stack(masks))


def _auto_bracket(bench, pattern: np.ndarray, factor: float) -> list[float]:
    """The exposure at which the brightest pixel reaches :data:`PEAK_FRACTION` of saturation, and
    ``factor`` times it (when the camera allows)."""
    shortest = bench.auto_exposure(pattern, target_fraction=PEAK_FRACTION)
    longest = shortest * factor
    return [shortest] + ([longest] if factor > 1 and longest <= bench.camera.exposure_limits_s[1] else [])


def _combine(lit, dark, clipped, exposures, noise: PixelNoise, averages: int):
    """Per pixel, the rate at the longest unsaturated exposure, and its variance (module docstring)."""
    rate = np.zeros(lit.shape[1:])
    variance = np.full(lit.shape[1:], np.inf)
    for e in range(len(exposures)):  # ascending: a longer unsaturated exposure overwrites a shorter one
        ok = ~clipped[e]
        t = exposures[e]
        rate = np.where(ok, (lit[e] - dark[e]) / t, rate)
        var = (noise.variance_dn2(lit[e]) + noise.variance_dn2(dark[e])) / averages / t**2
        variance = np.where(ok, var, variance)
    return rate, variance, clipped.all(axis=0)


def _psf_snr(system: OpticalSystem, rate, variance, mask) -> np.ndarray:
    """Total signal over its standard deviation, per tile (PSF), over the fitted pixels."""
    out = np.zeros(system.num_psfs)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        m = mask[rows, cols]
        out[p] = rate[rows, cols][m].sum() / math.sqrt(max(variance[rows, cols][m].sum(), 1e-300))
    return out
