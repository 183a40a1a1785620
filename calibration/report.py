"""The calibration report: PNG figures, a markdown summary and a JSON of every figure.

:func:`write_report` writes into a folder: ``report.json`` (:meth:`Calibration.summary`, the
verdicts, every PSF's residual over the noise and the parameter table), ``report.md`` (for a person:
first the verdicts of :mod:`calibration.verdict` -- per stage ok / check / failed with the figure,
the threshold and what to do next, then the PSFs where the model fails -- then each stage's figures,
the parameter table last), ``psfs.png`` (the PSF figure, :func:`calibration.plotting.plot_psfs`),
``registration.png`` (the geometry overlay), ``photon_transfer.png`` and ``display_response.png`` --
each only for the stages run. The report of a calibration file can be rebuilt at any time
(``hil calibrate --report-only DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onn_core.files import atomic_write

from . import display_response, geometry, sensor
from .api import Calibration
from .plotting import plot_psfs
from .verdict import Verdict, tile_residual_over_noise, verdicts


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
        written["registration"] = geometry.plot_overlay(calibration.geometry, None, out / "registration.png")
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
               else "(the misfit is the noise's)."),
            "", "| parameter | value | sigma | note |", "|---|---|---|---|"]
        for p in fit.parameters:
            note = "not identifiable: fixed at design" if not p.identifiable else (
                "sign not determined" if p.sign_ambiguous else "")
            lines.append(f"| {p.name} | {p.value:.5g} | {p.sigma:.2g} | {note} |")
        lines.append("")
    figures = [f"![{name}]({path.name})" for name, path in files.items() if path.suffix == ".png"]
    return "\n".join(lines + ["## Figures", ""] + figures) + "\n"


def _holdout_lines(holdout: dict) -> list[str]:
    if not holdout:
        return []
    parts = ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in holdout.items())
    return [f"Held-out frames (not fitted), residual RMS over the expected noise RMS (1 = predicted to the "
            f"noise): {parts}.", ""]


def verdict_lines(graded: list[Verdict]) -> list[str]:
    """Markdown of the verdicts: the stages' table, then the PSFs where the model fails."""
    stages = [v for v in graded if not v.subject.startswith("PSF ")]
    psfs = [v for v in graded if v.subject.startswith("PSF ")]
    lines = ["## Verdict", "", "| stage | verdict | figure | threshold | next |", "|---|---|---|---|---|"]
    lines += [f"| {v.subject} | **{v.status}** | {v.figure} = {v.value:.4g} | {v.threshold} | {v.advice} |" for v in stages]
    if any(v.subject == "fit" for v in stages):
        lines += ["", "### Where the model fails", ""]
        lines += [f"- **{v.status}**: {v.advice} ({v.threshold})" for v in psfs] or ["No PSF misfits beyond the others."]
    return lines + [""]


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
