"""Phase masks that realise a design's PSFs in wave optics: the nominal meta-optic of a wave device.

A design (:mod:`simulator.design`) holds only PSFs in sensor pixels; :mod:`simulator.wave_device`
needs the meta-optic behind them, so that fabrication errors can act where they physically happen
(on the mask's height, aperture and wavefront) before light propagates to the sensor. This module
retrieves, once per design, one phase-only mask per PSF and channel whose binned sensor intensity
matches the design PSF, and caches it in memory (:func:`design_masks`, LRU of 4 designs).

Geometry (all derived from :class:`WaveOptics` and the sensor pixel pitch ``p``)
----------------------------------------------------------------------------------
* Simulation cell ``delta = p / samples_per_pixel`` (one meta-atom per cell, phase only, scalar
  thin-element model as in :mod:`simulator.metaoptic`); the mask is the square of ``aperture_px``
  cells of :func:`simulator.metaoptic.square_aperture`, side ``D = aperture_px delta``.
* Mask-to-sensor distance ``d = f_number D``; light propagates by the band-limited angular spectrum
  (:func:`simulator.propagation.propagate_asm`) at the channel's wavelength.
* The sensor plane is the same ``n x n`` grid, ``n = samples_per_pixel N`` with ``N`` (odd) sensor
  pixels a side, ``N`` = the smallest odd number ``>= max(2K + 1, ceil(aperture_px /
  samples_per_pixel) + K)`` for ``K x K`` design PSFs (it holds the design window, the aperture's
  geometric shadow and a ring around them); the intensity is summed over ``samples_per_pixel^2``
  cells per sensor pixel, and the design window is the central ``K x K`` of those pixels. Light
  beyond the grid is lost.

Retrieval
---------
The mask's phase starts from the back-propagated target amplitude with a seeded random phase, takes
:data:`GS_STEPS` Gerchberg-Saxton steps (the sensor field rescaled in each pixel to the target's
binned intensity, set to zero outside the window; the mask keeps its phase on the clear aperture),
then ``design_steps`` L-BFGS iterations of ``nrmse^2 + EFFICIENCY_WEIGHT (1 - efficiency)``
(``nrmse`` = the binned window intensity normalised to sum 1 against the design normalised to sum 1,
``efficiency`` = the window's share of the light through the aperture). The phase is then wrapped to
``[0, 2 pi)``: it is a surface-relief height map (``h = phase / (2 pi) h_2pi``), which is what a
height-scale error acts on.

Absolute scale: each sub-aperture's amplitude transmission is set so that the nominal mask puts
exactly the design PSF's total weight ``w`` into the window: power transmission
``T = w / efficiency``. A passive element has ``T <= 1``; a design that asks for more light than its
aperture can send into the window gets ``T = 1`` (logged), i.e. a dimmer device than designed.

Accuracy and cost, measured on 2 CPU cores shared with other jobs (load ~8): the 16 PSFs of
``examples/optics.yaml`` (8 signed 7 x 7 kernels) with the defaults (30-cell aperture, 3 cells per
3.45 um pixel, f/4, 532 nm) reach a shape nrmse of median 0.04 (max 0.056) with 83-85 % of the
aperture's light in the 7 x 7 window, in 27 s; a device from the cached masks is one propagation
(0.2-0.3 s). The retrieval is the expensive part: seconds, once per design and process.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

from onn_core.errors import ConfigError, InputError
from .field import Field, Grid
from .metaoptic import square_aperture
from .propagation import propagate_asm
from .validation import check_positive, check_tensor

log = logging.getLogger(__name__)

#: Gerchberg-Saxton steps before the L-BFGS polish.
GS_STEPS = 40
#: Weight of the efficiency term in the retrieval loss (module docstring).
EFFICIENCY_WEIGHT = 0.05
#: Seed of the retrieval's random start (the masks are a deterministic function of the design).
RETRIEVAL_SEED = 0


@dataclass(frozen=True)
class WaveOptics:
    """The meta-optic behind a wave device's PSFs (module docstring: geometry).

    Parameters
    ----------
    wavelengths_m : tuple of float
        One wavelength (m) per channel, or one for all channels; channel ``c``'s PSF is realised by
        its own mask at its own wavelength.
    f_number : float
        Mask-to-sensor distance over the aperture side.
    aperture_px : int
        Mask cells across the square sub-aperture.
    samples_per_pixel : int
        Simulation cells per sensor pixel and axis.
    design_steps : int
        L-BFGS iterations of the mask retrieval.
    """

    wavelengths_m: tuple[float, ...] = (532e-9,)
    f_number: float = 4.0
    aperture_px: int = 30
    samples_per_pixel: int = 3
    design_steps: int = 60

    def __post_init__(self):
        if not isinstance(self.wavelengths_m, (tuple, list)) or not self.wavelengths_m:
            raise ConfigError("wavelengths_m", self.wavelengths_m, "a non-empty list of wavelengths in metres")
        for i, w in enumerate(self.wavelengths_m):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
                raise ConfigError(f"wavelengths_m[{i}]", w, "a wavelength > 0 in metres")
        object.__setattr__(self, "wavelengths_m", tuple(float(w) for w in self.wavelengths_m))
        f_number = self.f_number
        if (isinstance(f_number, bool) or not isinstance(f_number, (int, float))
                or not (math.isfinite(f_number) and f_number > 0)):
            raise ConfigError("f_number", f_number, "a number > 0")
        for name, minimum in (("aperture_px", 4), ("samples_per_pixel", 1), ("design_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, value, f"an int >= {minimum}")

    def channel_wavelengths(self, channels: int) -> tuple[float, ...]:
        """The wavelength of each of ``channels`` channels."""
        if len(self.wavelengths_m) not in (1, channels):
            raise InputError(f"wavelengths_m has {len(self.wavelengths_m)} entries, expected 1 or {channels} "
                             "(the channels)")
        return self.wavelengths_m * channels if len(self.wavelengths_m) == 1 else self.wavelengths_m


@dataclass(frozen=True, eq=False)
class MaskDesign:
    """Nominal meta-optic of a design (``P`` PSFs, ``C`` channels, ``n x n`` cells, ``N x N`` pixels).

    Attributes
    ----------
    grid : Grid
        Mask and sensor sampling (cell ``delta``).
    phase : Tensor (P, C, n, n)
        Wrapped mask phase in ``[0, 2 pi)`` (rad) at each channel's wavelength (float32).
    transmission : Tensor (P, C)
        Power transmission of each sub-aperture (module docstring: absolute scale).
    efficiency, nrmse : Tensor (P, C)
        Window share of the light through the aperture, and the window's shape error (nominal mask).
    optics : WaveOptics
    wavelengths_m : tuple of float
        Per channel.
    distance_m : float
        Nominal mask-to-sensor distance.
    kernel_size, field_px : int
        ``K`` and ``N``.
    """

    grid: Grid
    phase: torch.Tensor
    transmission: torch.Tensor
    efficiency: torch.Tensor
    nrmse: torch.Tensor
    optics: WaveOptics
    wavelengths_m: tuple[float, ...]
    distance_m: float
    kernel_size: int
    field_px: int

    @property
    def aperture(self) -> torch.Tensor:
        """The clear square aperture (n, n), 0/1."""
        return square_aperture(self.grid, self.optics.aperture_px, torch.float32)


def field_size_px(kernel_size: int, optics: WaveOptics) -> int:
    """``N``: sensor pixels a side of the simulated sensor region (module docstring)."""
    need = max(2 * kernel_size + 1, math.ceil(optics.aperture_px / optics.samples_per_pixel) + kernel_size)
    return need if need % 2 else need + 1


def bin_pixels(intensity: torch.Tensor, samples_per_pixel: int) -> torch.Tensor:
    """Sum ``(..., n, n)`` cells into ``(..., n / s, n / s)`` sensor pixels of ``s x s`` cells."""
    s = samples_per_pixel
    rows, cols = intensity.shape[-2:]
    return intensity.reshape(*intensity.shape[:-2], rows // s, s, cols // s, s).sum(dim=(-3, -1))


def propagate_masks(mask_field: torch.Tensor, grid: Grid, wavelengths_m, distance_m: float) -> torch.Tensor:
    """The sensor-plane field (P, C, n, n) of the fields ``mask_field`` (P, C, n, n) just behind the masks
    (channel ``c`` at ``wavelengths_m[c]``) after ``distance_m`` of angular-spectrum propagation."""
    return propagate_asm(Field(mask_field, grid, tuple(wavelengths_m)), distance_m).data


def sensor_pixels(mask_field: torch.Tensor, grid: Grid, wavelengths_m, distance_m: float,
                  samples_per_pixel: int) -> torch.Tensor:
    """The intensity (P, C, N, N) on the sensor pixels of the fields ``mask_field`` (P, C, n, n) behind
    the masks: :func:`propagate_masks`, then ``|E|^2`` summed over each pixel's cells."""
    sensor = propagate_masks(mask_field, grid, wavelengths_m, distance_m)
    return bin_pixels(sensor.abs().square(), samples_per_pixel)


def _window(field_px: int, kernel_size: int) -> slice:
    start = field_px // 2 - kernel_size // 2
    return slice(start, start + kernel_size)


def _shape_and_efficiency(pixels: torch.Tensor, target: torch.Tensor, window: slice, aperture_power: float):
    """(nrmse^2 of the window normalised to sum 1 against ``target``, window efficiency), each (P, C)."""
    inside = pixels[..., window, window]
    power = inside.sum(dim=(-2, -1))
    shape = inside / power.clamp_min(1e-30)[..., None, None]
    nrmse2 = (shape - target).square().sum(dim=(-2, -1)) / target.square().sum(dim=(-2, -1))
    return nrmse2, power / aperture_power


def _retrieve(target: torch.Tensor, grid: Grid, aperture: torch.Tensor, wavelengths, distance_m: float,
              optics: WaveOptics, field_px: int) -> torch.Tensor:
    """Gerchberg-Saxton then L-BFGS (module docstring); returns the unwrapped phase (P, C, n, n)."""
    s, k = optics.samples_per_pixel, target.shape[-1]
    window = _window(field_px, k)
    goal = torch.zeros(*target.shape[:2], field_px, field_px)
    goal[..., window, window] = target
    inside = torch.zeros(field_px, field_px, dtype=torch.bool)
    inside[window, window] = True

    def cells(pixels):
        return pixels.repeat_interleave(s, -2).repeat_interleave(s, -1)

    generator = torch.Generator().manual_seed(RETRIEVAL_SEED)
    start = cells(goal.sqrt()) * torch.exp(2j * math.pi * torch.rand(goal.shape[:2] + grid.shape, generator=generator))
    phase = torch.angle(propagate_asm(Field(start, grid, wavelengths), -distance_m).data)
    for _ in range(GS_STEPS):
        sensor = propagate_masks(aperture * torch.exp(1j * phase), grid, wavelengths, distance_m)
        pixels = bin_pixels(sensor.abs().square(), s)
        window_power = (pixels * inside).sum(dim=(-2, -1), keepdim=True)
        scale = torch.where(inside, torch.sqrt(goal * window_power / pixels.clamp_min(1e-30)), torch.zeros_like(pixels))
        phase = torch.angle(propagate_asm(Field(sensor * cells(scale), grid, wavelengths), -distance_m).data)
    if optics.design_steps == 0:
        return phase
    aperture_power = float(aperture.square().sum())
    phase = phase.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([phase], lr=1.0, max_iter=optics.design_steps, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        pixels = sensor_pixels(aperture * torch.exp(1j * phase), grid, wavelengths, distance_m, s)
        nrmse2, efficiency = _shape_and_efficiency(pixels, target, window, aperture_power)
        loss = (nrmse2 + EFFICIENCY_WEIGHT * (1 - efficiency)).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return phase.detach()


def design_masks(design_psfs: torch.Tensor, optics: WaveOptics, pixel_pitch_m: float) -> MaskDesign:
    """The nominal masks realising ``design_psfs`` (P, C, K, K) on a sensor of ``pixel_pitch_m`` (m);
    cached per design and settings (module docstring). Deterministic."""
    psfs = check_tensor("design_psfs", design_psfs, ndim=4).detach().to("cpu", torch.float64)
    if psfs.shape[-1] != psfs.shape[-2] or float(psfs.min()) < 0:
        raise InputError(f"design_psfs must be non-negative and square (P, C, K, K), got shape {tuple(psfs.shape)}")
    pitch = check_positive("pixel_pitch_m", pixel_pitch_m)
    return _design_masks_cached(psfs.numpy().tobytes(), tuple(psfs.shape), optics, pitch)


@functools.lru_cache(maxsize=4)
@torch.inference_mode(False)
def _design_masks_cached(data: bytes, shape: tuple, optics: WaveOptics, pixel_pitch_m: float) -> MaskDesign:
    psfs = torch.frombuffer(bytearray(data), dtype=torch.float64).reshape(shape)
    p, c, k, _ = shape
    field_px = field_size_px(k, optics)
    s = optics.samples_per_pixel
    grid = Grid.square(field_px * s, pixel_pitch_m / s)
    distance = optics.f_number * optics.aperture_px * grid.spacing_m[0]
    wavelengths = optics.channel_wavelengths(c)
    weight = psfs.sum(dim=(-2, -1))
    target = torch.where(weight[..., None, None] > 0, psfs / weight.clamp_min(1e-300)[..., None, None],
                         torch.full_like(psfs, 1.0 / (k * k))).float()
    aperture = square_aperture(grid, optics.aperture_px, torch.float32)
    with torch.enable_grad():
        phase = _retrieve(target, grid, aperture, wavelengths, distance, optics, field_px)
    with torch.no_grad():
        pixels = sensor_pixels(aperture * torch.exp(1j * phase), grid, wavelengths, distance, s)
        nrmse2, efficiency = _shape_and_efficiency(pixels, target, _window(field_px, k), float(aperture.sum()))
    transmission = (weight / efficiency.double()).clamp(max=1.0)
    if bool((weight > efficiency.double()).any()):
        log.warning("wave device: %d of %d PSFs ask for more light than their sub-aperture can send into the "
                    "window (design weight > window efficiency); they get transmission 1 (a dimmer device)",
                    int((weight > efficiency.double()).sum()), p * c)
    return MaskDesign(grid=grid, phase=torch.remainder(phase, 2 * math.pi), transmission=transmission,
                      efficiency=efficiency.double(), nrmse=nrmse2.double().sqrt(), optics=optics,
                      wavelengths_m=wavelengths, distance_m=distance, kernel_size=k, field_px=field_px)


__all__ = ["EFFICIENCY_WEIGHT", "GS_STEPS", "MaskDesign", "WaveOptics", "bin_pixels", "design_masks",
           "field_size_px", "propagate_masks", "sensor_pixels"]
