"""Zernike polynomials (Noll 1976 ordering and normalisation) and wavefronts built from them.

Conventions
-----------
* Index: Noll ``j = 1, 2, ...`` (``j=1`` piston, 2/3 tilt x/y, 4 defocus, 5/6 astigmatism, 7/8 coma,
  9/10 trefoil, 11 spherical). Even ``j`` carries ``cos(m theta)`` (``m > 0``), odd ``j`` carries
  ``sin(|m| theta)`` (``m < 0``); within a radial order, smaller ``|m|`` comes first. OSA/ANSI index
  ``j_osa = (n (n + 2) + m) / 2`` (0-based) uses the same signed ``m``.
* Normalisation: ``Z_j = sqrt(n + 1) R_n^0(rho)`` for ``m = 0`` and ``sqrt(2 (n + 1)) R_n^|m|(rho)
  {cos, sin}(|m| theta)`` otherwise, so every mode has unit RMS over the unit disk and the modes are
  orthonormal: ``(1/pi) int_disk Z_i Z_j = delta_ij``. E.g. ``Z4 = sqrt(3) (2 rho^2 - 1)``.
* Coordinates: ``rho = r / radius_m`` and ``theta = atan2(y, x)`` from the +x axis (columns) towards
  +y (rows), about the pupil centre ``center_m`` (absolute grid coordinates, metres).
* Wavefront ``W`` (metres) is an optical path added to the wave: the field is multiplied by
  ``exp(+i 2 pi W / lambda)`` (``exp(-i omega t)`` convention, so positive ``W`` = extra path, like extra
  glass). A positive Noll-2 (Noll-3) coefficient ``c`` therefore moves the focal spot towards +x,
  increasing column (+y, increasing row), by ``2 c f / R`` (light bends towards the thicker side, as in
  a prism). HCIPy and prysm share this ``W``; poppy (>= 1.0) propagates to the image with an inverse
  FFT, so its OPD is ``-W`` (its PSF for the same coefficients is ours rotated by 180 degrees), as for
  codes that write the field as ``exp(-i k W)`` (checked and converted in
  :mod:`calibration.phase_retrieval`). A converging thin lens is ``W = -r^2 / (2 f)``; moving the
  observation plane a distance ``dz`` beyond the focus is, paraxially, ``W = -(r^2 / 2) (1/f - 1/(f +
  dz))``, i.e. a Noll defocus coefficient ``c4 = W020 / (2 sqrt 3)`` with ``W020 = -a^2 dz / (2 f (f +
  dz)) ~ -NA^2 dz / 2``.
"""

from __future__ import annotations

import functools
import math
import operator

import torch

from onn_core.errors import InputError
from .field import Grid
from .sampling import as_wavelengths
from .validation import check_positive, check_tensor

__all__ = [
    "noll_to_nm",
    "nm_to_noll",
    "noll_to_osa",
    "osa_to_noll",
    "zernike_radial",
    "zernike_polynomial",
    "zernike_basis",
    "zernike_wavefront",
    "wavefront_to_phase",
    "defocus_to_noll_coefficient",
]


def _index(name: str, value, minimum: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an int, got {value!r}") from None
    if v < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {v}")
    return v


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index ``j >= 1`` -> (radial order ``n``, signed azimuthal frequency ``m``)."""
    j = _index("Noll index j", j, 1)
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2 - 1  # position within the radial order, 0..n
    abs_m = 2 * ((k + 1) // 2) if n % 2 == 0 else 2 * (k // 2) + 1
    if abs_m == 0:
        return n, 0
    return n, abs_m if j % 2 == 0 else -abs_m


def nm_to_noll(n: int, m: int) -> int:
    """(``n``, signed ``m``) -> Noll index; requires ``|m| <= n`` and ``n - |m|`` even."""
    n = _index("radial order n", n, 0)
    try:
        m = operator.index(m)
    except TypeError:
        raise InputError(f"azimuthal frequency m must be an int, got {m!r}") from None
    if abs(m) > n or (n - abs(m)) % 2:
        raise InputError(f"(n, m) = ({n}, {m}) is not a Zernike mode: need |m| <= n and n - |m| even")
    first = n * (n + 1) // 2 + 1
    for j in range(first, first + n + 1):
        if noll_to_nm(j) == (n, m):
            return j
    raise AssertionError("unreachable: every valid (n, m) has a Noll index")


def noll_to_osa(j: int) -> int:
    """Noll index (1-based) -> OSA/ANSI index ``(n (n + 2) + m) / 2`` (0-based)."""
    n, m = noll_to_nm(j)
    return (n * (n + 2) + m) // 2


def osa_to_noll(j: int) -> int:
    """OSA/ANSI index (0-based) -> Noll index (1-based)."""
    j = _index("OSA index j", j, 0)
    n = int((math.isqrt(8 * j + 1) - 1) // 2)
    m = 2 * j - n * (n + 2)
    return nm_to_noll(n, m)


def zernike_radial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Radial polynomial ``R_n^|m|(rho) = sum_s (-1)^s (n-s)! / (s! ((n+|m|)/2-s)! ((n-|m|)/2-s)!) rho^(n-2s)``
    (unnormalised, ``R(1) = 1``), evaluated by Horner's rule in ``rho^2``."""
    m = abs(m)
    coeffs = [
        (-1) ** s * math.factorial(n - s)
        / (math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
        for s in range((n - m) // 2 + 1)
    ]  # coefficient of rho^(n - 2 s): highest power first
    rho2 = rho * rho
    poly = torch.zeros_like(rho) + coeffs[0]
    for c in coeffs[1:]:
        poly = poly * rho2 + c
    return poly * rho**m


def zernike_polynomial(j: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Noll-normalised Zernike mode ``Z_j(rho, theta)`` (unit RMS on the unit disk), evaluated everywhere
    ``rho`` is given (no masking outside ``rho <= 1``)."""
    n, m = noll_to_nm(j)
    radial = zernike_radial(n, m, rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    angular = torch.cos(m * theta) if m > 0 else torch.sin(-m * theta)
    return math.sqrt(2 * (n + 1)) * radial * angular


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # a cache filled under inference_mode must still serve autograd later
def _basis_cached(num_modes, shape, spacing, center, radius_m, pupil_center, clip, dtype, device):
    grid = Grid(shape, spacing, center)
    y, x = grid.mesh(torch.float64, device)
    y, x = y - pupil_center[0], x - pupil_center[1]
    rho = torch.sqrt(x * x + y * y) / radius_m
    theta = torch.atan2(y, x)
    modes = torch.stack([zernike_polynomial(j, rho, theta) for j in range(1, num_modes + 1)])
    if clip:
        modes = modes * (rho <= 1.0)
    return modes.to(dtype)


def zernike_basis(num_modes: int, grid: Grid, radius_m: float, *, center_m=(0.0, 0.0), clip_to_disk=True,
                  dtype=torch.float64, device=None) -> torch.Tensor:
    """Noll modes ``j = 1..num_modes`` sampled on ``grid``, shape (num_modes, rows, cols), cached.

    Parameters
    ----------
    num_modes : int
        Number of modes ``J`` (Noll 1..J).
    grid : Grid
        Sampling; pupil coordinates are ``grid.mesh() - center_m`` in metres.
    radius_m : float
        Pupil radius in metres (``rho = 1`` there).
    center_m : (float, float)
        Pupil centre (y, x) in metres.
    clip_to_disk : bool
        Zero outside ``rho <= 1``. Turn off to extend the polynomials over anti-aliased edge pixels.

    Returns a copy of the cached basis.
    """
    return _basis(num_modes, grid, radius_m, center_m, clip_to_disk, dtype, device).clone()


def _basis(num_modes, grid, radius_m, center_m, clip_to_disk, dtype, device) -> torch.Tensor:
    """The cached basis itself (shared: callers must not modify it)."""
    num_modes = _index("number of Zernike modes", num_modes, 1)
    radius = check_positive("radius_m", radius_m)
    device = torch.device(device) if device is not None else torch.device("cpu")
    center = tuple(float(c) for c in center_m)
    return _basis_cached(num_modes, grid.shape, grid.spacing_m, grid.center_m, radius, center,
                         bool(clip_to_disk), dtype, device)


def zernike_wavefront(coeffs_m: torch.Tensor, grid: Grid, radius_m: float, *, center_m=(0.0, 0.0),
                      clip_to_disk: bool = True) -> torch.Tensor:
    """Wavefront ``W = sum_j c_j Z_j`` in metres on ``grid``; differentiable in ``coeffs_m``.

    Parameters
    ----------
    coeffs_m : Tensor (..., J)
        RMS wavefront of each Noll mode ``j = 1..J`` in metres (real float32/float64).
    grid : Grid
        Pupil-plane sampling.
    radius_m : float
        Pupil radius in metres.
    center_m, clip_to_disk
        See :func:`zernike_basis`.

    Returns
    -------
    Tensor (..., rows, cols), same dtype and device as ``coeffs_m``.
    """
    check_tensor("coeffs_m", coeffs_m, min_ndim=1)
    basis = _basis(coeffs_m.shape[-1], grid, radius_m, center_m, clip_to_disk, coeffs_m.dtype, coeffs_m.device)
    return torch.tensordot(coeffs_m, basis, dims=([-1], [0]))


def wavefront_to_phase(w_m: torch.Tensor, wavelengths_m) -> torch.Tensor:
    """Phase ``2 pi W / lambda`` (radians) per wavelength: (..., rows, cols) -> (..., L, rows, cols)."""
    check_tensor("w_m", w_m, min_ndim=2)
    wl = torch.tensor(as_wavelengths(wavelengths_m), dtype=w_m.dtype, device=w_m.device).view(-1, 1, 1)
    return (2.0 * math.pi) * w_m.unsqueeze(-3) / wl


def defocus_to_noll_coefficient(distance_m: float, aperture_radius_m: float, focal_length_m: float) -> float:
    """Noll ``c4`` (metres RMS) equivalent to observing ``distance_m`` beyond the focus of a lens of focal
    length ``focal_length_m`` and aperture radius ``aperture_radius_m`` (Fresnel regime):
    ``c4 = W020 / (2 sqrt 3)``, ``W020 = -a^2 dz / (2 f (f + dz))`` (see the module conventions)."""
    a = check_positive("aperture_radius_m", aperture_radius_m)
    f = check_positive("focal_length_m", focal_length_m)
    dz = float(distance_m)
    if not math.isfinite(dz) or f + dz <= 0:
        raise InputError(f"distance_m must be finite and > -focal_length_m, got {distance_m!r}")
    w020 = -a * a * dz / (2.0 * f * (f + dz))
    return w020 / (2.0 * math.sqrt(3.0))
