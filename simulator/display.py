"""Displays that show the inputs: amplitude displays (OLED, micro-LED, LCD) and phase-only SLMs.

Gray levels are integers ``0 .. 2**bit_depth - 1``. Both models also accept floating gray values in that
range and interpolate linearly between levels, so a display pattern can be optimised by gradient
descent (the hardware is then driven with rounded levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from onn_core.errors import InputError
from .field import Grid
from onn_core.lut import LUT
from .validation import check_positive

TWO_PI = 2 * math.pi


def _check_bit_depth(bit_depth, maximum: int = 16) -> int:
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= maximum:
        raise InputError(f"bit_depth must be an int in [1, {maximum}], got {bit_depth!r}")
    return bit_depth


def _check_lut(lut, levels: int, what: str, kind: str) -> torch.Tensor:
    """Validate a LUT; a :class:`~onn_core.lut.LUT` of ``kind`` or a list or tuple of numbers (e.g. from
    YAML) becomes a float64 tensor."""
    if isinstance(lut, LUT):
        if lut.kind != kind:
            raise InputError(f"lut must be a {kind} LUT, got a {lut.kind} one")
        lut = torch.from_numpy(lut.values.copy())
    if isinstance(lut, (list, tuple)):
        try:
            lut = torch.tensor(lut, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"lut must be a sequence of {levels} numbers, got {lut!r:.80}") from None
    if not isinstance(lut, torch.Tensor) or lut.ndim != 1 or lut.shape[0] != levels or not lut.is_floating_point():
        shape = tuple(lut.shape) if isinstance(lut, torch.Tensor) else type(lut).__name__
        raise InputError(f"lut must be a 1-D floating tensor of {levels} {what} (one per gray level), got {shape}")
    if not bool(torch.isfinite(lut).all()):
        raise InputError("lut contains NaN or inf")
    return lut


def _check_gray(gray, levels: int) -> torch.Tensor:
    """Gray levels must be a tensor of integer or floating dtype, finite, within ``[0, levels - 1]``."""
    if not isinstance(gray, torch.Tensor):
        raise InputError(f"gray must be a torch.Tensor, got {type(gray).__name__}")
    if gray.is_complex() or gray.dtype == torch.bool:
        raise InputError(f"gray must be an integer or real floating tensor, got {gray.dtype}")
    if gray.is_floating_point() and not bool(torch.isfinite(gray).all()):
        raise InputError("gray contains NaN or inf")
    low, high = (float(gray.detach().min()), float(gray.detach().max())) if gray.numel() else (0.0, 0.0)
    if low < 0 or high > levels - 1:
        raise InputError(
            f"gray levels must lie in [0, {levels - 1}] for this bit depth, got range "
            f"[{low}, {high}]"
        )
    return gray


def quantise_intensities(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Intensities in [0, 1] -> the integer gray levels that show them, ``round(images * (levels - 1))``
    (int64), computed in the images' own dtype (round half to even): the one rule by which training and
    capture turn dataset images into displayed frames, so both show identical levels."""
    return torch.round(images.detach() * (levels - 1)).long()


def _interpolate(lut: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """``lut`` at (possibly fractional) ``gray``, linear between neighbouring levels."""
    low = gray.detach().floor().long().clamp(max=lut.shape[0] - 2)  # bit_depth >= 1: at least 2 levels
    frac = gray - low.to(gray.dtype)
    return lut[low] + frac * (lut[low + 1] - lut[low])


def _float_gray(gray: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return gray if gray.is_floating_point() else gray.to(dtype)


@dataclass(frozen=True, eq=False)
class DisplayModel:
    """An amplitude display: gray level -> radiance, and the pixel's footprint for the optics.

    Parameters
    ----------
    pixel_pitch_m : float
        Pixel pitch (m).
    bit_depth : int
        Bits per gray level (1..16).
    fill_factor : float
        Emitting fraction of the pixel's area, in (0, 1]; the emitter is a centred square.
    gamma : float
        ``radiance = max_radiance * (gray / (2**bit_depth - 1)) ** gamma`` when ``lut`` is None.
    lut : onn_core.lut.LUT, 1-D tensor, sequence of numbers, or None
        Relative radiance per gray level (``2**bit_depth`` values >= 0, e.g. measured, normalised);
        replaces the gamma curve: ``radiance = max_radiance * lut[gray]``.
    max_radiance_w_sr_m2 : float
        Radiance at relative level 1 (W sr^-1 m^-2), averaged over the pixel area (the figure a
        luminance meter reports; the emitter itself is ``1 / fill_factor`` brighter).
    """

    pixel_pitch_m: float
    bit_depth: int = 8
    fill_factor: float = 1.0
    gamma: float = 2.2
    lut: torch.Tensor | None = None
    max_radiance_w_sr_m2: float = 1.0

    def __post_init__(self):
        check_positive("pixel_pitch_m", self.pixel_pitch_m)
        _check_bit_depth(self.bit_depth)
        if not 0 < check_positive("fill_factor", self.fill_factor) <= 1:
            raise InputError(f"fill_factor must be in (0, 1], got {self.fill_factor!r}")
        check_positive("gamma", self.gamma)
        check_positive("max_radiance_w_sr_m2", self.max_radiance_w_sr_m2)
        if self.lut is not None:
            object.__setattr__(self, "lut", _check_lut(self.lut, self.levels, "relative radiances", "intensity"))
            if float(self.lut.min()) < 0:
                raise InputError("lut relative radiances must be >= 0")

    @property
    def levels(self) -> int:
        """Number of gray levels, ``2**bit_depth``."""
        return 2**self.bit_depth

    def forward(self, gray: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Pixel-averaged radiance (W sr^-1 m^-2) of gray levels ``gray`` (any shape; integer dtype, or
        floating for interpolated levels). Integer input gives ``dtype``; floating input keeps its dtype."""
        gray = _float_gray(_check_gray(gray, self.levels), dtype)
        if self.lut is None:
            # clamp: (0)**gamma has an infinite slope for gamma < 1; the value at 0 is unchanged
            relative = (gray / (self.levels - 1)).clamp_min(torch.finfo(gray.dtype).tiny) ** self.gamma
        else:
            relative = _interpolate(self.lut.to(dtype=gray.dtype, device=gray.device), gray)
        return self.max_radiance_w_sr_m2 * relative

    __call__ = forward

    def render(self, gray: torch.Tensor, upsample: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Radiance on a grid ``upsample`` times finer than the pixels: ``(..., rows * s, cols * s)``.

        Each pixel becomes an ``s x s`` block; its emitter (a centred square of side
        ``sqrt(fill_factor) * pitch``) is drawn with partial coverage of the edge samples, at radiance
        ``radiance / fill_factor``, so each pixel's power (radiance x area) is preserved. Sample spacing:
        :meth:`render_grid`.
        """
        if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
            raise InputError(f"upsample must be a positive int, got {upsample!r}")
        radiance = self.forward(gray, dtype)
        if radiance.ndim < 2:
            raise InputError(f"gray must have at least 2 dims (rows, cols), got shape {tuple(gray.shape)}")
        profile = _emitter_profile(upsample, math.sqrt(self.fill_factor), radiance.dtype, radiance.device)
        block = profile[:, None] * profile[None, :] / self.fill_factor
        *batch, rows, cols = radiance.shape
        fine = radiance[..., :, None, :, None] * block[:, None, :]
        return fine.reshape(*batch, rows * upsample, cols * upsample)

    def render_grid(self, shape: tuple[int, int], upsample: int) -> Grid:
        """The sampling of :meth:`render`'s output for a ``shape`` = (rows, cols) gray image."""
        return Grid((shape[0] * upsample, shape[1] * upsample), (self.pixel_pitch_m / upsample,) * 2)


def _emitter_profile(samples: int, width_fraction: float, dtype, device) -> torch.Tensor:
    """Fraction of each of ``samples`` equal sub-intervals of [0, 1) covered by the centred interval of
    length ``width_fraction``."""
    edges = torch.arange(samples + 1, dtype=torch.float64) / samples
    low, high = (1 - width_fraction) / 2, (1 + width_fraction) / 2
    covered = (torch.minimum(edges[1:], torch.tensor(high)) - torch.maximum(edges[:-1], torch.tensor(low))).clamp(min=0)
    return (covered * samples).to(dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class PhaseSLMModel:
    """A phase-only SLM: gray level -> phase delay (rad) through a lookup table.

    Parameters
    ----------
    bit_depth : int
        Bits per gray level (1..16).
    lut : onn_core.lut.LUT, 1-D tensor, sequence of numbers, or None
        Phase (rad) per gray level, ``2**bit_depth`` strictly increasing values spanning less than
        ``2 pi``. None: linear, ``phase = 2 pi gray / 2**bit_depth`` (levels cover [0, 2 pi) without
        repeating 0 at 2 pi).
    """

    bit_depth: int = 8
    lut: torch.Tensor | None = None

    def __post_init__(self):
        _check_bit_depth(self.bit_depth)
        if self.lut is not None:
            object.__setattr__(self, "lut", _check_lut(self.lut, self.levels, "phases in radians", "phase"))
            if self.levels > 1 and not bool((self.lut[1:] > self.lut[:-1]).all()):
                raise InputError("lut phases must be strictly increasing")
            if float(self.lut[-1] - self.lut[0]) >= TWO_PI:
                raise InputError(f"lut phases must span less than 2 pi, got {float(self.lut[-1] - self.lut[0])} rad")

    @property
    def levels(self) -> int:
        """Number of gray levels, ``2**bit_depth``."""
        return 2**self.bit_depth

    def phase_lut(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Phase (rad) of every gray level, shape (2**bit_depth,)."""
        if self.lut is not None:
            return self.lut.to(dtype=dtype, device=device)
        return torch.arange(self.levels, dtype=dtype, device=device) * (TWO_PI / self.levels)

    def forward(self, gray: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Phase delay (rad) of gray levels (integer dtype, or floating: linear between levels)."""
        gray = _float_gray(_check_gray(gray, self.levels), dtype)
        return _interpolate(self.phase_lut(gray.dtype, gray.device), gray)

    __call__ = forward

    def phase_to_gray(self, radians: torch.Tensor) -> torch.Tensor:
        """Gray level (int64) whose phase is nearest to ``radians`` modulo ``2 pi``.

        The phase is wrapped into ``[lut[0], lut[0] + 2 pi)``, then the nearest level is found with
        the wrap-around gap between the last level and ``lut[0] + 2 pi`` included (a phase just below
        ``2 pi`` maps to level 0 on the linear LUT); ties go to the lower phase
        (:meth:`onn_core.lut.LUT.to_gray`).
        """
        if not isinstance(radians, torch.Tensor) or not radians.is_floating_point():
            got = radians.dtype if isinstance(radians, torch.Tensor) else type(radians).__name__
            raise InputError(f"radians must be a real floating tensor, got {got}")
        if not bool(torch.isfinite(radians).all()):
            raise InputError("radians contains NaN or inf")
        table = LUT(self.phase_lut(torch.float64).numpy(), "phase")
        gray = table.to_gray(radians.detach().to(torch.float64).cpu().numpy())
        return torch.from_numpy(gray).to(radians.device)
