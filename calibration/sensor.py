"""Sensor calibration: dark frames, flat fields, defect map and the photon-transfer curve (EMVA 1288).

:func:`measure_sensor` measures the camera of a bench through its display: the display is the only
light source (there is no shutter), so a **dark** frame is the display showing black (it holds the
sensor's offset, its dark current and any stray light, the last two growing with the exposure) and a
**flat** frame is the display showing white (seen through the optics, so "flat" is the optics'
response to a uniform display, not a uniform image: tiles, their blurred edges and dark gaps).

Measurement, at ``num_exposures`` exposures from near zero to past saturation (found by a probe):
``frames`` dark and ``frames`` flat frames each; and ``read_frames`` dark frames at the camera's
shortest exposure. Every pixel gives a temporal mean and variance (unbiased, over the frames) of
each; so one exposure gives points of the photon-transfer curve at every signal level the optics
produce at once (the flat is not uniform, which here is a help).

Photon transfer, as EMVA 1288 but per pixel rather than over a uniform region: per pixel and
exposure, ``x = mean_flat - mean_dark`` and ``y = var_flat - var_dark`` (the dark subtraction removes
the offset, the dark/stray-light signal and their shot noise, read noise and quantisation noise).
Pixel points are binned by ``x``; the bin means and their standard errors are the curve. Shot noise
makes it a line ``y = K x`` up to saturation, ``K`` in frame DN per electron. The saturation signal is
where the binned variance peaks (EMVA 1288); ``K`` is the weighted least-squares slope (with an
intercept, reported as a check: it should be 0) over bins below :data:`PTC_FIT_FRACTION` of it.
The **conversion gain** is ``1 / K`` in electrons per *frame* DN, the unit frames come in: a 12-bit ADC
stored left-justified in 16 bits delivers codes times 16, so it is the sensor's e-/code divided by 16
(the frame step is reported as ``adc_step_dn``, the greatest common divisor of the values read).

Read noise: the mean over pixels of the temporal variance of dark frames at the shortest exposure
(where dark current and stray light have no time to add noise), less the quantisation noise of the
ADC step (``step**2 / 12``, valid once the noise exceeds about half a step), in frame DN and, times
the conversion gain, in electrons.

Linearity: each pixel's signal ``x`` against the exposure is fitted by a line through the origin over
the points between :data:`LINEARITY_FIT_RANGE` of the saturation signal; the relative deviation from
that line, averaged over pixels in bins of signal, is the linearity curve. The **linear range** is the
interval of signal around the fit range where the deviation stays within ``tolerance``; it is reported
in frame DN (the offset added). Linearity error: the largest deviation inside the fit range.

Defects, against the neighbourhood (a 5 x 5 median) in units of a robust standard deviation (1.4826
x the median absolute deviation over the frame): a **hot** pixel has a dark signal rate (slope of the
dark mean against the exposure) or a dark offset more than ``hot_sigma`` above its neighbours'; a
**dead** pixel responds to light (flat rate) less than ``dead_response`` times its neighbours' and by
more than ``dead_sigma`` robust deviations of the relative response, where they are lit (a pixel in a
dark gap cannot be judged; the fraction keeps the steep, curved edges of the optics' tiles, where a
median is a poorer reference, from being taken for defects). The robust spread of the
relative response is the **PRNU** estimate (an upper bound: it includes the rates' temporal noise).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from onn_core.progress import progress_bar

from drivers.exposure import capture_stack, exposure_held
from onn_core.errors import InputError

from .errors import CalibrationError
from .hdf5 import read_dataclass, write_dataclass
from .plotting import pyplot, save_figure
from .noise import PixelNoise

log = logging.getLogger(__name__)

SCHEMA = "onn-hil/sensor-calibration"
SCHEMA_VERSION = 1
#: Bins of the photon-transfer curve over the signal range.
PTC_BINS = 128
#: Pixel points a bin needs to enter the fit and the plots.
MIN_BIN_COUNT = 30
#: The gain is fitted over signals up to this fraction of the saturation signal (EMVA 1288: 70 %).
PTC_FIT_FRACTION = 0.7
#: Signal range, as fractions of the saturation signal, over which each pixel's line is fitted.
LINEARITY_FIT_RANGE = (0.05, 0.7)
#: Percentile of the flat frame taken as "the brightest pixels" (ignores a few hot ones).
BRIGHT_PERCENTILE = 99.9
#: Fraction of saturation at which the brightest pixels' signal rate is probed.
PROBE_FRACTION = 0.5
#: The exposure ladder ends at this multiple of the exposure that saturates the brightest pixels.
LADDER_OVERSHOOT = 1.3
#: Side of the neighbourhood (pixels) against which defects are judged.
NEIGHBOURHOOD_PX = 5
#: Where a pixel counts as lit for the dead-pixel test: neighbourhood flat rate above this fraction of
#: the brightest (99.9th percentile).
LIT_FRACTION = 0.1
#: Fraction of dark readings at 0 above which the black level is taken to clip the noise.
ZERO_CLIP_FRACTION = 0.01
#: Robust standard deviation from the median absolute deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, eq=False)
class SensorCalibration:
    """A measured sensor (module docstring); arrays are (rows, cols) frames unless said otherwise.

    Attributes
    ----------
    exposures_s : (E,) float
        The exposure ladder (s, as read back from the camera), ascending.
    dark_mean_dn, flat_mean_dn : (E, rows, cols) float32
        Mean dark (display black) and flat (display white) frames at each exposure (frame DN).
    dark_intercept_dn, dark_rate_dn_per_s : float32
        Per-pixel line through the dark means: ``dark = intercept + rate * exposure_s``.
    reference_exposure_s : float
        The camera's exposure when the measurement began; ``dark_reference_dn`` is the mean dark frame there.
    flat_rate_dn_per_s : float32
        Per-pixel flat signal rate (DN/s, dark subtracted); NaN where no exposure gave a usable point.
    read_exposure_s, offset_dn : float
        The shortest exposure (s) and the mean dark level there (frame DN).
    read_noise_dn, read_noise_e, read_noise_err_e : float
        Temporal read noise (frame DN, electrons) and the electrons' standard error.
    adc_step_dn : float
        Frame DN between neighbouring ADC codes (gcd of the values read; 16 for 12 bits left-justified in 16).
    conversion_gain_e_per_dn, conversion_gain_err_e_per_dn : float
        Electrons per frame DN and its standard error (from the fit's covariance).
    ptc_intercept_dn2, ptc_intercept_err_dn2, ptc_chi2_reduced : float
        The fit's intercept (DN^2; 0 expected) with its standard error, and its reduced chi-square.
    ptc_signal_dn, ptc_variance_dn2, ptc_variance_err_dn2 : (B,) float
        Photon-transfer curve: mean signal, mean variance (dark subtracted) and its standard error per
        bin (from the noise model in the fitted bins, which is what weighs them; from the scatter elsewhere).
    ptc_count : (B,) int
        Pixel points per bin. ``ptc_fit`` (B,) bool: the bins the gain was fitted on.
    saturation_signal_dn : float
        Signal (DN above dark) where the variance peaks; ``saturation_reached`` False when it never
        fell again (the ladder stopped before saturation: then it is a lower bound).
    linearity_signal_dn, linearity_deviation : (L,) float; linearity_count : (L,) int
        Linearity curve: mean signal and mean relative deviation from each pixel's line, per bin.
    linear_range_dn : (2,) float
        Frame DN range (offset added) where the deviation stays within ``linearity_tolerance``.
    linearity_error : float
        Largest absolute relative deviation inside :data:`LINEARITY_FIT_RANGE`.
    hot_pixels, dead_pixels : bool
        Defect maps; ``hot_sigma``, ``dead_sigma``, ``dead_response`` the thresholds used.
    hot_threshold_dn_per_s : float
        Dark signal rate above the neighbourhood's from which a pixel counts as hot: the detection
        limit (longer exposures in the ladder lower it).
    prnu_rel : float
        Robust relative spread of the flat response among lit pixels (upper bound of the PRNU).
    frames, read_frames : int
        Frames averaged per mean.
    """

    exposures_s: np.ndarray
    dark_mean_dn: np.ndarray
    flat_mean_dn: np.ndarray
    dark_intercept_dn: np.ndarray
    dark_rate_dn_per_s: np.ndarray
    reference_exposure_s: float
    dark_reference_dn: np.ndarray
    flat_rate_dn_per_s: np.ndarray
    read_exposure_s: float
    offset_dn: float
    read_noise_dn: float
    read_noise_e: float
    read_noise_err_e: float
    adc_step_dn: float
    conversion_gain_e_per_dn: float
    conversion_gain_err_e_per_dn: float
    ptc_intercept_dn2: float
    ptc_intercept_err_dn2: float
    ptc_chi2_reduced: float
    ptc_signal_dn: np.ndarray
    ptc_variance_dn2: np.ndarray
    ptc_variance_err_dn2: np.ndarray
    ptc_count: np.ndarray
    ptc_fit: np.ndarray
    saturation_signal_dn: float
    saturation_reached: bool
    linearity_signal_dn: np.ndarray
    linearity_deviation: np.ndarray
    linearity_count: np.ndarray
    linear_range_dn: np.ndarray
    linearity_tolerance: float
    linearity_error: float
    hot_pixels: np.ndarray
    dead_pixels: np.ndarray
    hot_sigma: float
    dead_sigma: float
    dead_response: float
    hot_threshold_dn_per_s: float
    prnu_rel: float
    frames: int
    read_frames: int

    # ------------------------------------------------------------------------------- noise model
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the frames measured."""
        return tuple(self.hot_pixels.shape)

    @property
    def defects(self) -> np.ndarray:
        """Hot or dead pixels, (rows, cols) bool."""
        return self.hot_pixels | self.dead_pixels

    @property
    def saturation_dn(self) -> float:
        """Frame DN at the saturation signal (offset added)."""
        return self.offset_dn + self.saturation_signal_dn

    @property
    def pixel_noise(self) -> PixelNoise:
        """The measured noise model of one pixel reading (Poisson-Gaussian, frame DN)."""
        return PixelNoise(e_per_dn=self.conversion_gain_e_per_dn, offset_dn=self.offset_dn,
                          read_noise_dn=self.read_noise_dn, step_dn=self.adc_step_dn,
                          e_per_dn_rel_sigma=self.conversion_gain_err_e_per_dn / self.conversion_gain_e_per_dn)

    def variance_dn2(self, mean_dn) -> np.ndarray:
        """Expected temporal variance (DN^2) of one reading whose expectation is ``mean_dn`` (frame DN)."""
        return self.pixel_noise.variance_dn2(mean_dn)

    def electrons(self, dn) -> np.ndarray:
        """Frame DN -> electrons above the offset (photo-, dark and stray-light electrons)."""
        return (np.asarray(dn, dtype=np.float64) - self.offset_dn) * self.conversion_gain_e_per_dn

    def dark_frame(self, exposure_s: float) -> np.ndarray:
        """Expected dark frame (DN, float32) at ``exposure_s`` from the per-pixel dark line."""
        return self.dark_intercept_dn + self.dark_rate_dn_per_s * np.float32(exposure_s)

    # ------------------------------------------------------------------------------- reporting
    def summary(self) -> dict:
        """JSON-ready figures: fitted values with standard errors, residual checks, defect counts."""
        fit = self.ptc_fit
        normalised = (self.ptc_variance_dn2 - (self.ptc_signal_dn / self.conversion_gain_e_per_dn + self.ptc_intercept_dn2))
        normalised = normalised[fit] / self.ptc_variance_err_dn2[fit]
        return {
            "conversion_gain_e_per_dn": self.conversion_gain_e_per_dn,
            "conversion_gain_err_e_per_dn": self.conversion_gain_err_e_per_dn,
            "adc_step_dn": self.adc_step_dn,
            "conversion_gain_e_per_code": self.conversion_gain_e_per_dn * self.adc_step_dn,
            "read_noise_e": self.read_noise_e,
            "read_noise_err_e": self.read_noise_err_e,
            "read_noise_dn": self.read_noise_dn,
            "offset_dn": self.offset_dn,
            "ptc_intercept_dn2": self.ptc_intercept_dn2,
            "ptc_intercept_err_dn2": self.ptc_intercept_err_dn2,
            "ptc_chi2_reduced": self.ptc_chi2_reduced,
            "ptc_fit_bins": int(fit.sum()),
            "ptc_max_abs_normalised_residual": float(np.abs(normalised).max()) if normalised.size else None,
            "saturation_signal_dn": self.saturation_signal_dn,
            "saturation_reached": bool(self.saturation_reached),
            "saturation_capacity_e": self.saturation_signal_dn * self.conversion_gain_e_per_dn,
            "dynamic_range_db": 20 * math.log10(self.saturation_signal_dn / self.read_noise_dn)
            if self.read_noise_dn > 0 else None,
            "linear_range_dn": [float(v) for v in self.linear_range_dn],
            "linearity_tolerance": self.linearity_tolerance,
            "linearity_error": self.linearity_error,
            "dark_rate_median_dn_per_s": float(np.median(self.dark_rate_dn_per_s)),
            "prnu_rel": self.prnu_rel,
            "hot_pixels": int(self.hot_pixels.sum()),
            "hot_threshold_dn_per_s": self.hot_threshold_dn_per_s,
            "dead_pixels": int(self.dead_pixels.sum()),
            "exposures_s": [float(t) for t in self.exposures_s],
            "reference_exposure_s": self.reference_exposure_s,
            "read_exposure_s": self.read_exposure_s,
            "frames": self.frames,
            "read_frames": self.read_frames,
        }

    # ------------------------------------------------------------------------------- files
    def to_hdf5(self, group) -> None:
        """Write into an h5py group: arrays as datasets, scalars and the schema as attributes."""
        write_dataclass(group, self, SCHEMA, SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "SensorCalibration":
        """Read what :meth:`to_hdf5` wrote (:class:`CalibrationFileError` if it is something else)."""
        return read_dataclass(cls, group, SCHEMA, SCHEMA_VERSION)


def _mean_var(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel temporal mean and unbiased variance (float64) of a (frames, rows, cols) stack."""
    data = stack.astype(np.float64)
    return data.mean(axis=0), data.var(axis=0, ddof=1)


def check_count(name: str, value, minimum: int) -> int:
    """``value`` as an int, or :class:`InputError` naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_sigma(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InputError(f"{name} must be a number > 0 (standard deviations), got {value!r}")
    return float(value)


def uniform_image(bench, level: int) -> np.ndarray:
    """The bench's display frame with every pixel at gray ``level``."""
    return np.full(bench.slm.shape, level, dtype=bench.slm.dtype)


def _probe_ladder(bench, black, white, count: int) -> np.ndarray:
    """Exposures (s) from the brightest pixels' signal rate, measured where they reach
    :data:`PROBE_FRACTION` of saturation: ``count`` equal steps up to :data:`LADDER_OVERSHOOT` times
    the exposure that saturates them (within the camera's limits)."""
    camera = bench.camera
    low, high = camera.exposure_limits_s
    exposure = bench.auto_exposure(white, target_fraction=PROBE_FRACTION, percentile=BRIGHT_PERCENTILE)
    dark = capture_stack(bench, 1, black)[0].astype(np.float64)
    flat = capture_stack(bench, 1, white)[0].astype(np.float64)
    rate = float(np.percentile(flat - dark, BRIGHT_PERCENTILE)) / exposure
    saturating_s = (camera.saturation_dn - float(np.median(dark))) / rate
    top = min(LADDER_OVERSHOOT * saturating_s, high)
    if top < LADDER_OVERSHOOT * saturating_s:
        log.warning("the brightest pixels need %.3g s to saturate; the camera stops at %.3g s: the "
                    "saturation signal will be a lower bound", saturating_s, high)
    return np.maximum(top * np.arange(1, count + 1) / count, low)


def _robust_sigma(values: np.ndarray) -> float:
    return MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))


def _neighbourhood(image: np.ndarray) -> np.ndarray:
    """5 x 5 median of every pixel's neighbourhood (edges replicated)."""
    import cv2

    return cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), NEIGHBOURHOOD_PX).astype(np.float64)


def _weighted_line(x, y, sigma) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares ``y = a x + b``: (a, b), their covariance (scaled by the reduced
    chi-square when it exceeds 1) and the reduced chi-square."""
    design = np.stack([x, np.ones_like(x)], axis=1) / sigma[:, None]
    coef, *_ = np.linalg.lstsq(design, y / sigma, rcond=None)
    dof = max(x.size - 2, 1)
    chi2 = float(np.sum(((y - design @ coef * sigma) / sigma) ** 2)) / dof
    cov = np.linalg.inv(design.T @ design) * max(chi2, 1.0)
    return coef, cov, chi2


class _Bins:
    """Running sums of pixel points (x, y), with an auxiliary value per point, binned by x over fixed edges."""

    def __init__(self, edges: np.ndarray):
        self.edges = edges
        n = edges.size - 1
        self.count = np.zeros(n, np.int64)
        self.sx, self.sy, self.syy, self.saux = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)

    def add(self, x: np.ndarray, y: np.ndarray, aux: float = 0.0) -> None:
        index = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, self.count.size - 1)
        n = self.count.size
        counts = np.bincount(index, minlength=n)
        self.count += counts
        self.sx += np.bincount(index, x, minlength=n)
        self.sy += np.bincount(index, y, minlength=n)
        self.syy += np.bincount(index, y * y, minlength=n)
        self.saux += aux * counts

    def means(self) -> tuple[np.ndarray, ...]:
        """Bins with at least :data:`MIN_BIN_COUNT` points: mean x, mean y, standard error of y (from
        the scatter), count, mean auxiliary value."""
        keep = self.count >= MIN_BIN_COUNT
        n = self.count[keep].astype(np.float64)
        mx, my = self.sx[keep] / n, self.sy[keep] / n
        var = np.maximum(self.syy[keep] / n - my**2, 0.0) * n / (n - 1)
        return mx, my, np.sqrt(var / n), self.count[keep], self.saux[keep] / n


def measure_sensor(bench, *, frames: int = 8, read_frames: int = 16, num_exposures: int = 10,
                   exposures_s=None, linearity_tolerance: float = 0.01, hot_sigma: float = 6.0,
                   dead_sigma: float = 6.0, dead_response: float = 0.5) -> SensorCalibration:
    """Measure the bench's camera through its display (module docstring) and fit it.

    Parameters
    ----------
    bench : drivers.bench.Bench
        An amplitude display and a monochrome camera. The camera's exposure is restored afterwards.
    frames : int
        Frames per dark and per flat mean at every exposure (>= 2: temporal variances need two).
    read_frames : int
        Dark frames at the shortest exposure for the read noise (>= 2).
    num_exposures : int
        Exposures of the ladder (>= 3), equally spaced up to past saturation (found by a probe).
    exposures_s : sequence of float, optional
        The ladder itself (s, within the camera's limits) instead of the probe's.
    linearity_tolerance : float
        Relative deviation from a line that still counts as linear, in (0, 0.5).
    hot_sigma, dead_sigma : float
        Defect thresholds in robust standard deviations.
    dead_response : float
        A dead pixel also responds less than this fraction of its neighbourhood, in (0, 1).

    Raises
    ------
    CalibrationError
        The bench cannot be calibrated this way (phase SLM), the black level clips the noise, or too few
        pixel points for a photon-transfer fit.
    drivers.errors.ExposureError
        Frames are empty, no light reaches the camera, or the brightest pixels saturate at the shortest
        exposure.
    InputError
        A bad argument, or a colour camera.
    """
    frames = check_count("frames", frames, 2)
    read_frames = check_count("read_frames", read_frames, 2)
    num_exposures = check_count("num_exposures", num_exposures, 3)
    if not isinstance(linearity_tolerance, (int, float)) or not 0 < linearity_tolerance < 0.5:
        raise InputError(f"linearity_tolerance must be in (0, 0.5) (relative), got {linearity_tolerance!r}")
    hot_sigma, dead_sigma = _check_sigma("hot_sigma", hot_sigma), _check_sigma("dead_sigma", dead_sigma)
    if isinstance(dead_response, bool) or not isinstance(dead_response, (int, float)) or not 0 < dead_response < 1:
        raise InputError(f"dead_response must be in (0, 1) (a fraction of the neighbours' response), got {dead_response!r}")
    if bench.slm.modulation != "amplitude":
        raise CalibrationError(f"sensor calibration lights the camera with the display; {bench.slm.name} is a "
                               f"{bench.slm.modulation} SLM, which shows no black and white (use an amplitude display)")
    camera = bench.camera
    black, white = uniform_image(bench, 0), uniform_image(bench, bench.slm.max_level)
    with exposure_held(camera) as reference_s:
        if exposures_s is None:
            ladder = _probe_ladder(bench, black, white, num_exposures)
        else:
            ladder = np.asarray(exposures_s, dtype=np.float64)
            if ladder.ndim != 1 or ladder.size < 3 or np.any(np.diff(ladder) <= 0):
                raise InputError(f"exposures_s must be at least 3 ascending exposures (s), got {exposures_s!r}")
        camera.exposure_s = camera.exposure_limits_s[0]
        read_stack, read_exposure = capture_stack(bench, read_frames, black), camera.exposure_s
        zeros = float(np.mean(read_stack == 0))
        if zeros > ZERO_CLIP_FRACTION:
            raise CalibrationError(f"{zeros:.1%} of the dark readings are 0: the black level clips the noise "
                                   f"(raise the camera's black level; black_level = {camera.black_level:g} DN)")
        camera.exposure_s = reference_s
        reference_dark = capture_stack(bench, frames, black)
        measured = _measure_ladder(bench, black, white, ladder, frames)
    return _fit(measured, read_stack, read_exposure, reference_s, reference_dark.mean(axis=0, dtype=np.float64),
                frames=frames, tolerance=float(linearity_tolerance),
                hot_sigma=hot_sigma, dead_sigma=dead_sigma, dead_response=float(dead_response))


@dataclass
class _Ladder:
    exposures_s: np.ndarray
    dark_mean: np.ndarray   # (E, rows, cols) float64
    flat_mean: np.ndarray
    clipped: np.ndarray     # (E, rows, cols) bool: some flat frame at or above saturation
    bins: _Bins
    step: int               # gcd of every value read


def _measure_ladder(bench, black, white, ladder, frames: int) -> _Ladder:
    camera = bench.camera
    edges = np.linspace(0.0, float(camera.saturation_dn), PTC_BINS + 1)
    bins = _Bins(edges)
    exposures, dark_means, flat_means, clipped = [], [], [], []
    step = 0
    for exposure in progress_bar(ladder, desc="sensor: exposures", unit="exposure"):
        camera.exposure_s = float(exposure)
        dark_stack, read_back = capture_stack(bench, frames, black), camera.exposure_s
        flat_stack = capture_stack(bench, frames, white)
        step = int(np.gcd.reduce(np.unique(np.concatenate([dark_stack.ravel(), flat_stack.ravel()])).astype(np.int64),
                                 initial=step))
        dark_mean, dark_var = _mean_var(dark_stack)
        flat_mean, flat_var = _mean_var(flat_stack)
        bins.add((flat_mean - dark_mean).ravel(), (flat_var - dark_var).ravel(), float(np.median(dark_var)))
        exposures.append(read_back)
        dark_means.append(dark_mean)
        flat_means.append(flat_mean)
        clipped.append((flat_stack >= camera.saturation_dn).any(axis=0))
    if step == 0:
        raise CalibrationError("every frame read is all 0: the camera delivers empty frames")
    exposures = np.asarray(exposures)
    if np.any(np.diff(exposures) <= 0):
        raise CalibrationError(f"the camera read back exposures {exposures.tolist()} s for the ladder "
                               f"{np.asarray(ladder).tolist()} s: they must rise (a finer exposure step or fewer exposures)")
    return _Ladder(exposures, np.stack(dark_means), np.stack(flat_means), np.stack(clipped), bins, step)


# =============================================================================================== fitting
def _fit(m: _Ladder, read_stack, read_exposure, reference_s, reference_dark, *, frames, tolerance, hot_sigma,
         dead_sigma, dead_response) -> SensorCalibration:
    # ---- photon transfer: saturation where the variance peaks, gain over bins below a fraction of it
    signal, variance, error, count, dark_var = m.bins.means()
    if signal.size < 3:
        raise CalibrationError(f"only {signal.size} photon-transfer bins hold {MIN_BIN_COUNT} pixel points or more: "
                               f"too few lit pixels (is the camera looking at the display?)")
    peak = int(np.argmax(variance))
    saturation_signal = float(signal[peak])
    saturation_reached = bool(np.any(variance[peak + 1:] < 0.5 * variance[peak]))
    if not saturation_reached:
        log.warning("the photon-transfer variance never fell: saturation was not reached; the saturation "
                    "signal %.4g DN is a lower bound (raise the upper camera.exposure_limits_s in "
                    "the bench YAML if the camera allows)", saturation_signal)
    fit = (signal <= PTC_FIT_FRACTION * saturation_signal) & (error > 0)
    if fit.sum() < 3:
        raise CalibrationError(f"only {int(fit.sum())} photon-transfer bins below {PTC_FIT_FRACTION:.0%} of the "
                               f"saturation signal {saturation_signal:.4g} DN: too few signal levels to fit the gain")
    # Weights: the scatter's standard errors would favour bins that came out low by chance (a low
    # sample variance also scatters less), biasing the slope low; so the first line only predicts each
    # bin's variance, and the fit is redone with the standard error of a difference of two sample
    # variances of ``frames`` frames: var(y) = 2 (var_flat^2 + var_dark^2) / (frames - 1).
    (slope, intercept), _, _ = _weighted_line(signal[fit], variance[fit], error[fit])
    flat_var = np.maximum(slope * signal + intercept, 0.0) + dark_var
    error = np.where(fit, np.sqrt(2 * (flat_var**2 + dark_var**2) / (frames - 1) / count), error)
    (slope, intercept), cov, chi2 = _weighted_line(signal[fit], variance[fit], error[fit])
    if not slope > 0:
        raise CalibrationError(f"the photon-transfer variance does not grow with the signal (slope {slope:.3g} "
                               f"DN/e-): no shot noise seen; are the frames processed (denoised, averaged)?")
    gain_e = 1.0 / slope
    gain_err = math.sqrt(cov[0, 0]) / slope**2

    # ---- dark: per-pixel line over the ladder, offset and read noise at the shortest exposure
    t = m.exposures_s
    tc = t - t.mean()
    dark_rate = np.tensordot(tc, m.dark_mean, axes=1) / np.sum(tc**2)
    dark_intercept = m.dark_mean.mean(axis=0) - dark_rate * t.mean()
    read_mean, read_var = _mean_var(read_stack)
    step = float(np.gcd(m.step, int(np.gcd.reduce(np.unique(read_stack).astype(np.int64)))))

    # ---- defects
    rate_noise = math.sqrt(float(np.median(read_var)) / frames / np.sum(tc**2))
    offset_noise = math.sqrt(float(np.median(read_var)) / read_stack.shape[0])
    hot_rate, hot_threshold = _outliers(dark_rate, hot_sigma, rate_noise)
    hot = hot_rate | _outliers(read_mean, hot_sigma, offset_noise)[0]
    flat_rate = _flat_rates(m, saturation_signal)
    dead, prnu = _dead_pixels(flat_rate, dead_sigma, dead_response)
    good = ~(hot | dead)

    offset = float(read_mean[good].mean())
    quantisation = step**2 / 12.0
    total = float(read_var[good].mean())
    if total <= quantisation:
        raise CalibrationError(f"dark-frame variance {total:.3g} DN^2 is not above the quantisation noise "
                               f"{quantisation:.3g} DN^2 of the ADC step {step:g} DN: read noise unmeasurable")
    read_dn = math.sqrt(total - quantisation)
    read_var_err = float(read_var[good].std()) / math.sqrt(good.sum())
    read_e = read_dn * gain_e
    read_err_e = math.hypot(read_var_err / (2 * read_dn) * gain_e, read_dn * gain_err)

    # ---- linearity
    lin_signal, lin_dev, lin_count, linear_range, lin_error = _linearity(m, flat_rate, good, saturation_signal,
                                                                        tolerance)
    return SensorCalibration(
        exposures_s=t, dark_mean_dn=m.dark_mean.astype(np.float32), flat_mean_dn=m.flat_mean.astype(np.float32),
        dark_intercept_dn=dark_intercept.astype(np.float32), dark_rate_dn_per_s=dark_rate.astype(np.float32),
        reference_exposure_s=float(reference_s), dark_reference_dn=reference_dark.astype(np.float32),
        flat_rate_dn_per_s=flat_rate.astype(np.float32), read_exposure_s=float(read_exposure), offset_dn=offset,
        read_noise_dn=read_dn, read_noise_e=read_e, read_noise_err_e=read_err_e, adc_step_dn=step,
        conversion_gain_e_per_dn=gain_e, conversion_gain_err_e_per_dn=gain_err, ptc_intercept_dn2=float(intercept),
        ptc_intercept_err_dn2=math.sqrt(cov[1, 1]), ptc_chi2_reduced=chi2, ptc_signal_dn=signal,
        ptc_variance_dn2=variance, ptc_variance_err_dn2=error, ptc_count=count, ptc_fit=fit,
        saturation_signal_dn=saturation_signal, saturation_reached=saturation_reached,
        linearity_signal_dn=lin_signal, linearity_deviation=lin_dev, linearity_count=lin_count,
        linear_range_dn=linear_range + offset, linearity_tolerance=tolerance, linearity_error=lin_error,
        hot_pixels=hot, dead_pixels=dead, hot_sigma=hot_sigma, dead_sigma=dead_sigma,
        dead_response=dead_response, hot_threshold_dn_per_s=hot_threshold, prnu_rel=prnu,
        frames=frames, read_frames=int(read_stack.shape[0]),
    )


def _outliers(image: np.ndarray, sigmas: float, noise_floor: float) -> tuple[np.ndarray, float]:
    """Pixels more than ``sigmas`` robust standard deviations (at least ``noise_floor``) above their
    neighbourhood, and that threshold."""
    residual = image - _neighbourhood(image)
    threshold = sigmas * max(_robust_sigma(residual), noise_floor)
    return residual > threshold, float(threshold)


def _flat_rates(m: _Ladder, saturation_signal: float) -> np.ndarray:
    """Per-pixel flat signal rate (DN/s): line through the origin over the pixel's points inside
    :data:`LINEARITY_FIT_RANGE` of the saturation signal (NaN where it has none)."""
    signal = m.flat_mean - m.dark_mean
    t = m.exposures_s[:, None, None]
    low, high = LINEARITY_FIT_RANGE
    use = (signal >= low * saturation_signal) & (signal <= high * saturation_signal) & ~m.clipped
    weight_t2 = np.sum(np.where(use, t**2, 0.0), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight_t2 > 0, np.sum(np.where(use, signal * t, 0.0), axis=0) / weight_t2, np.nan)


def _dead_pixels(flat_rate: np.ndarray, sigmas: float, fraction: float) -> tuple[np.ndarray, float]:
    """Dead pixels (lit neighbourhood, relative response below ``fraction`` and ``sigmas`` robust
    deviations low) and the robust relative spread of the response among lit pixels."""
    rate = np.nan_to_num(flat_rate, nan=0.0)
    reference = _neighbourhood(rate)
    lit = reference > LIT_FRACTION * np.percentile(rate, 99.9)
    if lit.sum() < MIN_BIN_COUNT:
        raise CalibrationError(f"only {int(lit.sum())} pixels are lit well enough to judge dead pixels")
    relative = rate[lit] / reference[lit]
    spread = _robust_sigma(relative)
    dead = np.zeros(rate.shape, dtype=bool)
    dead[lit] = relative < min(fraction, 1.0 - sigmas * spread)
    return dead, spread


def _linearity(m: _Ladder, flat_rate, good, saturation_signal: float, tolerance: float):
    """Binned relative deviation of every good pixel's signal from its line; the linear range (signal
    DN) around the fit range where it stays within ``tolerance``; the largest deviation inside the fit range."""
    signal = m.flat_mean - m.dark_mean
    usable = good & np.isfinite(flat_rate) & (flat_rate > 0)
    expected = flat_rate[usable][None, :] * m.exposures_s[:, None]
    observed = signal[:, usable]
    keep = expected > 0
    bins = _Bins(np.linspace(0.0, observed.max() * 1.0001, PTC_BINS // 2 + 1))
    bins.add(observed[keep], observed[keep] / expected[keep] - 1.0)
    centre, deviation, _, count, _ = bins.means()
    if centre.size == 0:
        raise CalibrationError("no pixel has a usable linear response: too few exposures below saturation")
    low, high = (f * saturation_signal for f in LINEARITY_FIT_RANGE)
    inside = (centre >= low) & (centre <= high)
    within = np.abs(deviation) <= tolerance
    anchor = int(np.argmax(inside)) if inside.any() else int(np.argmin(np.abs(centre - low)))
    top = anchor
    while top + 1 < centre.size and within[top + 1]:
        top += 1
    bottom = anchor
    while bottom > 0 and within[bottom - 1]:
        bottom -= 1
    error = float(np.abs(deviation[inside]).max()) if inside.any() else float("nan")
    return centre, deviation, count, np.array([centre[bottom], centre[top]]), error


# =============================================================================================== plotting
def plot(result: SensorCalibration, path) -> None:
    """Photon-transfer curve with its fit and normalised residuals, and the linearity curve, as one
    figure written (atomically) to ``path`` (format from its suffix, e.g. ``.png``)."""
    plt = pyplot()
    fig, (ax_ptc, ax_res, ax_lin) = plt.subplots(1, 3, figsize=(15, 4.5))
    try:
        x, y, e, fit = result.ptc_signal_dn, result.ptc_variance_dn2, result.ptc_variance_err_dn2, result.ptc_fit
        line = x / result.conversion_gain_e_per_dn + result.ptc_intercept_dn2
        ax_ptc.errorbar(x[~fit], y[~fit], e[~fit], fmt=".", color="0.6", label="not fitted")
        ax_ptc.errorbar(x[fit], y[fit], e[fit], fmt=".", color="C0", label="fitted")
        ax_ptc.plot(x, line, "C1-", label=f"{result.conversion_gain_e_per_dn:.4g} e-/DN")
        ax_ptc.axvline(result.saturation_signal_dn, color="C3", ls=":", label="saturation")
        ax_ptc.set(xlabel="mean signal (DN above dark)", ylabel="temporal variance (DN$^2$, dark subtracted)",
                   title=f"photon transfer: read noise {result.read_noise_e:.3g} e-")
        ax_ptc.legend()
        ax_res.axhline(0, color="0.5")
        ax_res.plot(x[fit], (y[fit] - line[fit]) / e[fit], "C0.")
        ax_res.set(xlabel="mean signal (DN above dark)", ylabel="residual / standard error",
                   title=f"fit residuals (reduced chi2 {result.ptc_chi2_reduced:.3g})")
        ax_lin.plot(result.linearity_signal_dn, 100 * result.linearity_deviation, "C0.-")
        for bound in result.linear_range_dn - result.offset_dn:
            ax_lin.axvline(bound, color="C3", ls=":")
        ax_lin.axhspan(-100 * result.linearity_tolerance, 100 * result.linearity_tolerance, color="C2", alpha=0.15)
        ax_lin.set(xlabel="mean signal (DN above dark)", ylabel="deviation from linear (%)",
                   title=f"linearity: range {result.linear_range_dn[0]:.0f}..{result.linear_range_dn[1]:.0f} DN")
        save_figure(fig, path)
    finally:
        plt.close(fig)
