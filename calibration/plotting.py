"""Figures of calibration: matplotlib on the Agg backend, written atomically; the PSF figure
(:func:`plot_psfs`) of the calibration report and of the ``hil run`` job, and the report's
registration figure (:func:`plot_registration`). Each plotting function returns its (closed) Figure so
that what it drew can be read back (colour limits, legend labels)."""

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


def save_figure(fig, path, top_in: float = 0.0) -> None:
    """Lay out ``fig`` and write it atomically to ``path``, in the format of its suffix (png by default).
    ``top_in``: inches kept free at the top (for a ``suptitle``)."""
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - top_in / fig.get_figheight()))
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


#: The PSF figure's columns, left to right (keys of :func:`psf_windows`).
PSF_COLUMNS = ("designed", "measured", "calibrated", "residual")


def plot_psfs(calibration, path):
    """The PSF figure, one row per PSF (the central point source's window, DN/s, each panel with its
    colour bar): the design model on its own scale; measured and calibrated model on one scale
    (0 to the row's peak); their residual on a symmetric scale of its own (+-the row's largest
    absolute residual). The row label gives the tile's residual over the noise (the figure the PSF
    verdicts grade, :func:`calibration.verdict.tile_residual_over_noise`). Written to ``path`` (PNG);
    returns the (closed) matplotlib Figure, its images' colour limits readable with ``get_clim()``.
    ``calibration``: a :class:`~calibration.api.Calibration` with its ``psf`` and ``fit`` stages."""
    from .verdict import tile_residual_over_noise

    plt = pyplot()
    windows = psf_windows(calibration)
    p, size = len(windows["measured"]), windows["measured"].shape[-1]
    over_noise = tile_residual_over_noise(calibration)
    fit = calibration.fit
    titles = {"designed": "design model, DN/s\n(own scale; brightness 1)",
              "measured": "measured, DN/s\n(scale shared with calibrated)",
              "calibrated": "calibrated model, DN/s\n(scale shared with measured)",
              "residual": "measured - calibrated, DN/s\n(symmetric scale, +-max |residual|)"}
    fig, axes = plt.subplots(p, len(PSF_COLUMNS), figsize=(2.6 * len(PSF_COLUMNS), 2.1 * p + 0.5), squeeze=False)
    for i in range(p):
        peak = max(float(windows["measured"][i].max()), float(windows["calibrated"][i].max())) or 1.0
        spread = float(np.abs(windows["residual"][i]).max()) or 1.0
        scales = {"designed": dict(cmap="magma", vmin=0.0, vmax=float(windows["designed"][i].max()) or 1.0),
                  "measured": dict(cmap="magma", vmin=0.0, vmax=peak),
                  "calibrated": dict(cmap="magma", vmin=0.0, vmax=peak),
                  "residual": dict(cmap="RdBu_r", vmin=-spread, vmax=spread)}
        for j, name in enumerate(PSF_COLUMNS):
            ax = axes[i, j]
            shown = ax.imshow(windows[name][i], interpolation="nearest", **scales[name])
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[name], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"PSF {i}\nresidual {over_noise[i]:.2g}x noise", fontsize=7)
    fig.suptitle(f"PSFs: central point source, {size}x{size} camera px window; relative residual "
                 f"design {fit.psf_residual_before:.3g} -> calibrated {fit.psf_residual_after:.3g}", fontsize=9)
    save_figure(fig, path, top_in=0.4)
    return fig


#: The registration figure's legend, in the order shown.
REGISTRATION_LEGEND = ("expected tile (design layout)", "fitted tile (measured offset)", "measured spot (inlier)",
                       "measured spot (outlier, not fitted)", "homography-mapped display grid")


def plot_registration(geometry, path):
    """The registration figure: the geometry stage's summed dot frame (DN, square-root stretch) in
    camera pixels (row, col; pixel centres at integers) with the expected tiles of the design layout,
    the fitted tiles (expected + measured offset), the measured spot centroids (inliers and the outliers
    left out of the fit) and the display's dot grid mapped through each tile's fitted homography; each
    tile labelled with its number and reprojection RMS (px). A legend names every mark. Written to
    ``path`` (PNG); returns the (closed) matplotlib Figure.
    ``geometry``: a :class:`~calibration.geometry.GeometryCalibration`."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    image = np.asarray(geometry.image, dtype=np.float64)
    rows, cols = image.shape
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (1, 99.9)) if finite.size else (0.0, 1.0)
    stretched = np.sqrt(np.clip((np.nan_to_num(image) - low) / max(high - low, 1e-12), 0, 1))
    fig, ax = plt.subplots(figsize=(11.0, 8.0 * rows / cols + 0.8))
    ax.imshow(stretched, cmap="gray", interpolation="nearest", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    th, tw = geometry.tile_shape
    styles = {"expected": dict(edgecolor="deepskyblue", linestyle="--", linewidth=1.4),
              "fitted": dict(edgecolor="tab:green", linestyle="-", linewidth=1.0)}
    for key, origins in (("expected", geometry.nominal_origins_px), ("fitted", geometry.tile_origins_px())):
        for r0, c0 in np.asarray(origins, dtype=np.float64):
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), tw, th, fill=False, **styles[key]))
    for p, (r0, c0) in enumerate(geometry.tile_origins_px()):
        ax.text(c0 + 0.5, r0 + 0.5, f"tile {p}: RMS {geometry.rms_px[p]:.3f} px", color="yellow", fontsize=7, va="top",
                bbox=dict(facecolor="black", alpha=0.5, linewidth=0, pad=1))
    spots = geometry.sensor_points.reshape(-1, 2)
    inlier = np.asarray(geometry.inlier_mask, dtype=bool).reshape(-1) & np.isfinite(spots).all(axis=1)
    outlier = ~np.asarray(geometry.inlier_mask, dtype=bool).reshape(-1) & np.isfinite(spots).all(axis=1)
    mapped = np.concatenate([geometry.project(p, geometry.display_points) for p in range(geometry.num_tiles)])
    marks = {"inlier": dict(marker="o", markersize=5, markerfacecolor="none", markeredgecolor="red", linestyle=""),
             "outlier": dict(marker="x", markersize=5, color="orange", linestyle=""),
             "mapped": dict(marker="+", markersize=5, color="lime", linestyle="")}
    ax.plot(spots[inlier, 1], spots[inlier, 0], **marks["inlier"])
    ax.plot(spots[outlier, 1], spots[outlier, 0], **marks["outlier"])
    ax.plot(mapped[:, 1], mapped[:, 0], **marks["mapped"])
    handles = [Rectangle((0, 0), 1, 1, fill=False, **styles["expected"]),
               Rectangle((0, 0), 1, 1, fill=False, **styles["fitted"]),
               Line2D([], [], **marks["inlier"]), Line2D([], [], **marks["outlier"]), Line2D([], [], **marks["mapped"])]
    ax.legend(handles, REGISTRATION_LEGEND, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              title="display -> camera registration", title_fontsize=7)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlabel("camera column (px)")
    ax.set_ylabel("camera row (px)")
    ax.set_title(f"Registration: {geometry.num_tiles} tiles, {len(geometry.display_points)} dots each; reprojection "
                 f"RMS mean {float(np.mean(geometry.rms_px)):.3f} px, max {float(np.max(geometry.rms_px)):.3f} px",
                 fontsize=9)
    save_figure(fig, path)
    return fig
