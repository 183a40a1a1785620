"""A camera read through OpenCV's ``cv2.VideoCapture``: a device index, a stream URL, a video file or a
numbered image sequence.

Sources
-------
- ``0``, ``"1"``: a local camera (V4L2 on Linux) -- a *live* source, free-running and buffered;
- ``"rtsp://..."``, ``"http://..."``: a network stream (live);
- ``"run.avi"``, ``"run.mkv"``: a recorded video (frames delivered in order, then rewound when
  ``loop`` is on, else :class:`DeviceDisconnected` at the end);
- ``"frames/img_%04d.png"``: a numbered image sequence (printf pattern), like a video file.

Frames are (rows, cols) mono (colour sources converted with ITU-R 601 weights, exact for gray data)
or, with ``color=True``, (rows, cols, 3) in **R, G, B** order. ``bit_depth=8`` (default) reads
through OpenCV's usual BGR conversion; ``bit_depth`` 9..16 reads unconverted 16-bit single-channel
frames (e.g. FFV1 ``gray16le`` videos, 16-bit PNG sequences numbered from 0 or 1); a 16-bit source
opened with ``bit_depth=8`` is refused rather than cut to 8 bits.

Settings: recorded sources have a fixed exposure (the one stated, or one frame interval), so their
exposure limits are ``(e, e)``; gain is unsupported (:class:`UnsupportedFeature`). Live V4L2 devices
set exposure through ``CAP_PROP_EXPOSURE`` (manual mode, units of 100 us) and gain through
``CAP_PROP_GAIN`` (device units) within the configured limits; a device that refuses raises
:class:`UnsupportedFeature`. The ROI is a software crop (by :class:`~drivers.camera.Camera`): OpenCV
has no capture property for a sensor window of interest common to its backends (V4L2 has none). Every blocking capture call runs in
its own daemon thread, one at a time, and is abandoned after the timeout (:class:`DeviceTimeout`;
the next call first waits for the late one; a capture that a late open returns, or that a blocked call
holds at close, is released when that call returns). :meth:`~drivers.camera.Camera.flush` drops a live
source's buffered frames. OpenCV errors (``cv2.error``) are chained into
:class:`~drivers.errors.DeviceError`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onn_core.errors import ConfigError, InputError
from onn_core.validation import check_positive

from .camera import Camera
from .device import OpenContext, config_errors
from .frames import RawFrame
from .clock import Clock
from .errors import DeviceDisconnected, DeviceFault, DeviceNotFound, DeviceTimeout, UnsupportedFeature

__all__ = ["OpenCVCamera", "OpenCVCameraConfig"]

log = logging.getLogger(__name__)

_PATTERN = re.compile(r"%0?\d*d")
#: ``api`` names -> cv2.CAP_* constant names.
APIS = {"any": "CAP_ANY", "ffmpeg": "CAP_FFMPEG", "images": "CAP_IMAGES", "v4l2": "CAP_V4L2",
        "gstreamer": "CAP_GSTREAMER", "dshow": "CAP_DSHOW", "msmf": "CAP_MSMF", "avfoundation": "CAP_AVFOUNDATION"}
#: FFmpeg's raw pixel-format tags (``CAP_PROP_CODEC_PIXEL_FORMAT``, as little-endian bytes) of sources
#: with 16 bits per sample, which OpenCV's 8-bit conversion would cut to their top 8 bits.
DEEP_PIXEL_FORMATS = {
    b"Y1\x00\x10": "gray16le", b"\x10\x001Y": "gray16be", b"RGB0": "rgb48le", b"0RGB": "rgb48be",
    b"BGR0": "bgr48le", b"0BGR": "bgr48be", b"RBA@": "rgba64le", b"@RBA": "rgba64be", b"BRA@": "bgra64le",
    b"@BRA": "bgra64be",
}
#: V4L2 ``exposure_time_absolute`` unit (s).
V4L2_EXPOSURE_UNIT_S = 100e-6
#: V4L2 ``auto_exposure`` menu value for manual exposure, as OpenCV's V4L2 backend passes it on.
V4L2_MANUAL_EXPOSURE = 1


@dataclass
class OpenCVCameraConfig:
    """Bench-YAML settings of an ``opencv`` camera (see :class:`OpenCVCamera`)."""

    source: Any
    pixel_pitch_m: float
    color: bool = False
    bit_depth: int = 8
    api: str = "any"
    loop: bool = True
    exposure_s: float | None = None
    exposure_limits_s: tuple[float, float] | None = None
    gain_limits: tuple[float, float] = (1.0, 1.0)
    buffer_frames: int = 4
    timeout_s: float = 2.0


def _source_kind(source) -> str:
    """``"device"``, ``"stream"``, ``"sequence"`` or ``"file"``."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return "device"
    if not isinstance(source, (str, Path)) or not str(source):
        raise InputError(f"source must be a device index, URL, video file or image pattern, got {source!r}")
    text = str(source)
    if text.isdigit():
        return "device"
    if "://" in text:
        return "stream"
    if _PATTERN.search(text):
        return "sequence"
    return "file"


def _run_in_daemon_thread(fn) -> concurrent.futures.Future:
    """Run ``fn()`` in a new daemon thread (a capture call that never returns must not keep the
    interpreter from exiting, as a pool's worker would)."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

    threading.Thread(target=run, name="opencv-camera-call", daemon=True).start()
    return future


def _release_opened(future: concurrent.futures.Future) -> None:
    """Release the capture that an abandoned open returned late (if it opened one)."""
    if future.exception() is None and future.result() is not None:
        future.result().release()


class OpenCVCamera(Camera):
    """A ``cv2.VideoCapture`` source as a :class:`~drivers.camera.Camera` (see the module docstring).

    Parameters
    ----------
    source : int or str
        Device index, stream URL, video file or printf-style image pattern.
    pixel_pitch_m : float
        Sensor pixel pitch (m) -- OpenCV cannot know it.
    color : bool
        Deliver (rows, cols, 3) RGB frames instead of mono.
    bit_depth : int
        8, or 9..16 for unconverted 16-bit mono frames.
    api : str
        OpenCV backend: one of :data:`APIS` (``"any"`` lets OpenCV choose; 16-bit image sequences
        use ``"images"``).
    loop : bool
        Recorded sources: rewind at the end instead of raising :class:`DeviceDisconnected`.
    exposure_s : float, optional
        Exposure to report for recorded sources (default one frame interval, else 10 ms), or to
        set on a live device (default: leave the device's own setting, reported as 1/fps).
    exposure_limits_s : (float, float), optional
        Live devices: exposure range (s) to allow (default 10 us .. 1 s). Recorded sources: fixed.
    gain_limits : (float, float)
        Live devices: gain range in device units; (1, 1) disables gain control.
    buffer_frames : int
        Live sources: frames the driver/device buffers, dropped by :meth:`flush`.
    timeout_s : float
        Default timeout (s) of opening (streams) and of each frame.
    name, clock
        See :class:`~drivers.device.Device`.
    """

    Config = OpenCVCameraConfig

    def __init__(self, source, pixel_pitch_m: float, *, color: bool = False, bit_depth: int = 8, api: str = "any",
                 loop: bool = True, exposure_s: float | None = None, exposure_limits_s=None,
                 gain_limits=(1.0, 1.0), buffer_frames: int = 4, timeout_s: float = 2.0,
                 name: str | None = None, clock: Clock | None = None):
        import cv2

        # name and timeout are needed while opening, before Camera.__init__ (which sets them again)
        self.name = name or type(self).__name__
        self.default_timeout_s = check_positive("timeout_s", timeout_s)
        self._kind = _source_kind(source)
        self.source = int(source) if self._kind == "device" else str(source)
        self.live = self._kind in ("device", "stream")
        self.color = bool(color)
        self.loop = bool(loop)
        if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 8 <= bit_depth <= 16:
            raise InputError(f"bit_depth must be an integer in [8, 16], got {bit_depth!r}")
        if bit_depth > 8 and self.color:
            raise InputError("bit_depth > 8 reads 16-bit mono frames: it cannot be combined with color=True")
        if api not in APIS or not hasattr(cv2, APIS[api]):
            raise InputError(f"api must be one of {sorted(APIS)} (available in this OpenCV build), got {api!r}")
        if isinstance(buffer_frames, bool) or not isinstance(buffer_frames, int) or buffer_frames < 0:
            raise InputError(f"buffer_frames must be an integer >= 0, got {buffer_frames!r}")
        if not self.live and tuple(gain_limits) != (1.0, 1.0):
            raise InputError(f"gain_limits must be (1, 1) for a recorded source, got {gain_limits!r}")
        self.buffer_frames = buffer_frames
        if self._kind == "file" and not Path(self.source).exists():
            raise DeviceNotFound(f"video file {self.source!r} does not exist", device=self.name)
        if self._kind == "sequence" and not Path(self.source).parent.is_dir():
            raise DeviceNotFound(f"folder of image sequence {self.source!r} does not exist", device=self.name)

        self._pending: concurrent.futures.Future | None = None
        self._cap = None
        self._source_frame = 0  # frames read from a recorded source since its start
        try:
            self._cap, self.api = self._open(cv2, api, bit_depth)
            if bit_depth == 8:
                self._refuse_deep_source(cv2)
            first = self._normalise(self._read_raw(self.default_timeout_s), bit_depth)
            if not self.live:
                self._rewind(cv2)
            fps = float(self._call(lambda: self._cap.get(cv2.CAP_PROP_FPS), self.default_timeout_s, "read fps"))
            self.fps = fps if fps > 0 else None
            exposure, limits = self._initial_exposure(cv2, exposure_s, exposure_limits_s)
            super().__init__(sensor_shape=first.shape[:2], bit_depth=bit_depth, pixel_pitch_m=pixel_pitch_m,
                             exposure_s=exposure, exposure_limits_s=limits, dtype=first.dtype,
                             gain=gain_limits[0], gain_limits=gain_limits,
                             trigger_mode="free-run" if self.live else "software", name=name, clock=clock,
                             default_timeout_s=timeout_s)
        except BaseException:
            self._release()
            raise
        log.info("%s: opened %s (%s, %s) %s %s", self.name, self.source, self._kind, self.api, first.shape, first.dtype)

    # ---------------------------------------------------------------------------------- opening
    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        """As :meth:`Device.from_config`, with a relative file/pattern ``source`` resolved against the
        YAML file's folder."""
        import dataclasses

        from onn_core.config import build

        config = build(cls.Config, dict(settings), path)
        kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        try:
            kind = _source_kind(kwargs["source"])
        except InputError as exc:
            raise ConfigError(f"{path}.source" if path else "source", kwargs["source"], str(exc)) from None
        if kind in ("file", "sequence"):
            kwargs["source"] = str(context.resolve(kwargs["source"]))
        with config_errors(kwargs, path):
            return cls(**kwargs, name=path or None, clock=context.clock)

    def _open(self, cv2, api: str, bit_depth: int):
        if api == "any" and self._kind == "sequence" and bit_depth > 8:
            api = "images"  # FFmpeg's image2 reader converts 16-bit PNGs to 8 bits
        params = []
        if bit_depth > 8 and api != "images":  # the images reader takes no parameters; it never converts
            params += [cv2.CAP_PROP_CONVERT_RGB, 0]
        timeout_ms = int(self.default_timeout_s * 1000)
        if self._kind == "stream":
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        api_id = getattr(cv2, APIS[api])

        def open_capture():
            cap = cv2.VideoCapture(self.source, api_id, params)
            if not cap.isOpened():
                cap.release()
                return None
            return cap

        try:
            cap = self._call(open_capture, self.default_timeout_s, "open")
        except DeviceTimeout:
            if self._pending is not None:  # the abandoned open may still succeed: release what it opens
                self._pending.add_done_callback(_release_opened)
            raise
        if cap is None:
            raise DeviceNotFound(f"OpenCV ({api}) cannot open {self.source!r}", device=self.name)
        return cap, cap.getBackendName()

    def _refuse_deep_source(self, cv2) -> None:
        """Raise :class:`InputError` if an 8-bit read would cut the source's 16-bit samples."""
        tag = int(self._call(lambda: self._cap.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT), self.default_timeout_s,
                             "read pixel format"))
        pixel_format = DEEP_PIXEL_FORMATS.get((tag & 0xFFFFFFFF).to_bytes(4, "little"))
        if pixel_format is not None:
            raise InputError(f"bit_depth 8 would keep only the top 8 bits of {self.source!r}, which holds "
                             f"{pixel_format} frames: set bit_depth to the sensor's bits (9..16) to read "
                             "16-bit gray frames unconverted")

    def _initial_exposure(self, cv2, exposure_s, limits_s):
        nominal = 1.0 / self.fps if self.fps else 0.010
        if not self.live:
            if limits_s is not None:
                raise InputError(f"exposure_limits_s does not apply to a recorded source ({self.source!r})")
            e = nominal if exposure_s is None else check_positive("exposure_s", exposure_s)
            return e, (e, e)
        limits = (10e-6, 1.0) if limits_s is None else tuple(float(v) for v in limits_s)
        if exposure_s is None:
            return min(max(nominal, limits[0]), limits[1]), limits
        e = check_positive("exposure_s", exposure_s)
        if not limits[0] <= e <= limits[1]:
            raise InputError(f"exposure_s must be in [{limits[0]:g}, {limits[1]:g}] s, got {exposure_s!r}")
        return self._apply_exposure(cv2, e), limits

    # ---------------------------------------------------------------------------------- capture calls
    def _call(self, fn, timeout_s: float, action: str):
        """Run ``fn`` in the worker thread; :class:`DeviceTimeout` after ``timeout_s`` (the call is left
        to finish; the next call waits for it first)."""
        import cv2

        device = self.name
        if self._pending is not None:
            try:
                self._pending.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError as exc:
                raise DeviceTimeout(f"{action}: an earlier capture call is still blocked after {timeout_s:g} s",
                                    device=device) from exc
            except Exception as exc:  # its caller already got a timeout; its late outcome is dropped
                log.debug("%s: late failure of an abandoned capture call: %r", self.name, exc)
            self._pending = None
        future = _run_in_daemon_thread(fn)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            self._pending = future
            raise DeviceTimeout(f"{action}: no answer from {self.source!r} within {timeout_s:g} s", device=device) from exc
        except cv2.error as exc:
            raise DeviceFault(f"{action} failed in OpenCV: {exc}", device=device) from exc

    def _read_raw(self, timeout_s: float) -> np.ndarray:
        ok, image = self._call(self._cap.read, timeout_s, "read frame")
        if ok and image is not None:
            self._source_frame += 1
            return image
        device = self.name
        if self.live:
            raise DeviceDisconnected(f"{self.source!r} delivered no frame (unplugged or stream ended)", device=device)
        raise DeviceDisconnected(f"end of {self.source!r} after {self._source_frame} frames "
                                 "(loop: true rewinds instead)", device=device)

    def _rewind(self, cv2) -> None:
        ok = self._call(lambda: self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0), self.default_timeout_s, "rewind")
        if not ok:
            raise DeviceFault(f"cannot rewind {self.source!r}", device=self.name)
        self._source_frame = 0

    def _normalise(self, image: np.ndarray, bit_depth: int) -> np.ndarray:
        import cv2

        if bit_depth > 8:
            if image.dtype != np.uint16 or image.ndim != 2:
                raise DeviceFault(f"bit_depth={bit_depth} needs 16-bit mono frames, {self.source!r} gave "
                                  f"{image.dtype} {image.shape}", device=self.name)
            return image
        if image.dtype != np.uint8:
            raise DeviceFault(f"expected 8-bit frames from {self.source!r}, got {image.dtype} (set bit_depth)",
                              device=self.name)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if self.color else image
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if self.color else cv2.COLOR_BGR2GRAY)

    # ---------------------------------------------------------------------------------- hooks
    def _snap(self, timeout_s: float) -> RawFrame:
        import cv2

        try:
            raw = self._read_raw(timeout_s)
        except DeviceDisconnected:
            if self.live or not self.loop:
                raise
            self._rewind(cv2)
            raw = self._read_raw(timeout_s)
        image = self._normalise(raw, self.bit_depth)
        if image.shape[:2] != self.sensor_shape:
            raise DeviceFault(f"frame size changed to {image.shape[:2]} (was {self.sensor_shape})", device=self.name)
        meta = {"source_frame": self._source_frame - 1} if not self.live else {}
        return RawFrame(image, meta=meta)

    def _flush(self) -> int:
        if not self.live:
            return 0
        dropped = 0
        for _ in range(self.buffer_frames):
            if self._call(self._cap.grab, self.default_timeout_s, "flush"):
                dropped += 1
        return dropped

    def _set_trigger_mode(self, mode: str) -> None:
        if mode != self.trigger_mode:
            raise UnsupportedFeature(f"a {'live' if self.live else 'recorded'} OpenCV source runs in "
                                     f"{self.trigger_mode} mode only", device=self.name)

    def _set_exposure(self, exposure_s: float) -> float:
        import cv2

        if not self.live:
            return exposure_s  # limits (e, e): only the fixed value gets here
        return self._apply_exposure(cv2, exposure_s)

    def _apply_exposure(self, cv2, exposure_s: float) -> float:
        if self.api != "V4L2":
            raise UnsupportedFeature(f"exposure control through OpenCV is implemented for V4L2 devices only, "
                                     f"this source uses {self.api}", device=self.name)
        cap = self._cap

        def apply():
            ok = cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, V4L2_MANUAL_EXPOSURE)
            ok = ok and cap.set(cv2.CAP_PROP_EXPOSURE, round(exposure_s / V4L2_EXPOSURE_UNIT_S))
            return ok, cap.get(cv2.CAP_PROP_EXPOSURE)

        ok, units = self._call(apply, self.default_timeout_s, "set exposure")
        if not ok:
            raise UnsupportedFeature(f"{self.source!r} refused a manual exposure", device=self.name)
        return float(units) * V4L2_EXPOSURE_UNIT_S

    def _set_gain(self, gain: float) -> float:
        import cv2

        if not self.live or self.gain_limits == (1.0, 1.0):
            raise UnsupportedFeature(f"no gain control for {self.source!r}", device=self.name)
        cap = self._cap
        ok, value = self._call(lambda: (cap.set(cv2.CAP_PROP_GAIN, gain), cap.get(cv2.CAP_PROP_GAIN)),
                               self.default_timeout_s, "set gain")
        if not ok:
            raise UnsupportedFeature(f"{self.source!r} refused the gain", device=self.name)
        return float(value)

    def _extra_settings(self) -> dict:
        return {"source": str(self.source), "source_kind": self._kind, "api": self.api, "color": self.color,
                "fps": self.fps, "loop": self.loop, "buffer_frames": self.buffer_frames}

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is None:
            return
        if self._pending is not None and not self._pending.done():
            log.warning("%s: a capture call to %s is still blocked; the capture is released when it returns",
                        self.name, self.source)
            self._pending.add_done_callback(lambda _: cap.release())
            return
        cap.release()

    def _close(self) -> None:
        self._release()
