"""Simulated SLM and camera: a bench without hardware, with realistic timing and injected faults.

The :class:`SimulatedCamera` looks at a :class:`SimulatedSLM` through an optical system
(:class:`simulator.system.OpticalSystem`: the design, seeded fabrication errors, display, sensor; the one
description training and calibration use too), or through any ``render(gray, exposure_s) -> frame``
callable. The camera holds no physics: it asks the system for the frame at its exposure. Both run on one clock (a
:class:`~drivers.clock.VirtualClock` in tests, so nothing sleeps for real).

Timing model
------------
SLM: a frame shown at time ``t`` (when ``show`` returns) starts to appear at ``t + latency_s`` and
changes linearly from the previous frame to the new one until ``t + latency_s + settle_s``.

Camera: in ``software`` trigger mode each ``snap`` starts an exposure at once; the frame is ready
``exposure_s + readout_s`` later. In ``free-run`` mode frame ``k`` of a run started at ``t0`` is
exposed over ``[t0 + k P, t0 + k P + exposure_s]`` with ``P = max(frame_period_s, exposure_s)`` and is
ready ``readout_s`` after that; ready frames wait in a buffer of ``buffer_frames`` (when it is full,
newer frames are lost), so a frame read long after it was exposed is *stale*; ``flush`` empties the
buffer. Changing the exposure or the trigger mode restarts the run.

Every frame is rendered from the time average of what the SLM displayed during its exposure. Its
``meta`` records ``slm_frame_id``: the id of the SLM frame it saw if that frame had fully settled
before the exposure started and stayed up until it ended, else None, with the mixture of SLM frames
in ``slm_mix`` ({frame id: fraction of the exposure}).
"""

from __future__ import annotations

import collections
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from onn_core.errors import ConfigError

from .bench_fits import check_slm_fits
from .camera import Camera
from .device import OpenContext, config_errors
from .frames import RawFrame
from .slm import SLM
from .clock import Clock
from .faults import CAMERA_ONLY, FaultConfig, FaultInjector
from .window import DisplayWindow, window_from_config, window_image
from onn_core.lut import LUT

log = logging.getLogger(__name__)

#: SLM frames kept for rendering frames exposed in the past.
HISTORY_FRAMES = 64

Render = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class _Shown:
    frame_id: int
    image: np.ndarray
    visible_at_s: float
    settled_at_s: float


def _raise_fault(fault: str, device: str, clock: Clock, limit_s: float) -> None:
    """Act out a drawn fault that ends the call (the caller handles stale/drop)."""
    log.debug("%s: injected fault %r at t=%.6f s", device, fault, clock.now())
    if fault == "disconnect":
        raise ConnectionError(f"simulated: {device} disconnected")
    if fault == "exception":
        raise OSError(f"simulated: {device} transfer error")
    if fault in ("timeout", "hang", "hung"):
        clock.sleep(limit_s)
        raise TimeoutError(f"simulated: {device} did not answer within {limit_s:g} s ({fault})")


class SimulatedSLM(SLM):
    """An SLM that remembers what it displayed when (for :class:`SimulatedCamera`).

    Parameters are those of :class:`~drivers.slm.SLM`, plus ``faults`` (:class:`FaultConfig`; stale
    and drop faults do not apply to an SLM) and ``window``: ``(size, offset, zoom)`` of
    :func:`drivers.window.window_placement` for a display whose image sits, ``zoom`` times enlarged, in a
    larger screen (YAML ``slm.window``, as the display-window SLM's; ``pixel_pitch_m`` is then a shown
    image pixel's, ``zoom`` times the screen's). :meth:`screen` is what the whole screen shows. The
    optics image only the image's region: the rest of the screen is black (an SLM shows only its
    image), so a wider field would add no light.
    """

    @dataclass
    class Config:
        shape: tuple[int, ...] = (64, 64)
        bit_depth: int = 8
        pixel_pitch_m: float = 8e-6
        modulation: Literal["amplitude", "phase"] = "amplitude"
        wavelength_m: float | None = None
        latency_s: float = 0.010
        settle_s: float = 0.005
        lut_file: str | None = None
        gamma: float | None = None
        default_timeout_s: float = 1.0
        faults: FaultConfig = field(default_factory=FaultConfig)
        window: DisplayWindow | None = None  # the image zoomed inside a larger screen (drivers.window)

    def __init__(self, *, faults: FaultConfig | None = None, window=None, **kwargs):
        super().__init__(**kwargs)
        self.window = window
        self.faults = FaultInjector(faults)
        if any(getattr(self.faults.config, f"{name}_rate") for name in CAMERA_ONLY):
            raise ValueError("stale_rate and drop_rate apply to cameras only, not to an SLM")
        blank = np.zeros(self.shape, dtype=self.dtype)
        blank.flags.writeable = False
        self._history: collections.deque[_Shown] = collections.deque(maxlen=HISTORY_FRAMES)
        self._history.append(_Shown(-1, blank, -np.inf, -np.inf))

    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        from onn_core.config import build

        cfg = build(cls.Config, dict(settings), path)
        kind = "phase" if cfg.modulation == "phase" else "intensity"
        lut = None
        if cfg.lut_file is not None and cfg.gamma is not None:
            raise ConfigError(f"{path}.gamma", cfg.gamma, "null when lut_file is given (one LUT source)")
        window = None if cfg.window is None else window_from_config(cfg.window, cfg.shape, path)
        with config_errors(vars(cfg), path):
            if cfg.lut_file is not None:
                lut = LUT.from_file(context.resolve(cfg.lut_file), kind)
            elif cfg.gamma is not None:
                lut = LUT.gamma(cfg.bit_depth, cfg.gamma)
            zoom = 1 if window is None else window[2]
            return cls(
                shape=cfg.shape, bit_depth=cfg.bit_depth, pixel_pitch_m=zoom * cfg.pixel_pitch_m, modulation=cfg.modulation,
                lut=lut, wavelength_m=cfg.wavelength_m, latency_s=cfg.latency_s, settle_s=cfg.settle_s,
                default_timeout_s=cfg.default_timeout_s, faults=cfg.faults, window=window, name=path or None,
                clock=context.clock,
            )

    def settings(self) -> dict:
        s = super().settings()
        if self.window is not None:
            size, offset, zoom = self.window
            s.update(window_size=list(size), image_offset=list(offset), zoom=zoom)
        return s

    def screen(self) -> np.ndarray:
        """What the whole screen shows now (the last frame shown, in its window: :func:`drivers.window.window_image`;
        without a window, that frame)."""
        frame = self._history[-1].image
        return frame if self.window is None else window_image(frame, *self.window)

    def _show(self, frame: np.ndarray) -> None:
        fault = self.faults.draw(self.clock.now(), allowed=("timeout", "exception", "hang"))
        if fault is not None:
            _raise_fault(fault, self.name, self.clock, self.default_timeout_s)
        t = self.clock.now()
        visible = t + self.latency_s
        self._history.append(_Shown(self.frame_id + 1, frame, visible, visible + self.settle_s))
        self.faults.delivered()

    def exposure_mix(self, t0_s: float, t1_s: float) -> dict[int, float]:
        """Fraction of the interval ``[t0_s, t1_s]`` during which each SLM frame id was displayed.

        During a frame's settle time its weight ramps linearly from 0 to 1 (and the previous frame's
        from 1 to 0).
        """
        history = self._history
        first = 0
        for i in range(len(history) - 1, -1, -1):  # the newest frame visible at t0
            if history[i].visible_at_s <= t0_s:
                first = i
                break
        if first > 0 and t0_s < history[first].settled_at_s:
            first -= 1  # still settling at t0: the frame before is partly visible
        entries = [history[i] for i in range(first, len(history))]
        if len(entries) == 1 or (entries[1].visible_at_s >= t1_s and t0_s >= entries[0].settled_at_s):
            return {entries[0].frame_id: 1.0}
        t1_s = max(t1_s, t0_s)
        cuts = {t0_s, t1_s}
        for e in entries:
            cuts.update(t for t in (e.visible_at_s, e.settled_at_s) if t0_s < t < t1_s)
        times = sorted(cuts)
        mix: dict[int, float] = collections.defaultdict(float)
        if len(times) == 1:  # zero-length exposure: the state at t0
            return self._weights_at(entries, t0_s)
        span = t1_s - t0_s
        for a, b in zip(times[:-1], times[1:]):
            wa, wb = self._weights_at(entries, a), self._weights_at(entries, b, left=True)
            for fid in set(wa) | set(wb):
                mix[fid] += 0.5 * (wa.get(fid, 0.0) + wb.get(fid, 0.0)) * (b - a) / span
        return {fid: w for fid, w in mix.items() if w > 1e-12}

    @staticmethod
    def _weights_at(entries, t: float, left: bool = False) -> dict[int, float]:
        """Weights of the displayed frames at time ``t`` (limit from the left when ``left``)."""
        current = entries[0]
        previous = None
        for e in entries[1:]:
            if e.visible_at_s < t or (not left and e.visible_at_s == t):
                previous, current = current, e
        if previous is None or t >= current.settled_at_s or current.settled_at_s == current.visible_at_s:
            return {current.frame_id: 1.0}
        f = (t - current.visible_at_s) / (current.settled_at_s - current.visible_at_s)
        return {previous.frame_id: 1.0 - f, current.frame_id: f}

    def displayed(self, mix: dict[int, float]) -> np.ndarray:
        """The time-averaged gray image of an exposure ``mix``: the exact frame when it is pure, else
        the rounded weighted mean (same dtype)."""
        images = {}
        for e in reversed(self._history):
            if e.frame_id in mix:
                images[e.frame_id] = e.image
                if len(images) == len(mix):
                    break
        if len(images) < len(mix):
            missing = sorted(set(mix) - set(images))
            raise RuntimeError(f"SLM frames {missing} are older than the simulated history of {HISTORY_FRAMES}")
        if len(mix) == 1:
            return images[next(iter(mix))]
        acc = sum(w * images[fid].astype(np.float64) for fid, w in mix.items())
        return np.rint(acc).astype(self.dtype)

    def settled_at(self, frame_id: int) -> float:
        """Clock time (s) at which SLM frame ``frame_id`` had settled (inf if unknown)."""
        for e in reversed(self._history):
            if e.frame_id == frame_id:
                return e.settled_at_s
        return np.inf


class SimulatedCamera(Camera):
    """A camera that sees a :class:`SimulatedSLM` through a render function.

    Parameters
    ----------
    slm : SimulatedSLM
        The SLM it looks at (same clock).
    render : callable ``(gray, exposure_s) -> frame``
        The optics and sensor: SLM gray image (the SLM's shape and dtype) and exposure (s) -> camera
        frame (rows, cols) of an unsigned integer dtype, e.g. ``OpticalSystem.render``. One that also takes
        ``roi=(row0, col0, rows, cols)`` and returns just that region (``LabRenderer.render``) is asked for the
        region of interest only, so a small ROI of a large sensor renders at its share of the cost.
    exposure_s, exposure_limits_s, exposure_step_s : float, (float, float), float
        Exposure (s), its limits and its resolution (the read-back value is rounded to it).
    readout_s : float
        Time from the end of an exposure until the frame is delivered (s).
    frame_period_s : float
        Minimum frame period in free-run mode (s).
    trigger_mode : {"software", "free-run"}
    buffer_frames : int
        Frames a free-running camera buffers.
    bit_depth, pixel_pitch_m, saturation_dn
        As :class:`~drivers.camera.Camera` (``saturation_dn`` default: the dtype's maximum).
    native_black_level_dn : float
        Black level of the rendered frames (DN). Setting ``black_level`` moves it; the simulated ``gain``
        multiplies the signal above it: ``DN = (rendered - native) * gain + black_level``.
    gain_limits : (float, float)
        Limits of the simulated gain.
    faults : FaultConfig
        Injected faults.
    """

    @dataclass
    class Config:
        render: Literal["optics", "direct"] = "optics"
        optics: Any = None
        direct_dn_per_level_s: float = 1000.0
        pixel_pitch_m: float | None = None
        exposure_s: float | None = None
        exposure_limits_s: tuple[float, float] = (1e-5, 10.0)
        exposure_step_s: float = 1e-5
        readout_s: float = 0.002
        frame_period_s: float = 0.0
        trigger_mode: Literal["software", "free-run"] = "software"
        buffer_frames: int = 4
        gain_limits: tuple[float, float] = (1.0, 16.0)
        default_timeout_s: float = 1.0
        faults: FaultConfig = field(default_factory=FaultConfig)
        placement: Any = None  # a lab-like camera: simulator.placement.Placement (null: the design's frame)
        defects: Any = None    # its sensor's fixed pattern: simulator.placement.SensorDefects

    def __init__(
        self,
        slm: SimulatedSLM,
        render: Render,
        *,
        exposure_s: float = 0.010,
        exposure_limits_s=(1e-5, 10.0),
        exposure_step_s: float = 1e-5,
        readout_s: float = 0.002,
        frame_period_s: float = 0.0,
        trigger_mode: str = "software",
        buffer_frames: int = 4,
        bit_depth: int | None = None,
        pixel_pitch_m: float = 3.45e-6,
        saturation_dn: float | None = None,
        native_black_level_dn: float = 0.0,
        gain_limits=(1.0, 16.0),
        faults: FaultConfig | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        default_timeout_s: float = 1.0,
    ):
        if not isinstance(slm, SimulatedSLM):
            raise ValueError(f"a simulated camera needs a SimulatedSLM to look at, got {type(slm).__name__}")
        clock = clock if clock is not None else slm.clock
        if clock is not slm.clock:
            raise ValueError("the simulated camera and its SLM must share one clock")
        if not exposure_step_s > 0:
            raise ValueError(f"exposure_step_s must be > 0 s, got {exposure_step_s!r}")
        for field_name, value in (("readout_s", readout_s), ("frame_period_s", frame_period_s)):
            if not value >= 0:
                raise ValueError(f"{field_name} must be >= 0 s, got {value!r}")
        if not isinstance(buffer_frames, int) or buffer_frames < 1:
            raise ValueError(f"buffer_frames must be an integer >= 1, got {buffer_frames!r}")
        self.slm, self._render = slm, render
        self._render_roi = _takes_roi(render)  # it can render just the region of interest (LabRenderer.render)
        self.optics = None  # the OpticalSystem it renders through, when opened from an optics config
        self.exposure_step_s, self.readout_s, self.frame_period_s = exposure_step_s, readout_s, frame_period_s
        self.buffer_frames = buffer_frames
        self.native_black_level_dn = float(native_black_level_dn)
        probe = self._render_checked(np.zeros(slm.shape, slm.dtype), exposure_s)
        dtype = probe.dtype
        if bit_depth is None:
            bit_depth = dtype.itemsize * 8
        super().__init__(
            sensor_shape=probe.shape, bit_depth=bit_depth, pixel_pitch_m=pixel_pitch_m,
            exposure_s=exposure_s, exposure_limits_s=exposure_limits_s, dtype=dtype,
            gain=1.0, gain_limits=gain_limits, black_level=native_black_level_dn, trigger_mode=trigger_mode,
            saturation_dn=saturation_dn if saturation_dn is not None else float(np.iinfo(dtype).max),
            name=name, clock=clock, default_timeout_s=default_timeout_s,
        )
        self._exposure_s = self._quantise(self._exposure_s)
        self.faults = FaultInjector(faults)
        self._next_index = 0          # index of the next frame to be exposed
        self._buffer: collections.deque[int] = collections.deque()
        self._last_raw: RawFrame | None = None
        self.frames_lost = 0          # free-run frames lost to a full buffer
        self._restart_run()

    @classmethod
    def from_config(cls, settings, context: OpenContext, path: str = ""):
        from onn_core.config import build

        if "frontend" in settings:
            raise ConfigError(f"{path}.frontend", settings["frontend"], "no such field: the optical system is now "
                              f"{path}.optics (an optics YAML, see examples/optics.yaml; docs/migration.md)")
        cfg = build(cls.Config, dict(settings), path)
        slm = context.peers.get("slm")
        if not isinstance(slm, SimulatedSLM):
            raise ConfigError(f"{path}.backend" if path else "backend", "simulated-camera",
                              "a real camera backend, or slm.backend: simulated-slm (a simulated camera can only look at a simulated SLM)")
        if cfg.render == "direct":
            for name in ("optics", "placement", "defects"):
                if getattr(cfg, name) is not None:
                    raise ConfigError(f"{path}.{name}", getattr(cfg, name), "null with render: direct (no optics simulated)")
            if not cfg.direct_dn_per_level_s > 0:
                raise ConfigError(f"{path}.direct_dn_per_level_s", cfg.direct_dn_per_level_s, "a number > 0")
            render, bit_depth, saturation_dn, black = direct_render(cfg.direct_dn_per_level_s), 16, 65535.0, 0.0
            pixel_pitch_m = cfg.pixel_pitch_m if cfg.pixel_pitch_m is not None else slm.pixel_pitch_m
            exposure_s = cfg.exposure_s if cfg.exposure_s is not None else 0.010
        else:
            optics_path = f"{path}.optics" if path else "optics"
            system = load_optics(cfg.optics, context, optics_path)
            check_slm_fits(slm, system, optics_path=optics_path)
            pixel_pitch_m = system.geometry.sensor_pixel_pitch_m
            if cfg.pixel_pitch_m is not None and cfg.pixel_pitch_m != pixel_pitch_m:
                raise ConfigError(f"{path}.pixel_pitch_m", cfg.pixel_pitch_m,
                                  f"null or {optics_path}.geometry.sensor_pixel_pitch_m = {pixel_pitch_m!r} (one source)")
            render = system.render
            if cfg.placement is not None or cfg.defects is not None:  # a lab-like camera (simulator.placement)
                from simulator.placement import lab_renderer

                if cfg.placement is None:
                    raise ConfigError(f"{path}.placement", None, f"a placement mapping when {path}.defects is given")
                lab = lab_renderer(system, cfg.placement, cfg.defects, path)
                render, pixel_pitch_m = lab.render, lab.placement.pixel_pitch_m(pixel_pitch_m)
            bit_depth, saturation_dn, black = sensor_format(system.sensor, optics_path)
            exposure_s = cfg.exposure_s if cfg.exposure_s is not None else system.photometry.exposure_s
        kwargs = {k: getattr(cfg, k) for k in ("exposure_limits_s", "exposure_step_s", "readout_s", "frame_period_s",
                                               "trigger_mode", "buffer_frames", "gain_limits", "default_timeout_s", "faults")}
        with config_errors({**vars(cfg), "exposure_s": exposure_s, "pixel_pitch_m": pixel_pitch_m}, path):
            camera = cls(slm, render, bit_depth=bit_depth, saturation_dn=saturation_dn, native_black_level_dn=black,
                         name=path or None, clock=context.clock, pixel_pitch_m=pixel_pitch_m, exposure_s=exposure_s, **kwargs)
        camera.optics = system if cfg.render == "optics" else None
        return camera

    # ------------------------------------------------------------------------------ rendering
    def _render_checked(self, gray: np.ndarray, exposure_s: float, roi=None) -> np.ndarray:
        image = np.asarray(self._render(gray, exposure_s) if roi is None else self._render(gray, exposure_s, roi=roi))
        if image.ndim != 2 or not np.issubdtype(image.dtype, np.unsignedinteger):
            raise ValueError(f"render must return a (rows, cols) unsigned integer frame, got {image.shape} {image.dtype}")
        if roi is not None and image.shape != tuple(roi[2:]):
            raise ValueError(f"render of the region {roi} returned a {image.shape} frame, expected {tuple(roi[2:])}")
        return image

    def _expose(self, index: int, t0_s: float) -> RawFrame:
        """Render the frame exposed over ``[t0_s, t0_s + exposure_s]`` (only the region of interest when
        the render function can: ``render(gray, exposure_s, roi=(row0, col0, rows, cols))``)."""
        mix = self.slm.exposure_mix(t0_s, t0_s + self._exposure_s)
        r0, c0, nr, nc = self._roi
        cropped = (nr, nc) != self.sensor_shape
        window = self._roi if cropped and self._render_roi else None
        image = self._render_checked(self.slm.displayed(mix), self._exposure_s, window)
        native = self.native_black_level_dn
        if self._gain != 1.0 or self._black_level != native:
            image = np.clip(np.rint((image - native) * self._gain + self._black_level), 0, self.saturation_dn).astype(self.dtype)
        if cropped and window is None:
            image = np.ascontiguousarray(image[r0:r0 + nr, c0:c0 + nc])
        clean = len(mix) == 1 and t0_s >= self.slm.settled_at(next(iter(mix)))
        meta = {"slm_frame_id": next(iter(mix)) if clean else None}
        if not clean:
            meta["slm_mix"] = mix
        return RawFrame(image, t0_s, index, meta)

    # ------------------------------------------------------------------------------ timing
    def _quantise(self, exposure_s: float) -> float:
        return max(self.exposure_step_s, round(exposure_s / self.exposure_step_s) * self.exposure_step_s)

    @property
    def period_s(self) -> float:
        """Free-run frame period (s)."""
        return max(self.frame_period_s, self._exposure_s)

    def _restart_run(self) -> None:
        """Start a new free-run sequence now (frame k exposed from ``t0 + k * period``)."""
        self._run_t0 = self.clock.now()
        self._run_index0 = self._next_index
        self._buffer.clear()

    def _start_of(self, index: int) -> float:
        return self._run_t0 + (index - self._run_index0) * self.period_s

    def _ready_at(self, index: int) -> float:
        return self._start_of(index) + self._exposure_s + self.readout_s

    def _advance(self) -> None:
        """Move frames completed by now into the buffer (those beyond its size are lost)."""
        now = self.clock.now()
        last = self._run_index0 + int(np.floor((now - self._run_t0 - self._exposure_s - self.readout_s) / self.period_s + 1e-9))
        if last < self._next_index:
            return
        room = self.buffer_frames - len(self._buffer)
        kept = range(self._next_index, min(last + 1, self._next_index + max(room, 0)))
        self._buffer.extend(kept)
        self.frames_lost += (last + 1 - self._next_index) - len(kept)
        self._next_index = last + 1

    # ------------------------------------------------------------------------------ hooks
    def _set_exposure(self, exposure_s: float) -> float:
        self._exposure_s = self._quantise(exposure_s)
        if self._trigger_mode == "free-run":
            self._restart_run()
        return self._exposure_s

    def _set_gain(self, gain: float) -> float:
        return gain

    def _set_black_level(self, black_level: float) -> float:
        return black_level

    def _set_roi(self, roi):
        return roi

    def _set_trigger_mode(self, mode: str) -> None:
        self._trigger_mode = mode
        self._restart_run()

    def _flush(self) -> int:
        if self.faults.disconnected:
            raise ConnectionError(f"simulated: {self.name} disconnected")
        if self._trigger_mode == "software":
            return 0
        self._advance()
        dropped = len(self._buffer)
        self._buffer.clear()
        return dropped

    def _snap(self, timeout_s: float) -> RawFrame:
        fault = self.faults.draw(self.clock.now())
        if fault in ("stale", "drop", None):
            raw = self._deliver(timeout_s, fault)
        else:
            _raise_fault(fault, self.name, self.clock, timeout_s)
        self.faults.delivered()
        self._last_raw = raw
        return raw

    def _deliver(self, timeout_s: float, fault: str | None) -> RawFrame:
        now = self.clock.now()
        deadline = now + timeout_s
        if fault == "stale" and self._last_raw is not None:
            self.clock.sleep(self.readout_s)
            return self._last_raw
        if self._trigger_mode == "software":
            if fault == "drop":  # the first exposure is lost; the camera exposes again
                self._next_index += 1
                now += self.period_s + self.readout_s
            index, t0 = self._next_index, now
            ready = t0 + self._exposure_s + self.readout_s
        else:
            self._advance()
            if fault == "drop" and self._buffer:
                self._buffer.popleft()
            index = self._buffer[0] if self._buffer else self._next_index
            ready = max(now, self._ready_at(index))
            t0 = self._start_of(index)
        if ready > deadline:
            self.clock.sleep_until(deadline)
            raise TimeoutError(f"simulated: frame not ready within {timeout_s:g} s")
        if self._trigger_mode == "software":
            # nothing else runs while this call waits, so the frame can be rendered during the wait
            raw = self._expose(index, t0)
            self.clock.sleep_until(ready)
            self._next_index = index + 1
            return raw
        self.clock.sleep_until(ready)
        self._advance()
        self._buffer.popleft()
        return self._expose(index, t0)

    def _extra_settings(self) -> dict:
        return {"readout_s": self.readout_s, "frame_period_s": self.frame_period_s, "buffer_frames": self.buffer_frames}


def _takes_roi(render: Render) -> bool:
    """Whether ``render`` takes a ``roi`` keyword (renders only a region of the sensor)."""
    try:
        return "roi" in inspect.signature(render).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


# ============================================================================================ optics
def load_optics(spec, context: OpenContext, path: str):
    """A :class:`simulator.system.OpticalSystem` (eval mode) from a YAML path (relative to the bench file)
    or an inline mapping (relative design files resolve against the bench file's folder)."""
    from simulator.system import OpticalSystem

    if isinstance(spec, str):
        return OpticalSystem.from_yaml(context.resolve(spec)).eval()
    if isinstance(spec, dict):
        return OpticalSystem.from_config(spec, base_dir=context.base_dir, path=path).eval()
    raise ConfigError(path, spec, "a path to an optics YAML file (e.g. optics.yaml) or a mapping (render: optics)")


def direct_render(dn_per_level_s: float) -> Render:
    """An ideal relay: the camera sees the SLM pixel for pixel, ``DN = gray * dn_per_level_s *
    exposure_s`` (rounded, uint16, clipped at 65535); colour channels are summed."""
    if not dn_per_level_s > 0:
        raise ValueError(f"direct_dn_per_level_s must be > 0, got {dn_per_level_s!r}")

    def render(gray: np.ndarray, exposure_s: float) -> np.ndarray:
        levels = gray.astype(np.float64)
        if levels.ndim == 3:
            levels = levels.sum(axis=2)
        return np.clip(np.rint(levels * (dn_per_level_s * exposure_s)), 0, 65535).astype(np.uint16)

    return render


def sensor_format(sensor, path: str = "optics") -> tuple[int, float, float]:
    """(bit depth, saturated DN, black level DN) of the uint16 frames a simulated sensor delivers.
    Saturation is where clipping may start: the ADC's maximum or the full well's level
    (:attr:`simulator.sensor.SensorModel.saturation_dn`), whichever is lower."""
    if sensor.bit_depth is None:
        return 16, float(sensor.saturation_dn or 65535.0), float(sensor.offset_dn)
    if sensor.max_dn > 65535:
        raise ConfigError(f"{path}.sensor.container_bits", sensor.container_bits or sensor.bit_depth,
                          "at most 16 bits in total (the simulated camera delivers uint16 frames)")
    return int(sensor.bit_depth), float(sensor.saturation_dn), float(round(sensor.offset_dn) * sensor.justify_scale)
