"""Display response: gray level -> camera signal of the bench's display/SLM; its gamma and a measured LUT.

:func:`measure_display_response` shows uniform gray levels (a subset of them, which must include 0 and
the maximum) and records the mean of ``frames`` frames of each, at one exposure chosen so that the
brightest pixels reach :data:`TARGET_FRACTION` of the linear range (the sensor calibration's, when
given, else the camera's saturation). With a uniform display every camera pixel's signal is
``a_i R(g) + b_i``: the optics (PSF weight, crosstalk, vignetting) scale it, stray light, dark current
and the offset add to it, none of them depending on the level. So, over the **lit pixels** (those whose
white-minus-black signal exceeds ``lit_fraction`` of the brightest, none clipped and none a defect of
the sensor calibration, i.e. the tiles' interiors and their inner edges),

    R(g) = sum_i (mean_i(g) - mean_i(0)) / sum_i (mean_i(max) - mean_i(0))

is the display's relative radiance, 0 at black and 1 at full white (a display that emits at black
cannot be told from stray light without a shutter: its black emission is taken as the zero). Its
standard error follows from the temporal noise: the sensor calibration's noise model when given, else
the frames' own per-pixel variance.

Fits: a gamma curve ``R = (g / max) ** gamma`` by weighted least squares (Gauss-Newton) with its
standard error, reduced chi-square and residuals; and a full LUT of every gray level,
:meth:`onn_core.lut.LUT.from_measurement` (linear interpolation between the measured levels, made
monotonic), which :meth:`DisplayCalibration.save_lut` writes in the two-column format that the SLM
drivers' ``lut_file`` option and the optics' ``display.lut_file`` read. The white level is measured
again at the end: its relative change (``white_drift_rel``) shows a display that drifted meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onn_core.progress import progress_bar

from drivers.exposure import capture_stack, exposure_held
from onn_core.errors import InputError
from onn_core.lut import LUT

from .errors import CalibrationError
from .hdf5 import read_dataclass, write_dataclass
from .plotting import pyplot, save_figure
from .sensor import SensorCalibration, check_count, uniform_image

SCHEMA = "onn-hil/display-calibration"
SCHEMA_VERSION = 1
#: The exposure brings the brightest pixels to this fraction of the linear range above black.
TARGET_FRACTION = 0.8
#: Percentile of the white frame taken as "the brightest pixels" (ignores a few hot ones).
BRIGHT_PERCENTILE = 99.9
#: Gauss-Newton iterations of the gamma fit (it converges in a handful).
GAMMA_ITERATIONS = 50


def default_levels(bit_depth: int, count: int = 33) -> np.ndarray:
    """``count`` gray levels spread evenly over ``0 .. 2**bit_depth - 1``, both ends included (int64)."""
    top = 2**bit_depth - 1
    return np.unique(np.round(np.linspace(0, top, min(count, top + 1))).astype(np.int64))


@dataclass(frozen=True, eq=False)
class DisplayCalibration:
    """A measured display response (module docstring).

    Attributes
    ----------
    levels : (L,) int64
        Gray levels shown, ascending (0 and the maximum included).
    relative_radiance, relative_radiance_err : (L,) float
        Measured relative radiance (0 at black, 1 at white) and its standard error (approximate:
        the correlation through the shared black and white frames is neglected).
    signal_dn : (L,) float
        Mean signal of a lit pixel above black (DN) at each level.
    gamma, gamma_err, gamma_chi2_reduced : float
        Fitted gamma, its standard error (scaled by the square root of the reduced chi-square when
        that exceeds 1) and the reduced chi-square.
    gamma_residual : (L,) float
        ``relative_radiance - (levels / max) ** gamma``.
    lut_values : (2**bit_depth,) float
        The measured LUT, every gray level (see :meth:`lut`).
    bit_depth : int
        The display's bits per level.
    exposure_s : float
        Exposure of every frame (s).
    mask : (rows, cols) bool
        The lit pixels used.
    white_drift_rel : float
        White signal measured at the end over the one at the start, minus 1.
    frames : int
        Frames averaged per level.
    """

    levels: np.ndarray
    relative_radiance: np.ndarray
    relative_radiance_err: np.ndarray
    signal_dn: np.ndarray
    gamma: float
    gamma_err: float
    gamma_chi2_reduced: float
    gamma_residual: np.ndarray
    lut_values: np.ndarray
    bit_depth: int
    exposure_s: float
    mask: np.ndarray
    white_drift_rel: float
    frames: int

    def lut(self) -> LUT:
        """The measured intensity :class:`~onn_core.lut.LUT` of every gray level."""
        return LUT(self.lut_values, "intensity")

    def save_lut(self, path) -> None:
        """Write the measured LUT (atomically) as the two-column file the drivers' ``lut_file`` reads."""
        self.lut().save(path)

    def summary(self) -> dict:
        """JSON-ready figures: gamma with its error, fit residuals, linearisation quality, drift."""
        fitted = self.levels[1:-1]
        return {
            "gamma": self.gamma,
            "gamma_err": self.gamma_err,
            "gamma_chi2_reduced": self.gamma_chi2_reduced,
            "gamma_residual_rms": float(np.sqrt(np.mean(self.gamma_residual[1:-1] ** 2))) if fitted.size else None,
            "gamma_residual_max_abs": float(np.abs(self.gamma_residual).max()),
            "relative_radiance_err_max": float(self.relative_radiance_err.max()),
            "levels": int(self.levels.size),
            "lit_pixels": int(self.mask.sum()),
            "white_signal_dn": float(self.signal_dn[-1]),
            "exposure_s": self.exposure_s,
            "white_drift_rel": self.white_drift_rel,
            "bit_depth": self.bit_depth,
            "frames": self.frames,
        }

    def to_hdf5(self, group) -> None:
        """Write into an h5py group: arrays as datasets, scalars and the schema as attributes."""
        write_dataclass(group, self, SCHEMA, SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "DisplayCalibration":
        """Read what :meth:`to_hdf5` wrote (:class:`CalibrationFileError` if it is something else)."""
        return read_dataclass(cls, group, SCHEMA, SCHEMA_VERSION)


def measure_display_response(bench, *, levels=None, frames: int = 4, sensor: SensorCalibration | None = None,
                             exposure_s: float | None = None, lit_fraction: float = 0.2) -> DisplayCalibration:
    """Measure the relative radiance of gray levels of the bench's display and fit it (module docstring).

    Parameters
    ----------
    bench : drivers.bench.Bench
        An amplitude display and a monochrome camera; the camera's exposure is restored afterwards.
    levels : sequence of int, optional
        Distinct gray levels to show, including 0 and the maximum (default: :func:`default_levels`, 33).
    frames : int
        Frames averaged per level (>= 2 without ``sensor``: the noise comes from their variance).
    sensor : SensorCalibration, optional
        The camera's calibration: its linear range limits the exposure, its defects are left out,
        its noise model gives the errors.
    exposure_s : float, optional
        The exposure (s) instead of the automatic one; the lit pixels must not saturate there.
    lit_fraction : float
        Pixels whose white signal is above this fraction of the brightest are used, in (0, 1).

    Raises
    ------
    CalibrationError
        Phase SLM, colour camera, empty frames, no light, saturation at the shortest (or the given)
        exposure, a sensor calibration of another camera shape, a response that does not rise.
    InputError
        A bad argument.
    """
    slm, camera = bench.slm, bench.camera
    if slm.modulation != "amplitude":
        raise CalibrationError(f"the display response is that of an amplitude display; {slm.name} is a "
                               f"{slm.modulation} SLM (calibrate its phase response instead)")
    levels = _check_levels(levels, slm.bit_depth)
    frames = check_count("frames", frames, 1 if sensor is not None else 2)
    if isinstance(lit_fraction, bool) or not isinstance(lit_fraction, (int, float)) or not 0 < lit_fraction < 1:
        raise InputError(f"lit_fraction must be in (0, 1), got {lit_fraction!r}")
    if sensor is not None and sensor.shape != tuple(camera.shape):
        raise CalibrationError(f"the sensor calibration is of a {sensor.shape} camera; this camera delivers "
                               f"{tuple(camera.shape)} frames (same camera and ROI needed)")
    limit = float(sensor.linear_range_dn[1]) if sensor is not None else camera.saturation_dn
    white = uniform_image(bench, slm.max_level)
    with exposure_held(camera):
        if exposure_s is None:
            bench.auto_exposure(white, target_fraction=TARGET_FRACTION, percentile=BRIGHT_PERCENTILE, limit_dn=limit)
        else:
            camera.exposure_s = exposure_s
        means, variances = [], []
        for level in progress_bar(levels, desc="display: gray levels", unit="level"):
            stack, exposure = capture_stack(bench, frames, uniform_image(bench, int(level))), camera.exposure_s
            means.append(stack.mean(axis=0, dtype=np.float64))
            variances.append(stack.var(axis=0, ddof=1, dtype=np.float64) if sensor is None else
                             sensor.variance_dn2(means[-1]))
            if level == levels[-1]:
                clipped = (stack >= camera.saturation_dn).any(axis=0) | (means[-1] >= limit)
        white_again = capture_stack(bench, frames, white).mean(axis=0, dtype=np.float64)
    means, variances = np.stack(means), np.stack(variances)
    return _fit(levels, means, variances, white_again, clipped, sensor, slm.bit_depth, exposure, frames, lit_fraction)


def _check_levels(levels, bit_depth: int) -> np.ndarray:
    top = 2**bit_depth - 1
    if levels is None:
        return default_levels(bit_depth)
    values = np.asarray(levels)
    if values.ndim != 1 or values.size < 3 or not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"levels must be at least 3 integer gray levels, got {levels!r}")
    values = np.sort(values.astype(np.int64))
    if np.any(np.diff(values) == 0) or values[0] != 0 or values[-1] != top:
        raise InputError(f"levels must be distinct and include 0 and {top} (black and white normalise the "
                         f"response; {bit_depth}-bit display), got {levels!r}")
    return values


def _fit(levels, means, variances, white_again, clipped, sensor, bit_depth, exposure, frames, lit_fraction):
    black, white = means[0], means[-1]
    signal = white - black
    top = float(np.percentile(signal, 99.9))
    mask = (signal > lit_fraction * top) & ~clipped
    if sensor is not None:
        mask &= ~sensor.defects
    if mask.sum() == 0 or top <= 0:
        raise CalibrationError("no lit, unsaturated pixel: white shows no more light than black "
                               f"(brightest signal {top:.3g} DN at {exposure:g} s)")
    numerator = (means[:, mask] - black[mask]).sum(axis=1)
    denominator = numerator[-1]
    if not denominator > 0:
        raise CalibrationError(f"the display's white is not brighter than its black over the lit pixels "
                               f"({denominator:.3g} DN summed)")
    relative = numerator / denominator
    # variance of sums over frames' means: the level's and black's per-pixel variances, / frames
    var_num = (variances[:, mask] + variances[0, mask]).sum(axis=1) / frames
    var_num[0] = 0.0
    error = np.sqrt(var_num + relative**2 * var_num[-1]) / denominator
    error[-1] = 0.0
    gamma, gamma_err, chi2 = _fit_gamma(levels / (2**bit_depth - 1), relative, error)
    residual = relative - (levels / (2**bit_depth - 1)) ** gamma
    lut = LUT.from_measurement(levels, relative, bit_depth, "intensity")
    drift = float((white_again[mask] - black[mask]).sum() / denominator - 1.0)
    return DisplayCalibration(
        levels=levels, relative_radiance=relative, relative_radiance_err=error,
        signal_dn=numerator / mask.sum(), gamma=gamma, gamma_err=gamma_err, gamma_chi2_reduced=chi2,
        gamma_residual=residual, lut_values=np.array(lut.values), bit_depth=int(bit_depth), exposure_s=float(exposure),
        mask=mask, white_drift_rel=drift, frames=int(frames),
    )


def _fit_gamma(x: np.ndarray, relative: np.ndarray, error: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares of ``relative = x ** gamma`` over the levels strictly between black and
    white (those two are 0 and 1 by construction): gamma, its standard error, reduced chi-square."""
    inner = (x > 0) & (x < 1)
    x, y, sigma = x[inner], relative[inner], error[inner]
    if x.size < 1:
        raise CalibrationError("no gray level between black and white: nothing to fit a gamma to")
    sigma = np.maximum(sigma, 1e-12)
    usable = y > 0.02
    if not usable.any():
        raise CalibrationError("every gray level between black and white reads as black: the response does not rise")
    gamma = float(np.median(np.log(y[usable]) / np.log(x[usable])))  # start
    for _ in range(GAMMA_ITERATIONS):
        model = x**gamma
        jacobian = model * np.log(x) / sigma
        step = float(np.sum(jacobian * (y - model) / sigma) / np.sum(jacobian**2))
        gamma += step
        if abs(step) < 1e-10 * max(abs(gamma), 1.0):
            break
    model = x**gamma
    jacobian = model * np.log(x) / sigma
    dof = max(x.size - 1, 1)
    chi2 = float(np.sum(((y - model) / sigma) ** 2)) / dof
    err = math.sqrt(max(chi2, 1.0) / float(np.sum(jacobian**2)))
    return gamma, err, chi2


def plot(result: DisplayCalibration, path) -> None:
    """Measured response with the fitted gamma and the LUT, and the fit's residuals, written
    (atomically) to ``path`` (format from its suffix)."""
    plt = pyplot()
    top = 2**result.bit_depth - 1
    fig, (ax_resp, ax_res) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        grid = np.arange(top + 1)
        ax_resp.plot(grid, result.lut_values, "C2-", lw=1, label="LUT (measured)")
        ax_resp.plot(grid, (grid / top) ** result.gamma, "C1--", lw=1,
                     label=f"gamma {result.gamma:.4g} +- {result.gamma_err:.2g}")
        ax_resp.errorbar(result.levels, result.relative_radiance, result.relative_radiance_err, fmt="C0.", label="measured")
        ax_resp.set(xlabel="gray level", ylabel="relative radiance", title="display response")
        ax_resp.legend()
        ax_res.axhline(0, color="0.5")
        ax_res.errorbar(result.levels, result.gamma_residual, result.relative_radiance_err, fmt="C0.")
        ax_res.set(xlabel="gray level", ylabel="measured - gamma curve",
                   title=f"residuals (reduced chi2 {result.gamma_chi2_reduced:.3g})")
        save_figure(fig, path)
    finally:
        plt.close(fig)
