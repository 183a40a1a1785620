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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
#: Fraction of the saturation level the brightest pixel may reach at the bracket's shortest exposure.
PEAK_FRACTION = 0.7
#: Signal-to-noise ratio below which a PSF counts as not seen.
MIN_SNR = 5.0


@dataclass(frozen=True)
class PSFMeasurement:
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

    def summary(self) -> dict:
        return {"points": len(self.points), "exposures_s": self.exposures_s.tolist(), "averages": self.averages,
                "snr_min": float(self.snr.min()), "snr_median": float(np.median(self.snr)),
                "saturated_pixels": int(self.saturated.sum()), "fit_pixels": int(self.mask.sum())}

    def to_hdf5(self, group) -> None:
        write_dataclass(group, self, SCHEMA, SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "PSFMeasurement":
        """Read what :meth:`to_hdf5` wrote (:class:`~calibration.errors.CalibrationFileError` if not)."""
        return read_dataclass(cls, group, SCHEMA, SCHEMA_VERSION)


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
                 progress: bool | None = None) -> PSFMeasurement:
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
    return PSFMeasurement(pattern=pattern, points=points, exposures_s=exposures, lit=lit, dark=dark, rate=rate,
                          variance=variance, saturated=saturated, mask=mask, averages=averages, snr=snr)


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
