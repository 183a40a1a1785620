"""Figures of the calibration report: matplotlib on the Agg backend, written atomically."""

from __future__ import annotations

from pathlib import Path

from onn_core.files import atomic_write


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
