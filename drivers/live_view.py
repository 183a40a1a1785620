"""The picture `hil live` shows: a camera frame composed for aligning a bench, without any window.

:func:`compose_view` turns a frame (DN) and what to overlay into one RGB uint8 image, from top to
bottom:

* the **frame**, enlarged an integer ``zoom`` or reduced by taking the maximum of ``bin x bin`` blocks
  (:func:`view_scale`; the maximum keeps a small bright spot, and a saturated pixel, visible), scaled
  from the black level to the camera's saturation either **linearly** or **logarithmically**
  (:func:`scale_to_8bit`), the tile grid drawn on it in green with each tile's focus metric
  (:func:`focus_metric`), and every pixel holding a saturated camera pixel painted
  :data:`SATURATED_RGB` (last, so nothing hides it);
* a **histogram** strip: the frame's DN from 0 to saturation in one bin per view column
  (:func:`histogram`), bar heights logarithmic in the count, the top bin (saturated) in
  :data:`SATURATED_RGB`;
* a **status** line: scaling, frame rate, exposure, peak and saturated pixel count, and a message.

Colour frames (rows, cols, 3) are viewed as their per-pixel maximum over the channels. Pure numpy and
OpenCV drawing: unit-testable, and what `hil live`'s window shows pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onn_core.errors import InputError

__all__ = ["SATURATED_RGB", "ViewInfo", "compose_view", "focus_metric", "histogram", "scale_to_8bit",
           "tile_focus", "view_scale"]

#: Colour (R, G, B) of saturated pixels and of the histogram's saturated bin.
SATURATED_RGB = (255, 0, 0)
#: Colour of the tile outlines and of their focus values.
TILE_RGB, FOCUS_RGB = (0, 255, 0), (255, 255, 0)
#: Rows of the histogram strip and of the status line.
HISTOGRAM_ROWS, STATUS_ROWS = 48, 18
SCALES = ("linear", "log")


@dataclass(frozen=True)
class ViewInfo:
    """What :func:`compose_view` overlays on a frame.

    Attributes
    ----------
    saturation_dn, black_dn : float
        The camera's saturation and black level (DN): the range shown.
    scale : str
        ``"linear"`` or ``"log"`` (:func:`scale_to_8bit`).
    tiles : ndarray (n, 4, 2), optional
        Each tile's corners in frame pixels (row, col; pixel centres at integers), in order around it.
    fps : float, optional
        Frames per second shown in the status line.
    exposure_s : float, optional
        The frame's exposure (s).
    message : str
        Appended to the status line (the pattern shown, the last action).
    """

    saturation_dn: float
    black_dn: float = 0.0
    scale: str = "linear"
    tiles: np.ndarray | None = None
    fps: float | None = None
    exposure_s: float | None = None
    message: str = ""


def _gray(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3:
        frame = frame.max(axis=2)
    if frame.ndim != 2 or frame.size == 0:
        raise InputError(f"a live view needs a (rows, cols) or (rows, cols, channels) frame, got shape {frame.shape}")
    return frame.astype(np.float64)


def scale_to_8bit(values, saturation_dn: float, black_dn: float = 0.0, scale: str = "linear") -> np.ndarray:
    """``values`` (DN) as uint8 0..255 for viewing: the black level maps to 0 and the saturation to 255,
    ``"linear"`` in the signal ``v - black``, ``"log"`` in ``log(1 + v - black)`` (so a signal of
    ``sqrt(range + 1) - 1`` DN lands mid-scale); values outside the range are clipped."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    span = float(saturation_dn) - float(black_dn)
    if not span > 0:
        raise InputError(f"saturation_dn ({saturation_dn!r}) must be above black_dn ({black_dn!r})")
    signal = np.clip(np.asarray(values, dtype=np.float64) - black_dn, 0.0, span)
    fraction = signal / span if scale == "linear" else np.log1p(signal) / math.log1p(span)
    return np.rint(fraction * 255.0).astype(np.uint8)


def view_scale(frame_shape, max_shape) -> tuple[int, int]:
    """``(zoom, bin)`` fitting a frame of ``frame_shape`` (rows, cols) into ``max_shape`` (rows, cols):
    the largest integer zoom (with bin 1) if the frame fits, else zoom 1 and the smallest bin that does."""
    ratio = min(max_shape[0] / frame_shape[0], max_shape[1] / frame_shape[1])
    if ratio >= 1:
        return int(ratio), 1
    return 1, math.ceil(1 / ratio)


def _resample(image: np.ndarray, zoom: int, bin_: int) -> np.ndarray:
    if bin_ > 1:
        rows, cols = image.shape[0] // bin_, image.shape[1] // bin_
        image = image[:rows * bin_, :cols * bin_].reshape(rows, bin_, cols, bin_).max(axis=(1, 3))
    return np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1) if zoom > 1 else image


def histogram(frame, saturation_dn: float, bins: int) -> np.ndarray:
    """Counts (bins,) int64 of the frame's pixels in ``bins`` equal bins from 0 to ``saturation_dn``
    (DN); values at or above saturation fall in the last bin, below 0 in the first."""
    values = _gray(frame).ravel()
    index = np.clip((values / float(saturation_dn) * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(index, minlength=bins)


def focus_metric(region) -> float:
    """Normalised gradient energy of ``region`` (DN, black subtracted): the mean squared difference of
    neighbouring pixels (both axes) over the squared mean, per pixel^2; larger is sharper, independent of
    brightness and exposure. 0 for a region without signal."""
    region = np.asarray(region, dtype=np.float64)
    mean = region.mean() if region.size else 0.0
    if region.shape[0] < 2 or region.shape[1] < 2 or not mean > 0:
        return 0.0
    energy = np.mean(np.diff(region, axis=0) ** 2) + np.mean(np.diff(region, axis=1) ** 2)
    return float(energy / mean ** 2)


def tile_focus(frame, tiles, black_dn: float = 0.0) -> np.ndarray:
    """:func:`focus_metric` (n,) of each tile's bounding box in ``frame`` (clipped to the frame; 0 for a
    tile outside it), ``tiles`` (n, 4, 2) corners (row, col) as in :class:`ViewInfo`."""
    image = _gray(frame) - black_dn
    values = []
    for corners in np.asarray(tiles, dtype=np.float64):
        (r0, c0), (r1, c1) = np.floor(corners.min(axis=0) + 0.5), np.ceil(corners.max(axis=0) + 0.5)
        r0, c0 = max(int(r0), 0), max(int(c0), 0)
        values.append(focus_metric(image[r0:max(int(r1), r0), c0:max(int(c1), c0)]))
    return np.array(values)


def _put_text(rgb: np.ndarray, text: str, origin, colour) -> None:
    import cv2

    cv2.putText(rgb, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def _draw_tiles(rgb: np.ndarray, frame: np.ndarray, info: ViewInfo, zoom: int, bin_: int) -> None:
    import cv2

    factor = zoom / bin_
    focus = tile_focus(frame, info.tiles, info.black_dn)
    for corners, value in zip(np.asarray(info.tiles, dtype=np.float64), focus):
        edges = (corners + 0.5) * factor - 0.5  # pixel centres at integers, before and after
        view = edges - 0.5 * np.sign(edges - edges.mean(axis=0))  # on the tile's outermost view pixels
        cv2.polylines(rgb, [np.rint(view[:, ::-1]).astype(np.int32)], True, TILE_RGB, 1)
        top, left = view.min(axis=0)
        _put_text(rgb, f"{value:.3g}", (int(left) + 2, int(top) + 12), FOCUS_RGB)


def _histogram_strip(frame: np.ndarray, saturation_dn: float, cols: int) -> np.ndarray:
    counts = histogram(frame, saturation_dn, cols)
    heights = np.rint(np.log1p(counts) / math.log1p(max(counts.max(), 1)) * (HISTOGRAM_ROWS - 1)).astype(np.int64)
    strip = np.zeros((HISTOGRAM_ROWS, cols, 3), np.uint8)
    lit = np.arange(HISTOGRAM_ROWS)[::-1, None] < heights[None, :]
    strip[lit] = 200
    strip[lit[:, -1], -1] = SATURATED_RGB
    return strip


def _status(frame: np.ndarray, saturated: int, info: ViewInfo) -> str:
    parts = [info.scale]
    if info.fps is not None:
        parts.append(f"{info.fps:.1f} fps")
    if info.exposure_s is not None:
        parts.append(f"exp {info.exposure_s:.4g} s")
    parts.append(f"max {frame.max():.0f}/{info.saturation_dn:.0f} DN")
    parts.append(f"{saturated} sat")
    return " | ".join(parts + ([info.message] if info.message else []))


def compose_view(frame, info: ViewInfo, max_shape=(720, 1280)) -> np.ndarray:
    """The live view (rows, cols, 3) RGB uint8 of ``frame`` (DN) with ``info``'s overlays (module
    docstring), its frame part fitted into ``max_shape`` (rows, cols) by :func:`view_scale`."""
    gray = _gray(frame)
    zoom, bin_ = view_scale(gray.shape, max_shape)
    shown = _resample(gray, zoom, bin_)
    rgb = np.repeat(scale_to_8bit(shown, info.saturation_dn, info.black_dn, info.scale)[..., None], 3, axis=2)
    if info.tiles is not None and len(info.tiles):
        _draw_tiles(rgb, gray, info, zoom, bin_)
    rgb[shown >= info.saturation_dn] = SATURATED_RGB
    status = np.zeros((STATUS_ROWS, rgb.shape[1], 3), np.uint8)
    _put_text(status, _status(gray, int((gray >= info.saturation_dn).sum()), info), (2, STATUS_ROWS - 5),
              (255, 255, 255))
    return np.concatenate([rgb, _histogram_strip(gray, info.saturation_dn, rgb.shape[1]), status])
