"""How well a pixel-level shift model can place an under-sampled PSF: the sampling systematic.

The mismatch fit (:mod:`calibration.fit`) moves each PSF by resampling its pixel values (bilinear,
:func:`simulator.fabrication.affine_resample`). A real PSF is a continuous intensity, band-limited by
its sub-aperture to spatial frequencies below ``1 / (lambda F#)`` (the incoherent cut-off), which the
sensor integrates over its pixels. Where ``lambda F#`` is small against the pixel pitch (under-sampled:
below 2 px), a sub-pixel move changes the binned pattern in a way no resampling of the binned pattern
reproduces, and the shift that matches best is pulled towards whole pixels ("pixel locking"). How far
depends on the PSF's structure below the pixel scale, which a measurement does not show: the fit's
noise-only (Fisher) sigma cannot contain it.

:func:`shift_systematic_px` estimates it by Monte Carlo from what the fit knows (the fitted PSF shapes,
the wavelength, f-number and pixel pitch):

1. each PSF's fitted shape (pixel values, clamped at 0) is the envelope of fully developed speckle,
   band-limited by a square sub-aperture (coherent cut-off ``1 / (2 lambda F#)`` per axis), sampled at
   ``u`` points per pixel with ``u > 2 px / (lambda F#)`` so that the intensity is band-limited on that
   grid (its moves are then exact Fourier phase ramps);
2. the speckle is binned as it is (the model's template) and after a move by a sub-pixel shift drawn
   uniformly in [-0.5, 0.5) px per axis (what the sensor sees);
3. the geometry stage's model (shift, rotation, magnification and brightness of the template),
   linearised at that shift and weighted as shot noise (:data:`WEIGHT_FLOOR`), takes the moved
   pattern; its shift error is recorded.

The RMS of that error over the draws is the systematic (px, per PSF and axis). It is averaged over the
sub-pixel phase rather than taken at the fitted shift: pixel locking moves the fitted phase itself
towards whole pixels, where the error looks small (at the fitted shifts of four wave-optics devices the
error evaluated there did not correlate with the fits' actual errors, -0.08; those fitted nearest whole
pixels missed most). It is largest where the speckle grain ``lambda F#`` is near the pixel pitch: for
the example design's 16 PSFs, median 0.056 px at ``lambda F#`` = 0.62 px and 0.045 px at 1.2 px,
against 0.022 px at 4.9 px (well sampled: the bilinear model's own interpolation error) and 0.024 px
at 0.15 px (grains averaged within each pixel). Seeded: the same inputs give the same result.

The pull itself is not random: over speckle draws, the mean error at a given sub-pixel phase is a
pull towards whole pixels (near zero at whole and half pixels, largest between). :func:`sampling_pull_px`
takes the same Monte Carlo at fixed shifts and inverts it: which true shift the fit would have pulled
to the fitted one. The fitted shift less that pull estimates the physical misregistration (the fit's
own least-squares shift stays what its model uses: it predicts frames best); on 20 wave-optics
devices it lowered the shift error from 0.077 to 0.058 px RMS. The sigma stated for it stays the
phase-averaged systematic: the speckle model of what lies below the pixel is an assumption, and the
pull it predicts was ~25 % weaker than the devices' own (the spread of the draws around their mean,
0.03 px, would understate the error).
"""

from __future__ import annotations

import logging
import math

import torch

from onn_core.errors import InputError
from simulator.fabrication import AberrationOptics, affine_resample
from simulator.fft import ifft2
from simulator.validation import check_tensor

log = logging.getLogger(__name__)
_CPU = torch.device("cpu")  # explicit throughout: whatever torch's default device

#: Floor of the shot-noise weights, as a fraction of each PSF's peak (read noise and stray light).
WEIGHT_FLOOR = 0.02
#: Central-difference steps of the linearised geometry model: shift (px), rotation (rad), magnification.
STEPS = (1e-4, 1e-5, 1e-5)


def shift_systematic_px(psfs: torch.Tensor, optics: AberrationOptics, *, draws: int = 32,
                        seed: int = 0) -> torch.Tensor:
    """The sampling systematic (P, 2) of fitted shifts (module docstring), px, float64 on the CPU.

    psfs: (P, C, K, K) fitted PSF shapes before placement (non-negative; negative values are clamped).
    optics: wavelength per channel (or one for all), f-number and pixel pitch of a sub-optic.
    draws: speckle realisations and sub-pixel shifts (>= 1). seed: of both.
    """
    speckle = _Speckle(psfs, optics, draws)
    generator = torch.Generator(device=_CPU).manual_seed(seed)
    squared = torch.zeros(speckle.lit_count, 2, dtype=torch.float64, device=_CPU)
    for _ in range(draws):
        fine = speckle.draw(generator)
        shift = torch.rand(speckle.lit_count, 2, generator=generator, dtype=torch.float64, device=_CPU) - 0.5
        squared += speckle.shift_error(fine, shift).square()
    return speckle.scatter((squared / draws).sqrt())


def sampling_pull_px(psfs: torch.Tensor, fitted_shift_px: torch.Tensor, optics: AberrationOptics, *,
                     draws: int = 32, seed: int = 0, tolerance_px: float = 1e-4,
                     max_iterations: int = 60) -> torch.Tensor:
    """The pull (P, 2) px towards whole pixels contained in fitted shifts ``fitted_shift_px`` (P, 2).

    The mean over speckle draws of the geometry model's shift error at a true shift ``d`` is the pull
    ``pull(d)``; the true shift behind a fitted one solves ``d + pull(d) = fitted_shift_px``. It is found
    by damped fixed-point iteration ``d += w (fitted - pull(d) - d)``, with the same draws each time (the
    mean pull is then one deterministic function of ``d``) and each value's ``w`` halved whenever its step
    changes sign (where the pull is steep, the plain iteration would oscillate), until no value moves
    more than ``tolerance_px``. Returns ``fitted_shift_px - d``: ``fitted_shift_px - pull`` estimates the
    physical misregistration; its uncertainty remains the phase-averaged :func:`shift_systematic_px`
    (the speckle model of the structure below the pixel is itself uncertain). Arguments as
    :func:`shift_systematic_px`; float64 on the CPU.
    """
    speckle = _Speckle(psfs, optics, draws)
    check_tensor("fitted_shift_px", fitted_shift_px, ndim=2)
    if tuple(fitted_shift_px.shape) != (psfs.shape[0], 2):
        raise InputError(f"fitted_shift_px must be (P, 2) = ({psfs.shape[0]}, 2), got {tuple(fitted_shift_px.shape)}")
    generator = torch.Generator(device=_CPU).manual_seed(seed)
    fine = torch.cat([speckle.draw(generator) for _ in range(draws)])  # every draw in one batch
    spectrum, template = torch.fft.fft2(fine), _bin(fine, speckle.u)
    fitted = fitted_shift_px.detach().to(_CPU, torch.float64)[speckle.lit]
    true, weight, previous = fitted.clone(), torch.ones_like(fitted), torch.zeros_like(fitted)
    moved = 0.0
    for _ in range(max_iterations):
        errors = speckle.moved_error(spectrum, template, true.repeat(draws, 1))
        step = fitted - errors.reshape(draws, -1, 2).mean(dim=0) - true
        weight = torch.where(step * previous < 0, weight / 2, weight)
        true, previous = true + weight * step, step
        moved = float((weight * step).abs().amax()) if step.numel() else 0.0
        if moved < tolerance_px:
            break
    else:
        log.warning("sampling pull: the true shift behind a fitted one still moved %.2g px at the last of %d "
                    "iterations (tolerance %.2g px)", moved, max_iterations, tolerance_px)
    return speckle.scatter(fitted - true)


class _Speckle:
    """Band-limited speckle under each lit PSF's envelope (module docstring, step 1), and the geometry
    model's shift error on it (steps 2-3)."""

    def __init__(self, psfs: torch.Tensor, optics: AberrationOptics, draws: int):
        check_tensor("psfs", psfs, ndim=4)
        p, c, k, width = psfs.shape
        if k != width:
            raise InputError(f"psfs must be (P, C, K, K), got {tuple(psfs.shape)}")
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise InputError(f"draws must be an int >= 1, got {draws!r}")
        wavelengths = optics.wavelengths_m * (c if len(optics.wavelengths_m) == 1 else 1)
        if len(wavelengths) != c:
            raise InputError(f"optics has {len(optics.wavelengths_m)} wavelengths for {c} channels (expected 1 or {c})")
        spot_px = torch.tensor([w * optics.f_number / optics.pixel_pitch_m for w in wavelengths],
                               dtype=torch.float64, device=_CPU)
        self.u = max(2, math.floor(2.0 / float(spot_px.min())) + 1)
        psfs = psfs.detach().to(_CPU, torch.float64).clamp(min=0)
        self.lit = psfs.flatten(1).amax(dim=1) > 0  # a dark PSF (no light to place) has no systematic
        self.count, self.lit_count = p, int(self.lit.sum())
        self.freq = torch.fft.fftfreq(k * self.u, d=1.0 / self.u, dtype=torch.float64, device=_CPU)  # cycles/px
        cut = (0.5 / spot_px)[:, None, None]
        self.pupil = ((self.freq.abs()[:, None] <= cut) & (self.freq.abs()[None, :] <= cut)).to(torch.complex128)
        self.amplitude = psfs[self.lit].repeat_interleave(self.u, dim=-2).repeat_interleave(self.u, dim=-1).sqrt()
        # the inverse DFT along one axis followed by binning u samples: (K, K u), one matrix product
        n = k * self.u
        index = torch.arange(n, dtype=torch.float64, device=_CPU)
        inverse = torch.exp(2j * math.pi * torch.outer(index, index) / n) / n
        self.binned_inverse = inverse.reshape(k, self.u, n).sum(dim=1)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One speckle intensity (lit P, C, K u, K u) sampled ``u`` times per pixel."""
        phase = 2 * math.pi * torch.rand(self.amplitude.shape, generator=generator, dtype=torch.float64, device=_CPU)
        return ifft2(torch.fft.fft2(self.amplitude * torch.exp(1j * phase)) * self.pupil).abs().square()

    def shift_error(self, fine: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The geometry model's shift error (N, 2) px when ``fine`` (N, C, K u, K u) moves by ``shift``
        (N, 2) px."""
        return self.moved_error(torch.fft.fft2(fine), _bin(fine, self.u), shift)

    def moved_error(self, spectrum: torch.Tensor, template: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """:meth:`shift_error` of the speckle whose 2-D spectrum is ``spectrum`` and binned pattern
        ``template``: moved by a phase ramp (separable), inverse-transformed and binned per axis as one
        matrix product each (equal to the inverse FFT then binning, to rounding; ~10x faster)."""
        ramps = torch.exp(-2j * math.pi * shift[:, :, None] * self.freq)  # (N, 2, K u): per axis
        rows, columns = (self.binned_inverse * ramps[:, axis, None, :] for axis in range(2))  # (N, K, K u)
        moved = (rows[:, None] @ spectrum @ columns[:, None].transpose(-1, -2)).real
        return linearised_shift_error(template, moved, shift)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(lit P, 2) -> (P, 2), zero for the dark PSFs."""
        out = torch.zeros(self.count, 2, dtype=torch.float64, device=_CPU)
        out[self.lit] = values
        return out


def linearised_shift_error(template: torch.Tensor, target: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Shift error (P, 2) px of the geometry model fitted to ``target``: the (P, C, K, K) ``template``
    moved by ``shift_px`` + error, rotated, magnified and scaled, by one weighted Gauss-Newton step from
    ``shift_px`` (no rotation, magnification 1, brightness 1); weights ``1 / (target + floor x peak)``."""
    p = template.shape[0]
    zero = torch.zeros(p, dtype=template.dtype, device=template.device)
    one = torch.ones_like(zero)

    def model(d_shift=None, rotation=zero, magnification=one):
        moved = shift_px if d_shift is None else shift_px + d_shift
        return affine_resample(template, rotation, magnification, moved)

    h_shift, h_rotation, h_magnification = STEPS
    columns = []
    for axis in range(2):
        step = torch.zeros_like(shift_px)
        step[:, axis] = h_shift
        columns.append((model(step) - model(-step)) / (2 * h_shift))
    columns.append((model(rotation=zero + h_rotation) - model(rotation=zero - h_rotation)) / (2 * h_rotation))
    columns.append((model(magnification=one + h_magnification) - model(magnification=one - h_magnification))
                   / (2 * h_magnification))
    centre = model()
    columns.append(centre)  # brightness
    jac = torch.stack(columns, dim=-1).reshape(p, -1, len(columns))  # (P, pixels, 5)
    residual = (target - centre).reshape(p, -1)
    clamped = target.clamp(min=0).reshape(p, -1)
    weight = 1.0 / (clamped + WEIGHT_FLOOR * clamped.amax(dim=1, keepdim=True))
    normal = jac.transpose(1, 2) @ (weight[..., None] * jac)
    gradient = jac.transpose(1, 2) @ (weight * residual)[..., None]
    return torch.linalg.solve(normal, gradient)[:, :2, 0]


def _bin(fine: torch.Tensor, u: int) -> torch.Tensor:
    """Sum (P, C, K u, K u) over ``u x u`` blocks: (P, C, K, K)."""
    p, c, n, _ = fine.shape
    return fine.reshape(p, c, n // u, u, n // u, u).sum(dim=(3, 5))


__all__ = ["STEPS", "WEIGHT_FLOOR", "linearised_shift_error", "sampling_pull_px", "shift_systematic_px"]
