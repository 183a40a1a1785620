"""Figures of calibration: matplotlib on the Agg backend, written atomically; the PSF figure
(:func:`plot_psfs`) of the calibration report and of the ``hil run`` job."""

from __future__ import annotations

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
    """The PSF figure, one row per PSF (the central point source's window, DN/s, each panel with its
    colour bar): the design model on its own scale; measured and calibrated model on one scale
    (0 to the row's peak); their residual on a symmetric scale of its own. Written to ``path`` (PNG).
    ``calibration``: a :class:`~calibration.api.Calibration` with its ``psf`` and ``fit`` stages."""
    plt = pyplot()
    windows = psf_windows(calibration)
    p = len(windows["measured"])
    columns = ("designed", "measured", "calibrated", "residual")
    fit = calibration.fit
    titles = {"designed": f"design, DN/s (own scale)\nrelative residual {fit.psf_residual_before:.3g}",
              "residual": f"measured - calibrated\nrelative residual {fit.psf_residual_after:.3g}"}
    fig, axes = plt.subplots(p, len(columns), figsize=(2.4 * len(columns), 2.0 * p), squeeze=False)
    for i in range(p):
        peak = max(float(windows["measured"][i].max()), float(windows["calibrated"][i].max())) or 1.0
        spread = float(np.abs(windows["residual"][i]).max()) or 1.0
        scales = {"designed": dict(cmap="magma", vmin=0, vmax=float(windows["designed"][i].max()) or 1.0),
                  "measured": dict(cmap="magma", vmin=0, vmax=peak), "calibrated": dict(cmap="magma", vmin=0, vmax=peak),
                  "residual": dict(cmap="RdBu_r", vmin=-spread, vmax=spread)}
        for j, name in enumerate(columns):
            ax = axes[i, j]
            shown = ax.imshow(windows[name][i], **scales[name])
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles.get(name, name), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"PSF {i}", fontsize=8)
    save_figure(fig, path)
