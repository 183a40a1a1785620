"""Figures of calibration: matplotlib on the Agg backend, written atomically; the PSF figure
(:func:`plot_psfs`) of the calibration report and of the ``hil run`` job."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from onn_core.files import atomic_write

from .psf import point_grid


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """Lay out ``fig`` and write it atomically to ``path``, in the format of its suffix (png by default)."""
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=suffix, dpi=100)
    pyplot().close(fig)


def psf_windows(calibration) -> dict[str, np.ndarray]:
    """Per PSF, the window of the central point source (P, K'', K'') in DN/s: ``measured``,
    ``designed`` (design model, brightness 1), ``calibrated`` (fitted model) and ``residual``."""
    system = calibration.nominal_system()
    s = system.geometry.sensor_pixels_per_display_pixel
    size = system.psf_window_px + s - 1
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


def plot_psfs(calibration, path) -> None:
    """The PSF figure: measured / designed / calibrated / residual images of the central point source,
    one row per PSF (two side by side above 8 PSFs), written to ``path`` (PNG). ``calibration``: a
    :class:`~calibration.api.Calibration` with its ``psf`` and ``fit`` stages."""
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
