"""A display used as an amplitude SLM: a borderless OpenCV window showing frames at an integer zoom.

The window is an OpenCV HighGUI window (``WINDOW_AUTOSIZE | WINDOW_GUI_NORMAL``: no toolbar, no status
bar, no scaling) moved to ``position`` = the top-left corner of the chosen monitor in desktop
coordinates (e.g. ``(1920, 0)`` for a monitor right of a 1920-pixel-wide one). The window is
``window_size`` (rows, cols) screen pixels (default: the zoomed image's size; full screen: the
monitor's size) and black; each frame is shown in it enlarged ``zoom`` times (every image pixel a
``zoom x zoom`` block of screen pixels) with its top-left corner at ``image_offset`` (row, col) inside the
window (default: centred). The YAML section ``slm.window`` holds ``position``, ``size``, ``offset``,
``zoom`` and ``fullscreen``. A shown image pixel is ``zoom`` screen pixels wide: the SLM's
``pixel_pitch_m`` (the optics' ``geometry.display_pixel_pitch_m``) is ``zoom`` times the screen's
(``screen_pixel_pitch_m``, the YAML's ``slm.pixel_pitch_m``).
Each :meth:`~drivers.slm.SLM.show` draws the frame and pumps the GUI event loop (``cv2.waitKey(1)``,
``pump_events`` times) so it normally reaches the window system before ``show`` returns;
:meth:`DisplaySLM.wait_settled` (which the bench calls) keeps the event loop running until
``latency_s + settle_s`` have passed, so a late expose of the window is painted too.

Verified (tests/drivers/test_display_slm.py) under Xvfb with opencv-python's Qt5 backend, by reading
the framebuffer back: the frame lands pixel-exact at ``position`` + ``image_offset``, zoomed, gray and
RGB, after ``blank()`` and after later shows, in windows larger than the image. Without a window manager there is no decoration; under a window manager set
``fullscreen: true`` so the window manager drops its border (OpenCV's ``WND_PROP_FULLSCREEN``; verified
under openbox with a monitor-sized frame, which then fills the screen pixel-exactly); the
constructor checks that the image area sits where configured and fails loudly otherwise. Qt's
windows are at least 69x69 pixels: a smaller window would be centred or scaled, so it is refused (a
smaller image is shown in a larger window: ``window_size`` or ``zoom``).

Frames are (rows, cols) gray or (rows, cols, 3) in **R, G, B** order, 8 bits. OpenCV's GUI must be
driven from the thread that created the window.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from onn_core.errors import ConfigError, InputError
from onn_core.validation import check_positive

from .slm import SLM
from .clock import Clock, RealClock
from .device import OpenContext, config_errors
from .errors import DeviceDisconnected, DeviceFault, DeviceNotFound
from .window import DisplayWindow, window_from_config, window_image, window_placement
from onn_core.lut import LUT

__all__ = ["DisplaySLM", "DisplaySLMConfig"]

log = logging.getLogger(__name__)


@dataclass
class DisplaySLMConfig:
    """Bench-YAML settings of a ``display`` SLM (see :class:`DisplaySLM`); ``pixel_pitch_m`` is the screen's."""

    shape: tuple[int, ...]
    pixel_pitch_m: float
    window: DisplayWindow = field(default_factory=DisplayWindow)
    window_name: str = "onn-hil-slm"
    pump_events: int = 3
    open_wait_s: float = 0.5
    latency_s: float = 0.05
    settle_s: float = 0.0


def x_display_reachable(display: str) -> bool:
    """True when an X server listens at ``display`` (``":N"``, ``"host:N"``, ``":N.S"``).

    Qt aborts the whole process when it cannot connect, so the driver checks first.
    """
    host, _, rest = display.rpartition(":")
    try:
        number = int(rest.split(".")[0])
    except ValueError:
        return False
    try:
        if host in ("", "unix"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(f"/tmp/.X11-unix/X{number}")
        else:
            with socket.create_connection((host, 6000 + number), timeout=1.0):
                pass
    except OSError:
        return False
    return True


class DisplaySLM(SLM):
    """A monitor (or projector, OLED micro-display) shown a frame in a borderless window.

    Parameters
    ----------
    shape : (rows, cols) or (rows, cols, 3)
        Frame shape, in image pixels (3 channels: colour, R, G, B).
    pixel_pitch_m : float
        The display's (screen's) pixel pitch (m). The SLM's ``pixel_pitch_m`` is that of a shown image
        pixel, ``zoom`` times it; this one is kept as ``screen_pixel_pitch_m``.
    position : (x, y)
        Desktop coordinates (pixels) of the window's top-left corner: the monitor's origin.
    fullscreen : bool
        Ask the window manager for a full-screen (borderless) window on that monitor (``window_size``:
        the monitor's size).
    window_size : (rows, cols) or None
        The window, in screen pixels (None: the zoomed image's size). At least 69 x 69 under Qt.
    image_offset : (row, col) or None
        The image's top-left corner inside the window, in screen pixels (None: centred).
    zoom : int
        Screen pixels per image pixel (each image pixel is shown as a ``zoom x zoom`` block).
    window_name : str
        Title of the OpenCV window (unique per display).
    pump_events : int
        ``cv2.waitKey(1)`` calls after each frame, so it is painted before ``show`` returns.
    open_wait_s : float
        Time (s) the GUI event loop runs after the window got its geometry, for the window system to
        map it (and a window manager to act on it) and the first (dark) frame to be painted.
    lut : LUT, optional
        Gray level -> relative intensity (default: linear; measure the display's gamma).
    latency_s, settle_s : float
        The delay before a new frame appears (s; default 50 ms: GUI paint, compositor and about
        three refreshes at 60 Hz -- measure yours) and its settling time (s).
    name, clock, default_timeout_s
        See :class:`~drivers.device.Device`.
    """

    Config = DisplaySLMConfig

    def __init__(self, shape, pixel_pitch_m: float, *, position=(0, 0), fullscreen: bool = False,
                 window_size=None, image_offset=None, zoom: int = 1,
                 window_name: str = "onn-hil-slm", pump_events: int = 3, open_wait_s: float = 0.5,
                 lut: LUT | None = None, latency_s: float = 0.05, settle_s: float = 0.0, name: str | None = None,
                 clock: Clock | None = None, default_timeout_s: float = 1.0):
        super().__init__(shape=shape, bit_depth=8, pixel_pitch_m=pixel_pitch_m, modulation="amplitude",
                         lut=lut, latency_s=latency_s, settle_s=settle_s, name=name, clock=clock,
                         default_timeout_s=default_timeout_s)
        if len(self.shape) == 3 and self.shape[2] != 3:
            raise InputError(f"shape must be (rows, cols) or (rows, cols, 3), got {shape!r}")
        self.window_size, self.image_offset, self.zoom = window_placement(self.shape, window_size, image_offset, zoom)
        self.screen_pixel_pitch_m = self.pixel_pitch_m
        self.pixel_pitch_m = self.zoom * self.screen_pixel_pitch_m
        try:
            x, y = (int(v) for v in position)
        except (TypeError, ValueError):
            raise InputError(f"position must be two integers (x, y), got {position!r}") from None
        if isinstance(pump_events, bool) or not isinstance(pump_events, int) or pump_events < 1:
            raise InputError(f"pump_events must be an integer >= 1, got {pump_events!r}")
        if not isinstance(window_name, str) or not window_name:
            raise InputError(f"window_name must be a non-empty string, got {window_name!r}")
        self.position = (x, y)
        self.fullscreen = bool(fullscreen)
        self.window_name = window_name
        self.pump_events = pump_events
        self.open_wait_s = check_positive("open_wait_s", open_wait_s)
        self._window_open = False
        self._check_display_available()
        self._open_window()

    # ------------------------------------------------------------------------------ window
    def _check_display_available(self) -> None:
        if sys.platform.startswith("linux"):
            display = os.environ.get("DISPLAY", "")
            if not display and not os.environ.get("WAYLAND_DISPLAY"):
                raise DeviceNotFound("no display: DISPLAY is not set (start an X server, e.g. Xvfb)", device=self.name)
            if display and not x_display_reachable(display):
                raise DeviceNotFound(f"no X server answers at DISPLAY={display}", device=self.name)

    def _open_window(self) -> None:
        import cv2

        rows, cols = self.window_size
        expected = (*self.position, cols, rows)
        try:  # whatever goes wrong (geometry, GUI error, Ctrl-C), no window is left behind
            with self._errors("open window"):
                cv2.namedWindow(self.window_name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
                self._window_open = True
                cv2.moveWindow(self.window_name, *self.position)
                if self.fullscreen:
                    cv2.setWindowProperty(self.window_name, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
                self._paint(np.zeros(self.shape, dtype=self.dtype))
                # The window system works in real time: run the GUI until the window has its geometry
                # (bounded by the timeout), then a while longer for a window manager to act on it.
                deadline = time.monotonic() + self.default_timeout_s
                while tuple(cv2.getWindowImageRect(self.window_name)) != expected and time.monotonic() < deadline:
                    cv2.waitKey(1)
                cv2.waitKey(max(1, round(self.open_wait_s * 1000)))
            self._check_geometry()
        except BaseException:
            self._close()
            raise
        log.info("%s: window %r at %s, %dx%d, image at %s zoomed %d x", self.name, self.window_name, self.position,
                 cols, rows, self.image_offset, self.zoom)

    def _check_geometry(self) -> None:
        """Raise :class:`DeviceFault` unless the image area sits exactly where it was asked to."""
        import cv2

        rows, cols = self.window_size
        with self._errors("read window geometry"):
            x, y, w, h = cv2.getWindowImageRect(self.window_name)
        if (x, y, w, h) != (*self.position, cols, rows):
            raise DeviceFault(
                f"the window's image area is {w}x{h} at ({x}, {y}), expected {cols}x{rows} at {self.position}: "
                "the window manager moved, decorated or resized it (try fullscreen: true), or the window is smaller "
                "than the GUI's smallest window (69x69 pixels for opencv-python's Qt5 windows: set slm.window.size "
                "or slm.window.zoom)", device=self.name)

    def window_image(self, frame: np.ndarray) -> np.ndarray:
        """The window's content showing ``frame`` (the SLM's shape): :func:`drivers.window.window_image`."""
        return window_image(frame, self.window_size, self.image_offset, self.zoom)

    def image_rect(self) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` on the desktop of the shown (zoomed) image, in screen pixels."""
        return (self.position[0] + self.image_offset[1], self.position[1] + self.image_offset[0],
                self.shape[1] * self.zoom, self.shape[0] * self.zoom)

    def _paint(self, frame: np.ndarray) -> None:
        import cv2

        window = self.window_image(frame)
        bgr = window[..., ::-1] if window.ndim == 3 else window
        cv2.imshow(self.window_name, np.ascontiguousarray(bgr))
        for _ in range(self.pump_events):
            cv2.waitKey(1)

    def window_rect(self) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of the image area on the desktop, as the GUI reports it."""
        import cv2

        self._check_open()
        with self._errors("read window geometry"):
            return tuple(int(v) for v in cv2.getWindowImageRect(self.window_name))

    def wait_settled(self) -> None:
        """Wait until the last frame has settled, running the GUI event loop meanwhile.

        A window paints only while its event loop runs (e.g. when the window system exposes it
        late), so the wait pumps ``cv2.waitKey`` instead of sleeping; on a virtual clock it pumps
        once and sleeps on the clock.
        """
        import cv2

        self._check_open()
        cv2.waitKey(1)
        if isinstance(self.clock, RealClock):
            while (remaining_s := self.settled_at_s - self.clock.now()) > 0:
                cv2.waitKey(max(1, min(10, math.ceil(remaining_s * 1000))))
        super().wait_settled()

    def hold(self, duration_s: float) -> None:
        """Keep the frame on screen for ``duration_s`` seconds, running the GUI event loop (so the window
        is repainted when exposed); on a virtual clock it pumps once and sleeps on the clock."""
        import cv2

        self._check_open()
        duration_s = check_positive("duration_s", duration_s, allow_zero=True)
        if not isinstance(self.clock, RealClock):
            cv2.waitKey(1)
            return super().hold(duration_s)
        end_s = self.clock.now() + duration_s
        while (remaining_s := end_s - self.clock.now()) > 0:
            cv2.waitKey(max(1, min(20, math.ceil(remaining_s * 1000))))

    # ------------------------------------------------------------------------------ hooks
    def _show(self, frame: np.ndarray) -> None:
        import cv2

        if cv2.getWindowProperty(self.window_name, cv2.WND_PROP_VISIBLE) < 1:
            raise DeviceDisconnected(f"window {self.window_name!r} was closed", device=self.name)
        self._paint(frame)
        self._check_geometry()  # a window manager may act on the window late

    def _close(self) -> None:
        import cv2

        if self._window_open:
            self._window_open = False
            cv2.destroyWindow(self.window_name)
            cv2.waitKey(1)

    def settings(self) -> dict:
        s = super().settings()
        s.update(position=list(self.position), fullscreen=self.fullscreen, window_name=self.window_name,
                 window_size=list(self.window_size), image_offset=list(self.image_offset), zoom=self.zoom,
                 screen_pixel_pitch_m=self.screen_pixel_pitch_m)
        return s

    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        """Open from the ``slm`` YAML section (:class:`DisplaySLMConfig`); errors name the field, e.g.
        ``slm.window.zoom``."""
        from onn_core.config import build

        for moved in ("position", "fullscreen"):
            if moved in settings:
                raise ConfigError(f"{path}.{moved}", settings[moved], f"no value here: set {path}.window.{moved}")
        cfg = build(cls.Config, dict(settings), path)
        window = cfg.window
        if len(cfg.shape) not in (2, 3):
            raise ConfigError(f"{path}.shape", list(cfg.shape), "(rows, cols) or (rows, cols, 3)")
        window_from_config(window, cfg.shape, path)
        kwargs = {"shape": cfg.shape, "pixel_pitch_m": cfg.pixel_pitch_m, "window_name": cfg.window_name,
                  "pump_events": cfg.pump_events, "open_wait_s": cfg.open_wait_s, "latency_s": cfg.latency_s,
                  "settle_s": cfg.settle_s}
        with config_errors(kwargs, path):
            return cls(**kwargs, position=window.position, fullscreen=window.fullscreen, window_size=window.size,
                       image_offset=window.offset, zoom=window.zoom, name=path or None, clock=context.clock)
