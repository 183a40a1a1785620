"""Thin lenses and the 4f system with a (trainable) Fourier-plane filter.

Sign convention (see :mod:`simulator.zernike`): a converging lens (``f > 0``) multiplies the field by
``exp(-i k r^2 / (2 f))``, ``k = 2 pi / lambda`` (paraxial thin lens, ``r`` from ``center_m``).

The 4f system: the input plane is the front focal plane of lens 1 (focal length ``f1``); the Fourier
plane (back focal plane of lens 1 = front focal plane of lens 2) holds the filter ``H(u, v)``, a complex
transmission sampled on ``fourier_grid`` in metres and the same for every wavelength; the output is the
back focal plane of lens 2. The output is the inverted, ``M = f2 / f1``-magnified image:
``E_out(-M xi) = -(1/M) int E_in(xi') h(xi - xi') dxi'`` with ``h(d) = (1 / (lambda f1)^2) int H(u)
exp(+2 pi i u d / (lambda f1)) du`` (the filter's inverse transform). Both transforms are matrix Fourier
transforms (:func:`simulator.propagation.lens_fourier_transform`), exact on the chosen grids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onn_core.errors import InputError
from .field import Field, Grid
from .propagation import lens_fourier_transform
from .pupil import circular_pupil
from .sampling import as_wavelengths, check_focal_plane_sampling, check_phase_sampling
from .validation import check_positive, check_tensor

__all__ = ["thin_lens_phase", "apply_thin_lens", "default_fourier_grid", "four_f", "FourF"]


def _check_focal_length(focal_length_m):
    """Return ``(value_for_math, float)``; a tensor stays a (differentiable) float64 tensor."""
    if isinstance(focal_length_m, torch.Tensor):
        if focal_length_m.numel() != 1:
            raise InputError(f"focal_length_m must be a scalar, got shape {tuple(focal_length_m.shape)}")
        value = float(focal_length_m.detach())
        tensor = focal_length_m.reshape(()).to(torch.float64)
    else:
        try:
            value = float(focal_length_m)
        except (TypeError, ValueError):
            raise InputError(f"focal_length_m must be a real number in metres, got {focal_length_m!r}") from None
        tensor = value
    if not math.isfinite(value) or value == 0:
        raise InputError(f"focal_length_m must be finite and non-zero, got {focal_length_m!r}")
    return tensor, value


def thin_lens_phase(grid: Grid, wavelengths_m, focal_length_m, *, aperture_radius_m: float | None = None,
                    center_m=(0.0, 0.0), dtype=torch.float32, device=None) -> torch.Tensor:
    """Paraxial thin-lens phase ``-pi r^2 / (lambda f)`` in radians, shape (L, rows, cols).

    Parameters
    ----------
    grid : Grid
        Lens-plane sampling.
    wavelengths_m : float or sequence
        Wavelengths in metres.
    focal_length_m : float or 0-dim tensor
        Focal length in metres (negative: diverging). A tensor gives a phase differentiable in it.
    aperture_radius_m : float, optional
        Only the phase inside this radius must be sampled without aliasing (outside it is blocked).
    center_m : (float, float)
        Lens axis (y, x) in metres.

    Raises
    ------
    SamplingError
        If the phase changes by more than pi between neighbouring samples where light passes, i.e.
        ``r_max dx / (lambda f) > 1/2``; the message names ``focal_length_m`` and the spacing.
    """
    f_math, f_value = _check_focal_length(focal_length_m)
    wavelengths = as_wavelengths(wavelengths_m)
    y, x = grid.mesh(torch.float64, device)
    r2 = (y - float(center_m[0])) ** 2 + (x - float(center_m[1])) ** 2
    wl = torch.tensor(wavelengths, dtype=torch.float64, device=r2.device).view(-1, 1, 1)
    phase = -math.pi * r2 / (wl * f_math)
    lit = None  # checked only where light passes: outside an aperture the phase is irrelevant
    if aperture_radius_m is not None:
        (dy, dx) = grid.spacing_m  # edge pixels partly inside the aperture pass light too
        lit = r2 <= (check_positive("aperture_radius_m", aperture_radius_m) + 0.5 * math.hypot(dy, dx)) ** 2
    check_phase_sampling(phase.detach(), f"thin lens of focal_length_m={f_value:.6g} m on grid "
                         f"spacing_m={grid.spacing_m}", mask=lit)
    return phase.to(dtype)


def apply_thin_lens(field: Field, focal_length_m, aperture_radius_m: float | None = None, *,
                    center_m=(0.0, 0.0), antialias: bool = True) -> Field:
    """Multiply ``field`` by a thin lens (and, optionally, its circular aperture, area-weighted).

    Parameters
    ----------
    field : Field
        Field just before the lens.
    focal_length_m : float or 0-dim tensor
        Focal length in metres (differentiable if a tensor).
    aperture_radius_m : float, optional
        Clear aperture radius in metres; ``None`` = unlimited.
    center_m : (float, float)
        Lens axis (y, x) in metres.
    antialias : bool
        Area-weighted aperture edge (:func:`simulator.pupil.circular_pupil`).
    """
    if not isinstance(field, Field):
        raise InputError(f"field must be a simulator.field.Field, got {type(field).__name__}")
    phase = thin_lens_phase(field.grid, field.wavelengths_m, focal_length_m, aperture_radius_m=aperture_radius_m,
                            center_m=center_m, dtype=torch.float64, device=field.data.device)
    transmission = torch.polar(torch.ones_like(phase), phase)
    if aperture_radius_m is not None:
        transmission = transmission * circular_pupil(field.grid, aperture_radius_m, antialias, center_m=center_m,
                                                     dtype=torch.float64, device=field.data.device)
    return field.replace(data=field.data * transmission.to(field.data.dtype))


def default_fourier_grid(grid: Grid, wavelengths_m, f1_m: float) -> Grid:
    """Fourier-plane grid of the same shape as ``grid`` whose window is exactly one period
    ``lambda_min f1 / dx`` of the shortest wavelength (longer wavelengths see their highest input
    frequencies cut by the window edge, as by a physical stop)."""
    wl = min(as_wavelengths(wavelengths_m))
    f1 = check_positive("f1_m", f1_m)
    (ny, nx), (dy, dx) = grid.shape, grid.spacing_m
    return Grid(grid.shape, (wl * f1 / (ny * dy), wl * f1 / (nx * dx)))


def _output_grid(grid: Grid, f1: float, f2: float) -> Grid:
    m = f2 / f1
    return Grid(grid.shape, (grid.spacing_m[0] * m, grid.spacing_m[1] * m),
                (-grid.center_m[0] * m, -grid.center_m[1] * m))


def four_f(field: Field, f1_m: float, f2_m: float, filter_tf: torch.Tensor, fourier_grid: Grid | None = None,
           out_grid: Grid | None = None) -> Field:
    """Field at the output of a 4f system with Fourier-plane filter ``filter_tf``.

    Parameters
    ----------
    field : Field
        Field in the front focal plane of lens 1, (*batch, L, rows, cols).
    f1_m, f2_m : float
        Focal lengths of lens 1 and lens 2 in metres (> 0).
    filter_tf : Tensor (P, Q) or (L, P, Q)
        Complex (or real) amplitude transmission on ``fourier_grid``; differentiable.
    fourier_grid : Grid, optional
        Fourier-plane sampling in metres; default :func:`default_fourier_grid`.
    out_grid : Grid, optional
        Output-plane sampling; default the input grid magnified by ``f2 / f1`` and inverted (spacing
        ``dx f2 / f1``, centre ``-center f2 / f1``), so output pixel ``i`` images input pixel ``-i``.

    Returns
    -------
    Field on ``out_grid``.
    """
    if not isinstance(field, Field):
        raise InputError(f"field must be a simulator.field.Field, got {type(field).__name__}")
    f1, f2 = check_positive("f1_m", f1_m), check_positive("f2_m", f2_m)
    fourier_grid = fourier_grid or default_fourier_grid(field.grid, field.wavelengths_m, f1)
    out_grid = out_grid or _output_grid(field.grid, f1, f2)
    check_tensor("filter_tf", filter_tf, ndim=(2, 3), complex_ok=True)
    if tuple(filter_tf.shape[-2:]) != fourier_grid.shape:
        raise InputError(f"filter_tf spatial shape {tuple(filter_tf.shape[-2:])} != fourier_grid shape "
                         f"{fourier_grid.shape}")
    check_focal_plane_sampling(field.grid, fourier_grid, field.wavelengths_m, f1)
    check_focal_plane_sampling(fourier_grid, out_grid, field.wavelengths_m, f2)
    wavelengths = field.wavelengths_m
    spectrum = lens_fourier_transform(field.data, field.grid, fourier_grid, wavelengths, f1)
    spectrum = spectrum * filter_tf.to(spectrum.dtype)
    return Field(lens_fourier_transform(spectrum, fourier_grid, out_grid, wavelengths, f2), out_grid, wavelengths)


class FourF(nn.Module):
    """4f system with a trainable Fourier-plane filter.

    Parameters
    ----------
    grid : Grid
        Input-plane sampling.
    wavelengths_m : float or sequence
        Wavelengths in metres.
    f1_m, f2_m : float
        Focal lengths in metres.
    mode : {'complex', 'amplitude', 'phase'}
        Which parts of the filter train: amplitude ``sigmoid(amplitude_logit)`` in (0, 1) (a passive
        filter), phase ``phase_rad`` (radians, unbounded), or both. Untrained parts are 1 / 0.
    fourier_grid : Grid, optional
        Filter sampling; default :func:`default_fourier_grid`.
    stop_radius_m : float, optional
        Fixed circular stop (area-weighted) in the Fourier plane, metres.
    init_amplitude : float
        Initial amplitude in (0, 1) for the trainable amplitude.
    generator : torch.Generator, optional
        If given, the initial phase is uniform in [-pi, pi) from it (otherwise 0).
    dtype : torch.dtype
        Real dtype of the parameters (float32 default).
    """

    def __init__(self, grid: Grid, wavelengths_m, f1_m: float, f2_m: float, *, mode: str = "complex",
                 fourier_grid: Grid | None = None, stop_radius_m: float | None = None,
                 init_amplitude: float = 0.5, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if mode not in ("complex", "amplitude", "phase"):
            raise InputError(f"mode must be 'complex', 'amplitude' or 'phase', got {mode!r}")
        if not 0.0 < float(init_amplitude) < 1.0:
            raise InputError(f"init_amplitude must be in (0, 1), got {init_amplitude!r}")
        self.grid = grid
        self.wavelengths_m = as_wavelengths(wavelengths_m)
        self.f1_m, self.f2_m = check_positive("f1_m", f1_m), check_positive("f2_m", f2_m)
        self.mode = mode
        self.fourier_grid = fourier_grid or default_fourier_grid(grid, self.wavelengths_m, self.f1_m)
        shape = self.fourier_grid.shape
        if mode in ("complex", "amplitude"):
            logit = math.log(init_amplitude / (1.0 - init_amplitude))
            self.amplitude_logit = nn.Parameter(torch.full(shape, logit, dtype=dtype))
        if mode in ("complex", "phase"):
            phase = torch.zeros(shape, dtype=dtype)
            if generator is not None:
                phase = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype) * math.pi
            self.phase_rad = nn.Parameter(phase)
        stop = (circular_pupil(self.fourier_grid, stop_radius_m, dtype=dtype) if stop_radius_m is not None
                else torch.ones(shape, dtype=dtype))
        self.register_buffer("stop", stop)

    def filter(self) -> torch.Tensor:
        """Complex Fourier-plane transmission (P, Q) = stop * amplitude * exp(i phase)."""
        amplitude = torch.sigmoid(self.amplitude_logit) if self.mode != "phase" else torch.ones_like(self.stop)
        amplitude = amplitude * self.stop
        if self.mode == "amplitude":
            return torch.complex(amplitude, torch.zeros_like(amplitude))
        return torch.polar(amplitude, self.phase_rad)

    def forward(self, field: Field) -> Field:
        """Propagate ``field`` (on ``self.grid``) through the system; returns the output-plane field."""
        if not isinstance(field, Field):
            raise InputError(f"field must be a simulator.field.Field, got {type(field).__name__}")
        if field.grid != self.grid or field.wavelengths_m != self.wavelengths_m:
            raise InputError(f"field must be sampled on this FourF's grid {self.grid} at wavelengths "
                             f"{self.wavelengths_m}, got {field.grid} at {field.wavelengths_m}")
        return four_f(field, self.f1_m, self.f2_m, self.filter(), self.fourier_grid)

    def intensity_psf(self) -> torch.Tensor:
        """Incoherent intensity PSF referred to the input grid, (L, rows, cols), axis at pixel n//2.

        ``K[d] = |h(d)|^2 (dx dy)^2`` with ``h`` the coherent impulse response of the module docstring,
        i.e. ``K = |sum_u H(u) exp(2 pi i u d / (lambda f1)) du|^2 (dx dy / (lambda f1)^2)^2``. For an
        incoherent object ``I_in`` the output intensity, referred back to input coordinates and scaled by
        ``M^2``, is ``sum_xi I_in[xi] K[d - xi]``: use ``K`` as a conv kernel. ``K.sum()`` is the mean of
        ``|H|^2`` over one period window (1 for an all-pass filter covering it).
        """
        h_filter = self.filter()
        data = h_filter.unsqueeze(0).expand(len(self.wavelengths_m), *h_filter.shape)
        offsets = Grid(self.grid.shape, self.grid.spacing_m)  # separations d, centred on the axis pixel
        h = lens_fourier_transform(data, self.fourier_grid, offsets, self.wavelengths_m, self.f1_m, sign=+1.0)
        # lens_fourier_transform scales by du dv / (i lambda f1); K needs (du dv dx dy / (lambda f1)^2)^2.
        scale = torch.tensor([self.grid.pixel_area_m2 / (wl * self.f1_m) for wl in self.wavelengths_m],
                             dtype=torch.float64, device=h.device).view(-1, 1, 1)
        return (h.real**2 + h.imag**2) * (scale**2).to(h.real.dtype)
