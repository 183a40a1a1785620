"""Pupils and the PSFs they make at the focus of a lens.

A pupil is a real or complex transmission sampled on a :class:`~simulator.field.Grid` (absolute
coordinates, metres). :func:`circular_pupil` weights each pixel by the exact fraction of its area
inside the disk (analytic, not supersampled), which suppresses the aliasing a hard 0/1 edge causes:
the sampled pupil is then the disk convolved with the pixel box, whose spectrum vanishes at every
replica of the zero frequency.
"""

from __future__ import annotations

import torch

from onn_core.errors import InputError
from .field import Field, Grid
from .propagation import propagate_to_focal_plane
from .sampling import as_wavelengths
from .validation import check_positive, check_tensor, complex_dtype_for
from .zernike import wavefront_to_phase

__all__ = ["disk_area_fraction", "circular_pupil", "psf_from_field", "psf_from_pupil"]


def _quadrant_area(x: torch.Tensor, y: torch.Tensor, radius: float) -> torch.Tensor:
    """Area of ``{0 <= s <= |x|, 0 <= t <= |y|, s^2 + t^2 <= R^2}``, signed by ``sign(x) sign(y)``."""
    ax, ay = x.abs(), y.abs()
    r2 = radius * radius
    s_star = torch.sqrt((r2 - ay * ay).clamp_min(0.0))  # below s*, the arc is above height |y|
    a = torch.minimum(ax, s_star)
    b = torch.minimum(ax, torch.full_like(ax, radius))

    def arc_integral(s):  # int_0^s sqrt(R^2 - t^2) dt
        return 0.5 * (s * torch.sqrt((r2 - s * s).clamp_min(0.0)) + r2 * torch.asin((s / radius).clamp(-1.0, 1.0)))

    return torch.sign(x) * torch.sign(y) * (ay * a + arc_integral(b) - arc_integral(a))


def disk_area_fraction(grid: Grid, radius_m: float, *, center_m=(0.0, 0.0)) -> torch.Tensor:
    """Exact fraction of each pixel's area inside the disk of ``radius_m`` about ``center_m``.

    Returns a float64 tensor (rows, cols) in [0, 1]; pixels are the ``dy x dx`` cells centred on the
    grid samples. Its sum times the pixel area equals ``pi R^2`` for a disk inside the grid.
    """
    radius = check_positive("radius_m", radius_m)
    y, x = grid.axes(torch.float64)
    y, x = y - float(center_m[0]), x - float(center_m[1])
    dy, dx = grid.spacing_m
    y0, y1 = (y - dy / 2).view(-1, 1), (y + dy / 2).view(-1, 1)
    x0, x1 = (x - dx / 2).view(1, -1), (x + dx / 2).view(1, -1)
    area = (_quadrant_area(x1, y1, radius) - _quadrant_area(x0, y1, radius)
            - _quadrant_area(x1, y0, radius) + _quadrant_area(x0, y0, radius))
    return (area / (dx * dy)).clamp(0.0, 1.0)


def circular_pupil(grid: Grid, radius_m: float, antialias: bool = True, *, center_m=(0.0, 0.0),
                   dtype=torch.float32, device=None) -> torch.Tensor:
    """Circular aperture transmission (rows, cols), real, in [0, 1].

    Parameters
    ----------
    grid : Grid
        Pupil-plane sampling.
    radius_m : float
        Aperture radius in metres.
    antialias : bool
        ``True``: exact area-weighted edge pixels (:func:`disk_area_fraction`); ``False``: 1 where the
        pixel centre is inside (``r <= R``), else 0.
    center_m : (float, float)
        Aperture centre (y, x) in metres.
    dtype, device
        Output real dtype and device.
    """
    if antialias:
        pupil = disk_area_fraction(grid, radius_m, center_m=center_m)
    else:
        radius = check_positive("radius_m", radius_m)
        y, x = grid.mesh(torch.float64)
        pupil = ((y - center_m[0]) ** 2 + (x - center_m[1]) ** 2 <= radius * radius).to(torch.float64)
    return pupil.to(dtype=dtype, device=device)


def _normalize(psf: torch.Tensor, normalize: str | None) -> torch.Tensor:
    if normalize is None:
        return psf
    if normalize in ("sum", "peak"):
        scale = psf.sum(dim=(-2, -1), keepdim=True) if normalize == "sum" else psf.amax(dim=(-2, -1), keepdim=True)
        if not bool((scale > 0).all()):
            raise InputError(f"cannot normalise by the {normalize}: a PSF is zero everywhere (is the pupil blocked?)")
        return psf / scale
    raise InputError(f"normalize must be 'sum', 'peak' or None, got {normalize!r}")


def psf_from_field(field: Field, focal_length_m: float, out_grid: Grid, normalize: str | None = "sum") -> torch.Tensor:
    """Intensity PSF ``|E_f|^2`` in the back focal plane of a lens for the field ``field`` at the lens.

    Parameters
    ----------
    field : Field
        Field just before the lens (pupil transmission times any aberration), (*batch, L, rows, cols).
    focal_length_m : float
        Focal length in metres.
    out_grid : Grid
        Focal-plane sampling in metres (e.g. spacing ``lambda N / 4``); see
        :func:`simulator.propagation.propagate_to_focal_plane`.
    normalize : {'sum', 'peak', None}
        ``'sum'``: each (batch, wavelength) PSF sums to 1 over ``out_grid``; ``'peak'``: maximum 1;
        ``None``: physical intensity (W/m^2 for a field in sqrt(W/m^2)), e.g. the peak of a uniformly lit
        aperture of area ``A`` is ``(A / (lambda f))^2``.

    Returns
    -------
    Tensor (*batch, L, P, Q), real.
    """
    focal = propagate_to_focal_plane(field, focal_length_m, out_grid)
    return _normalize(focal.intensity, normalize)


def psf_from_pupil(
    pupil: torch.Tensor,
    grid: Grid,
    wavelengths_m,
    focal_length_m: float,
    out_grid: Grid,
    *,
    wavefront_m: torch.Tensor | None = None,
    normalize: str | None = "sum",
) -> torch.Tensor:
    """Incoherent PSF at the focus of a lens with pupil ``pupil`` and aberration ``wavefront_m``.

    The pupil field is ``pupil * exp(i 2 pi W / lambda)`` for each wavelength (see
    :mod:`simulator.zernike` for the sign convention); the PSF is ``|FT|^2`` on ``out_grid`` via
    :func:`psf_from_field`. Differentiable in ``pupil`` and ``wavefront_m``.

    Parameters
    ----------
    pupil : Tensor (..., rows, cols)
        Real amplitude transmission (e.g. :func:`circular_pupil`) or complex transmission, the same for
        every wavelength.
    grid : Grid
        Pupil-plane sampling.
    wavelengths_m : float or sequence
        Wavelengths in metres (``L``).
    focal_length_m : float
        Lens focal length in metres.
    out_grid : Grid
        Focal-plane sampling in metres.
    wavefront_m : Tensor (..., rows, cols), optional
        Wavefront error in metres (e.g. :func:`simulator.zernike.zernike_wavefront`), broadcast with
        ``pupil``.
    normalize : {'sum', 'peak', None}
        See :func:`psf_from_field`.

    Returns
    -------
    Tensor (..., L, P, Q), real, in the pupil's real dtype.
    """
    check_tensor("pupil", pupil, min_ndim=2, complex_ok=True)
    if tuple(pupil.shape[-2:]) != grid.shape:
        raise InputError(f"pupil spatial shape {tuple(pupil.shape[-2:])} != grid shape {grid.shape}")
    wavelengths = as_wavelengths(wavelengths_m)
    check_positive("focal_length_m", focal_length_m)
    cdtype = complex_dtype_for(pupil.dtype)
    amplitude = pupil.to(cdtype).unsqueeze(-3)  # (..., 1, rows, cols)
    if wavefront_m is not None:
        check_tensor("wavefront_m", wavefront_m, min_ndim=2)
        if tuple(wavefront_m.shape[-2:]) != grid.shape:
            raise InputError(f"wavefront_m spatial shape {tuple(wavefront_m.shape[-2:])} != grid shape {grid.shape}")
        phase = wavefront_to_phase(wavefront_m, wavelengths)
        amplitude = amplitude * torch.polar(torch.ones_like(phase), phase).to(cdtype)
    else:
        amplitude = amplitude.expand(*amplitude.shape[:-3], len(wavelengths), *grid.shape)
    return psf_from_field(Field(amplitude, grid, wavelengths), focal_length_m, out_grid, normalize)
