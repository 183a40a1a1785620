"""Adapters that put slmsuite's camera and SLM drivers behind this toolkit's interfaces.

slmsuite (optional extra: ``pip install onn-hil[slmsuite]``) ships drivers for many vendors (Thorlabs,
Basler, FLIR, Allied Vision, Hamamatsu, Holoeye, Meadowlark, Santec, ...). Wrap an opened slmsuite object:

>>> from slmsuite.hardware.slms.simulated import SimulatedSLM          # doctest: +SKIP
>>> slm = SlmsuiteSLM(SimulatedSLM((1920, 1080), pitch_um=(8, 8)))     # doctest: +SKIP

or name its class in a bench YAML (``backend: slmsuite-slm`` / ``slmsuite-camera``)::

    slm:    {backend: slmsuite-slm, device_class: "slmsuite.hardware.slms.holoeye:Holoeye",
             device_kwargs: {preselect: "index:0"}}
    camera: {backend: slmsuite-camera, device_class: "slmsuite.hardware.cameras.thorlabs:ThorCam",
             pixel_pitch_m: 3.45e-6}

A camera whose class takes the SLM first (slmsuite's ``SimulatedCamera``) sets ``pass_slm: true`` and
gets the bench's SLM (which must be an ``slmsuite-slm``).

Mapping: the SLM shows integer frames through slmsuite's ``set_phase`` (integer data is sent
unchanged, never re-quantised) with ``settle=False`` -- waiting is the bench's job, from
``settle_s`` (default slmsuite's ``settle_time_s``). Phase patterns (``show_phase``,
``Bench.measure(..., phase=True)``) become gray levels exactly as slmsuite's ``set_phase`` turns a
floating phase into them: its sign convention (most SLMs lower the phase delay as the level rises),
its wavelength scaling (``phase_scaling = wav_um / wav_design_um``), a gamma set with ``set_gamma``,
and the wavefront correction ``source["phase"]`` when the device's ``phase_correct`` is on. The
adapter's :attr:`~SlmsuiteSLM.lut` is slmsuite's phase per level; assigning a measured LUT calls
``set_gamma``.

The camera reads ``get_image(timeout_s)``, sets ``set_exposure`` (read back), crops its ROI in software
and has no gain control (slmsuite has no common gain API). Retrying is the bench's job: the adapter
sets the device's ``capture_attempts`` to 1, so a timeout is one hardware attempt of the stated length.
slmsuite's exceptions are chained into :class:`~drivers.errors.DeviceError`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onn_core.config import build
from onn_core.errors import ConfigError, InputError

from .camera import Camera
from .device import OpenContext, config_errors
from .frames import RawFrame
from .slm import SLM
from .clock import Clock
from .errors import DeviceFault, DeviceNotFound, MissingDependency, backend_errors
from onn_core.lut import LUT
from .registry import import_target

__all__ = ["SlmsuiteCamera", "SlmsuiteCameraConfig", "SlmsuiteSLM", "SlmsuiteSLMConfig"]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'onn-hil[slmsuite]'"
#: Default exposure range (s) when the slmsuite camera declares none.
DEFAULT_EXPOSURE_LIMITS_S = (1e-6, 10.0)


def _require_slmsuite(device: str | None = None):
    try:
        return importlib.import_module("slmsuite")
    except ImportError as exc:
        raise MissingDependency("slmsuite", _INSTALL, device=device) from exc


def _as_numpy(array) -> np.ndarray:
    """slmsuite arrays may live on a GPU (cupy); bring them to the host."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


def _import_device_class(target: str, path: str) -> type:
    """Import ``"module:Class"`` from slmsuite for a bench config (only slmsuite modules are allowed)."""
    if not target.startswith("slmsuite.") or ":" not in target:
        raise ConfigError(path, target, "'slmsuite.<module>:<Class>', e.g. 'slmsuite.hardware.slms.simulated:SimulatedSLM'")
    _require_slmsuite()
    try:
        return import_target(target)
    except DeviceNotFound as exc:
        raise ConfigError(path, target, f"an importable slmsuite class ({exc})") from exc


def _pitch_m(pitch_um, device_name: str) -> float | None:
    if pitch_um is None:
        return None
    x_um, y_um = (float(v) for v in np.broadcast_to(np.asarray(pitch_um, dtype=float), (2,)))
    if x_um != y_um:
        log.warning("%s: non-square pixels (%g x %g um); using the x pitch", device_name, x_um, y_um)
    return x_um * 1e-6


# ================================================================================================ SLM
@dataclass
class SlmsuiteSLMConfig:
    """Bench-YAML settings of an ``slmsuite-slm`` (see :class:`SlmsuiteSLM`)."""

    device_class: str
    device_kwargs: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    settle_s: float | None = None


class SlmsuiteSLM(SLM):
    """A slmsuite SLM (``slmsuite.hardware.slms.slm.SLM`` subclass) as a phase :class:`~drivers.slm.SLM`.

    Parameters
    ----------
    device : slmsuite SLM
        An opened slmsuite SLM; closed with this adapter.
    latency_s : float
        Delay before a new frame starts to appear (s).
    settle_s : float, optional
        Liquid-crystal settling time (s); default: the device's ``settle_time_s``.
    name, clock
        See :class:`~drivers.device.Device`.
    """

    Config = SlmsuiteSLMConfig

    def __init__(self, device, *, latency_s: float = 0.0, settle_s: float | None = None,
                 name: str | None = None, clock: Clock | None = None):
        _require_slmsuite(name)
        for attribute in ("set_phase", "shape", "bitdepth", "display", "close"):
            if not hasattr(device, attribute):
                raise InputError(f"device must be a slmsuite SLM (lacks '{attribute}'), got {type(device).__name__}")
        self.device = device
        label = name or type(self).__name__
        pitch_m = _pitch_m(getattr(device, "pitch_um", None), label)
        if pitch_m is None:
            raise InputError(f"{label}: the slmsuite SLM has no pitch_um; set it on the device")
        wav_um = getattr(device, "wav_um", None)
        super().__init__(shape=tuple(int(v) for v in device.shape), bit_depth=int(device.bitdepth),
                         pixel_pitch_m=pitch_m, modulation="phase",
                         wavelength_m=None if wav_um is None else float(wav_um) * 1e-6, latency_s=latency_s,
                         settle_s=float(getattr(device, "settle_time_s", 0.0)) if settle_s is None else settle_s,
                         name=name, clock=clock)
        if np.dtype(device.dtype) != self.dtype:
            raise InputError(f"{self.name}: slmsuite frames are {device.dtype}, expected {self.dtype} "
                             f"for {self.bit_depth} bits")

    @property
    def lut(self) -> LUT:
        """slmsuite's phase (rad, unwrapped) realised by each gray level: its gamma when one is set, else
        its linear response scaled by ``phase_scaling`` (decreasing with level for most SLMs)."""
        levels = self.device.xp.arange(2**self.bit_depth)
        realised = _as_numpy(self.device._gray2phase(levels)).astype(np.float64)
        return LUT(np.unwrap(realised), "phase")

    @lut.setter
    def lut(self, lut: LUT) -> None:
        """Hand a measured phase LUT to slmsuite as its gamma (phase in units of 2 pi, in slmsuite's sense)."""
        lut = self._checked_lut(lut)
        sign = getattr(self.device, "_gamma_sign", -1)
        with self._errors("set gamma"):
            self.device.set_gamma(lut.values / (2 * np.pi * sign))

    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        """Build the slmsuite SLM named by ``device_class`` with ``device_kwargs``, then wrap it."""
        config = build(cls.Config, dict(settings), path)
        device_class = _import_device_class(config.device_class, f"{path}.device_class" if path else "device_class")
        with backend_errors(f"open {config.device_class}", path or None):
            device = device_class(**config.device_kwargs)
        with config_errors(vars(config), path):
            return _wrap_or_close(device, lambda: cls(device, latency_s=config.latency_s, settle_s=config.settle_s,
                                                      name=path or None, clock=context.clock))

    def _phase_to_gray(self, phase_rad: np.ndarray) -> np.ndarray:
        # set_phase's path for floating phase: its float32 phase buffer, the wavefront correction, then
        # _phase2gray (into a new array: the device's display is only written by show)
        device, xp = self.device, self.device.xp
        phase = xp.asarray(phase_rad, dtype=device.phase.dtype)
        if device.phase_correct and "phase" in device.source:
            phase += xp.asarray(device._get_source_phase())
        return _as_numpy(device._phase2gray(phase, out=xp.empty(device.shape, dtype=device.dtype)))

    def _show(self, frame: np.ndarray) -> None:
        shown = self.device.set_phase(frame, settle=False)
        if not np.array_equal(_as_numpy(shown), frame):
            raise DeviceFault("slmsuite displayed other data than the frame sent", device=self.name)

    def _close(self) -> None:
        self.device.close()

    def settings(self) -> dict:
        s = super().settings()
        s.update(device_class=f"{type(self.device).__module__}:{type(self.device).__qualname__}",
                 device_name=str(getattr(self.device, "name", "")))
        return s


# ============================================================================================= camera
@dataclass
class SlmsuiteCameraConfig:
    """Bench-YAML settings of an ``slmsuite-camera`` (see :class:`SlmsuiteCamera`)."""

    device_class: str
    device_kwargs: dict[str, Any] = field(default_factory=dict)
    pass_slm: bool = False
    pixel_pitch_m: float | None = None
    exposure_s: float | None = None
    exposure_limits_s: tuple[float, float] | None = None
    timeout_s: float = 1.0


class SlmsuiteCamera(Camera):
    """A slmsuite camera (``slmsuite.hardware.cameras.camera.Camera`` subclass) as a
    :class:`~drivers.camera.Camera`.

    Parameters
    ----------
    device : slmsuite Camera
        An opened slmsuite camera; closed with this adapter.
    pixel_pitch_m : float, optional
        Pixel pitch (m); default from the device's ``pitch_um`` (required when it has none).
    exposure_s : float, optional
        Exposure (s) to start with, set on the device. Default: the device's own, moved to the nearer
        limit if it lies outside ``exposure_limits_s`` (slmsuite's simulated camera starts at 1 s).
    exposure_limits_s : (float, float), optional
        Default: the device's ``exposure_bounds_s``, else :data:`DEFAULT_EXPOSURE_LIMITS_S`.
    timeout_s : float
        Default timeout (s) of a frame, beyond the exposure.
    name, clock
        See :class:`~drivers.device.Device`.
    """

    Config = SlmsuiteCameraConfig

    def __init__(self, device, *, pixel_pitch_m: float | None = None, exposure_s: float | None = None,
                 exposure_limits_s=None, timeout_s: float = 1.0, name: str | None = None,
                 clock: Clock | None = None):
        _require_slmsuite(name)
        for attribute in ("get_image", "set_exposure", "get_exposure", "shape", "bitdepth", "close"):
            if not hasattr(device, attribute):
                raise InputError(f"device must be a slmsuite camera (lacks '{attribute}'), got {type(device).__name__}")
        self.device = device
        label = name or type(self).__name__
        if pixel_pitch_m is None:
            pixel_pitch_m = _pitch_m(getattr(device, "pitch_um", None), label)
            if pixel_pitch_m is None:
                raise InputError(f"{label}: pass pixel_pitch_m (the slmsuite camera has no pitch_um)")
        if exposure_limits_s is None:
            bounds = getattr(device, "exposure_bounds_s", None)
            exposure_limits_s = DEFAULT_EXPOSURE_LIMITS_S if bounds is None else tuple(float(b) for b in bounds)
        lo, hi = self._check_limits("exposure_limits_s", exposure_limits_s)
        with backend_errors("read exposure", label):
            current_s = float(device.get_exposure())
        if exposure_s is None and not lo <= current_s <= hi:
            exposure_s = min(max(current_s, lo), hi)
            log.info("%s: the device's exposure %g s lies outside [%g, %g] s; starting at %g s",
                     label, current_s, lo, hi, exposure_s)
        if exposure_s is not None:
            exposure_s = self._within("exposure_s", exposure_s, (lo, hi), "s")
            with backend_errors("set exposure", label):
                current_s = float(device.set_exposure(exposure_s))
        if hasattr(device, "capture_attempts"):
            device.capture_attempts = 1  # the bench retries; slmsuite's own attempts would multiply them
        super().__init__(sensor_shape=tuple(int(v) for v in device.shape), bit_depth=int(device.bitdepth),
                         pixel_pitch_m=pixel_pitch_m, exposure_s=current_s, exposure_limits_s=(lo, hi),
                         dtype=getattr(device, "dtype", None),
                         name=name, clock=clock, default_timeout_s=timeout_s)

    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        """Build the slmsuite camera named by ``device_class``; with ``pass_slm`` its first argument is
        the bench's SLM (an :class:`SlmsuiteSLM`, opened before the camera)."""
        config = build(cls.Config, dict(settings), path)
        device_class = _import_device_class(config.device_class, f"{path}.device_class" if path else "device_class")
        args = ()
        if config.pass_slm:
            peer = context.peers.get("slm")
            if not isinstance(peer, SlmsuiteSLM):
                raise ConfigError(f"{path}.pass_slm" if path else "pass_slm", True,
                                  f"a bench SLM of backend slmsuite-slm, found {type(peer).__name__}")
            args = (peer.device,)
        with backend_errors(f"open {config.device_class}", path or None):
            device = device_class(*args, **config.device_kwargs)
        with config_errors(vars(config), path):
            return _wrap_or_close(device, lambda: cls(device, pixel_pitch_m=config.pixel_pitch_m,
                                                      exposure_s=config.exposure_s,
                                                      exposure_limits_s=config.exposure_limits_s,
                                                      timeout_s=config.timeout_s, name=path or None,
                                                      clock=context.clock))

    def _snap(self, timeout_s: float) -> RawFrame:
        # timeout_s already includes the exposure (Camera.snap); slmsuite adds it again, so take it off
        wait_s = max(timeout_s - self.exposure_s, 1e-3)
        return RawFrame(_as_numpy(self.device.get_image(timeout_s=wait_s, hdr=False, averaging=False)))

    def _set_exposure(self, exposure_s: float) -> float:
        return float(self.device.set_exposure(exposure_s))

    def _set_roi(self, roi):
        """slmsuite's window of interest (``set_woi``, ``(x0, w, y0, h)``: on the hardware where the camera
        has one, else slmsuite's own crop); the window it reports back is what frames hold."""
        r0, c0, rows, cols = roi
        full = roi == (0, 0, *self.sensor_shape)
        x0, w, y0, h = (int(v) for v in self.device.set_woi(None if full else (c0, cols, r0, rows)))
        return y0, x0, h, w

    def _flush(self) -> int:
        self.device.flush(timeout_s=self.default_timeout_s)
        return 0  # slmsuite does not report how many frames it dropped

    def _close(self) -> None:
        self.device.close()

    def _extra_settings(self) -> dict:
        return {"device_class": f"{type(self.device).__module__}:{type(self.device).__qualname__}",
                "device_name": str(getattr(self.device, "name", ""))}


def _wrap_or_close(device, wrap):
    """``wrap()`` the opened slmsuite ``device``; close the device if wrapping fails, then re-raise."""
    try:
        return wrap()
    except BaseException:
        device.close()
        raise
