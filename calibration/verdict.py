"""Verdicts of a calibration: per stage, ok / check / failed, the figure it rests on, the threshold and
what to do next; per PSF, where the fitted model fails (its tile's misfit against the median tile's).

The thresholds (:data:`THRESHOLDS`) grade one figure of each stage's summary: a value within ``ok``
is ``ok``, within ``check`` is ``check`` (usable; look at it), beyond is ``failed`` (recalibrate).
The fit is also graded by its held-out residual over the noise (:data:`HOLDOUT`: frames the fit never
saw, predicted by the calibrated model; ok <= 1.5x, check <= 3x the noise, failed beyond; the advice
names each held-out part's figure and what a part beyond ok points to, :data:`HOLDOUT_PARTS`). A PSF
whose residual over the noise (root of its tile's chi-square per pixel) exceeds :data:`PSF_CHECK_FACTOR`
times the median PSF's (or 1, whichever is larger) is ``check``, beyond :data:`PSF_FAILED_FACTOR` times
``failed``. Each verdict carries the unit of its figure (:data:`UNITS`), stated with its limits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: stage -> (figure in the stage's summary, ok limit, check limit, larger is better, what to do next).
THRESHOLDS = {
    "sensor": ("ptc_chi2_reduced", 2.0, 5.0, False,
               "photon transfer is off its line: look for saturation, stray light or drifting illumination; "
               "remeasure with more frames"),
    "display": ("gamma_chi2_reduced", 3.0, 10.0, False,
                "the display does not follow a gamma curve (the measured LUT is used): switch off dynamic "
                "contrast and automatic brightness, then remeasure"),
    "geometry": ("rms_px_max", 0.1, 0.3, False,
                 "spots sit off the fitted homography: focus the camera, check the tile layout, raise the exposure"),
    "psf": ("snr_min", 50.0, 5.0, True, "a PSF is barely above the noise: raise the averages or the exposure"),
    "fit": ("chi2_reduced", 1.5, 5.0, False, None),  # advice from the stages run (_fit_advice)
}
#: The fit's held-out residual over the noise (``holdout_residual_over_noise["all"]``: frames it was not
#: fitted to, 1 = predicted to the noise): ok / check limits and the advice beyond them (the parts measured,
#: ``point_grid`` and ``images``, are named in the advice and add their own, :data:`HOLDOUT_PARTS`).
HOLDOUT = ("holdout_residual_over_noise", 1.5, 3.0,
           "the calibrated model does not predict frames it was not fitted to (another phase of the point grid, "
           "images): a term it lacks that the fitted PSFs hide (e.g. a halo beyond the kernel-error window: "
           "widen fit.kernel_error_window_px), or a display response off its LUT")
#: Held-out part -> what it points to when it is beyond the ``ok`` limit.
HOLDOUT_PARTS = {
    "point_grid": "the point grid at another phase is mispredicted: the PSF changes across the field beyond the "
                  "fitted shift (a field-dependent aberration) or has a halo beyond the kernel-error window "
                  "(widen fit.kernel_error_window_px)",
    "images": "images are mispredicted: remeasure the display response (its LUT), look for crosstalk between "
              "tiles and stray light, or a halo summed over many pixels (widen fit.kernel_error_window_px)",
}
#: Unit of a graded figure, shown after its value and limits ("" for a plain number).
UNITS = {"rms_px_max": "px", "held-out residual over noise": "x noise", "residual over noise": "x noise"}
#: Residual over noise of a PSF, in multiples of the median PSF's, above which it is ``check`` / ``failed``.
PSF_CHECK_FACTOR, PSF_FAILED_FACTOR = 1.7, 3.0
#: Zernike terms suggested beyond the highest fitted one.
MORE_ZERNIKE = 5


@dataclass(frozen=True)
class Verdict:
    """One graded figure: ``subject`` (a stage, or "PSF 7"), ``status`` (ok / check / failed), the
    ``figure``'s name and ``value`` (in ``unit``, "" for a plain number), the ``threshold`` it was graded
    by, and ``advice`` (empty when ok)."""

    subject: str
    status: str
    figure: str
    value: float
    threshold: str
    advice: str
    unit: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def grade(value: float, ok: float, check: float, larger_is_better: bool = False) -> str:
    """``ok`` / ``check`` / ``failed`` for ``value`` against the limits (a NaN fails)."""
    if not math.isfinite(value):
        return "failed"
    sign = -1.0 if larger_is_better else 1.0
    return "ok" if sign * value <= sign * ok else "check" if sign * value <= sign * check else "failed"


def stage_verdicts(summary: dict, zernike_noll=()) -> list[Verdict]:
    """One verdict per stage present in ``summary`` (the form of ``Calibration.summary()``; the fit's
    figure is the reduced chi-square of its last stage). ``zernike_noll``: the Zernike terms fitted."""
    out = []
    for stage, (figure, ok, check, larger_is_better, advice) in THRESHOLDS.items():
        figures = summary.get(stage)
        if not figures:
            continue
        value = figures[figure]
        if stage == "fit":
            value = value[figures["stages"][-1]]
            advice = _fit_advice(figures, zernike_noll)
        value = float("nan") if value is None else float(value)
        status = grade(value, ok, check, larger_is_better)
        out.append(Verdict(stage, status, figure, value, limits(ok, check, larger_is_better, UNITS.get(figure, "")),
                           "" if status == "ok" else advice, UNITS.get(figure, "")))
        if stage == "fit":
            held_out = holdout_verdict(figures.get("holdout_residual_over_noise") or {})
            out += [held_out] if held_out is not None else []
        if stage == "fit" and figures.get("unidentifiable"):
            count = len(figures["unidentifiable"])
            out.append(Verdict("fit", "check", "unidentifiable parameters", float(count), "ok = 0",
                               f"{count} parameters not identifiable (held at the design): more averages or "
                               "a longer exposure, or drop those terms"))
    return out


def limits(ok: float, check: float, larger_is_better: bool = False, unit: str = "") -> str:
    """The threshold as the report states it, e.g. "ok <= 1.5x noise, check <= 3x noise" (failed beyond)."""
    relation = ">=" if larger_is_better else "<="
    glue = "" if unit.startswith("x") else " "
    shown = (lambda v: f"{v:g}{glue}{unit}") if unit else (lambda v: f"{v:g}")
    return f"ok {relation} {shown(ok)}, check {relation} {shown(check)}"


def holdout_verdict(holdout: dict) -> Verdict | None:
    """The fit's held-out verdict from ``MismatchFit.holdout_residual_over_noise`` (part -> residual RMS
    over the noise RMS; ``all`` pooled, else the worst part is graded), None when nothing was held out.
    The advice names every part's figure and what each part beyond ``ok`` points to."""
    parts = {k: float(v) for k, v in holdout.items() if v is not None}
    if not parts:
        return None
    _, ok, check, advice = HOLDOUT
    value = parts.get("all", max(parts.values()))
    status = grade(value, ok, check)
    if status == "ok":
        return Verdict("fit", status, "held-out residual over noise", value, limits(ok, check, unit="x noise"), "",
                       "x noise")
    shown = ", ".join(f"{k.replace('_', ' ')} {v:.2g}x" for k, v in parts.items() if k != "all")
    worse = [HOLDOUT_PARTS[k] for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
             if k in HOLDOUT_PARTS and grade(v, ok, check) != "ok"]
    text = "; ".join(worse) if worse else advice
    return Verdict("fit", status, "held-out residual over noise", value, limits(ok, check, unit="x noise"),
                   (f"held out: {shown}. " if shown else "") + text[0].upper() + text[1:], "x noise")


def _fit_advice(figures: dict, zernike_noll) -> str:
    stages = figures["stages"]
    scale = figures.get("sigma_scale", 1.0)
    scaled = f" (sigmas scaled x{scale:.2g} for it)" if scale > 1 else ""
    if "optics" not in stages:
        return f"the model misses blur or aberrations{scaled}: add the optics stage"
    if "residual" not in stages:
        return f"the model misses part of the PSFs{scaled}: add the residual stage or {_more_zernike(zernike_noll)}"
    return (f"the PSFs differ from the model beyond its terms{scaled}: see the PSFs below; "
            f"{_more_zernike(zernike_noll)}, or look for stray light and an uneven vignetting")


def _more_zernike(zernike_noll) -> str:
    first = max(zernike_noll, default=3) + 1
    return f"refit with Zernike {first}-{first + MORE_ZERNIKE - 1}"


def psf_verdicts(residual_over_noise, zernike_noll=(), residual_stage: bool = False) -> list[Verdict]:
    """Per PSF, graded against the median of ``residual_over_noise`` (P,) (root of each tile's chi-square
    per pixel, 1 = the noise): the flagged ones only, worst first."""
    ratio = np.asarray(residual_over_noise, dtype=np.float64)
    median = float(np.median(ratio))
    base = max(median, 1.0)
    cause = "dust or a missing aberration term" + ("" if residual_stage else ", or a kernel error")
    out = []
    for p in np.argsort(-ratio):
        status = grade(float(ratio[p]) / base, PSF_CHECK_FACTOR, PSF_FAILED_FACTOR)
        if status == "ok":
            break
        out.append(Verdict(f"PSF {p}", status, "residual over noise", float(ratio[p]),
                           f"ok <= {PSF_CHECK_FACTOR:g}x, check <= {PSF_FAILED_FACTOR:g}x the median PSF's "
                           f"{median:.2g}x noise",
                           f"PSF {p} residual {ratio[p]:.2g}x the noise: {cause}; {_more_zernike(zernike_noll)}",
                           "x noise"))
    return out


def tile_residual_over_noise(calibration) -> np.ndarray:
    """(P,) root of the chi-square per fitted pixel of each PSF's tile, measured vs calibrated model
    (1 = the misfit is the noise), from a :class:`~calibration.api.Calibration` with psf and fit stages."""
    psf, fit = calibration.psf, calibration.fit
    chi2 = np.where(psf.mask, (psf.rate - fit.model_rate) ** 2 / np.where(psf.mask, psf.variance, 1.0), 0.0)
    system = calibration.nominal_system()
    out = []
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        out.append(math.sqrt(chi2[rows, cols].sum() / max(int(psf.mask[rows, cols].sum()), 1)))
    return np.asarray(out)


def verdicts(calibration) -> list[Verdict]:
    """Every verdict of a :class:`~calibration.api.Calibration`: the stages', then the flagged PSFs'."""
    zernike = calibration.fit.settings.zernike_noll if calibration.fit is not None else ()
    out = stage_verdicts(calibration.summary(), zernike)
    if calibration.fit is not None and calibration.psf is not None:
        out += psf_verdicts(tile_residual_over_noise(calibration), zernike, "residual" in calibration.fit.settings.stages)
    return out


__all__ = ["HOLDOUT", "HOLDOUT_PARTS", "PSF_CHECK_FACTOR", "PSF_FAILED_FACTOR", "THRESHOLDS", "UNITS", "Verdict",
           "grade", "holdout_verdict", "limits", "psf_verdicts", "stage_verdicts", "tile_residual_over_noise",
           "verdicts"]
