"""Device base classes: :class:`Camera` and :class:`SLM` (two-layer drivers).

The public methods here validate arguments, convert units, apply timeouts, translate backend
exceptions into :mod:`drivers.errors` and record metadata. A backend subclasses :class:`Camera` or
:class:`SLM`, opens its hardware in ``__init__`` and then calls ``super().__init__`` with the device's
*current* state (shape, bit depth, exposure read back from the hardware, ...), and fills in a few small
hooks:

- ``Camera._snap(timeout_s)`` (required): return one :class:`RawFrame` within ``timeout_s`` seconds
  (exposure included) or raise ``TimeoutError`` / :class:`DeviceTimeout`;
- ``Camera._set_exposure(exposure_s)`` (required): apply an exposure (s); return the value read back;
- ``Camera._set_gain``, ``_set_black_level``, ``_set_roi``, ``_set_trigger_mode`` (optional): the same
  idea for the other settings;
- ``Camera._flush()`` (optional): drop buffered frames; return how many;
- ``SLM._show(frame)`` (required): send an integer frame (already validated) to the device;
- ``SLM._phase_to_gray(phase_rad)`` (optional): the gray levels of a phase pattern (default: through
  :attr:`SLM.lut`), for a device with its own phase conversion;
- ``_close()`` (optional): release the hardware (called once).

Hooks may raise anything: the base class re-raises it as the matching :class:`DeviceError` chained
to the original. Hooks that are not implemented raise :class:`UnsupportedFeature`.

Every device is a context manager, ``close()`` is idempotent, and a closed device raises
:class:`DeviceClosed`. Devices read time from a :class:`~drivers.clock.Clock` (``clock=``), never from
``time`` directly, so simulated benches run on a virtual clock in tests.

Opening from YAML: :meth:`Device.from_config` validates the device's settings mapping into the
backend's ``Config`` dataclass (with :func:`onn_core.config.build`, so a bad field is reported with its
YAML path) and passes its fields to the constructor as keyword arguments, plus ``name`` and ``clock``.
A backend whose constructor needs more (a file path relative to the YAML file, a peer device)
overrides :meth:`from_config` and uses the :class:`OpenContext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from onn_core.config import build
from onn_core.errors import ConfigError, InputError
from onn_core.files import resolve_relative
from onn_core.validation import check_positive

from .clock import Clock, RealClock
from .errors import DeviceClosed, DeviceFault, UnsupportedFeature, backend_errors
from onn_core.lut import LUT

TRIGGER_MODES = ("software", "free-run")
MODULATIONS = ("amplitude", "phase")
#: Default per-call timeout (s) of blocking device calls (a camera adds its exposure to it).
DEFAULT_TIMEOUT_S = 1.0


@dataclass
class OpenContext:
    """What a backend may need when it is opened from a bench config.

    Attributes
    ----------
    clock : Clock
        The clock shared by every device of the bench.
    base_dir : Path
        Folder of the YAML file (relative paths in settings are relative to it).
    peers : dict
        Devices of the bench opened so far, by role (``"slm"`` is opened before ``"camera"``).
    """

    clock: Clock
    base_dir: Path = field(default_factory=Path.cwd)
    peers: dict = field(default_factory=dict)

    def resolve(self, path) -> Path:
        """``path`` relative to :attr:`base_dir` (absolute paths unchanged)."""
        return resolve_relative(path, self.base_dir)


@contextlib.contextmanager
def config_errors(settings: Mapping, path: str = ""):
    """Re-raise a bad-value error from opening a device (or bench) from YAML as a :class:`ConfigError`
    that names the YAML field.

    ``settings`` maps the section's field names to the values used (defaults included). The toolkit's
    checks start their message with the parameter's name (``"exposure_s must be in [1e-05, 10] s, got
    -1.0"``): when that name is a key of ``settings``, the error names ``path.<key>`` and its value;
    otherwise it names ``path``. :class:`ConfigError` passes unchanged.
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:  # InputError included
        message = str(exc)
        key = message.split(" ", 1)[0]
        if key in settings:
            raise ConfigError(f"{path}.{key}" if path else key, settings[key], message) from exc
        raise ConfigError(path or "<root>", dict(settings), message) from exc


def integer_dtype_for(bit_depth: int) -> np.dtype:
    """Smallest unsigned container for ``bit_depth`` bits: uint8 up to 8 bits, else uint16."""
    if not isinstance(bit_depth, (int, np.integer)) or not 1 <= bit_depth <= 16:
        raise InputError(f"bit_depth must be an integer in [1, 16], got {bit_depth!r}")
    return np.dtype(np.uint8 if bit_depth <= 8 else np.uint16)


def _check_shape(name: str, shape, ndims: Sequence[int] = (2,)) -> tuple[int, ...]:
    try:
        t = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a tuple of positive integers, got {shape!r}") from None
    if len(t) not in ndims or min(t) < 1:
        raise InputError(f"{name} must be {' or '.join(map(str, ndims))} positive integers, got {shape!r}")
    return t


class Device:
    """Base of every device: name, clock, timeouts, context manager, idempotent close, settings.

    Parameters
    ----------
    name : str, optional
        Name used in errors and logs (default: the class name).
    clock : Clock, optional
        Clock for timestamps and waiting (default: a :class:`RealClock`).
    default_timeout_s : float
        Timeout (s) of blocking calls when none is given.
    """

    #: Role in a bench ("camera", "slm" or another word for auxiliary devices).
    kind = "device"
    #: Dataclass of the YAML settings accepted by :meth:`from_config` (None: the constructor has none).
    Config = None

    def __init__(self, *, name: str | None = None, clock: Clock | None = None, default_timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = name or type(self).__name__
        self.clock = clock if clock is not None else RealClock()
        self.default_timeout_s = check_positive("default_timeout_s", default_timeout_s)
        self._closed = False

    # --------------------------------------------------------------------------------- opening
    @classmethod
    def from_config(cls, settings: Mapping, context: OpenContext, path: str = ""):
        """Open the device from its YAML settings (without the ``backend`` key).

        The default validates ``settings`` into :attr:`Config` and calls
        ``cls(**fields, name=path, clock=context.clock)``; errors name ``path.field`` (the
        constructor's too, see :func:`config_errors`).
        """
        if cls.Config is None:
            if settings:
                key = next(iter(settings))
                raise ConfigError(f"{path}.{key}" if path else key, settings[key], f"no settings (backend {cls.__name__} takes none)")
            return cls(name=path or None, clock=context.clock)
        config = build(cls.Config, dict(settings), path)
        kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        with config_errors(kwargs, path):
            return cls(**kwargs, name=path or None, clock=context.clock)

    # --------------------------------------------------------------------------------- lifetime
    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Release the device. Idempotent: later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        with self._errors("close"):
            self._close()

    def _close(self) -> None:
        """Hook: release the hardware (called once)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosed("used after close()", device=self.name)

    def _errors(self, action: str):
        return backend_errors(action, self.name)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.default_timeout_s if timeout_s is None else check_positive("timeout_s", timeout_s)

    def _unsupported(self, feature: str):
        return UnsupportedFeature(f"{type(self).__name__} cannot {feature}", device=self.name)

    # --------------------------------------------------------------------------------- settings
    def settings(self) -> dict:
        """Snapshot of the device's settings as plain values (for metadata files)."""
        return {"name": self.name, "backend": type(self).__name__, "kind": self.kind}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} ({state})>"


# =============================================================================================== camera
@dataclass(frozen=True)
class RawFrame:
    """What a camera backend's ``_snap`` returns.

    Attributes
    ----------
    image : np.ndarray
        (rows, cols) or (rows, cols, channels) of the camera's dtype, rows/cols of the current ROI.
    timestamp_s : float, optional
        Start of the exposure on the camera's clock (s), when the device reports it. None: the device
        does not say; the base class then records what it knows (see :attr:`Frame.timing`).
    index : int, optional
        The device's frame counter. None: the base class counts frames itself.
    meta : mapping
        Backend-specific extras, copied into :attr:`Frame.meta`.
    """

    image: np.ndarray
    timestamp_s: float | None = None
    index: int | None = None
    meta: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """One camera frame and its metadata.

    Attributes
    ----------
    image : np.ndarray
        (rows, cols) or (rows, cols, channels): the camera's integer dtype for snapped frames, float64
        for averaged and high-dynamic-range frames (counts at ``exposure_s``, black level included for
        averages and subtracted for HDR).
    index : int
        Frame counter (the device's when it has one).
    timestamp_s : float
        Start of the exposure on the camera's clock (s), as far as it is known (see ``timing``).
    exposure_s : float
        Exposure time (s).
    gain : float
        Gain when the frame was taken.
    settings : mapping
        :meth:`Camera.settings` snapshot when the frame was taken.
    meta : mapping
        Backend extras (e.g. ``slm_frame_id`` for the simulated camera) and, for averaged/HDR frames,
        how they were made.
    timing : {"device", "triggered", "estimated"}
        What ``timestamp_s`` rests on. ``"device"``: the camera's own timestamp of the exposure start.
        ``"triggered"``: the camera has none, but it is in software-trigger mode, so the exposure
        started at or after ``timestamp_s``, the time the :meth:`Camera.snap` call began (a recorded
        file or a simulator may return at once). ``"estimated"``: a free-running camera without
        timestamps; ``timestamp_s`` is the time the frame arrived minus the exposure, and the exposure
        may have started earlier (only the frame counter orders such frames, see
        :meth:`drivers.bench.Bench.measure`).
    """

    image: np.ndarray
    index: int
    timestamp_s: float
    exposure_s: float
    gain: float
    settings: Mapping
    meta: Mapping = field(default_factory=dict)
    timing: str = "estimated"


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
        self.sensor_shape = _check_shape("sensor_shape", sensor_shape)
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
        """Region of interest ``(row0, col0, rows, cols)`` in sensor pixels."""
        return self._roi

    @roi.setter
    def roi(self, value) -> None:
        """Set the ROI; ``None`` selects the full sensor."""
        self._check_open()
        roi = (0, 0, *self.sensor_shape) if value is None else self._check_roi(value)
        with self._errors("set roi"):
            self._roi = tuple(int(v) for v in self._set_roi(roi))
        self._settings_cache = None

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
        original = self._exposure_s
        signal = weight = None
        frames: list[Frame] = []
        try:
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
        finally:
            if not self._closed and self._exposure_s != original:
                self.exposure_s = original
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

    def _frame_from(self, raw: RawFrame, requested_s: float) -> Frame:
        image = raw.image
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[:2] != self.shape or image.dtype != self.dtype:
            got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
            raise DeviceFault(f"backend returned a frame {got}, expected {self.shape} {self.dtype}", device=self.name)
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
        if roi == (0, 0, *self.sensor_shape):
            return roi
        raise self._unsupported("set a region of interest")

    def _set_trigger_mode(self, mode: str) -> None:
        if mode != self._trigger_mode:
            raise self._unsupported(f"switch to {mode} trigger mode")

    def _flush(self) -> int:
        return 0


# =============================================================================================== SLM
class SLM(Device):
    """A spatial light modulator or display: amplitude (OLED, LCD, DMD) or phase (LCoS) modulation.

    Parameters
    ----------
    shape : (rows, cols) or (rows, cols, channels)
        Frame shape in pixels.
    bit_depth : int
        Bits per gray level; frames are uint8 up to 8 bits, else uint16.
    pixel_pitch_m : float
        Pixel pitch (m).
    modulation : {"amplitude", "phase"}
        What a gray level sets.
    lut : LUT, optional
        Gray level -> intensity or phase (default: linear, of the modulation's kind).
    wavelength_m : float, optional
        Design wavelength (m); phase LUTs hold at this wavelength.
    latency_s : float
        Time from the return of :meth:`show` until the new frame starts to appear (s).
    settle_s : float
        Time the frame then takes to settle (liquid-crystal response, s).
    """

    kind = "slm"

    def __init__(
        self,
        *,
        shape,
        bit_depth: int,
        pixel_pitch_m: float,
        modulation: str = "amplitude",
        lut: LUT | None = None,
        wavelength_m: float | None = None,
        latency_s: float = 0.0,
        settle_s: float = 0.0,
        name: str | None = None,
        clock: Clock | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(name=name, clock=clock, default_timeout_s=default_timeout_s)
        self.shape = _check_shape("shape", shape, (2, 3))
        self.dtype = integer_dtype_for(bit_depth)
        self.bit_depth = int(bit_depth)
        self.max_level = 2**self.bit_depth - 1
        self.pixel_pitch_m = check_positive("pixel_pitch_m", pixel_pitch_m)
        if modulation not in MODULATIONS:
            raise InputError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        self.modulation = modulation
        self.wavelength_m = None if wavelength_m is None else check_positive("wavelength_m", wavelength_m)
        self.latency_s = check_positive("latency_s", latency_s, allow_zero=True)
        self.settle_s = check_positive("settle_s", settle_s, allow_zero=True)
        self._lut = self._checked_lut(lut) if lut is not None else LUT.linear(self.bit_depth, self._lut_kind)
        self._last_frame: np.ndarray | None = None
        self._frame_id = -1
        self._shown_at_s = -math.inf

    @property
    def lut(self) -> LUT:
        """The gray -> intensity/phase LUT; assign a measured :class:`LUT` to replace it."""
        return self._lut

    @lut.setter
    def lut(self, lut: LUT) -> None:
        self._lut = self._checked_lut(lut)

    @property
    def _lut_kind(self) -> str:
        return "phase" if self.modulation == "phase" else "intensity"

    def _checked_lut(self, lut) -> LUT:
        if not isinstance(lut, LUT) or lut.kind != self._lut_kind or lut.bit_depth != self.bit_depth:
            raise InputError(f"lut must be a {self._lut_kind} LUT of {self.bit_depth} bits, got {lut!r}")
        return lut

    @property
    def last_frame(self) -> np.ndarray | None:
        """The integer frame last shown (read-only), or None."""
        return self._last_frame

    @property
    def frame_id(self) -> int:
        """Counter of frames shown (0 for the first; -1 before any)."""
        return self._frame_id

    @property
    def shown_at_s(self) -> float:
        """Clock time (s) at which the last :meth:`show` returned."""
        return self._shown_at_s

    @property
    def settled_at_s(self) -> float:
        """Clock time (s) from which the last frame shown is fully settled."""
        return self._shown_at_s + self.latency_s + self.settle_s

    def wait_settled(self) -> None:
        """Sleep on the clock until the last frame shown has settled."""
        self.clock.sleep_until(self.settled_at_s)

    def hold(self, duration_s: float) -> None:
        """Keep the current frame displayed for ``duration_s`` seconds (a backend whose display needs
        servicing, e.g. a GUI window's event loop, services it meanwhile)."""
        self.clock.sleep(check_positive("duration_s", duration_s, allow_zero=True))

    def settings(self) -> dict:
        s = super().settings()
        s.update(
            shape=list(self.shape),
            dtype=self.dtype.name,
            bit_depth=self.bit_depth,
            pixel_pitch_m=self.pixel_pitch_m,
            modulation=self.modulation,
            wavelength_m=self.wavelength_m,
            latency_s=self.latency_s,
            settle_s=self.settle_s,
            lut=repr(self.lut),
        )
        return s

    # --------------------------------------------------------------------------------- display
    def to_frame(self, image) -> np.ndarray:
        """Validate an image and return the integer frame that :meth:`show` would display.

        Integer images must lie in ``[0, 2**bit_depth - 1]``; floating images in [0, 1] are scaled to
        that range and rounded. The shape must equal :attr:`shape`.
        """
        a = np.asarray(image)
        if a.shape != self.shape:
            raise InputError(f"image shape {a.shape} does not match the SLM's {self.shape}")
        if a.dtype == self.dtype and self.max_level == np.iinfo(self.dtype).max:
            return a.copy()  # every value of the dtype is a valid level
        if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InputError(f"image must be integer gray levels or floats in [0, 1], got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise InputError(f"a floating image must hold values in [0, 1], got [{a.min()}, {a.max()}]")
            return np.rint(a * self.max_level).astype(self.dtype)
        if a.min() < 0 or a.max() > self.max_level:
            raise InputError(f"gray levels must be in [0, {self.max_level}] ({self.bit_depth} bits), got [{a.min()}, {a.max()}]")
        return a.astype(self.dtype, copy=True)

    def show(self, image) -> np.ndarray:
        """Display ``image``; return the exact integer frame sent (read-only).

        Does not wait: see :attr:`settled_at_s` and :meth:`wait_settled` (the bench waits).
        """
        self._check_open()
        frame = self.to_frame(image)
        frame.flags.writeable = False
        with self._errors("show"):
            self._show(frame)
        self._shown_at_s = self.clock.now()
        self._frame_id += 1
        self._last_frame = frame
        return frame

    def to_phase_frame(self, phase_rad) -> np.ndarray:
        """Validate a phase pattern and return the integer frame that :meth:`show_phase` would display.

        Parameters
        ----------
        phase_rad : array_like
            Phase (rad) of every pixel, shape :attr:`shape`; any finite values (wrapped modulo 2 pi).
        """
        if self.modulation != "phase":
            raise self._unsupported("show a phase pattern (it is an amplitude display)")
        phase = np.array(phase_rad, dtype=np.float64)  # a copy: the hook may work in place
        if phase.shape != self.shape:
            raise InputError(f"phase shape {phase.shape} does not match the SLM's {self.shape}")
        if not np.isfinite(phase).all():
            raise InputError("phase contains NaN or inf")
        with self._errors("convert phase to gray levels"):
            gray = self._phase_to_gray(phase)
        return self.to_frame(gray)

    def show_phase(self, phase_rad) -> np.ndarray:
        """Display a phase pattern (radians, any real values: wrapped modulo 2 pi); see :meth:`to_phase_frame`."""
        return self.show(self.to_phase_frame(phase_rad))

    def show_intensity(self, intensity) -> np.ndarray:
        """Display relative intensities (in [0, 1]) through the LUT, i.e. linearised."""
        if self.modulation != "amplitude":
            raise self._unsupported("show an intensity pattern (it is a phase SLM)")
        values = np.asarray(intensity, dtype=np.float64)
        if values.shape != self.shape:
            raise InputError(f"intensity shape {values.shape} does not match the SLM's {self.shape}")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError("intensity must be finite and in [0, 1]")
        return self.show(self._lut.to_gray(values).astype(self.dtype))

    def blank(self) -> np.ndarray:
        """Display gray level 0 everywhere (dark for a display)."""
        return self.show(np.zeros(self.shape, dtype=self.dtype))

    # --------------------------------------------------------------------------------- hooks
    def _phase_to_gray(self, phase_rad: np.ndarray) -> np.ndarray:
        """Hook: integer gray levels realising ``phase_rad`` (float64, shape :attr:`shape`, finite; the
        hook may modify it). Default: the nearest level of :attr:`lut`, modulo 2 pi."""
        return self._lut.to_gray(phase_rad)

    def _show(self, frame: np.ndarray) -> None:
        """Hook: send a validated frame (shape :attr:`shape`, dtype :attr:`dtype`) to the device."""
        raise self._unsupported("show")
