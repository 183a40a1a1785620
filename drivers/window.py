"""Where a display shows an image: a window of any size, the image enlarged an integer number of times
somewhere inside it. Used by the display-window SLM (:mod:`drivers.display_slm`, what the screen shows)
and the simulated SLM (:mod:`drivers.simulated`, the same screen). Torch-free.

Conventions: ``position`` is the window's top-left corner in desktop coordinates ``(x, y)`` (the
monitor's origin); ``size`` (rows, cols) and ``offset`` (row, col) are in screen pixels, rows first like
every image of the toolkit. Each image pixel is shown as a ``zoom x zoom`` block of screen pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onn_core.errors import InputError

from .device import config_errors

__all__ = ["DisplayWindow", "window_from_config", "window_image", "window_placement"]


@dataclass
class DisplayWindow:
    """The ``slm.window`` section: where the window is and where the image sits in it (module docstring).

    ``position``: desktop (x, y) of the window's top-left corner (the monitor's origin); ``size``: window
    (rows, cols) in screen pixels (null: the zoomed image's size); ``offset``: (row, col) of the image's
    top-left corner in the window (null: centred); ``zoom``: screen pixels per image pixel;
    ``fullscreen``: ask the window manager for a full-screen window (``size`` = the monitor's; a
    simulated display has no window manager and ignores it).
    """

    position: tuple[int, int] = (0, 0)
    size: tuple[int, int] | None = None
    offset: tuple[int, int] | None = None
    zoom: int = 1
    fullscreen: bool = False


def _int_pair(name: str, value, minimum: int) -> tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in value)):
        raise InputError(f"{name} must be two integers >= {minimum} (rows, cols), got {value!r}")
    return int(value[0]), int(value[1])


def window_placement(image_shape, size=None, offset=None, zoom: int = 1):
    """Validated ``(window size (rows, cols), image offset (row, col), zoom)`` of an image of ``image_shape``
    (rows, cols, ...) shown ``zoom`` times enlarged in a window: ``size`` None fits the zoomed image,
    ``offset`` None centres it. Errors start with the ``slm.window`` field's name."""
    if isinstance(zoom, bool) or not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise InputError(f"zoom must be an integer >= 1 (screen pixels per image pixel), got {zoom!r}")
    zoom = int(zoom)
    zoomed = (image_shape[0] * zoom, image_shape[1] * zoom)
    size = zoomed if size is None else _int_pair("size", size, 1)
    if size[0] < zoomed[0] or size[1] < zoomed[1]:
        raise InputError(f"size must hold the {image_shape[0]}x{image_shape[1]} image at zoom {zoom} ({zoomed[0]}x"
                         f"{zoomed[1]} screen pixels), got {list(size)} (rows, cols)")
    if offset is None:
        offset = ((size[0] - zoomed[0]) // 2, (size[1] - zoomed[1]) // 2)
    offset = _int_pair("offset", offset, 0)
    if offset[0] + zoomed[0] > size[0] or offset[1] + zoomed[1] > size[1]:
        raise InputError(f"offset must keep the {zoomed[0]}x{zoomed[1]} zoomed image inside the {size[0]}x{size[1]} "
                         f"window, got {list(offset)} (row, col)")
    return size, offset, zoom


def window_image(frame: np.ndarray, size, offset, zoom: int) -> np.ndarray:
    """The window's content (rows, cols[, channels]) showing ``frame`` (rows, cols[, channels]): black, with
    the frame enlarged ``zoom`` times, its top-left corner at ``offset`` (arguments as returned by
    :func:`window_placement`)."""
    (r0, c0), (rows, cols) = offset, frame.shape[:2]
    canvas = np.zeros((*size, *frame.shape[2:]), dtype=frame.dtype)
    canvas[r0:r0 + rows * zoom, c0:c0 + cols * zoom] = np.repeat(np.repeat(frame, zoom, axis=0), zoom, axis=1)
    return canvas


def window_from_config(window: DisplayWindow, image_shape, path: str = "slm"):
    """:func:`window_placement` of a config's ``window`` section; errors name ``path.window.<field>``."""
    fields = {"position": window.position, "size": window.size, "offset": window.offset, "zoom": window.zoom}
    with config_errors(fields, f"{path}.window"):
        return window_placement(image_shape, window.size, window.offset, window.zoom)
