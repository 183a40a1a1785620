"""The calibration report: PNG figures, a markdown summary and a JSON of every figure.

:func:`write_report` writes into a folder: ``report.json`` (:meth:`Calibration.summary`, the
verdicts, every PSF's residual over the noise and the parameter table), ``report.md`` (for a person:
first the verdicts of :mod:`calibration.verdict` -- per stage ok / check / failed with the figure,
the threshold and what to do next, then the PSFs where the model fails -- then each stage's figures,
the parameter table last), ``psfs.png`` (the PSF figure, :func:`calibration.plotting.plot_psfs`),
``registration.png`` (the registration figure with its legend,
:func:`calibration.plotting.plot_registration`), ``photon_transfer.png`` and ``display_response.png`` --
each only for the stages run. The report of a calibration file can be rebuilt at any time
(``hil calibrate --report-only DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onn_core.files import atomic_write

from . import display_response, sensor
from .result import Calibration
from .plotting import plot_psfs, plot_registration
from .verdict import Verdict, tile_residual_over_noise, verdicts

#: What a graded figure is, for a person (the report shows it with the figure's key).
FIGURE_LABELS = {
    "ptc_chi2_reduced": "photon-transfer reduced chi-square",
    "gamma_chi2_reduced": "gamma-fit reduced chi-square",
    "rms_px_max": "worst tile's reprojection RMS",
    "snr_min": "weakest PSF's SNR",
    "chi2_reduced": "fit's last-stage reduced chi-square",
    "held-out residual over noise": "held-out frames' residual RMS over the noise RMS (not fitted)",
}
#: What each figure file shows, for the report's figure section.
FIGURE_CAPTIONS = {
    "photon_transfer": "Photon transfer: temporal variance against mean signal (DN above dark) with the fitted line "
                       "and saturation, its residuals, and the deviation from linear.",
    "display_response": "Display response: relative radiance against gray level with the gamma fit and the measured "
                        "LUT, and the residual from the gamma curve.",
    "registration": "Registration, in camera pixels: expected tiles of the design layout (light-blue dashed), fitted "
                    "tiles (green), measured spots (red circles; orange crosses: outliers left out of the fit), the "
                    "display's dot grid mapped through each tile's fitted homography (green +), each tile's "
                    "reprojection RMS.",
    "psfs": "PSFs, one row each (central point source, DN/s): design model on its own scale; measured and calibrated "
            "model on one scale per row; their residual on its own symmetric scale; the row label gives the tile's "
            "residual over the noise.",
}


def write_report(calibration: Calibration, out_dir) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns them by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    summary = calibration.summary()
    graded = verdicts(calibration)
    summary["verdicts"] = [v.as_dict() for v in graded]
    if calibration.fit is not None:
        summary["parameters"] = calibration.fit.table()
        if calibration.psf is not None:
            summary["fit"]["psf_residual_over_noise"] = tile_residual_over_noise(calibration).tolist()
    written["json"] = out / "report.json"
    with atomic_write(written["json"], "w") as fh:
        fh.write(json.dumps(summary, indent=2, default=_plain))
    if calibration.sensor is not None:
        written["photon_transfer"] = out / "photon_transfer.png"
        sensor.plot(calibration.sensor, written["photon_transfer"])
    if calibration.display is not None:
        written["display_response"] = out / "display_response.png"
        display_response.plot(calibration.display, written["display_response"])
    if calibration.geometry is not None:
        written["registration"] = out / "registration.png"
        plot_registration(calibration.geometry, written["registration"])
    if calibration.psf is not None and calibration.fit is not None:
        written["psfs"] = out / "psfs.png"
        plot_psfs(calibration, written["psfs"])
    written["markdown"] = out / "report.md"
    with atomic_write(written["markdown"], "w") as fh:
        fh.write(markdown(calibration, written, graded))
    return written


def markdown(calibration: Calibration, files: dict[str, Path], graded: list[Verdict]) -> str:
    """The report for a person: the ``graded`` verdicts first, then the figures of each stage."""
    lines = [f"# Calibration {calibration.calibration_id}", ""] + verdict_lines(graded) + [
        f"Measured {calibration.created_utc}; stages: {', '.join(calibration.stages)}.", ""]
    for stage, title in (("sensor", "Sensor"), ("display", "Display response"), ("geometry", "Geometry")):
        if getattr(calibration, stage) is not None:
            figures = getattr(calibration, stage).summary()
            lines += [f"## {title}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items() if not isinstance(v, (list, dict))]
            lines.append("")
    if calibration.fit is not None:
        fit = calibration.fit
        lines += ["## Mismatch fit", "", "Reduced chi-square by stage (degrees of freedom): " + ", ".join(
            f"{k} {v:.3g} ({fit.dof[k]:.6g})" for k, v in fit.chi2_reduced.items()) + ".", "",
            f"Relative PSF residual: design {fit.psf_residual_before:.4g}, calibrated {fit.psf_residual_after:.4g}.", "",
            *_holdout_lines(fit.holdout_residual_over_noise),
            f"Sigmas: Fisher (Cramer-Rao) times {fit.sigma_scale:.3g} "
            + ("(sqrt of the reduced chi-square: the model misfits beyond the noise)." if fit.sigma_scale > 1
               else "(the misfit is the noise's).")
            + (" Shift sigmas add the sampling systematic in quadrature (what resampling pixel values cannot"
               " place of a PSF's structure below the pixel scale; noted per shift). A shift's value is the"
               " least-squares one, pulled towards whole pixels by that sampling; the physical misregistration"
               " is the value less the pull noted beside it, and the sigma is stated for that."
               if any(p.systematic for p in fit.parameters) else ""),
            *_light_lines(fit), "| parameter | value | sigma | note |", "|---|---|---|---|"]
        for p in fit.parameters:
            note = "not identifiable: fixed at design" if not p.identifiable else (
                "sign not determined" if p.sign_ambiguous else "")
            if p.kind == "throughput":
                note = "derived: tile light over the design's" if p.identifiable else "design PSF without light"
            elif p.kind in PRIOR_SPLIT and "residual" in fit.settings.stages and p.identifiable:
                note = "light shared with the kernel error by its prior: read throughput"
            if p.systematic and p.identifiable:
                note = f"sampling systematic {p.systematic:.2g}, pull {p.sampling_pull:+.2g}"
            lines.append(f"| {p.name} | {p.value:.5g} | {p.sigma:.2g} | {note} |")
        lines.append("")
    figures = []
    for name, path in files.items():
        if Path(path).suffix == ".png":
            caption = [FIGURE_CAPTIONS[name], ""] if name in FIGURE_CAPTIONS else []
            figures += [f"![{name}]({Path(path).name})", ""] + caption
    return "\n".join(lines + ["## Figures", ""] + figures).rstrip("\n") + "\n"


#: Parameters whose share of a tile's light the kernel error's prior decides after the residual stage.
PRIOR_SPLIT = ("brightness", "crosstalk")


def _light_lines(fit) -> list[str]:
    """What the PSF frames determine of the light (after the residual stage: the throughputs, not how
    brightness, crosstalk and the kernel error share it)."""
    if "residual" not in fit.settings.stages:
        return [""]
    return ["", "Light: the frames determine how much light each tile receives (`throughput`: its own PSF's "
            "light, crosstalk exchanged with its neighbours', over the design PSF's; its absolute scale is as "
            "good as the sensor gain and the nominal photometry), not how brightness, crosstalk and the kernel "
            "error share it: that split is the kernel-error prior's (zero-mean), and where the device adds "
            "light the design puts nowhere, brightness and crosstalk read high beyond their sigmas (on simulated "
            "devices of that kind: brightness +3 %, crosstalk 2-3 times the true one).", ""]


def _holdout_lines(holdout: dict) -> list[str]:
    if not holdout:
        return []
    parts = ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in holdout.items())
    return [f"Held-out frames (not fitted), residual RMS over the expected noise RMS (1 = predicted to the "
            f"noise): {parts}.", ""]


def verdict_lines(graded: list[Verdict]) -> list[str]:
    """Markdown of the verdicts: the overall status, the stages' table (stage, verdict, the measured figure
    with its unit, the threshold, what to do next), then the PSFs where the model fails."""
    stages = [v for v in graded if not v.subject.startswith("PSF ")]
    psfs = [v for v in graded if v.subject.startswith("PSF ")]
    lines = ["## Verdict", ""]
    if graded:
        worst = max(graded, key=lambda v: STATUS_ORDER.get(v.status, 2)).status
        counts = ", ".join(f"{sum(v.status == s for v in graded)} {s}" for s in ("failed", "check", "ok")
                           if any(v.status == s for v in graded))
        lines += [f"Overall: **{worst}** ({counts}).", ""]
    lines += ["| stage | verdict | figure | threshold | next |", "|---|---|---|---|---|"]
    lines += [f"| {v.subject} | **{v.status}** | {figure_text(v)} | {v.threshold} | {v.advice or 'nothing to do'} |"
              for v in stages]
    if any(v.subject == "fit" for v in stages):
        lines += ["", "### Where the model fails", ""]
        lines += [f"- **{v.status}**: {v.advice} (threshold: {v.threshold})" for v in psfs] or [
            "No PSF misfits beyond the others."]
    return lines + [""]


#: ok < check < failed.
STATUS_ORDER = {"ok": 0, "check": 1, "failed": 2}


def figure_text(verdict: Verdict) -> str:
    """The graded figure as the report states it, e.g. "worst tile's reprojection RMS (rms_px_max) = 0.5 px"."""
    label = FIGURE_LABELS.get(verdict.figure)
    name = verdict.figure if not label else f"{label} ({verdict.figure})" if "_" in verdict.figure else label
    glue = "" if verdict.unit.startswith("x") else " "
    unit = f"{glue}{verdict.unit}" if verdict.unit else ""
    return f"{name} = {verdict.value:.4g}{unit}"


def _fmt(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
