"""Camera sensor model: photons on a fine optical grid -> digital numbers (DN) in a frame.

Input units
-----------
The input is the **expected number of photons** reaching each input sample during the exposure
(irradiance x sample area x exposure time / photon energy), shape ``(*batch, rows, cols)``.

Stages, in order (each has an off switch; defaults are an ideal, noiseless, unquantised sensor):

1. **Resampling** to the sensor pixel pitch by area integration (``input_pitch_m`` and
   ``pixel_pitch_m`` both set, else off): a sensor pixel collects the photons of the part of every
   input sample it covers, so the total is preserved. An integer pitch ratio is plain binning;
   any other ratio splits input samples between pixels by overlapping area (separable, per axis).
   The output has ``ceil(n / ratio)`` pixels per axis; the part of the last pixel beyond the input
   receives no light.
2. **Quantum efficiency** ``quantum_efficiency`` (e-/photon) and **dark current**
   ``dark_current_e_per_s * exposure_s`` (e-) give the expected electrons. An optional seeded
   **fixed pattern** (off by default; :meth:`SensorModel.fixed_pattern`) makes pixels differ: a
   per-pixel photo-response factor (PRNU, ``prnu_rel_std``), a per-pixel dark-current spread (DSNU,
   ``dsnu_e_per_s_std``), hot pixels (``hot_pixel_fraction``, with
   ``hot_pixel_dark_current_e_per_s`` more dark current) and dead pixels (``dead_pixel_fraction``: no
   photo- or dark electrons, only read noise and offset). It is part of the device, so it applies
   with ``noise`` off too.
3. **Shot noise**: Poisson draw of the electrons (photo and dark), if ``noise`` and ``shot_noise``.
4. **Full-well saturation**: electrons clipped at ``full_well_e`` (off when None).
5. **Read noise**: Gaussian, standard deviation ``read_noise_e`` (e-), if ``noise``.
6. **Gain and offset**: ``DN = electrons / gain_e_per_dn + offset_dn``.
7. **ADC** (off when ``bit_depth`` is None): rounding to the nearest code (``floor(DN + 0.5)``),
   clipping to ``[0, 2**bit_depth - 1]`` and justification in a ``container_bits`` word:
   ``justify="left"`` multiplies the code by ``2**(container_bits - bit_depth)`` (a 12-bit ADC in a
   16-bit container gives multiples of 16 up to 65520, as most machine-vision cameras' Mono16 formats);
   ``"right"`` keeps the code.

Gradients
---------
Linear stages (resampling, QE, gain, offset, additive read noise) have their exact gradients; the
clipping stages (full well, ADC range) have the exact a.e. gradient (0 where clipped). Where the
physics is not differentiable -- the Poisson draw and the rounding -- the gradient is the
**straight-through identity**: ``d out / d in`` is taken as 1 through those stages (the output
equals ``mean + (sample - mean).detach()``), so the gradient is that of the noiseless, unrounded
sensor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from onn_core.errors import InputError
from .validation import check_positive, check_tensor, is_transformed

JUSTIFY = ("left", "right")
#: Tolerated negative input, relative to the largest magnitude (round-off of FFT convolutions);
#: values in that band are taken as 0 photons, more negative ones are an error.
NEGATIVE_ROUNDOFF_RTOL = 1e-5
#: Read-noise standard deviations below the full well's level from which a pixel may be clipped
#: (a clipped pixel reads below it with probability ~3e-7).
SATURATION_READ_SIGMAS = 5.0


def _straight_through(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` in the forward pass, gradient of ``value`` (identity) in the backward pass."""
    return value + (target - value).detach()


def area_resample_matrix(size_in: int, ratio: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Area-overlap matrix ``A`` of shape (ceil(size_in / ratio), size_in) for one axis.

    ``A[o, i]`` is the length (in input samples) of input sample ``i``'s interval ``[i, i + 1)`` that
    lies in output pixel ``o``'s interval ``[o ratio, (o + 1) ratio)``; ``ratio`` = output pitch /
    input pitch. Each column sums to 1, so ``A @ x`` preserves the sum of ``x``.
    """
    ratio = check_positive("pitch ratio", ratio)
    size_out = math.ceil(size_in / ratio - 1e-9)
    edges_in = torch.arange(size_in + 1, dtype=torch.float64, device=device)
    edges_out = torch.arange(size_out + 1, dtype=torch.float64, device=device) * ratio
    low = torch.maximum(edges_out[:-1, None], edges_in[None, :-1])
    high = torch.minimum(edges_out[1:, None], edges_in[None, 1:])
    return (high - low).clamp(min=0).to(dtype)


def area_resample(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """Integrate ``values`` (*batch, rows, cols) (a quantity per sample, e.g. photons) over pixels
    ``ratio`` times the input pitch on both axes; integer ratios that divide the size are binned."""
    rows, cols = values.shape[-2:]
    r = round(ratio)
    if abs(ratio - r) < 1e-9 and r >= 1 and rows % r == 0 and cols % r == 0:
        return values.reshape(*values.shape[:-2], rows // r, r, cols // r, r).sum(dim=(-3, -1))
    a_rows = area_resample_matrix(rows, ratio, values.dtype, values.device)
    a_cols = area_resample_matrix(cols, ratio, values.dtype, values.device)
    return a_rows @ values @ a_cols.T


@dataclass(frozen=True)
class FixedPattern:
    """A sensor's per-pixel fixed pattern, (rows, cols) float64 CPU tensors.

    ``response``: photo-electrons per expected photo-electron (PRNU factor, 0 on dead pixels);
    ``dark_current_e_per_s``: each pixel's dark current (DSNU and hot pixels included); ``hot`` and ``dead``: bool masks (a pixel
    drawn both is dead).
    """

    response: torch.Tensor
    dark_current_e_per_s: torch.Tensor
    hot: torch.Tensor
    dead: torch.Tensor


@functools.lru_cache(maxsize=8)
def _draw_fixed_pattern(shape: tuple[int, int], seed: int, prnu_rel_std: float, hot_fraction: float,
                        hot_extra_e_per_s: float, dead_fraction: float, dark_e_per_s: float,
                        dsnu_e_per_s_std: float = 0.0) -> FixedPattern:
    """The fixed pattern of ``shape`` drawn from ``seed`` (uniforms for hot, uniforms for dead, normals
    for PRNU, then normals for DSNU, in that order; cached, so never modify the result). A pixel's dark
    current is ``dark_e_per_s + N(0, dsnu_e_per_s_std)``, clipped at 0, plus the hot pixels' extra."""
    generator = torch.Generator().manual_seed(seed)
    hot = torch.rand(shape, generator=generator, dtype=torch.float64) < hot_fraction
    dead = torch.rand(shape, generator=generator, dtype=torch.float64) < dead_fraction
    prnu = 1.0 + prnu_rel_std * torch.randn(shape, generator=generator, dtype=torch.float64)
    response = torch.where(dead, 0.0, prnu.clamp(min=0.0))
    dark = torch.full(shape, dark_e_per_s, dtype=torch.float64)
    if dsnu_e_per_s_std:
        dark = (dark + dsnu_e_per_s_std * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(min=0.0)
    dark = torch.where(dead, 0.0, dark + torch.where(hot, hot_extra_e_per_s, 0.0))
    return FixedPattern(response, dark, hot & ~dead, dead)


@dataclass(frozen=True)
class SensorModel:
    """Photons per input sample -> DN per sensor pixel; see the module docstring for the stages.

    Parameters
    ----------
    exposure_s : float
        Default exposure time (s); scales the dark current only (the input is already per exposure).
        :meth:`forward` takes the exposure of each frame as an argument.
    input_pitch_m, pixel_pitch_m : float or None
        Sample pitch of the input and the sensor's pixel pitch (m); resampling is off unless both set.
    quantum_efficiency : float
        Electrons per photon, in (0, 1].
    dark_current_e_per_s : float
        Dark current (e-/s per sensor pixel), >= 0.
    shot_noise : bool
        Poisson noise on/off (also off when ``noise`` is False).
    read_noise_e : float
        Read-noise standard deviation (e-), >= 0.
    full_well_e : float or None
        Full-well capacity (e-); None: no saturation.
    gain_e_per_dn : float
        Electrons per DN (> 0).
    offset_dn : float
        Black level added before the ADC (DN).
    bit_depth : int or None
        ADC bits (1..32); None: no quantisation or clipping (continuous DN).
    container_bits : int or None
        Bits of the word that stores a pixel (bit_depth..32); None: same as ``bit_depth``.
    justify : "left" | "right"
        Where the ADC code sits in the container (see module docstring).
    noise : bool
        Master switch: False renders deterministically (expected values, still quantised).
    prnu_rel_std : float
        Photo-response non-uniformity: each pixel's photo-electrons are scaled by ``1 + N(0, prnu_rel_std)``
        (clipped at 0), >= 0.
    dsnu_e_per_s_std : float
        Dark-signal non-uniformity: each pixel's dark current is ``dark_current_e_per_s + N(0, dsnu_e_per_s_std)``
        (e-/s, clipped at 0), >= 0.
    hot_pixel_fraction, dead_pixel_fraction : float
        Probability, in [0, 1], that a pixel is hot (``hot_pixel_dark_current_e_per_s`` more dark current,
        e-/s, >= 0) or dead (no photo- or dark electrons).
    defect_seed : int
        Seed of the fixed pattern (PRNU, DSNU, hot and dead pixels), drawn once per frame shape.
    """

    exposure_s: float = 1.0
    input_pitch_m: float | None = None
    pixel_pitch_m: float | None = None
    quantum_efficiency: float = 1.0
    dark_current_e_per_s: float = 0.0
    shot_noise: bool = True
    read_noise_e: float = 0.0
    full_well_e: float | None = None
    gain_e_per_dn: float = 1.0
    offset_dn: float = 0.0
    bit_depth: int | None = None
    container_bits: int | None = None
    justify: str = "left"
    noise: bool = True
    prnu_rel_std: float = 0.0
    dsnu_e_per_s_std: float = 0.0
    hot_pixel_fraction: float = 0.0
    hot_pixel_dark_current_e_per_s: float = 0.0
    dead_pixel_fraction: float = 0.0
    defect_seed: int = 0

    def __post_init__(self):
        check_positive("exposure_s", self.exposure_s)
        for name in ("input_pitch_m", "pixel_pitch_m", "full_well_e"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        qe = check_positive("quantum_efficiency", self.quantum_efficiency)
        if qe > 1:
            raise InputError(f"quantum_efficiency must be in (0, 1] e-/photon, got {self.quantum_efficiency!r}")
        check_positive("dark_current_e_per_s", self.dark_current_e_per_s, allow_zero=True)
        check_positive("read_noise_e", self.read_noise_e, allow_zero=True)
        check_positive("gain_e_per_dn", self.gain_e_per_dn)
        offset = float(self.offset_dn)
        if not math.isfinite(offset):
            raise InputError(f"offset_dn must be finite, got {self.offset_dn!r}")
        if self.bit_depth is not None:
            _check_bits("bit_depth", self.bit_depth, 1)
            if self.container_bits is not None:
                _check_bits("container_bits", self.container_bits, self.bit_depth)
        elif self.container_bits is not None:
            raise InputError("container_bits needs bit_depth to be set (the ADC is off when bit_depth is None)")
        if self.justify not in JUSTIFY:
            raise InputError(f"justify must be one of {JUSTIFY}, got {self.justify!r}")
        check_positive("prnu_rel_std", self.prnu_rel_std, allow_zero=True)
        check_positive("dsnu_e_per_s_std", self.dsnu_e_per_s_std, allow_zero=True)
        check_positive("hot_pixel_dark_current_e_per_s", self.hot_pixel_dark_current_e_per_s, allow_zero=True)
        for name in ("hot_pixel_fraction", "dead_pixel_fraction"):
            if not 0 <= check_positive(name, getattr(self, name), allow_zero=True) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if isinstance(self.defect_seed, bool) or not isinstance(self.defect_seed, int):
            raise InputError(f"defect_seed must be an int, got {self.defect_seed!r}")

    @property
    def resample_ratio(self) -> float | None:
        """Sensor pixel pitch / input pitch, or None when resampling is off."""
        if self.input_pitch_m is None or self.pixel_pitch_m is None:
            return None
        return self.pixel_pitch_m / self.input_pitch_m

    @property
    def max_dn(self) -> float | None:
        """Largest output value (after justification), or None without an ADC."""
        if self.bit_depth is None:
            return None
        return float((2**self.bit_depth - 1) * self.justify_scale)

    @property
    def justify_scale(self) -> int:
        """Factor between an ADC code and the stored value (``2**(container - bits)`` when
        left-justified, else 1)."""
        if self.bit_depth is None:
            return 1
        container = self.container_bits or self.bit_depth
        return 2 ** (container - self.bit_depth) if self.justify == "left" else 1

    @property
    def saturation_dn(self) -> float | None:
        """Smallest stored value that may mean a clipped pixel, or None when nothing clips.

        The lower of the ADC's maximum and the full well's level; a pixel clipped at the full well
        reads its level plus read noise, so that level is taken :data:`SATURATION_READ_SIGMAS`
        read-noise sigmas lower (and rounded down to a code).
        """
        limits = []
        if self.full_well_e is not None:
            level = (self.full_well_e - SATURATION_READ_SIGMAS * self.read_noise_e) / self.gain_e_per_dn + self.offset_dn
            if self.bit_depth is not None:
                level = math.floor(level) * self.justify_scale
            limits.append(float(level))
        if self.max_dn is not None:
            limits.append(self.max_dn)
        return min(limits) if limits else None

    @property
    def has_fixed_pattern(self) -> bool:
        """Whether pixels differ (PRNU, DSNU, hot or dead pixels); False: every pixel is the nominal one."""
        hot = self.hot_pixel_fraction > 0 and self.hot_pixel_dark_current_e_per_s > 0
        return self.prnu_rel_std > 0 or self.dsnu_e_per_s_std > 0 or hot or self.dead_pixel_fraction > 0

    def fixed_pattern(self, shape) -> FixedPattern:
        """The per-pixel fixed pattern of a (rows, cols) sensor (the ground truth a calibration's
        defect map is compared with); drawn from ``defect_seed``, identical on every call."""
        rows, cols = (int(v) for v in shape)
        return _draw_fixed_pattern((rows, cols), self.defect_seed, float(self.prnu_rel_std),
                                   float(self.hot_pixel_fraction), float(self.hot_pixel_dark_current_e_per_s),
                                   float(self.dead_pixel_fraction), float(self.dark_current_e_per_s),
                                   float(self.dsnu_e_per_s_std))

    def electrons(self, dn: torch.Tensor) -> torch.Tensor:
        """Stored values ``dn`` -> photo-electrons (offset removed, ADC justification undone, times the
        conversion gain): the inverse of the gain/offset/justification stages."""
        return (dn / self.justify_scale - self.offset_dn) * self.gain_e_per_dn

    def forward(self, photons: torch.Tensor, generator: torch.Generator | None = None, *,
                exposure_s: float | None = None, noise: bool | None = None) -> torch.Tensor:
        """Expected photons per input sample (*batch, rows, cols) -> DN per sensor pixel.

        ``generator`` (on the tensor's device) seeds shot and read noise; the global RNG otherwise.
        ``exposure_s`` (s) scales the dark current (default: the model's ``exposure_s``); ``noise``
        overrides the model's ``noise`` switch (False: the expected value, still quantised).
        """
        exposure_s = self.exposure_s if exposure_s is None else check_positive("exposure_s", exposure_s)
        noisy = self.noise if noise is None else bool(noise)
        check_tensor("photons", photons, min_ndim=2)
        if photons.numel() and not is_transformed(photons):
            tolerance = -NEGATIVE_ROUNDOFF_RTOL * float(photons.detach().abs().max())
            if float(photons.detach().min()) < tolerance:
                raise InputError(f"photons must be >= 0, got minimum {float(photons.min())!r}")
        photons = photons.clamp(min=0)
        ratio = self.resample_ratio
        if ratio is not None:
            photons = area_resample(photons, ratio)
        if self.has_fixed_pattern:
            pattern = self.fixed_pattern(photons.shape[-2:])
            response = pattern.response.to(dtype=photons.dtype, device=photons.device)
            dark = pattern.dark_current_e_per_s.to(dtype=photons.dtype, device=photons.device)
            electrons = photons * (self.quantum_efficiency * response) + dark * exposure_s
        else:
            electrons = photons * self.quantum_efficiency + self.dark_current_e_per_s * exposure_s
        if noisy and self.shot_noise:
            electrons = _straight_through(electrons, torch.poisson(electrons.detach(), generator=generator))
        if self.full_well_e is not None:
            electrons = electrons.clamp(max=self.full_well_e)
        if noisy and self.read_noise_e > 0:
            draw = torch.randn(electrons.shape, generator=generator, dtype=electrons.dtype, device=electrons.device)
            electrons = electrons + self.read_noise_e * draw
        dn = electrons / self.gain_e_per_dn + self.offset_dn
        if self.bit_depth is None:
            return dn
        codes = _straight_through(dn, torch.floor(dn.detach() + 0.5)).clamp(0, 2**self.bit_depth - 1)
        return codes * self.justify_scale

    __call__ = forward


def _check_bits(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 32:
        raise InputError(f"{name} must be an int in [{minimum}, 32], got {value!r}")
    return value
