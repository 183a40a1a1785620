"""The SLM base, :class:`SLM`: a spatial light modulator or display, amplitude or phase modulation,
with its LUT and its timing (latency and settling).

A backend subclasses :class:`SLM` (see :mod:`drivers.device` for the two layers) and fills in:

- ``_show(frame)`` (required): send an integer frame (already validated) to the device;
- ``_phase_to_gray(phase_rad)`` (optional): the gray levels of a phase pattern (default: through
  :attr:`SLM.lut`), for a device with its own phase conversion;
- ``_close()`` (optional): release the hardware (called once).
"""

from __future__ import annotations

import math

import numpy as np

from onn_core.errors import InputError
from onn_core.lut import LUT
from onn_core.validation import check_positive

from .clock import Clock
from .device import DEFAULT_TIMEOUT_S, Device, check_shape, integer_dtype_for

MODULATIONS = ("amplitude", "phase")


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
        self.shape = check_shape("shape", shape, (2, 3))
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
