"""The annotated frame the geometry stage saves when its fit fails (OpenCV, PNG written atomically); the
registration figure of a result is :func:`calibration.plotting.plot_registration`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onn_core.errors import InputError
from onn_core.files import atomic_write


#: File name of the diagnostic image saved on a failure.
DIAGNOSTIC_NAME = "geometry_failure.png"
#: Width (pixels) the overlay images are enlarged to, about.
OVERLAY_WIDTH_PX = 1000


def save_diagnostic(path, image: np.ndarray, system, expected: np.ndarray,
                    saturated: np.ndarray | None = None) -> Path:
    """Save the failure PNG at ``path``: ``image`` (rows, cols) with the nominal tiles, the expected spot
    positions (green crosses) and saturated pixels (magenta). Returns the path."""
    boxes = []
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        boxes.append(((rows.start, cols.start), (rows.stop, cols.stop)))
    labels = [(b[0], str(p)) for p, b in enumerate(boxes)]
    return _write_png(Path(path), _canvas(image, boxes, expected, labels, saturated))


def _canvas(image, boxes, expected, labels, saturated=None) -> np.ndarray:
    """BGR uint8 drawing (enlarged about :data:`OVERLAY_WIDTH_PX` wide) of a frame and marks, all in frame
    (row, col) pixel-centre coordinates."""
    import cv2

    scale = max(1, round(OVERLAY_WIDTH_PX / image.shape[1]))
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, (1, 99.9)) if finite.size else (0.0, 1.0))
    gray = np.sqrt(np.clip((np.nan_to_num(image) - low) / max(high - low, 1e-12), 0, 1))
    canvas = cv2.cvtColor((gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if saturated is not None:
        canvas[saturated] = (255, 0, 255)
    canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    def at(point):  # frame (row, col) pixel centre -> canvas (x, y)
        return int(round((point[1] + 0.5) * scale)), int(round((point[0] + 0.5) * scale))

    def corner(point):  # frame (row, col) pixel corner -> canvas (x, y)
        return int(round(point[1] * scale)), int(round(point[0] * scale))

    for top, bottom in boxes:
        cv2.rectangle(canvas, corner(top), corner(bottom), (255, 128, 0), 1)
    for point in expected:
        if np.isfinite(point).all():
            cv2.drawMarker(canvas, at(point), (0, 255, 0), cv2.MARKER_CROSS, max(4, scale), 1)
    for top, text in labels:
        x, y = corner(top)
        cv2.putText(canvas, text, (x + 3, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    return canvas


def _write_png(path: Path, canvas: np.ndarray) -> Path:
    import cv2

    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise InputError(f"OpenCV could not encode the image for {path}")
    with atomic_write(path) as fh:
        fh.write(encoded.tobytes())
    return path
