"""One optical system: the single description and forward model of a hybrid ONN's optical frontend.

The same :class:`OpticalSystem` is the optical student's frontend in training, the renderer of the
simulated camera, and the model a calibration fit adjusts; so a student trained in simulation sees
on the simulated bench exactly what it saw in training. It is described once (YAML section
``optics``, :meth:`OpticalSystem.from_config`):

* **design**: the PSFs (:mod:`simulator.design`), ``P`` non-negative ``(C, K, K)`` PSFs in signed
  pairs ``[k1+, k1-, ...]``, in sensor pixels.
* **geometry** (:class:`Geometry`): display pixel pitch, lateral magnification display -> sensor,
  sensor pixel pitch, gap between tiles, and the PSF margin. One display pixel images onto
  ``s x s`` sensor pixels, ``s = display_pixel_pitch_m * magnification / sensor_pixel_pitch_m``,
  which must be an integer (the derived value is computed here once; a contradiction names the
  three fields). PSF ``p`` images the display onto tile ``p`` of a row-major grid
  (:class:`~simulator.layout.TileLayout`); a tile holds the whole blurred image,
  ``(H s + K' - 1, W s + K' - 1)`` pixels with ``K' = K + 2 psf_margin_px``.
* **photometry** (:class:`Photometry`): ``photons_per_s``, the expected photons per second reaching
  one sensor pixel from a uniform full-white display through a PSF of unit total weight, and the
  reference ``exposure_s`` (training's exposure; a simulated camera's default).
* **display** (:class:`~simulator.display.DisplayModel`: bit depth, gamma or LUT, fill factor; its
  pitch is the geometry's, its radiance relative) and **sensor** (:class:`~simulator.sensor.SensorModel`;
  its pitch is the geometry's, its exposure an argument).
* **errors**: the fabricated device's :class:`~simulator.fabrication.FabricationErrors` (fixed;
  ``errors.model: cascade``, the default) or a :class:`~simulator.wave_device.WaveDevice` whose PSFs
  come from wave optics (``errors.model: wave``, a device outside the calibration's model), or,
  for training only, **robustness**: an :class:`~simulator.fabrication.ErrorSpec` from which
  fresh PSF errors are drawn at every training forward (:class:`RandomErrorDraws`).

Forward model, for display gray levels ``gray`` (N, C, H, W) and an exposure ``t`` (s)::

    relative radiance r = display(gray), upsampled s x s         (0..1 per sensor-pixel sample)
    fabricated PSFs     = design PSFs + errors, window K + 2 margin (no light lost, see below)
    tile photon rates   = (r * PSF_p) * photons_per_s             (true convolution, "full" tiles)
    frame rates         = assemble tiles, then crosstalk, vignetting, stray light (photons/s)
    frame (DN)          = sensor(frame rates * t, exposure_s=t)   (dark current also scales with t)
    features            = (e(tile 2i) - e(tile 2i+1)) / (QE photons_per_s t), "same" crop

where ``e`` converts DN back to photo-electrons (:meth:`SensorModel.electrons`). Features are thus in
units of relative radiance x kernel weight, independent of exposure and light level: on the ideal
noiseless sensor they are exactly ``display(gray) * (k+ - k-)`` in "same" mode (a delta kernel at
pixel ``K // 2`` returns the image). :meth:`OpticalSystem.features` turns any camera frame into the
tensor the backend reads; :meth:`OpticalSystem.forward` (training) maps images in ``[0, 1]`` to the
same features through the same stages, shown on the display as ``round(image * (levels - 1))``.

Randomness: in training mode, and only while the system is not frozen (``requires_grad_(False)``),
the forward pass draws sensor noise and robustness errors (inside ``torch.func`` transforms, i.e. the
per-sample Jacobians of an NTK, the sensor gives its expected value, so the kernel vectorises). In eval mode or frozen it is the
noise-free expected value, with no draw. :meth:`frame` and :meth:`render` (the simulated camera)
draw sensor noise whenever the sensor's ``noise`` is on.

Light: the fabricated PSFs are computed on a window widened by ``psf_margin_px`` on every side, so
shifts, rotations and magnifications up to the margin lose no light;
:meth:`OpticalSystem.lost_light_fraction` reports what still leaves the window (a warning is logged
above :data:`LOST_LIGHT_WARN`).

Speed: the fabricated PSFs are cached and recomputed only when a design or error tensor changes
(in place or replaced); when a tensor requires a gradient, they are recomputed at every call so
that gradients flow.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onn_core import config as config_io
from onn_core.errors import ConfigError, InputError
from onn_core.files import resolve_relative
from onn_core.lut import LUT
from onn_core.validation import check_positive

from .conv import optical_conv2d
from .design import KernelDesign, PSFDesign, design_from_config
from .display import DisplayModel, quantise_intensities
from .fabrication import (AberrationOptics, ErrorSpec, FabricationErrors, apply_frame_errors, apply_psf_errors,
                          exchanged_light)
from .layout import TileLayout
from .sensor import SensorModel
from .validation import check_tensor, is_transformed
from .wave_device import WaveDevice, wave_device_from_config

log = logging.getLogger(__name__)

#: Fraction of a PSF's light leaving its widened window above which a warning is logged. The Zernike
#: aberration filter's weak, wide tail alone leaves ~0.3 % outside a 2-pixel margin in examples/optics.yaml.
LOST_LIGHT_WARN = 1e-2
#: Largest value of the simulated camera's 16-bit frames.
UINT16_MAX = 65535
#: Tolerance on the display-to-sensor pixel ratio being an integer.
_RATIO_RTOL = 1e-6


@dataclass(frozen=True)
class Geometry:
    """Where light goes: pitches (m), magnification, and the tile layout's spacing (sensor pixels).

    Parameters
    ----------
    display_pixel_pitch_m, sensor_pixel_pitch_m : float
        Pixel pitches of the display/SLM and of the camera sensor (m).
    magnification : float
        Lateral magnification from the display to the sensor (> 0; image size / object size).
    gap_px : int
        Dark sensor pixels between neighbouring tiles.
    psf_margin_px : int
        Zero pixels added around the design's K x K PSF window before fabrication errors move light
        (so shifts up to this many pixels lose none).
    """

    display_pixel_pitch_m: float = 3.45e-6
    sensor_pixel_pitch_m: float = 3.45e-6
    magnification: float = 1.0
    gap_px: int = 4
    psf_margin_px: int = 2

    def __post_init__(self):
        check_positive("display_pixel_pitch_m", self.display_pixel_pitch_m)
        check_positive("sensor_pixel_pitch_m", self.sensor_pixel_pitch_m)
        check_positive("magnification", self.magnification)
        for name in ("gap_px", "psf_margin_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an int >= 0, got {value!r}")
        ratio = self.display_pixel_pitch_m * self.magnification / self.sensor_pixel_pitch_m
        if round(ratio) < 1 or abs(ratio - round(ratio)) > _RATIO_RTOL * ratio:
            raise InputError(
                f"display_pixel_pitch_m x magnification = {self.display_pixel_pitch_m * self.magnification:g} m "
                f"on the sensor is {ratio:g} sensor pixels (sensor_pixel_pitch_m = {self.sensor_pixel_pitch_m:g}); "
                f"one display pixel must image onto a whole number >= 1 of sensor pixels: e.g. magnification "
                f"{max(round(ratio), 1) * self.sensor_pixel_pitch_m / self.display_pixel_pitch_m:g}")

    @property
    def sensor_pixels_per_display_pixel(self) -> int:
        """Side ``s`` of the block of sensor pixels one display pixel images onto."""
        return round(self.display_pixel_pitch_m * self.magnification / self.sensor_pixel_pitch_m)


@dataclass(frozen=True)
class Photometry:
    """How much light: ``photons_per_s`` (expected photons per second into one sensor pixel from a
    uniform full-white display through a PSF of unit weight) and the reference ``exposure_s`` (s)."""

    photons_per_s: float = 1.0e5
    exposure_s: float = 0.01

    def __post_init__(self):
        check_positive("photons_per_s", self.photons_per_s)
        check_positive("exposure_s", self.exposure_s)

    def photons_per_unit(self, exposure_s: float | None = None) -> float:
        """Expected photons per unit relative radiance x PSF weight over an exposure (default: the
        reference one)."""
        return self.photons_per_s * (self.exposure_s if exposure_s is None else exposure_s)


@dataclass(frozen=True)
class DisplaySettings:
    """The ``optics.display`` section: the display's response (its pitch is ``geometry``'s): a gamma
    curve, or a relative-radiance table ``lut`` (one value per gray level), or ``lut_file`` (the
    two-column file of :class:`onn_core.lut.LUT`, e.g. measured by calibration; relative to the YAML)."""

    bit_depth: int = 8
    gamma: float = 2.2
    lut: Any = None
    lut_file: str | None = None
    fill_factor: float = 1.0


#: Fields that moved out of ``display``/``sensor`` into ``geometry``/``photometry``, with their new home.
_MOVED_FIELDS = {
    "display": {"pixel_pitch_m": "geometry.display_pixel_pitch_m",
                "max_radiance_w_sr_m2": "photometry.photons_per_s (the display's radiance is relative)"},
    "sensor": {"pixel_pitch_m": "geometry.sensor_pixel_pitch_m",
               "input_pitch_m": "geometry (display_pixel_pitch_m, magnification, sensor_pixel_pitch_m)",
               "exposure_s": "photometry.exposure_s (the reference exposure; a camera passes its own)"},
}
#: Top-level keys of the old ``FabricatedFrontend`` files, with what replaces them.
_LEGACY_KEYS = {
    "mode": "nothing: tiles always hold the full image (geometry.psf_margin_px widens the PSF window)",
    "gap_px": "geometry.gap_px",
    "photons_per_radiance": "photometry.photons_per_s = photons_per_radiance x display.max_radiance_w_sr_m2 "
                            "/ sensor.exposure_s, and photometry.exposure_s = the old sensor.exposure_s",
}


class RandomErrorDraws(nn.Module):
    """Fabrication errors drawn afresh at every call (robustness training): call ``k`` draws
    :meth:`FabricationErrors.sample` with magnitudes ``spec`` and seed ``seed + k``. ``draws`` is saved
    in the state dict (extra state), so a resumed run continues the sequence. While ``hold`` is True
    (:func:`hold_random_draws`) the last draw is reused, so that several forward passes (e.g. the
    per-sample passes of an NTK) see one device."""

    def __init__(self, num_psfs: int, spec: ErrorSpec | dict, seed: int = 0,
                 kernel_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.num_psfs, self.seed, self.kernel_shape = int(num_psfs), int(seed), kernel_shape
        self.spec = spec if isinstance(spec, ErrorSpec) else ErrorSpec.from_dict(dict(spec), "robustness")
        self.draws, self.hold = 0, False
        self._set_current(None)

    def _set_current(self, errors) -> None:
        """The draw in use, kept out of the module tree (it is redrawn, never saved)."""
        self.__dict__["_errors"] = errors

    def current(self) -> FabricationErrors:
        """The errors of this call: a new draw unless held."""
        if self._errors is None or not self.hold:
            self._set_current(FabricationErrors.sample(self.num_psfs, self.spec, self.seed + self.draws,
                                                       kernel_shape=self.kernel_shape))
            self.draws += 1
        return self._errors

    def get_extra_state(self) -> dict:
        return {"draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self._set_current(None)


@contextmanager
def hold_random_draws(model: nn.Module):
    """Within the block, every :class:`RandomErrorDraws` of ``model`` reuses one draw (the first one
    made in the block)."""
    modules = [m for m in model.modules() if isinstance(m, RandomErrorDraws)]
    for m in modules:
        m.hold = True
        m._set_current(None)
    try:
        yield model
    finally:
        for m in modules:
            m.hold = False


class OpticalSystem(nn.Module):
    """Display -> fabricated PSFs -> tiled camera frame -> sensor -> features (module docstring).

    Parameters
    ----------
    design : nn.Module with ``psfs() -> (P, C, K, K)``
        :class:`~simulator.design.PSFDesign` (fixed) or :class:`~simulator.design.KernelDesign`
        (signed, trainable kernels), or any module with that method (e.g. a 4f system's PSFs).
    image_shape : (int, int)
        Display image (H, W), in display pixels.
    geometry, photometry : Geometry, Photometry (defaults: their defaults)
    display : DisplayModel or None
        None: 8 bits, gamma 2.2. Its ``pixel_pitch_m`` must be the geometry's; its radiance is taken
        relative to ``max_radiance_w_sr_m2`` (photometry sets the light level).
    sensor : SensorModel or None
        None: ideal (no noise, no ADC, QE 1, 1 e-/DN). No resampling (``input_pitch_m`` None); its
        ``pixel_pitch_m`` must be None or the geometry's.
    errors : FabricationErrors or None
        The fabricated device's errors (None: the design itself).
    robustness : ErrorSpec or None
        Random PSF errors drawn at every training forward (excludes ``errors``).
    seed : int
        Seeds :meth:`render`'s noise generator and the robustness draws.
    """

    def __init__(self, design: nn.Module, image_shape, *, geometry: Geometry | None = None,
                 photometry: Photometry | None = None, display: DisplayModel | None = None,
                 sensor: SensorModel | None = None, errors: FabricationErrors | None = None,
                 robustness: ErrorSpec | None = None, seed: int = 0):
        super().__init__()
        if not isinstance(design, nn.Module) or not callable(getattr(design, "psfs", None)):
            raise InputError(f"design must be an nn.Module with a psfs() method, got {type(design).__name__}")
        if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_shape)):
            raise InputError(f"image_shape must be a pair of positive ints (H, W), got {image_shape!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        self.design = design
        psfs = design.psfs()
        check_tensor("design psfs", psfs, ndim=4)
        p, c, k, k2 = psfs.shape
        if k != k2:
            raise InputError(f"design psfs must be square (P, C, K, K), got {tuple(psfs.shape)}")
        self.geometry = geometry or Geometry()
        self.photometry = photometry or Photometry()
        self.display = display or DisplayModel(pixel_pitch_m=self.geometry.display_pixel_pitch_m)
        if self.display.pixel_pitch_m != self.geometry.display_pixel_pitch_m:
            raise InputError(f"display.pixel_pitch_m = {self.display.pixel_pitch_m!r} contradicts "
                             f"geometry.display_pixel_pitch_m = {self.geometry.display_pixel_pitch_m!r}")
        self.sensor = sensor or SensorModel(noise=False)
        if self.sensor.input_pitch_m is not None:
            raise InputError("sensor.input_pitch_m must be None: the geometry (display pitch, magnification, "
                             "sensor pitch) decides how display pixels map onto sensor pixels")
        if self.sensor.pixel_pitch_m not in (None, self.geometry.sensor_pixel_pitch_m):
            raise InputError(f"sensor.pixel_pitch_m = {self.sensor.pixel_pitch_m!r} contradicts "
                             f"geometry.sensor_pixel_pitch_m = {self.geometry.sensor_pixel_pitch_m!r}")
        if errors is not None and robustness is not None:
            raise InputError("errors (one fabricated device) and robustness (random draws in training) exclude "
                             "each other; give one")
        self.errors = errors if errors is not None else FabricationErrors.identity(p)
        if self.errors.num_psfs != p:
            raise InputError(f"errors are for {self.errors.num_psfs} PSFs but the design has {p}")
        self.draws = (RandomErrorDraws(p, robustness, seed, kernel_shape=(c, k, k))
                      if robustness is not None else None)
        self.image_shape, self.seed, self.frozen = tuple(image_shape), seed, False
        s, margin = self.geometry.sensor_pixels_per_display_pixel, self.geometry.psf_margin_px
        self.feature_shape = (self.image_shape[0] * s, self.image_shape[1] * s)
        self._psf_window_px = k + 2 * margin
        window = self._psf_window_px
        tile = (self.feature_shape[0] + window - 1, self.feature_shape[1] + window - 1)
        self.layout = TileLayout.for_count(p, tile, self.geometry.gap_px)
        self._generator = torch.Generator(device=psfs.device).manual_seed(seed)
        self._cache: tuple | None = None
        self.source_config: dict | None = None  # the mapping from_config built this from (for to_config)
        lost = self.lost_light_fraction()
        if float(lost.max()) > LOST_LIGHT_WARN:
            log.warning("fabrication errors move up to %.2g of a PSF's light beyond its window; raise "
                        "geometry.psf_margin_px (now %d) in the optics YAML this system is built from (a bench's "
                        "camera.optics file, or model.optics of the training config)", float(lost.max()), margin)

    # ------------------------------------------------------------------------------------- derived
    @property
    def num_psfs(self) -> int:
        return self.errors.num_psfs

    @property
    def num_features(self) -> int:
        """Signed feature maps the backend reads (one per PSF pair)."""
        return self.num_psfs // 2

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.layout.frame_shape)

    @property
    def psf_window_px(self) -> int:
        """Side ``K' = K + 2 psf_margin_px`` (sensor pixels) of the window the fabricated PSFs live on."""
        return self._psf_window_px

    @property
    def feature_crop(self) -> tuple[slice, slice]:
        """(rows, cols) slices of a tile (the "full" convolution, ``H s + K' - 1`` a side) that hold the
        "same" region the features are made of: ``K' // 2`` pixels in, ``H s x W s`` large."""
        start = self.psf_window_px // 2
        return (slice(start, start + self.feature_shape[0]), slice(start, start + self.feature_shape[1]))

    def clear_cache(self) -> None:
        """Forget the cached fabricated PSFs: the next call recomputes them (e.g. to time what every
        frame cost without the cache)."""
        self._cache = None

    def requires_grad_(self, requires_grad: bool = True) -> "OpticalSystem":
        """Also (un)freezes the system: a frozen system draws no noise or errors in training mode."""
        super().requires_grad_(requires_grad)
        self.frozen = not requires_grad
        return self

    def _stochastic(self) -> bool:
        return self.training and not self.frozen

    # ------------------------------------------------------------------------------------- PSFs
    def fabricated_psfs(self) -> torch.Tensor:
        """The design PSFs with the device's errors, on the widened window (P, C, K', K'); cached."""
        tensors = [*self.design.parameters(), *self.design.buffers(), *self.errors.tensors().values()]
        cacheable = not any(is_transformed(t) for t in tensors) and not (
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        if not cacheable:
            return self.errors.fabricate(self.design.psfs(), self.geometry.psf_margin_px)
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.errors.fabricate(self.design.psfs(), self.geometry.psf_margin_px))
        return self._cache[1]

    def _psfs_for_forward(self) -> torch.Tensor:
        if self.draws is not None and self._stochastic():
            return apply_psf_errors(self.design.psfs(), self.draws.current(), self.geometry.psf_margin_px)
        return self.fabricated_psfs()

    def lost_light_fraction(self) -> torch.Tensor:
        """Per PSF (P,), the fraction of its fabricated light that falls outside the widened window
        (measured against a window wider by K on every side)."""
        with torch.no_grad():
            design = self.design.psfs()
            wide = self.errors.fabricate(design, self.geometry.psf_margin_px + design.shape[-1])
            kept = self.fabricated_psfs().sum(dim=(1, 2, 3))
            total = wide.sum(dim=(1, 2, 3))
            return torch.where(total > 0, 1 - kept / total.clamp_min(torch.finfo(total.dtype).tiny),
                               torch.zeros_like(total))

    def throughput(self) -> torch.Tensor:
        """Per tile (P,), the light it receives per unit of displayed light over what the design PSF
        gives: the fabricated PSF's light, exchanged with its neighbours' by crosstalk
        (:func:`~simulator.fabrication.exchanged_light`), before vignetting (a property of where in
        the frame, not of the sub-optic); NaN for a design PSF without light."""
        with torch.no_grad():
            design = self.design.psfs().sum(dim=(1, 2, 3))
            light = exchanged_light(self.fabricated_psfs().sum(dim=(1, 2, 3)), self.errors.crosstalk, self.layout)
            return torch.where(design > 0, light / design.clamp_min(torch.finfo(design.dtype).tiny), math.nan)

    # ------------------------------------------------------------------------------------- light
    def gray_levels(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) with intensities in [0, 1] -> the integer gray levels shown,
        ``round(image * (levels - 1))`` (int64)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise InputError(f"images must be a floating (N, C, H, W) tensor, got {type(images).__name__} "
                             f"{getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}")
        if not is_transformed(images) and images.numel():
            low, high = (float(v) for v in torch.aminmax(images.detach()))
            if not (low >= 0 and high <= 1):  # also catches NaN
                raise InputError(f"images must hold intensities in [0, 1], got range [{low:g}, {high:g}]")
        return quantise_intensities(images, self.display.levels)

    def relative_radiance(self, gray: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        """Display gray levels (N, C, H, W) -> relative radiance (0..1) per sensor-pixel sample
        (N, C, H s, W s), in the dtype and on the device of ``psf`` (the PSFs it will meet)."""
        if not isinstance(gray, torch.Tensor) or gray.ndim != 4:
            raise InputError(f"gray must be a (N, C, H, W) tensor, got {type(gray).__name__} {getattr(gray, 'shape', '')}")
        if gray.shape[1] != psf.shape[1] or tuple(gray.shape[-2:]) != self.image_shape:
            raise InputError(f"gray must have shape (N, {psf.shape[1]}, {self.image_shape[0]}, {self.image_shape[1]}), "
                             f"got {tuple(gray.shape)}")
        s = self.geometry.sensor_pixels_per_display_pixel
        gray = gray.to(psf.device)
        if s > 1 or gray.is_floating_point():
            radiance = self.display.render(gray, s, psf.dtype) if s > 1 else self.display.forward(gray, psf.dtype)
            return radiance / self.display.max_radiance_w_sr_m2
        if not is_transformed(gray) and gray.numel():
            low, high = (int(v) for v in torch.aminmax(gray))
            if low < 0 or high >= self.display.levels:
                raise InputError(f"gray levels must lie in [0, {self.display.levels - 1}] "
                                 f"(display.bit_depth {self.display.bit_depth}), got range [{low}, {high}]")
        return self._radiance_table(psf.dtype, psf.device)[gray]

    def _radiance_table(self, dtype, device) -> torch.Tensor:
        """Relative radiance of every gray level (levels,), cached per dtype and device."""
        key = (dtype, device)
        if getattr(self, "_table", (None,))[0] != key:
            levels = torch.arange(self.display.levels, device=device)
            self._table = (key, self.display.forward(levels, dtype) / self.display.max_radiance_w_sr_m2)
        return self._table[1]

    def photon_rate_frame(self, gray: torch.Tensor, psfs: torch.Tensor | None = None) -> torch.Tensor:
        """Expected photons per second on every sensor pixel (N, rows, cols), frame errors included."""
        psfs = self.fabricated_psfs() if psfs is None else psfs
        return self.radiance_frame(self.relative_radiance(gray, psfs), psfs)

    def radiance_frame(self, radiance: torch.Tensor, psfs: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Expected photons per second on every sensor pixel (N, rows, cols) of a relative radiance
        (N, C, H s, W s) imaged through ``psfs`` (P, C, K', K'), frame errors included; clamped at zero
        (a photon rate), unless ``clamp`` is False: a model of a difference of frames (a calibration fit's
        lit minus black) is linear in the PSFs, and a PSF's dip below zero (the aberration filter's
        ringing, :mod:`simulator.fabrication`) shows there as less stray light."""
        tiles = optical_conv2d(radiance, psfs, mode="full") * self.photometry.photons_per_s
        frame = apply_frame_errors(self.layout.assemble(tiles), self.errors, self.layout)
        return frame.clamp(min=0) if clamp else frame

    def frame(self, gray: torch.Tensor, exposure_s: float | None = None, *, noise: bool | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Camera frames (N, rows, cols) in DN (float) of display gray levels ``gray`` (N, C, H, W) over
        ``exposure_s`` (s; default the reference). ``noise`` None follows the sensor's switch, False
        gives the expected value. Differentiable in the design and error tensors."""
        exposure_s = self._exposure(exposure_s)
        photons = self.photon_rate_frame(gray) * exposure_s
        return self.sensor.forward(photons, generator=generator, exposure_s=exposure_s, noise=noise)

    def render(self, gray: np.ndarray, exposure_s: float | None = None) -> np.ndarray:
        """One camera frame (rows, cols) uint16 of a display image ``gray`` (H, W) or (H, W, C) of
        unsigned ints, with sensor noise from the system's own generator (seeded by ``seed``: a fresh
        system renders the same sequence). Values beyond 0..65535 are clipped."""
        if not isinstance(gray, np.ndarray) or gray.ndim not in (2, 3) or gray.dtype.kind != "u":
            raise InputError(f"gray must be a numpy array (rows, cols) or (rows, cols, channels) of unsigned ints, "
                             f"got {type(gray).__name__} {getattr(gray, 'dtype', '')} {getattr(gray, 'shape', '')}")
        device = self.fabricated_psfs().device
        if self._generator.device != device:  # the module was moved: reseed on its device
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        image = gray[None] if gray.ndim == 2 else np.moveaxis(gray, -1, 0)
        tensor = torch.from_numpy(image.astype(np.int64))[None]
        with torch.no_grad():
            frame = self.frame(tensor, exposure_s, generator=self._generator)[0]
        return np.clip(np.rint(frame.cpu().numpy()), 0, UINT16_MAX).astype(np.uint16)

    # ------------------------------------------------------------------------------------- features
    def features(self, frame, exposure_s: float | None = None) -> torch.Tensor:
        """Camera frame(s) (N, rows, cols) or (rows, cols), tensor or numpy, in DN -> the features the
        backend reads (N, P/2, H s, W s): tile ``2i`` minus tile ``2i + 1`` in photo-electrons, divided
        by the expected photo-electrons per unit (``QE x photons_per_s x exposure_s``), "same" crop."""
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(frame.astype(np.float64))
        if not isinstance(frame, torch.Tensor) or frame.ndim not in (2, 3):
            raise InputError(f"frame must be a (N, rows, cols) or (rows, cols) array, got "
                             f"{type(frame).__name__} {getattr(frame, 'shape', '')}")
        batch = frame[None] if frame.ndim == 2 else frame
        if tuple(batch.shape[-2:]) != self.frame_shape:
            raise InputError(f"frame must be {self.frame_shape} pixels (this system's layout), got {tuple(batch.shape[-2:])}")
        with torch.no_grad():
            psf = self.fabricated_psfs()
        tiles = self.layout.extract(batch.to(device=psf.device, dtype=psf.dtype), self.num_psfs)
        return self.features_from_electrons(self.sensor.electrons(tiles), self._exposure(exposure_s))

    def features_from_electrons(self, tiles_e: torch.Tensor, exposure_s: float) -> torch.Tensor:
        """The feature formula: photo-electrons per tile -> features (N, P/2, H s, W s).

        Parameters
        ----------
        tiles_e : (N, P, rows, cols) tensor
            Photo-electrons of every tile (:meth:`simulator.layout.TileLayout.extract`): whole tiles, cut
            here to their "same" region (:attr:`feature_crop`), or that region already (H s, W s).
        exposure_s : float
            The exposure the electrons were collected over (s).

        Returns
        -------
        ``(tiles_e[:, 2i] - tiles_e[:, 2i + 1]) / (QE x photons_per_s x exposure_s)``: relative radiance x
        kernel weight, independent of exposure and light level.
        """
        if self.num_psfs % 2:
            raise InputError(f"features need PSFs in signed pairs [k1+, k1-, ...]; this design has {self.num_psfs} PSFs")
        tile = tuple(self.layout.tile_shape)
        if (not isinstance(tiles_e, torch.Tensor) or tiles_e.ndim != 4 or tiles_e.shape[1] != self.num_psfs
                or tuple(tiles_e.shape[-2:]) not in (tile, self.feature_shape)):
            raise InputError(f"tiles_e must be a tensor (N, {self.num_psfs}, rows, cols) of whole tiles {tile} or of "
                             f"their \"same\" region {self.feature_shape}, got {type(tiles_e).__name__} "
                             f"{tuple(getattr(tiles_e, 'shape', ()))}")
        if tuple(tiles_e.shape[-2:]) != self.feature_shape:
            rows, cols = self.feature_crop
            tiles_e = tiles_e[..., rows, cols]
        unit = self.sensor.quantum_efficiency * self.photometry.photons_per_unit(check_positive("exposure_s", exposure_s))
        return (tiles_e[:, 0::2] - tiles_e[:, 1::2]) / unit

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training's frontend: images (N, C, H, W) in [0, 1] -> features (N, P/2, H s, W s), exactly
        ``features(frame(gray_levels(images)))`` (module docstring for when it draws noise), computed
        on the tiles' "same" region only when no frame-level error needs the whole frame."""
        gray = self.gray_levels(images)
        psfs = self._psfs_for_forward().to(images.dtype)
        stochastic = self._stochastic()
        # None: as the sensor's switch says. Inside torch.func transforms (per-sample Jacobians of an
        # NTK) the sensor gives its expected value: the kernel is that of the expected forward pass.
        noise = None if stochastic and not is_transformed(images) else False
        exposure_s = self.photometry.exposure_s
        if not _frame_errors_at_identity(self.errors):
            frame = self.sensor.forward(self.photon_rate_frame(gray, psfs) * exposure_s, generator=generator,
                                        exposure_s=exposure_s, noise=noise)
            return self.features_from_electrons(self.sensor.electrons(self.layout.extract(frame, self.num_psfs)),
                                                exposure_s)
        radiance = self.relative_radiance(gray, psfs)
        psfs = _trim_zero_border(psfs, self.geometry.psf_margin_px)
        linear = self.sensor.bit_depth is None and self.sensor.full_well_e is None
        if linear and not (stochastic and self.sensor.noise):
            # by linearity the pair difference is one convolution; offset and dark current cancel
            return optical_conv2d(radiance, psfs[0::2] - psfs[1::2], mode="same")
        photons = optical_conv2d(radiance, psfs, mode="same") * self.photometry.photons_per_unit()
        tiles = self.sensor.forward(photons, generator=generator, exposure_s=exposure_s, noise=noise)
        return self.features_from_electrons(self.sensor.electrons(tiles), exposure_s)

    def _exposure(self, exposure_s) -> float:
        return self.photometry.exposure_s if exposure_s is None else check_positive("exposure_s", exposure_s)

    # ------------------------------------------------------------------------------------- configs
    @classmethod
    def from_config(cls, mapping: dict, *, base_dir=None, path: str = "optics", design: nn.Module | None = None,
                    robustness: ErrorSpec | None = None) -> "OpticalSystem":
        """Build from an ``optics`` YAML mapping (see ``examples/optics.yaml``); ConfigError names bad fields.

        Keys: ``design`` (required unless ``design`` is given, e.g. a student's trainable kernels),
        ``image_shape`` (required), ``geometry``, ``photometry``, ``display``, ``sensor`` (the fields of
        :class:`Geometry`, :class:`Photometry`, :class:`DisplaySettings`, :class:`SensorModel`), ``errors``
        (null; ``{spec: {...}, seed, shift_method, aberration}`` to sample; or the explicit form of
        ``FabricationErrors.to_dict()``), ``seed``, ``dtype``. ``robustness``: the ErrorSpec of
        training draws. ``base_dir`` resolves a relative design file.
        """
        if not isinstance(mapping, dict):
            raise ConfigError(path, mapping, "a mapping (the optics section)")
        for key, replacement in _LEGACY_KEYS.items():
            if key in mapping:
                raise ConfigError(f"{path}.{key}", mapping[key], f"the optics format of this version: moved to "
                                  f"{replacement} (see examples/optics.yaml and docs/migration.md)")
        known = {"design", "image_shape", "geometry", "photometry", "display", "sensor", "errors", "seed", "dtype"}
        for key in mapping:
            if key not in known:
                raise ConfigError(f"{path}.{key}", mapping[key], f"one of the known fields {sorted(known)}")
        dtype_name = mapping.get("dtype", "float32")
        if dtype_name not in ("float32", "float64"):
            raise ConfigError(f"{path}.dtype", dtype_name, "'float32' or 'float64'")
        dtype = getattr(torch, dtype_name)
        if design is None:
            design = design_from_config(mapping.get("design"), base_dir=base_dir, path=f"{path}.design", dtype=dtype)
        elif mapping.get("design") is not None:
            raise ConfigError(f"{path}.design", mapping["design"], "no design here: the model's own kernels are the design")
        image_shape = mapping.get("image_shape")
        if (not isinstance(image_shape, list) or len(image_shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_shape)):
            raise ConfigError(f"{path}.image_shape", image_shape, "a list of two positive ints [H, W] (display pixels)")
        seed = mapping.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{path}.seed", seed, "an int")
        geometry = config_io.build(Geometry, mapping.get("geometry") or {}, f"{path}.geometry")
        photometry = config_io.build(Photometry, mapping.get("photometry") or {}, f"{path}.photometry")
        for section in ("display", "sensor"):
            for key, home in _MOVED_FIELDS[section].items():
                if key in (mapping.get(section) or {}):
                    raise ConfigError(f"{path}.{section}.{key}", mapping[section][key], f"no value here: set {path}.{home}")
        settings = config_io.build(DisplaySettings, mapping.get("display") or {}, f"{path}.display")
        response = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "lut_file"}
        if settings.lut_file is not None:
            if settings.lut is not None:
                raise ConfigError(f"{path}.display.lut_file", settings.lut_file, "null when display.lut is given")
            try:
                response["lut"] = LUT.from_file(resolve_relative(settings.lut_file, base_dir), "intensity").values.tolist()
            except InputError as exc:
                raise ConfigError(f"{path}.display.lut_file", settings.lut_file, str(exc)) from exc
        display = config_io.build(DisplayModel, {**response, "pixel_pitch_m": geometry.display_pixel_pitch_m},
                                  f"{path}.display")
        sensor_fields = mapping.get("sensor") or {"noise": False}  # no sensor section: the ideal sensor
        sensor = config_io.build(SensorModel, {**sensor_fields, "pixel_pitch_m": geometry.sensor_pixel_pitch_m,
                                               "exposure_s": photometry.exposure_s}, f"{path}.sensor")
        psfs = design.psfs()
        errors = errors_from_config(mapping.get("errors"), tuple(psfs.shape), path=f"{path}.errors", design_psfs=psfs,
                                    pixel_pitch_m=geometry.sensor_pixel_pitch_m)
        if errors is not None and robustness is not None:
            raise ConfigError(f"{path}.errors", mapping["errors"], "null when random fabrication draws are trained against")
        try:
            system = cls(design, tuple(image_shape), geometry=geometry, photometry=photometry, display=display,
                         sensor=sensor, errors=errors, robustness=robustness, seed=seed)
        except InputError as exc:
            raise ConfigError(path, "(the optics section)", str(exc)) from exc
        system.source_config = dict(mapping)
        return system

    @classmethod
    def from_yaml(cls, path) -> "OpticalSystem":
        """:meth:`from_config` of a YAML file (``yaml.safe_load``); design files resolve next to it."""
        return cls.from_config(config_io.load_yaml(path), base_dir=Path(path).parent)

    def to_config(self) -> dict:
        """A mapping :meth:`from_config` turns back into an equal system: the design as it was given
        (or inline PSFs), geometry, photometry, display, sensor, and the errors explicitly."""
        given = (self.source_config or {}).get("design")
        design = given or {"generator": "inline", "signed": False,
                           "psfs": self.design.psfs().detach().cpu().double().tolist()}
        display = {f.name: getattr(self.display, f.name) for f in fields(DisplaySettings) if f.name != "lut_file"}
        sensor = config_io.to_plain(self.sensor)
        for moved in _MOVED_FIELDS["sensor"]:
            sensor.pop(moved)
        return {
            "design": design,
            "image_shape": list(self.image_shape),
            "geometry": config_io.to_plain(self.geometry),
            "photometry": config_io.to_plain(self.photometry),
            "display": config_io.to_plain(display),
            "sensor": sensor,
            "errors": self.errors.to_dict(),
            "seed": self.seed,
            "dtype": str(self.fabricated_psfs().dtype).removeprefix("torch."),
        }

    def extra_repr(self) -> str:
        p, c, k, _ = self.design.psfs().shape
        return (f"psfs=({p}, {c}, {k}, {k}), image_shape={self.image_shape}, frame_shape={self.frame_shape}, "
                f"feature_shape={self.feature_shape}")


def _frame_errors_at_identity(errors: FabricationErrors) -> bool:
    return all(not t.requires_grad and bool((t == 0).all()) for t in
               (errors.crosstalk, errors.vignetting_poly, errors.vignetting_tan_edge, errors.background,
                errors.background_gradient))


def _trim_zero_border(psfs: torch.Tensor, most: int) -> torch.Tensor:
    """``psfs`` with up to ``most`` all-zero rings cut from every side (the same on all four, so the
    centre pixel ``K // 2`` stays the centre): a cheaper "same" convolution with the same result."""
    if most == 0 or is_transformed(psfs):
        return psfs
    support = psfs.detach().ne(0).any(dim=0).any(dim=0)
    rows, cols = support.any(dim=1), support.any(dim=0)
    if not bool(rows.any()):
        return psfs[..., most:psfs.shape[-2] - most, most:psfs.shape[-1] - most]
    k = psfs.shape[-1]
    first = min(int(rows.float().argmax()), int(cols.float().argmax()))
    last = min(int(rows.flip(0).float().argmax()), int(cols.flip(0).float().argmax()))
    cut = min(most, first, last)
    return psfs[..., cut:k - cut, cut:k - cut] if cut else psfs


def errors_from_config(errors, psf_shape, *, path: str = "errors", design_psfs: torch.Tensor | None = None,
                       pixel_pitch_m: float | None = None) -> FabricationErrors | WaveDevice | None:
    """FabricationErrors from ``null`` (None: identity), a sampling mapping ``{spec, seed, shift_method,
    aberration}`` or the explicit form of :meth:`FabricationErrors.to_dict` (``model: cascade``, the
    default); or, with ``model: wave``, a :class:`~simulator.wave_device.WaveDevice` of ``design_psfs``
    on a sensor of ``pixel_pitch_m`` (both required then)."""
    p, c, k, _ = psf_shape
    if errors is None:
        return None
    if not isinstance(errors, dict):
        raise ConfigError(path, errors, "null, a sampling mapping {spec, seed} or an explicit errors mapping")
    model = errors.get("model", "cascade")
    if model == "wave":
        if design_psfs is None or pixel_pitch_m is None:
            raise ConfigError(f"{path}.model", model, "'cascade' here (a wave device needs the design PSFs and the pixel pitch)")
        return wave_device_from_config(errors, design_psfs, pixel_pitch_m, path=path)
    if model != "cascade":
        raise ConfigError(f"{path}.model", model, "'cascade' (the default) or 'wave'")
    errors = {key: value for key, value in errors.items() if key != "model"}
    if "spec" not in errors:
        built = FabricationErrors.from_dict(errors, path=path)
        if built.num_psfs != p:
            raise ConfigError(f"{path}.num_psfs", built.num_psfs, f"{p} (the design's PSF count)")
        return built
    allowed = {"spec", "seed", "shift_method", "aberration"}
    for key in errors:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", errors[key], f"one of {sorted(allowed)}")
    seed = errors.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}.seed", seed, "an int")
    shift_method = errors.get("shift_method", "bilinear")
    if shift_method not in ("bilinear", "fourier"):
        raise ConfigError(f"{path}.shift_method", shift_method, "'bilinear' or 'fourier'")
    spec = ErrorSpec.from_dict(errors["spec"], f"{path}.spec")
    aberration = config_io.build(AberrationOptics, errors.get("aberration") or {}, f"{path}.aberration")
    return FabricationErrors.sample(p, spec, seed, kernel_shape=(c, k, k), aberration=aberration,
                                    shift_method=shift_method)


__all__ = ["DisplaySettings", "Geometry", "LOST_LIGHT_WARN", "OpticalSystem", "Photometry", "RandomErrorDraws",
           "errors_from_config", "hold_random_draws", "KernelDesign", "PSFDesign"]
