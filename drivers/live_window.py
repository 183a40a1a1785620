"""The `hil live` loop: camera frames of a bench in an OpenCV window, with keys to align the bench by.

Each pass reads a frame (after a new pattern, the frame that sees it: :meth:`Bench.measure
<drivers.bench.Bench.measure>`; else the camera's next one), composes the view
(:func:`drivers.live_view.compose_view`), shows it and handles one key:

====================  ==============================================================================
key                   action
====================  ==============================================================================
a pattern's key       show that pattern on the display (``patterns``, e.g. ``g`` point grid, ``b`` blank)
``+`` / ``-``         exposure up / down by :data:`EXPOSURE_STEP` (within ``camera.exposure_limits_s``)
``a``                 auto exposure on what the display shows (:meth:`Bench.auto_exposure
                      <drivers.bench.Bench.auto_exposure>`); a failure is shown, not raised
``l``                 toggle linear / log scaling
``s``                 save the current frame (``save``, e.g. `hil snap`'s frame + sidecar + preview)
``q`` / Esc           quit (so does closing the window)
====================  ==============================================================================

On any exit (a key, the window closed, ``frames`` reached, an exception, Ctrl-C) the window is closed
and the display blanked. OpenCV's GUI must be driven from the thread that created the window.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from onn_core.errors import InputError

from .display_slm import x_display_reachable
from .errors import DeviceNotFound, ExposureError
from .live_view import SCALES, ViewInfo, compose_view

__all__ = ["EXPOSURE_STEP", "LiveWindow", "check_display"]

log = logging.getLogger(__name__)

#: Factor of one exposure step (``+`` / ``-``).
EXPOSURE_STEP = 2 ** 0.5
#: Weight of the newest frame interval in the frame rate shown (an exponential mean).
FPS_SMOOTHING = 0.2
QUIT_KEYS = (ord("q"), 27)


@dataclass
class LiveWindow:
    """A live view of ``bench``'s camera (module docstring); :meth:`run` opens, loops and closes.

    Attributes
    ----------
    bench : drivers.bench.Bench
        Open; it is left open (blanked) after :meth:`run`.
    patterns : dict
        Key character -> ``(name, image)``: images of the SLM's shape and dtype shown by that key.
    save : callable, optional
        ``save(bench, frame) -> path``, called by ``s``; without it ``s`` says saving is off.
    tiles : ndarray (n, 4, 2), optional
        Tile corners in frame pixels (:class:`~drivers.live_view.ViewInfo`).
    scale : str
        The initial scaling, ``"linear"`` or ``"log"``.
    window_name : str
    position : (int, int)
        Desktop (x, y) of the window's top-left corner.
    max_shape : (int, int)
        Largest (rows, cols) of the frame part of the view (screen pixels).
    """

    bench: object
    patterns: dict = field(default_factory=dict)
    save: Callable | None = None
    tiles: np.ndarray | None = None
    scale: str = "linear"
    window_name: str = "onn-hil-live"
    position: tuple[int, int] = (0, 0)
    max_shape: tuple[int, int] = (720, 1280)

    def __post_init__(self):
        if self.scale not in SCALES:
            raise InputError(f"scale must be one of {SCALES}, got {self.scale!r}")
        reserved = set("+=-_als") | {chr(k) for k in QUIT_KEYS}
        if set(self.patterns) & reserved:
            raise InputError(f"pattern keys {sorted(set(self.patterns) & reserved)} are taken by other actions")
        self.view: np.ndarray | None = None  # the last view shown
        self._frame = None
        self._pending = None     # the image to show before the next frame
        self._shown = None       # the image on the display now (None: whatever was there)
        self._fps = None
        self._message = ""

    # ------------------------------------------------------------------------------------ loop
    def run(self, frames: int | None = None, keys: str = "") -> int:
        """Show frames until a quit key, the window is closed or ``frames`` frames were shown; ``keys``
        are handled one per frame before any key pressed (a scripted session). Returns the frames shown."""
        import cv2

        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise InputError(f"frames must be an integer >= 1, got {frames!r}")
        script, shown, last = list(keys), 0, None
        check_display()
        try:
            cv2.namedWindow(self.window_name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            cv2.moveWindow(self.window_name, *self.position)
            while frames is None or shown < frames:
                self.show_next()
                shown += 1
                if shown == 1:
                    self._place()
                now = time.monotonic()
                if last is not None and now > last:
                    rate = 1.0 / (now - last)
                    self._fps = rate if self._fps is None else self._fps + FPS_SMOOTHING * (rate - self._fps)
                last = now
                pressed = cv2.waitKey(1)
                key = ord(script.pop(0)) if script else pressed
                if cv2.getWindowProperty(self.window_name, cv2.WND_PROP_VISIBLE) < 1 or not self.handle(key):
                    break
        finally:
            cv2.destroyWindow(self.window_name)
            cv2.waitKey(1)
            if not self.bench.closed:
                self.bench.blank()
        return shown

    def show_next(self) -> np.ndarray:
        """Read a frame, compose its view and show it in the window; returns the view (RGB uint8)."""
        import cv2

        if self._pending is not None:
            self._frame, self._shown, self._pending = self.bench.measure(self._pending).frame, self._pending, None
        else:
            self._frame = self.bench.camera.snap()
        camera = self.bench.camera
        info = ViewInfo(camera.saturation_dn, camera.black_level, self.scale, self.tiles, self._fps,
                        self._frame.exposure_s, self._message)
        self.view = compose_view(self._frame.image, info, self.max_shape)
        cv2.imshow(self.window_name, np.ascontiguousarray(self.view[..., ::-1]))
        return self.view

    # ------------------------------------------------------------------------------------ keys
    def _place(self, timeout_s: float = 2.0) -> None:
        """Move the window to ``position`` once it is shown (Qt may drop a move made before the window is
        mapped), running the GUI until it is there or ``timeout_s`` passes (as the display SLM does)."""
        import cv2

        cv2.moveWindow(self.window_name, *self.position)
        deadline = time.monotonic() + timeout_s
        while tuple(cv2.getWindowImageRect(self.window_name)[:2]) != tuple(self.position) \
                and time.monotonic() < deadline:
            cv2.waitKey(1)

    def handle(self, key: int) -> bool:
        """Act on ``key`` (a ``cv2.waitKey`` code; -1: none); False to quit."""
        if key in QUIT_KEYS:
            return False
        char = chr(key & 0xFF) if key >= 0 else ""
        if char in self.patterns:
            name, self._pending = self.patterns[char]
            self._message = name
        elif char and char in "+=-_":
            self._step_exposure(EXPOSURE_STEP if char in "+=" else 1 / EXPOSURE_STEP)
        elif char == "a":
            self._auto_exposure()
        elif char == "l":
            self.scale = SCALES[1 - SCALES.index(self.scale)]
        elif char == "s":
            self._message = (f"saved {self.save(self.bench, self._frame)}" if self.save is not None
                             else "saving is off")
        return True

    def _step_exposure(self, factor: float) -> None:
        camera = self.bench.camera
        low, high = camera.exposure_limits_s
        camera.exposure_s = min(max(camera.exposure_s * factor, low), high)
        self._message = f"exposure {camera.exposure_s:.4g} s"

    def _auto_exposure(self) -> None:
        try:
            if self._shown is None:
                exposure = self.bench.camera.auto_exposure()
            else:
                exposure = self.bench.auto_exposure(self._shown)
        except ExposureError as exc:
            self._message = f"auto exposure failed: {exc}"
            log.warning("%s", self._message)
            return
        self._message = f"auto exposure {exposure:.4g} s"


def check_display() -> None:
    """Raise :class:`~drivers.errors.DeviceNotFound` on Linux when no X server answers (Qt would abort
    the process on opening a window); Wayland sessions are trusted."""
    if not sys.platform.startswith("linux") or os.environ.get("WAYLAND_DISPLAY"):
        return
    display = os.environ.get("DISPLAY", "")
    if not display or not x_display_reachable(display):
        raise DeviceNotFound(f"the live view needs a display, and no X server answers at DISPLAY={display!r} "
                             "(run it on the bench's desktop, or under Xvfb)", device="live-view")
