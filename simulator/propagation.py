"""Free-space propagation of scalar fields: band-limited angular spectrum, Fresnel transfer function,
and the single-lens Fourier transform onto a focal-plane grid of your choice.

Conventions are those of :mod:`simulator.field`: time dependence ``exp(-i omega t)``, a plane wave
travelling towards +z accumulates ``exp(+i k z)``; spectra use ``torch.fft.fft2`` (kernel
``exp(-2 pi i f x)``). All functions are differentiable in the field (and in ``distance_m`` where
noted), batched over the leading dims of ``Field.data``, and run on the field's device and dtype
(complex64 / complex128).
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from onn_core.errors import InputError, SamplingError
from .fft import ifft2_unscaled
from .field import Field, Grid
from .sampling import (
    as_wavelengths,
    asm_frequency_limit,
    check_asm_sampling,
    check_distance,
    check_focal_plane_sampling,
    check_fresnel_sampling,
    fast_fft_size,
    fresnel_validity,
)
from .validation import complex_dtype_for, real_dtype_for

logger = logging.getLogger(__name__)

__all__ = [
    "default_padded_shape",
    "asm_transfer_function",
    "clear_transfer_function_cache",
    "propagate_asm",
    "fresnel_transfer_function",
    "propagate_fresnel",
    "focal_plane_grid",
    "lens_fourier_transform",
    "propagate_to_focal_plane",
]

_CACHE_SIZE = 8  # transfer functions kept per kind (each up to rows*cols*L complex values)


def default_padded_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Padded FFT shape for linear (not circular) convolution: ``fast_fft_size(2 n)`` per axis."""
    return (fast_fft_size(2 * int(shape[0])), fast_fft_size(2 * int(shape[1])))


def _check_field(field) -> Field:
    if not isinstance(field, Field):
        raise InputError(f"field must be a simulator.field.Field, got {type(field).__name__}")
    return field


def _frequency_axes(grid: Grid, padded_shape, dtype, device):
    fy = torch.fft.fftfreq(padded_shape[0], d=grid.spacing_m[0], dtype=dtype, device=device)
    fx = torch.fft.fftfreq(padded_shape[1], d=grid.spacing_m[1], dtype=dtype, device=device)
    return fy, fx


def _asm_kernel(grid, wavelengths, distance, padded_shape, band_limit, dtype, device):
    """Build H (L, Py, Px). ``distance`` is a float or a 0-dim float64 tensor (differentiable)."""
    z = float(distance.detach()) if isinstance(distance, torch.Tensor) else distance
    fy, fx = _frequency_axes(grid, padded_shape, torch.float64, device)
    fy2, fx2 = (fy**2).view(-1, 1), (fx**2).view(1, -1)
    kernels = []
    for wl in wavelengths:
        arg = 1.0 / wl**2 - fy2 - fx2
        propagating = arg > 0
        kz = torch.sqrt(arg.clamp_min(0.0))  # cycles/m along z
        keep = propagating
        if band_limit:
            fy_lim = asm_frequency_limit(wl, z, padded_shape[0] * grid.spacing_m[0])
            fx_lim = asm_frequency_limit(wl, z, padded_shape[1] * grid.spacing_m[1])
            keep = keep & (fy2 <= fy_lim**2) & (fx2 <= fx_lim**2)
        phase = (2.0 * math.pi) * distance * kz  # float64: |phase| ~ 1e4 rad needs the precision
        kernels.append(torch.polar(keep.to(torch.float64), phase))
    return torch.stack(kernels).to(dtype)


@functools.lru_cache(maxsize=_CACHE_SIZE)
@torch.inference_mode(False)
def _asm_kernel_cached(spacing, wavelengths, distance, padded_shape, band_limit, dtype, device):
    return _asm_kernel(Grid((1, 1), spacing), wavelengths, distance, padded_shape, band_limit, dtype, device)


def asm_transfer_function(
    grid: Grid,
    wavelengths_m,
    distance_m,
    padded_shape: tuple[int, int] | None = None,
    band_limit: bool = True,
    dtype: torch.dtype = torch.complex64,
    device=None,
) -> torch.Tensor:
    """Angular-spectrum transfer function ``H = exp(2 pi i z sqrt(1/lambda^2 - fx^2 - fy^2))``.

    Evanescent components (``fx^2 + fy^2 >= 1/lambda^2``) are set to 0. With ``band_limit`` the
    Matsushima-Shimobaba (2009) limit ``|f_x| <= 1 / (lambda sqrt((2 z / S_x)^2 + 1))`` (``S_x`` = padded
    extent, same for y) is applied as well, which removes the frequencies whose ``H`` would alias.

    Parameters
    ----------
    grid : Grid
        Sampling (spacing) of the field; only ``spacing_m`` matters.
    wavelengths_m : float or sequence of float
        Wavelengths in metres (``L`` of them).
    distance_m : float or 0-dim tensor
        Distance in metres, negative for back-propagation. A tensor that requires grad gives an uncached
        ``H`` differentiable in the distance (through the phase; the band-limit mask is piecewise constant
        in ``z`` and carries no gradient); anything else is cached (LRU, 8 entries) on every argument.
    padded_shape : (int, int), optional
        FFT array shape; default :func:`default_padded_shape` of ``grid.shape``.
    band_limit : bool
        Apply the band limit.
    dtype : torch.dtype
        complex64 or complex128 (a real dtype selects the matching complex one).
    device : torch.device, optional

    Returns
    -------
    Tensor (L, Py, Px), complex, in unshifted FFT frequency order. A copy of the cached result: changing it
    does not affect later propagations.
    """
    return _transfer_function(_asm_kernel, _asm_kernel_cached, grid, wavelengths_m, distance_m, padded_shape,
                              band_limit, dtype, device).clone()


def _transfer_function(kernel, cached_kernel, grid, wavelengths_m, distance_m, padded_shape, band_limit, dtype,
                       device) -> torch.Tensor:
    """Build a transfer function with ``kernel`` -- uncached and differentiable when ``distance_m`` is a
    tensor requiring grad -- or take it from ``cached_kernel`` (keyed on every argument; shared, so
    internal callers must not modify it; the public builders return copies)."""
    wavelengths = as_wavelengths(wavelengths_m)
    padded = tuple(int(n) for n in (padded_shape or default_padded_shape(grid.shape)))
    cdtype = complex_dtype_for(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(distance_m, torch.Tensor) and distance_m.requires_grad:
        check_distance("distance_m", distance_m)
        z = distance_m.reshape(()).to(device=device, dtype=torch.float64)
        return kernel(grid, wavelengths, z, padded, band_limit, cdtype, device)
    z = check_distance("distance_m", distance_m)
    return cached_kernel(grid.spacing_m, wavelengths, z, padded, bool(band_limit), cdtype, device)


def clear_transfer_function_cache() -> None:
    """Free the cached transfer functions (angular spectrum and Fresnel)."""
    _asm_kernel_cached.cache_clear()
    _fresnel_kernel_cached.cache_clear()


def _apply_transfer_function(data: torch.Tensor, kernel: torch.Tensor, padded_shape) -> torch.Tensor:
    """Linear convolution of ``data`` (..., L, ny, nx) with the transfer function ``kernel`` (L, Py, Px):
    ``ifft2(fft2(data, s=padded_shape) * kernel)[..., :ny, :nx]`` (zero-pad at the far end, multiply, crop
    the original window), returned contiguous.

    Only unscaled 2-D transforms are used (see :mod:`simulator.fft` for the torch bug this avoids); the
    ``1 / (Py Px)`` factor is applied to the cropped window, a quarter of the padded array when padding
    doubles each side. Whole 2-D transforms beat going axis by axis (which skips the zero rows) here:
    torch's strided 1-D passes along the rows axis cost more than the work they skip -- 1024^2 padded to
    2048^2, complex64, 2 threads: 88-96 ms axis by axis, 58 ms as written (``benchmarks/simulator.py``
    compares it with the bare transforms).
    """
    ny, nx = data.shape[-2:]
    py, px = padded_shape
    spectrum = torch.fft.fft2(data, s=(py, px))
    spectrum.mul_(kernel)  # in place: nothing needs the unmultiplied spectrum, autograd included
    return ifft2_unscaled(spectrum)[..., :ny, :nx] * (1.0 / (py * px))


def _spectrum_outside(data, grid, padded_shape, f_limits) -> torch.Tensor:
    """Fraction (max over batch and wavelength) of the padded spectrum's energy beyond the band limits."""
    with torch.no_grad():
        power = torch.fft.fft2(data, s=padded_shape).abs() ** 2
        fy, fx = _frequency_axes(grid, padded_shape, real_dtype_for(data.dtype), data.device)
        fy_lim = torch.tensor([lim[0] for lim in f_limits], dtype=fy.dtype, device=fy.device).view(-1, 1, 1)
        fx_lim = torch.tensor([lim[1] for lim in f_limits], dtype=fx.dtype, device=fx.device).view(-1, 1, 1)
        outside = (fy.abs().view(1, -1, 1) > fy_lim) | (fx.abs().view(1, 1, -1) > fx_lim)
        total = power.sum(dim=(-2, -1)).clamp_min(torch.finfo(power.dtype).tiny)
        return ((power * outside).sum(dim=(-2, -1)) / total).max()


def _resolve_padding(grid: Grid, pad: bool, padded_shape) -> tuple[int, int]:
    if padded_shape is not None:
        return tuple(int(n) for n in padded_shape)
    return default_padded_shape(grid.shape) if pad else grid.shape


def _refuse_aliased_spectrum(field: Field, padded, f_limits, distance_m, max_aliased_energy, method: str) -> None:
    aliased = float(_spectrum_outside(field.data, field.grid, padded, f_limits))
    if aliased > max_aliased_energy:
        raise SamplingError(
            f"{method}(band_limit=False): {aliased:.3g} of the field's spectral energy lies beyond the band "
            f"where the transfer function for distance_m={check_distance('distance_m', distance_m):.6g} m aliases "
            f"(> max_aliased_energy={max_aliased_energy:.3g}). Fix: band_limit=True, a larger padded_shape, "
            f"or a shorter distance_m."
        )


def propagate_asm(
    field: Field,
    distance_m,
    *,
    band_limit: bool = True,
    pad: bool = True,
    padded_shape: tuple[int, int] | None = None,
    max_aliased_energy: float = 1e-6,
) -> Field:
    """Propagate ``field`` by ``distance_m`` (metres, negative = backwards) with the angular spectrum.

    The field is zero-padded to ``padded_shape`` (default ``fast_fft_size(2 n)`` per axis, so the
    convolution is linear, not circular), multiplied by :func:`asm_transfer_function` and cropped back to
    the input window; the output has the input's grid.

    Parameters
    ----------
    field : Field
        Input field, data (*batch, L, rows, cols).
    distance_m : float or 0-dim tensor
        Distance in metres; a tensor requiring grad makes the result differentiable in it.
    band_limit : bool
        Drop the frequencies beyond the Matsushima-Shimobaba limit (their light would leave the padded
        window; energy can then only decrease). With ``band_limit=False`` nothing is dropped except
        evanescent waves (energy conserved), and the field is checked instead: if more than
        ``max_aliased_energy`` of its spectral energy lies where the transfer function aliases, it raises
        (this check costs one extra FFT and a device sync).
    pad : bool
        Zero-pad (``False``: circular convolution on the field's own window; only for periodic fields).
    padded_shape : (int, int), optional
        Explicit FFT shape (overrides ``pad``).
    max_aliased_energy : float
        Tolerated fraction of spectral energy in the aliased band when ``band_limit=False``.

    Raises
    ------
    SamplingError
        Distance too long for the padded window (see :func:`simulator.sampling.check_asm_sampling`), or
        (``band_limit=False``) a field whose spectrum reaches where ``H`` aliases.
    """
    return _propagate(field, distance_m, check_asm_sampling, _asm_kernel, _asm_kernel_cached, band_limit, pad,
                      padded_shape, max_aliased_energy, "propagate_asm")


def _propagate(field, distance_m, check_sampling, kernel, cached_kernel, band_limit, pad, padded_shape,
               max_aliased_energy, method: str) -> Field:
    """The steps shared by :func:`propagate_asm` and :func:`propagate_fresnel`: check the field and the
    sampling, refuse an aliasing spectrum when not band-limiting, apply the transfer function."""
    field = _check_field(field)
    padded = _resolve_padding(field.grid, pad, padded_shape)
    f_limits = check_sampling(field.grid, field.wavelengths_m, distance_m, padded)
    if not band_limit:
        _refuse_aliased_spectrum(field, padded, f_limits, distance_m, max_aliased_energy, method)
    transfer = _transfer_function(kernel, cached_kernel, field.grid, field.wavelengths_m, distance_m, padded,
                                  band_limit, field.data.dtype, field.data.device)
    return field.replace(data=_apply_transfer_function(field.data, transfer, padded))


def _fresnel_kernel(grid, wavelengths, distance, padded_shape, band_limit, dtype, device):
    z = float(distance.detach()) if isinstance(distance, torch.Tensor) else distance
    fy, fx = _frequency_axes(grid, padded_shape, torch.float64, device)
    fy2, fx2 = (fy**2).view(-1, 1), (fx**2).view(1, -1)
    kernels = []
    for wl in wavelengths:
        keep = torch.ones_like(fy2 + fx2)
        if band_limit and z != 0:
            fy_lim = padded_shape[0] * grid.spacing_m[0] / (2.0 * wl * abs(z))
            fx_lim = padded_shape[1] * grid.spacing_m[1] / (2.0 * wl * abs(z))
            keep = ((fy2 <= fy_lim**2) & (fx2 <= fx_lim**2)).to(torch.float64)
        phase = (2.0 * math.pi / wl) * distance - math.pi * wl * distance * (fy2 + fx2)
        kernels.append(torch.polar(keep, phase))
    return torch.stack(kernels).to(dtype)


@functools.lru_cache(maxsize=_CACHE_SIZE)
@torch.inference_mode(False)
def _fresnel_kernel_cached(spacing, wavelengths, distance, padded_shape, band_limit, dtype, device):
    return _fresnel_kernel(Grid((1, 1), spacing), wavelengths, distance, padded_shape, band_limit, dtype, device)


def fresnel_transfer_function(grid: Grid, wavelengths_m, distance_m, padded_shape=None, band_limit: bool = True,
                              dtype: torch.dtype = torch.complex64, device=None) -> torch.Tensor:
    """Fresnel (paraxial) transfer function ``exp(i k z) exp(-i pi lambda z (fx^2 + fy^2))``, shape
    (L, Py, Px), unshifted FFT order, zero beyond ``|f| = S_pad / (2 lambda |z|)`` with ``band_limit``
    (where the chirp aliases); cached like :func:`asm_transfer_function` (differentiable and uncached when
    ``distance_m`` is a tensor requiring grad)."""
    return _transfer_function(_fresnel_kernel, _fresnel_kernel_cached, grid, wavelengths_m, distance_m,
                              padded_shape, band_limit, dtype, device).clone()


def propagate_fresnel(
    field: Field,
    distance_m,
    *,
    band_limit: bool = True,
    pad: bool = True,
    padded_shape: tuple[int, int] | None = None,
    max_aliased_energy: float = 1e-6,
    max_paraxial_phase_error_rad: float = 1.0,
) -> Field:
    """Propagate with the Fresnel transfer function (paraxial approximation of :func:`propagate_asm`).

    Sampling (raises): as :func:`propagate_asm`, with the chirp's own band limit
    ``|f| <= S_pad / (2 lambda |z|)`` (:func:`simulator.sampling.check_fresnel_sampling`): a distance
    whose passband is degenerate raises :class:`SamplingError`; with ``band_limit=False`` a field with more
    than ``max_aliased_energy`` of its spectral energy beyond the limit raises. Validity (warns): logs a
    warning, does not raise, when the neglected paraxial phase ``k r^4 / (8 z^3)``, with ``r`` the
    field's half-diagonal, exceeds ``max_paraxial_phase_error_rad`` -- a sufficient, very conservative
    criterion (Goodman).

    Parameters are as for :func:`propagate_asm`; the output has the input's grid.
    """
    field = _check_field(field)
    z = check_distance("distance_m", distance_m)
    half_diagonal = 0.5 * math.hypot(*field.grid.extent_m)
    error = fresnel_validity(half_diagonal, z, min(field.wavelengths_m)) if z != 0 else 0.0
    if error > max_paraxial_phase_error_rad:
        logger.warning("propagate_fresnel: paraxial phase error up to %.3g rad at distance_m=%.6g m over a "
                       "%.6g m half-diagonal; prefer propagate_asm", error, z, half_diagonal)
    return _propagate(field, distance_m, check_fresnel_sampling, _fresnel_kernel, _fresnel_kernel_cached,
                      band_limit, pad, padded_shape, max_aliased_energy, "propagate_fresnel")


def focal_plane_grid(grid: Grid, wavelength_m: float, focal_length_m: float) -> Grid:
    """The natural focal-plane grid of a single FFT: same shape, spacing ``lambda f / (N dx)`` per axis."""
    wl = as_wavelengths(wavelength_m)[0]
    f = abs(check_distance("focal_length_m", focal_length_m))
    ny, nx = grid.shape
    return Grid(grid.shape, (wl * f / (ny * grid.spacing_m[0]), wl * f / (nx * grid.spacing_m[1])))


def _dft_matrix(out_axis: torch.Tensor, in_axis: torch.Tensor, scale: float, sign: float, dtype) -> torch.Tensor:
    """``exp(sign 2 pi i out[p] in[q] scale)``, (P, Q), built in float64 for phase accuracy."""
    return torch.polar(torch.ones((), dtype=torch.float64, device=in_axis.device),
                       (sign * 2.0 * math.pi * scale) * torch.outer(out_axis, in_axis)).to(dtype)


def lens_fourier_transform(data: torch.Tensor, grid: Grid, out_grid: Grid, wavelengths, focal_length, *,
                           sign: float = -1.0) -> torch.Tensor:
    """Matrix Fourier transform ``(1 / (i lambda f)) sum E(x) exp(sign 2 pi i x u / (lambda f)) dx dy``
    of ``data`` (..., L, ny, nx) from ``grid`` onto ``out_grid`` (absolute coordinates); no quadratic
    phase. ``sign=-1`` is a lens's forward transform. Returns (..., L, P, Q)."""
    device = data.device
    y_in, x_in = grid.axes(torch.float64, device)
    y_out, x_out = out_grid.axes(torch.float64, device)
    rows, cols = [], []
    for wl in wavelengths:
        scale = 1.0 / (wl * focal_length)
        rows.append(_dft_matrix(y_out, y_in, scale, sign, data.dtype))
        cols.append(_dft_matrix(x_in, x_out, scale, sign, data.dtype))
    a_y, a_x = torch.stack(rows), torch.stack(cols)  # (L, P, ny), (L, nx, Q)
    factor = torch.tensor([grid.pixel_area_m2 / (wl * focal_length) for wl in wavelengths],
                          dtype=torch.float64, device=device)
    factor = (-1j * factor).to(data.dtype).view(-1, 1, 1)  # 1 / (i lambda f)
    return factor * (a_y @ data @ a_x)


def propagate_to_focal_plane(
    field: Field,
    focal_length_m: float,
    out_grid: Grid | None = None,
    *,
    input_at_front_focal_plane: bool = False,
) -> Field:
    """Field in the back focal plane of an ideal (Fourier-transforming) lens of focal length ``f``.

    ``E_f(u, v) = exp(i k f) / (i lambda f) * Q(u, v) * FT[E](u / (lambda f), v / (lambda f))`` where
    ``Q = exp(i k (u^2 + v^2) / (2 f))`` when the input is just before the lens (default), and ``Q = 1``
    (exact Fourier transform; also ``exp(i k f)`` becomes ``exp(2 i k f)``) when it is in the front focal
    plane. The lens itself is implied (do not also apply :func:`simulator.lens.apply_thin_lens`).
    Evaluated with a matrix Fourier transform, exact on any output grid, so ``out_grid`` can zoom in on
    the focus (e.g. spacing ``lambda N / 8``) without zero-padding. Power is conserved when ``out_grid``
    holds all the light.

    Parameters
    ----------
    field : Field
        Field at the lens (or its front focal plane), data (*batch, L, rows, cols).
    focal_length_m : float
        Focal length in metres (> 0).
    out_grid : Grid, optional
        Focal-plane sampling (absolute coordinates, metres). Default :func:`focal_plane_grid` for the
        first wavelength: same shape, spacing ``lambda_0 f / (N dx)`` -- the grid a single FFT would give.

    Raises
    ------
    SamplingError
        If ``out_grid`` reaches beyond half the period ``lambda f / dx`` of the sampled field's transform.
    """
    field = _check_field(field)
    f = check_distance("focal_length_m", focal_length_m)
    if f <= 0:
        raise InputError(f"focal_length_m must be > 0, got {focal_length_m!r}")
    out_grid = out_grid or focal_plane_grid(field.grid, field.wavelengths_m[0], f)
    check_focal_plane_sampling(field.grid, out_grid, field.wavelengths_m, f)
    data = lens_fourier_transform(field.data, field.grid, out_grid, field.wavelengths_m, f)
    v, u = out_grid.mesh(torch.float64, field.data.device)
    r2 = u**2 + v**2
    phases = []
    for wl in field.wavelengths_m:
        k = 2.0 * math.pi / wl
        phases.append(torch.full_like(r2, 2.0 * k * f) if input_at_front_focal_plane else k * f + k * r2 / (2.0 * f))
    data = data * torch.polar(torch.ones_like(r2), torch.stack(phases)).to(data.dtype)
    return Field(data, out_grid, field.wavelengths_m)
