"""Sampling guards: checks that refuse simulation set-ups that would alias or wrap around.

Each guard raises :class:`~onn_core.errors.SamplingError` whose message names the offending parameter,
the limit it broke and the fix. The criteria (all per axis, the strictest wavelength deciding):

* Angular spectrum (band-limited, Matsushima & Shimobaba 2009): the transfer function's phase changes
  by at most pi per frequency sample only for ``|f| <= f_limit = 1 / (lambda sqrt((2 z / S_pad)^2 + 1))``
  (``S_pad`` = padded extent). Beyond ``f_limit`` it aliases: the band-limited propagator drops those
  frequencies (that light would leave the padded window), the unlimited one refuses fields with energy
  there. A distance so long that the passband keeps fewer than ``min_passband_samples`` frequency
  samples of the *unpadded* grid is refused outright (use a single-FFT far-field transform instead).
* Fresnel transfer function ``exp(-i pi lambda z f^2)``: unaliased for ``|f| <= S_pad / (2 lambda |z|)``
  (the paraxial form of the limit above), handled the same way.
* Sampled phase (lens, wavefront, metasurface): neighbouring samples may differ by at most pi.
* Focal-plane (matrix) Fourier transform: the transform of a field sampled at ``dx`` repeats every
  ``lambda f / dx`` in the focal plane; the output window must stay inside one period.
* PSF Nyquist: the incoherent PSF of an f-number ``N`` system is band-limited to ``1 / (lambda N)``,
  so a sampling of ``lambda N / 2`` or finer represents it without aliasing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from onn_core.errors import InputError, SamplingError
from .field import Grid
from .validation import check_positive

__all__ = [
    "fast_fft_size",
    "as_wavelengths",
    "check_distance",
    "asm_frequency_limit",
    "check_asm_sampling",
    "check_fresnel_sampling",
    "fresnel_validity",
    "check_phase_sampling",
    "check_focal_plane_sampling",
    "check_psf_nyquist",
]


def fast_fft_size(n: int) -> int:
    """Smallest integer ``>= n`` whose only prime factors are 2, 3, 5 and 7 (fast FFT lengths).

    Parameters
    ----------
    n : int
        Minimum length (>= 1).
    """
    try:
        n = operator.index(n)
    except TypeError:
        raise InputError(f"fast_fft_size n must be an int, got {n!r}") from None
    if n < 1:
        raise InputError(f"fast_fft_size n must be >= 1, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def as_wavelengths(wavelengths_m) -> tuple[float, ...]:
    """Validate wavelengths (a number, a sequence or a 0/1-D tensor, metres) into a tuple of floats."""
    if isinstance(wavelengths_m, torch.Tensor):
        values = wavelengths_m.detach().reshape(-1).tolist()
    elif isinstance(wavelengths_m, Sequence) and not isinstance(wavelengths_m, str):
        values = list(wavelengths_m)
    else:
        values = [wavelengths_m]
    if not values:
        raise InputError("wavelengths_m must hold at least one wavelength")
    return tuple(check_positive("wavelength_m", w) for w in values)


def check_distance(name: str, distance_m) -> float:
    """Return a propagation distance (float or 0-dim tensor, metres, any sign) as a finite float."""
    if isinstance(distance_m, torch.Tensor):
        if distance_m.numel() != 1:
            raise InputError(f"{name} must be a scalar (one distance), got shape {tuple(distance_m.shape)}")
        value = float(distance_m.detach())
    else:
        try:
            value = float(distance_m)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a real number in metres, got {distance_m!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {distance_m!r}")
    return value


def asm_frequency_limit(wavelength_m: float, distance_m: float, padded_extent_m: float) -> float:
    """Matsushima-Shimobaba band limit ``1 / (lambda sqrt((2 |z| / S_pad)^2 + 1))`` in cycles/m: the
    highest frequency whose transfer-function phase is sampled at <= pi per frequency step
    ``1 / S_pad``, i.e. whose light stays inside the padded window ``S_pad`` after travelling ``z``."""
    return 1.0 / (wavelength_m * math.sqrt((2.0 * abs(distance_m) / padded_extent_m) ** 2 + 1.0))


def _check_padded_shape(grid: Grid, padded_shape) -> tuple[int, int]:
    try:
        padded = tuple(int(n) for n in padded_shape)
    except (TypeError, ValueError):
        raise InputError(f"padded_shape must be two ints (rows, cols), got {padded_shape!r}") from None
    if len(padded) != 2 or padded[0] < grid.shape[0] or padded[1] < grid.shape[1]:
        raise InputError(f"padded_shape must be two ints >= the grid shape {grid.shape}, got {padded_shape!r}")
    return padded


def check_asm_sampling(
    grid: Grid, wavelengths_m, distance_m, padded_shape, *, min_passband_samples: float = 8.0
) -> tuple[tuple[float, float], ...]:
    """Refuse an angular-spectrum set-up whose band limit would leave (almost) nothing of the field.

    Parameters
    ----------
    grid : Grid
        Sampling of the unpadded field.
    wavelengths_m : float or sequence of float
        Wavelengths in metres.
    distance_m : float or 0-dim tensor
        Propagation distance in metres (either sign).
    padded_shape : (int, int)
        Shape of the zero-padded array the FFTs run on (>= ``grid.shape``).
    min_passband_samples : float
        Minimum width ``2 f_limit`` of the band-limit passband, counted in frequency samples
        ``1 / S`` of the unpadded grid (extent ``S``).

    Returns
    -------
    tuple of (fy_limit, fx_limit) per wavelength, cycles/m.

    Raises
    ------
    SamplingError
        If, for some wavelength and axis, ``2 f_limit * S < min_passband_samples``: the distance is too
        long for the padded window.
    """
    wavelengths = as_wavelengths(wavelengths_m)
    z = check_distance("distance_m", distance_m)
    padded = _check_padded_shape(grid, padded_shape)
    limits = []
    for wl in wavelengths:
        pair = []
        for axis, (n, n_pad, d) in enumerate(zip(grid.shape, padded, grid.spacing_m)):
            f_lim = asm_frequency_limit(wl, z, n_pad * d)
            kept = 2.0 * f_lim * n * d
            if kept < min_passband_samples:
                longest = _longest_asm_distance(wl, n * d, n_pad * d, min_passband_samples)
                raise SamplingError(
                    f"distance_m={z:.6g} m is too long for the padded window on axis {'yx'[axis]} "
                    f"(padded extent {n_pad * d:.6g} m, wavelength {wl:.6g} m): the angular-spectrum band "
                    f"limit keeps only {kept:.3g} frequency samples (< {min_passband_samples}). Fix: "
                    f"increase padded_shape, keep |distance_m| <= {longest:.6g} m, or use a single-FFT "
                    f"far-field transform (propagate_to_focal_plane)."
                )
            pair.append(f_lim)
        limits.append(tuple(pair))
    return tuple(limits)


def _longest_asm_distance(wavelength_m, extent_m, padded_extent_m, min_samples) -> float:
    """Largest |z| for which ``2 f_limit S >= min_samples`` (inverse of the band-limit formula)."""
    f_min = min_samples / (2.0 * extent_m)
    ratio = 1.0 / (wavelength_m * f_min)
    return 0.5 * padded_extent_m * math.sqrt(max(ratio * ratio - 1.0, 0.0))


def check_fresnel_sampling(
    grid: Grid, wavelengths_m, distance_m, padded_shape, *, min_passband_samples: float = 8.0
) -> tuple[tuple[float, float], ...]:
    """Band limit of the Fresnel transfer function ``exp(-i pi lambda z f^2)`` and a refusal when it is
    degenerate.

    The chirp's phase step between frequency samples ``1 / S_pad`` is ``2 pi lambda |z| f / S_pad``; it is
    at most pi for ``|f| <= S_pad / (2 lambda |z|)`` (the paraxial form of the angular-spectrum limit).

    Returns
    -------
    tuple of (fy_limit, fx_limit) per wavelength, cycles/m (``inf`` at ``z = 0``).

    Raises
    ------
    SamplingError
        Naming ``distance_m`` when the passband holds fewer than ``min_passband_samples`` frequency
        samples ``1 / S`` of the unpadded grid.
    """
    wavelengths = as_wavelengths(wavelengths_m)
    z = check_distance("distance_m", distance_m)
    padded = _check_padded_shape(grid, padded_shape)
    limits = []
    for wl in wavelengths:
        pair = []
        for axis, (n, n_pad, d) in enumerate(zip(grid.shape, padded, grid.spacing_m)):
            f_lim = n_pad * d / (2.0 * wl * abs(z)) if z != 0 else math.inf
            kept = 2.0 * f_lim * n * d
            if kept < min_passband_samples:
                longest = (n_pad * d) * (n * d) / (wl * min_passband_samples)
                raise SamplingError(
                    f"distance_m={z:.6g} m is too long for the padded window on axis {'yx'[axis]} (padded extent "
                    f"{n_pad * d:.6g} m, wavelength {wl:.6g} m): the Fresnel chirp is sampled without aliasing "
                    f"on only {kept:.3g} frequency samples (< {min_passband_samples}). Fix: increase "
                    f"padded_shape, keep |distance_m| <= {longest:.6g} m, or use a single-FFT far-field "
                    f"transform (propagate_to_focal_plane)."
                )
            pair.append(f_lim)
        limits.append(tuple(pair))
    return tuple(limits)


def fresnel_validity(max_radius_m: float, distance_m: float, wavelength_m: float) -> float:
    """Phase error (radians) of the Fresnel (paraxial) approximation: the first neglected term of the
    distance expansion, ``k r^4 / (8 |z|^3)`` at transverse separation ``r = max_radius_m``
    (Goodman's sufficient criterion asks for this to be << 1 rad)."""
    r = check_positive("max_radius_m", max_radius_m)
    z = abs(check_distance("distance_m", distance_m))
    if z == 0:
        return 0.0 if r == 0 else math.inf
    k = 2.0 * math.pi / check_positive("wavelength_m", wavelength_m)
    return k * r**4 / (8.0 * z**3)


def check_phase_sampling(phase: torch.Tensor, name: str, *, mask: torch.Tensor | None = None,
                         tolerance_rad: float = 1e-9) -> None:
    """Refuse an (unwrapped) phase map whose neighbouring samples differ by more than pi.

    Parameters
    ----------
    phase : Tensor (..., rows, cols)
        Unwrapped phase in radians.
    name : str
        Name of the parameter the phase comes from, for the message.
    mask : bool Tensor (rows, cols), optional
        Where light passes; a step counts only if at least one of its two samples is in the mask.
    tolerance_rad : float
        Slack above pi allowed for rounding.

    Raises
    ------
    SamplingError
        If ``max |phase[i+1]-phase[i]| > pi`` along rows or columns (the phase would alias).
    """
    if not isinstance(phase, torch.Tensor) or phase.ndim < 2 or phase.is_complex():
        raise InputError(f"{name}: phase must be a real tensor (..., rows, cols), got {type(phase).__name__}")
    worst = 0.0
    with torch.no_grad():
        for dim in (-2, -1):
            if phase.shape[dim] < 2:
                continue
            step = phase.diff(dim=dim).abs()
            if mask is not None:
                step = step * (mask.narrow(dim, 0, mask.shape[dim] - 1) | mask.narrow(dim, 1, mask.shape[dim] - 1))
            worst = max(worst, float(step.max()))
    if not math.isfinite(worst):
        raise InputError(f"{name}: phase contains NaN or inf")
    if worst > math.pi + tolerance_rad:
        raise SamplingError(
            f"{name}: the phase changes by up to {worst:.4g} rad between neighbouring samples (> pi), so it "
            f"aliases. Fix: sample finer (smaller spacing_m, factor >= {worst / math.pi:.3g}) or reduce the "
            f"phase slope (longer focal length, smaller aperture, weaker aberration)."
        )


def check_focal_plane_sampling(grid: Grid, out_grid: Grid, wavelengths_m, focal_length_m: float) -> None:
    """Refuse a focal-plane window that reaches beyond one period ``lambda f / dx`` of the transform of
    the sampled input (the sampled field's spectrum repeats; the window would show its replicas).

    Raises
    ------
    SamplingError
        Naming ``out_grid`` (window too large) and ``grid spacing`` (input sampled too coarsely).
    """
    wl_min = min(as_wavelengths(wavelengths_m))
    f = abs(check_distance("focal_length_m", focal_length_m))
    if f == 0:
        raise InputError("focal_length_m must be non-zero")
    for axis in range(2):
        half_period = wl_min * f / (2.0 * grid.spacing_m[axis])
        n, d, c = out_grid.shape[axis], out_grid.spacing_m[axis], out_grid.center_m[axis]
        reach = max(abs(c - (n // 2) * d), abs(c + (n - 1 - n // 2) * d))  # farthest sample centre
        if reach > half_period * (1 + 1e-9):
            raise SamplingError(
                f"out_grid reaches {reach:.6g} m from the axis on axis {'yx'[axis]}, beyond half the period "
                f"lambda f / (2 dx) = {half_period:.6g} m of the focal-plane transform of the input sampled at "
                f"grid spacing_m={grid.spacing_m[axis]:.6g} m. Fix: shrink out_grid or sample the input finer."
            )


def check_psf_nyquist(psf_spacing_m, wavelengths_m, f_number: float, *, name: str = "psf_spacing_m") -> None:
    """Refuse a PSF sampling coarser than Nyquist for an incoherent f-number ``N`` system:
    the spacing must be ``<= lambda_min N / 2`` (the OTF cut-off is ``1 / (lambda N)``).

    Parameters
    ----------
    psf_spacing_m : float or (float, float)
        PSF sample spacing in metres.
    wavelengths_m : float or sequence
        Wavelengths in metres (the shortest decides).
    f_number : float
        Working f-number ``N = f / D``.
    """
    spacings = psf_spacing_m if isinstance(psf_spacing_m, (tuple, list)) else (psf_spacing_m,)
    spacing = max(check_positive(name, s) for s in spacings)
    n = check_positive("f_number", f_number)
    limit = min(as_wavelengths(wavelengths_m)) * n / 2.0
    if spacing > limit * (1 + 1e-12):
        raise SamplingError(
            f"{name}={spacing:.6g} m is coarser than the Nyquist spacing lambda N / 2 = {limit:.6g} m of the "
            f"incoherent PSF (f_number={n:.6g}); the PSF would alias. Fix: sample at <= {limit:.6g} m or "
            f"integrate over pixels explicitly."
        )
