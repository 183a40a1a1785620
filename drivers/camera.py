"""The camera base, :class:`Camera`: exposure, gain, black level, ROI, trigger mode;
snap/grab/flush/average/HDR, and the exposure search (:meth:`Camera.auto_exposure`).

A backend subclasses :class:`Camera` (see :mod:`drivers.device` for the two layers) and fills in:

- ``_snap(timeout_s)`` (required): return one :class:`~drivers.frames.RawFrame` within ``timeout_s``
  seconds (exposure included) or raise ``TimeoutError`` / :class:`~drivers.errors.DeviceTimeout`;
- ``_set_exposure(exposure_s)`` (required): apply an exposure (s); return the value read back;
- ``_set_gain``, ``_set_black_level``, ``_set_trigger_mode`` (optional): the same idea for the
  other settings;
- ``_set_roi(roi)`` (optional): apply a region of interest on the device where it can, and return the
  window the device now delivers (one that holds ``roi``; the default, the full sensor, means "none
  on the device"). The base class crops each frame from that window to ``roi`` in software, so a
  backend without a window of interest implements nothing and ``_snap`` returns whole frames;
- ``_flush()`` (optional): drop buffered frames; return how many;
- ``_close()`` (optional): release the hardware (called once).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from onn_core.errors import InputError
from onn_core.validation import check_positive

from .clock import Clock
from .device import DEFAULT_TIMEOUT_S, Device, check_shape, integer_dtype_for
from .errors import DeviceFault
from .exposure import auto_exposure, exposure_held
from .frames import Frame, RawFrame

TRIGGER_MODES = ("software", "free-run")


class Camera(Device):
    """A camera: exposure, gain, black level, ROI, trigger mode; snap/grab/flush/average/HDR.

    Parameters (the device's current state, as read back from the hardware)
    ----------
    sensor_shape : (rows, cols)
        Full sensor size in pixels.
    bit_depth : int
        ADC bits. ``saturation_dn`` defaults to the largest value of the frame dtype reachable with
        them (``2**bit_depth - 1``); pass it for left-justified formats.
    pixel_pitch_m : float
        Pixel pitch (m).
    exposure_s : float
        Current exposure (s).
    exposure_limits_s : (float, float)
        Smallest and largest exposure (s) the device accepts.
    dtype : numpy dtype, optional
        Frame dtype (default: uint8 up to 8 bits, else uint16).
    gain, gain_limits : float, (float, float)
        Current gain and its limits (a camera without gain control keeps 1.0 and (1.0, 1.0)).
    black_level : float
        Current black level (DN), the offset of a dark pixel.
    trigger_mode : {"software", "free-run"}
        ``software``: every snap starts a new exposure (frames are never stale; a backend whose
        ``_snap`` may return a frame exposed before the call must not declare it). ``free-run``: the
        camera exposes continuously and buffers frames; ``flush`` drops buffered (stale) ones.
    saturation_dn : float, optional
        Value of a saturated pixel.
    """

    kind = "camera"

    def __init__(
        self,
        *,
        sensor_shape,
        bit_depth: int,
        pixel_pitch_m: float,
        exposure_s: float,
        exposure_limits_s,
        dtype=None,
        gain: float = 1.0,
        gain_limits=(1.0, 1.0),
        black_level: float = 0.0,
        trigger_mode: str = "software",
        saturation_dn: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(name=name, clock=clock, default_timeout_s=default_timeout_s)
        self.sensor_shape = check_shape("sensor_shape", sensor_shape)
        self.dtype = np.dtype(dtype) if dtype is not None else integer_dtype_for(bit_depth)
        if self.dtype.kind != "u" or integer_dtype_for(bit_depth).itemsize > self.dtype.itemsize:
            raise InputError(f"dtype must be an unsigned integer type holding {bit_depth} bits, got {self.dtype}")
        self.bit_depth = int(bit_depth)
        self.pixel_pitch_m = check_positive("pixel_pitch_m", pixel_pitch_m)
        self.exposure_limits_s = self._check_limits("exposure_limits_s", exposure_limits_s)
        self.gain_limits = self._check_limits("gain_limits", gain_limits)
        self.saturation_dn = float(saturation_dn) if saturation_dn is not None else float(2**self.bit_depth - 1)
        if trigger_mode not in TRIGGER_MODES:
            raise InputError(f"trigger_mode must be one of {TRIGGER_MODES}, got {trigger_mode!r}")
        self._exposure_s = self._within("exposure_s", exposure_s, self.exposure_limits_s, "s")
        self._gain = float(gain)
        self._black_level = float(black_level)
        self._roi: tuple[int, int, int, int] = (0, 0, *self.sensor_shape)
        self._device_roi: tuple[int, int, int, int] = self._roi  # the window the device delivers
        self._trigger_mode = trigger_mode
        self._frames_read = 0
        self._settings_cache: Mapping | None = None

    @staticmethod
    def _check_limits(name: str, limits) -> tuple[float, float]:
        try:
            lo, hi = (float(v) for v in limits)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be two numbers (min, max), got {limits!r}") from None
        if not (0 < lo <= hi < math.inf):
            raise InputError(f"{name} must satisfy 0 < min <= max < inf, got {limits!r}")
        return lo, hi

    # --------------------------------------------------------------------------------- settings
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the frames delivered now (the ROI)."""
        return self._roi[2], self._roi[3]

    @property
    def exposure_s(self) -> float:
        """Exposure time (s), as read back from the device."""
        return self._exposure_s

    @exposure_s.setter
    def exposure_s(self, value: float) -> None:
        self._check_open()
        v = self._within("exposure_s", value, self.exposure_limits_s, "s")
        with self._errors("set exposure"):
            self._exposure_s = float(self._set_exposure(v))
        self._settings_cache = None

    @property
    def gain(self) -> float:
        """Analog gain (device units, 1.0 = none), as read back."""
        return self._gain

    @gain.setter
    def gain(self, value: float) -> None:
        self._check_open()
        if self.gain_limits == (1.0, 1.0):
            raise self._unsupported("set the gain (it has no gain control: gain_limits (1, 1))")
        v = self._within("gain", value, self.gain_limits, "")
        with self._errors("set gain"):
            self._gain = float(self._set_gain(v))
        self._settings_cache = None

    @property
    def black_level(self) -> float:
        """Black level (DN): the value of a pixel that received no light."""
        return self._black_level

    @black_level.setter
    def black_level(self, value: float) -> None:
        self._check_open()
        v = check_positive("black_level", value, allow_zero=True)
        with self._errors("set black level"):
            self._black_level = float(self._set_black_level(v))
        self._settings_cache = None

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """Region of interest ``(row0, col0, rows, cols)`` in sensor pixels: what frames hold."""
        return self._roi

    @roi.setter
    def roi(self, value) -> None:
        """Set the ROI (``None``: the full sensor): on the device where the backend can (its ``_set_roi``
        hook), the rest as a software crop; :meth:`settings` records both (``roi``, ``device_roi``)."""
        self._check_open()
        roi = (0, 0, *self.sensor_shape) if value is None else self._check_roi(value)
        with self._errors("set roi"):
            window = self._set_roi(roi)
        try:
            window = self._check_roi(window)
        except InputError as exc:
            raise DeviceFault(f"the device applied the window {window!r}: {exc}", device=self.name) from None
        r0, c0, nr, nc = roi
        w0, wc0, wr, wc = window
        if not (w0 <= r0 and wc0 <= c0 and r0 + nr <= w0 + wr and c0 + nc <= wc0 + wc):
            raise DeviceFault(f"the device's window {window} does not hold the roi {roi}", device=self.name)
        self._roi, self._device_roi = roi, window
        self._settings_cache = None

    @property
    def roi_mode(self) -> str:
        """How the ROI is applied: ``"full"`` (none), ``"device"``, ``"software"`` (a crop of whole
        frames) or ``"device+software"`` (a crop of a larger window the device delivers)."""
        full = (0, 0, *self.sensor_shape)
        if self._roi == full:
            return "full"
        if self._device_roi == self._roi:
            return "device"
        return "software" if self._device_roi == full else "device+software"

    @property
    def trigger_mode(self) -> str:
        """``"software"`` or ``"free-run"``."""
        return self._trigger_mode

    @trigger_mode.setter
    def trigger_mode(self, value: str) -> None:
        self._check_open()
        if value not in TRIGGER_MODES:
            raise InputError(f"trigger_mode must be one of {TRIGGER_MODES}, got {value!r}")
        with self._errors("set trigger mode"):
            self._set_trigger_mode(value)
        self._trigger_mode = value
        self._settings_cache = None

    def settings(self) -> dict:
        """Snapshot: exposure, gain, black level, ROI, trigger mode, shape, dtype, bit depth, pitch."""
        if self._settings_cache is None:
            snapshot = super().settings()
            snapshot.update(
                exposure_s=self._exposure_s,
                exposure_limits_s=list(self.exposure_limits_s),
                gain=self._gain,
                black_level=self._black_level,
                roi=list(self._roi),
                device_roi=list(self._device_roi),
                roi_mode=self.roi_mode,
                trigger_mode=self._trigger_mode,
                sensor_shape=list(self.sensor_shape),
                dtype=self.dtype.name,
                bit_depth=self.bit_depth,
                pixel_pitch_m=self.pixel_pitch_m,
                saturation_dn=self.saturation_dn,
            )
            snapshot.update(self._extra_settings())
            self._settings_cache = MappingProxyType(snapshot)
        return dict(self._settings_cache)

    def _extra_settings(self) -> dict:
        """Hook: backend-specific settings added to :meth:`settings`."""
        return {}

    def _within(self, name: str, value, limits, unit: str) -> float:
        v = check_positive(name, value)
        lo, hi = limits
        if not lo <= v <= hi:
            raise InputError(f"{name} must be in [{lo:g}, {hi:g}]{' ' + unit if unit else ''}, got {value!r}")
        return v

    def _check_roi(self, roi) -> tuple[int, int, int, int]:
        try:
            r0, c0, nr, nc = (int(v) for v in roi)
        except (TypeError, ValueError):
            raise InputError(f"roi must be (row0, col0, rows, cols), got {roi!r}") from None
        rows, cols = self.sensor_shape
        if r0 < 0 or c0 < 0 or nr < 1 or nc < 1 or r0 + nr > rows or c0 + nc > cols:
            raise InputError(f"roi {roi!r} must lie inside the {rows}x{cols} sensor with rows, cols >= 1")
        return r0, c0, nr, nc

    # --------------------------------------------------------------------------------- capture
    def snap(self, timeout_s: float | None = None) -> Frame:
        """Capture one frame.

        Parameters
        ----------
        timeout_s : float, optional
            Time (s) allowed beyond the exposure (default :attr:`default_timeout_s`).

        Raises
        ------
        DeviceTimeout
            No frame within ``timeout_s + exposure_s``.
        """
        self._check_open()
        limit_s = self._timeout(timeout_s) + self._exposure_s
        requested_s = self.clock.now()
        with self._errors("snap"):
            raw = self._snap(limit_s)
        return self._frame_from(raw, requested_s)

    def grab(self, n: int, timeout_s: float | None = None) -> list[Frame]:
        """Capture ``n`` consecutive frames (each with its own timeout, exposure added)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        return [self.snap(timeout_s) for _ in range(int(n))]

    def flush(self) -> int:
        """Drop frames already buffered (exposed before now); return how many were dropped."""
        self._check_open()
        with self._errors("flush"):
            return int(self._flush())

    def average(self, n: int, timeout_s: float | None = None) -> Frame:
        """Mean of ``n`` consecutive frames (float64), to reduce noise by ``sqrt(n)``.

        The frame's ``timestamp_s`` is the first frame's, ``index`` the last one's; ``meta`` holds
        ``averaged`` (n) and ``indices``.
        """
        frames = self.grab(n, timeout_s)
        mean = np.mean(np.stack([f.image for f in frames]), axis=0, dtype=np.float64)
        meta = {"averaged": len(frames), "indices": [f.index for f in frames]}
        return dataclasses.replace(frames[-1], image=mean, timestamp_s=frames[0].timestamp_s, meta=meta)

    def hdr(self, exposures_s: Sequence[float], timeout_s: float | None = None) -> Frame:
        """High-dynamic-range frame merged from an exposure bracket.

        Each pixel's signal rate is estimated from the frames where it is below ``saturation_dn``:
        ``rate = sum(dn - black_level) / sum(exposure)`` over those frames (the maximum-likelihood
        estimate for shot noise). The result is expressed as counts (black subtracted, float64) at
        the longest exposure, so it extends beyond ``saturation_dn`` where short exposures saw more.
        Pixels saturated in every frame take the shortest exposure's value (a lower bound); their
        count is ``meta["saturated_pixels"]``. The exposure is restored afterwards.
        """
        exposures = sorted(self._within("exposures_s", e, self.exposure_limits_s, "s") for e in exposures_s)
        if not exposures:
            raise InputError("exposures_s must list at least one exposure")
        signal = weight = None
        frames: list[Frame] = []
        with exposure_held(self):
            for e in exposures:
                self.exposure_s = e
                frame = self.snap(timeout_s)
                frames.append(frame)
                counts = frame.image.astype(np.float64) - self._black_level
                valid = frame.image < self.saturation_dn
                if signal is None:
                    signal, weight = np.zeros_like(counts), np.zeros_like(counts)
                signal += np.where(valid, counts, 0.0)
                weight += np.where(valid, frame.exposure_s, 0.0)
        longest = frames[-1].exposure_s
        shortest = frames[0]
        fallback = (shortest.image.astype(np.float64) - self._black_level) / shortest.exposure_s
        rate = np.where(weight > 0, signal / np.where(weight > 0, weight, 1.0), fallback)
        meta = {
            "hdr_exposures_s": [f.exposure_s for f in frames],
            "indices": [f.index for f in frames],
            "saturated_pixels": int(np.count_nonzero(weight == 0)),
        }
        return dataclasses.replace(frames[-1], image=rate * longest, exposure_s=longest, timestamp_s=shortest.timestamp_s, meta=meta)

    def auto_exposure(self, **kwargs) -> float:
        """Choose and set the exposure at which the frame's peak (or a high percentile, inside an
        optional region) reaches a target fraction of the saturation level; return it (s).

        Keyword arguments and errors are those of :func:`drivers.exposure.auto_exposure` (``read``:
        where frames come from, default :meth:`snap`; ``target_fraction``, ``percentile``, ``region``,
        ``limit_dn``, ``tolerance``, ``max_frames``). Only :attr:`exposure_s` and frames are used, so
        it works on every backend.
        """
        return auto_exposure(self, **kwargs)

    def _frame_from(self, raw: RawFrame, requested_s: float) -> Frame:
        image = raw.image
        delivered = tuple(self._device_roi[2:])
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[:2] != delivered or image.dtype != self.dtype:
            got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
            raise DeviceFault(f"backend returned a frame {got}, expected {delivered} {self.dtype}", device=self.name)
        if self._device_roi != self._roi:  # the software part of the ROI
            r0, c0 = self._roi[0] - self._device_roi[0], self._roi[1] - self._device_roi[1]
            image = np.ascontiguousarray(image[r0 : r0 + self._roi[2], c0 : c0 + self._roi[3]])
        self._frames_read += 1
        index = raw.index if raw.index is not None else self._frames_read - 1
        if raw.timestamp_s is not None:
            timestamp, timing = raw.timestamp_s, "device"
        elif self._trigger_mode == "software":
            timestamp, timing = requested_s, "triggered"
        else:
            timestamp, timing = self.clock.now() - self._exposure_s, "estimated"
        if self._settings_cache is None:
            self.settings()
        return Frame(image, int(index), float(timestamp), self._exposure_s, self._gain, self._settings_cache,
                     dict(raw.meta), timing)

    # --------------------------------------------------------------------------------- hooks
    def _snap(self, timeout_s: float) -> RawFrame:
        """Hook: one frame within ``timeout_s`` seconds (exposure included)."""
        raise self._unsupported("snap")

    def _set_exposure(self, exposure_s: float) -> float:
        """Hook: apply the exposure (s, within limits); return the value read back."""
        raise self._unsupported("set the exposure")

    def _set_gain(self, gain: float) -> float:
        raise self._unsupported("set the gain")

    def _set_black_level(self, black_level: float) -> float:
        raise self._unsupported("set the black level")

    def _set_roi(self, roi: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Hook: apply ``roi`` on the device where it can; return the window ``(row0, col0, rows, cols)``
        it delivers now, which holds ``roi`` (default: the full sensor, the ROI cropped in software)."""
        return (0, 0, *self.sensor_shape)

    def _set_trigger_mode(self, mode: str) -> None:
        if mode != self._trigger_mode:
            raise self._unsupported(f"switch to {mode} trigger mode")

    def _flush(self) -> int:
        return 0
