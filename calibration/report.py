"""The calibration report: PNG figures, a markdown summary and a JSON of every figure.

:func:`write_report` writes into a folder: ``report.json`` (:meth:`Calibration.summary` plus the
parameter table), ``report.md`` (the same for a person), ``psfs.png`` (per PSF: measured, designed,
calibrated and residual images of the central point source), ``registration.png`` (the geometry
overlay), ``photon_transfer.png`` and ``display_response.png`` -- each only for the stages run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from onn_core.files import atomic_write

from . import display_response, geometry, sensor
from .api import Calibration
from .plotting import pyplot, save_figure
from .psf import point_grid


def write_report(calibration: Calibration, out_dir) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns them by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    summary = calibration.summary()
    if calibration.fit is not None:
        summary["parameters"] = calibration.fit.table()
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
        fh.write(markdown(calibration, written))
    return written


def psf_windows(calibration: Calibration) -> dict[str, np.ndarray]:
    """Per PSF, the window of the central point source (P, K'', K'') in DN/s: ``measured``,
    ``designed`` (design model, brightness 1), ``calibrated`` (fitted model) and ``residual``."""
    system = calibration.nominal_system()
    s = system.geometry.sensor_pixels_per_display_pixel
    size = system.fabricated_psfs().shape[-1] + s - 1
    points = point_grid(system)
    centre = points[np.argmin(((points - np.asarray(system.image_shape) / 2) ** 2).sum(axis=1))]
    frames = {"measured": calibration.psf.rate, "designed": calibration.fit.design_rate,
              "calibrated": calibration.fit.model_rate}
    out = {name: [] for name in frames}
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        r0, c0 = rows.start + centre[0] * s, cols.start + centre[1] * s
        for name, frame in frames.items():
            out[name].append(frame[r0:r0 + size, c0:c0 + size])
    windows = {name: np.stack(v) for name, v in out.items()}
    windows["residual"] = windows["measured"] - windows["calibrated"]
    return windows


def plot_psfs(calibration: Calibration, path) -> None:
    """Measured / designed / calibrated / residual PSF images, one row per PSF (PNG)."""
    plt = pyplot()
    windows = psf_windows(calibration)
    p = len(windows["measured"])
    columns = ("measured", "designed", "calibrated", "residual")
    per_row = 2 if p > 8 else 1
    rows = math.ceil(p / per_row)
    fig, axes = plt.subplots(rows, 4 * per_row, figsize=(2.0 * 4 * per_row, 1.9 * rows), squeeze=False)
    for i in range(p):
        peak = float(windows["measured"][i].max()) or 1.0
        for j, name in enumerate(columns):
            ax = axes[i // per_row, (i % per_row) * 4 + j]
            image = windows[name][i]
            if name == "residual":
                ax.imshow(image, cmap="RdBu_r", vmin=-0.05 * peak, vmax=0.05 * peak)
            else:
                ax.imshow(image, cmap="magma", vmin=0, vmax=peak)
            ax.set_xticks([])
            ax.set_yticks([])
            if i < per_row:
                ax.set_title(name if name != "residual" else "residual (x20)", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"PSF {i}", fontsize=8)
    fig.suptitle(f"PSFs: relative residual {calibration.fit.psf_residual_before:.3g} (design) -> "
                 f"{calibration.fit.psf_residual_after:.3g} (calibrated)", fontsize=9)
    save_figure(fig, path)


def markdown(calibration: Calibration, files: dict[str, Path]) -> str:
    lines = [f"# Calibration {calibration.calibration_id}", "", f"Measured {calibration.created_utc}; stages: "
             f"{', '.join(calibration.stages)}.", ""]
    for stage, title in (("sensor", "Sensor"), ("display", "Display response"), ("geometry", "Geometry")):
        if getattr(calibration, stage) is not None:
            figures = getattr(calibration, stage).summary()
            lines += [f"## {title}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items() if not isinstance(v, (list, dict))]
            lines.append("")
    if calibration.fit is not None:
        fit = calibration.fit
        lines += ["## Mismatch fit", "", "Reduced chi-square by stage: " + ", ".join(
            f"{k} {v:.3g}" for k, v in fit.chi2_reduced.items()) + ".", "",
            f"Relative PSF residual: design {fit.psf_residual_before:.4g}, calibrated {fit.psf_residual_after:.4g}.", "",
            "| parameter | value | sigma (Fisher) | note |", "|---|---|---|---|"]
        for p in fit.parameters:
            note = "not identifiable: fixed at design" if not p.identifiable else (
                "sign not determined" if p.sign_ambiguous else "")
            lines.append(f"| {p.name} | {p.value:.5g} | {p.sigma:.2g} | {note} |")
        lines.append("")
    figures = [f"![{name}]({path.name})" for name, path in files.items() if path.suffix == ".png"]
    return "\n".join(lines + ["## Figures", ""] + figures) + "\n"


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
