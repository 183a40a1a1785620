"""Sampled scalar fields that carry their own sampling.

Conventions (used by every module of the simulator):

* A :class:`Grid` is a regular (rows, cols) lattice with spacing ``(dy, dx)`` in metres. Pixel
  ``(i, j)`` sits at ``y = center_y + (i - rows // 2) * dy`` and ``x = center_x + (j - cols // 2) * dx``,
  so the optical axis is the pixel ``(rows // 2, cols // 2)`` -- the same pixel that ``fftshift``
  moves the zero frequency to.
* A :class:`Field` holds complex amplitudes of shape ``(*batch, L, rows, cols)``: the axis before the
  two spatial axes always indexes the wavelengths ``wavelengths_m`` (``L >= 1``).
* Intensity is ``|E|^2``; optical power is ``sum(|E|^2) * dy * dx`` (W, when ``|E|^2`` is in W/m^2).
* Time dependence ``exp(-i omega t)``: a wave travelling towards +z accumulates phase ``exp(+i k z)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from onn_core.errors import InputError
from .validation import check_positive, check_tensor, complex_dtype_for


@dataclass(frozen=True)
class Grid:
    """A regular sampling lattice: ``shape`` = (rows, cols), ``spacing_m`` = (dy, dx) in metres,
    ``center_m`` = (y, x) of the optical-axis pixel in metres."""

    shape: tuple[int, int]
    spacing_m: tuple[float, float]
    center_m: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape) if _is_pair(self.shape) else None
        if shape is None or min(shape) < 1:
            raise InputError(f"Grid shape must be two positive ints (rows, cols), got {self.shape!r}")
        spacing = self.spacing_m if _is_pair(self.spacing_m) else (self.spacing_m, self.spacing_m)
        spacing = tuple(check_positive("Grid spacing_m", s) for s in spacing)
        if not _is_pair(self.center_m):
            raise InputError(f"Grid center_m must be a pair (y, x) in metres, got {self.center_m!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_m", spacing)
        object.__setattr__(self, "center_m", tuple(float(c) for c in self.center_m))

    @classmethod
    def square(cls, n: int, spacing_m: float) -> "Grid":
        """An ``n x n`` grid with equal spacing on both axes, centred on the axis."""
        return cls((n, n), (spacing_m, spacing_m))

    @property
    def extent_m(self) -> tuple[float, float]:
        """Physical size (height, width) = shape * spacing, in metres."""
        return (self.shape[0] * self.spacing_m[0], self.shape[1] * self.spacing_m[1])

    @property
    def pixel_area_m2(self) -> float:
        return self.spacing_m[0] * self.spacing_m[1]

    def axes(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D coordinates ``(y, x)`` in metres, shapes (rows,) and (cols,)."""
        (ny, nx), (dy, dx), (cy, cx) = self.shape, self.spacing_m, self.center_m
        y = (torch.arange(ny, dtype=dtype, device=device) - ny // 2) * dy + cy
        x = (torch.arange(nx, dtype=dtype, device=device) - nx // 2) * dx + cx
        return y, x

    def mesh(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D coordinates ``(Y, X)`` in metres, each of shape (rows, cols)."""
        y, x = self.axes(dtype, device)
        return torch.meshgrid(y, x, indexing="ij")

    def freq_mesh(self, shape: tuple[int, int] | None = None, dtype=torch.float64, device=None):
        """Spatial frequencies ``(FY, FX)`` in cycles/m in unshifted FFT order for a (possibly padded)
        array of ``shape`` sampled at this grid's spacing."""
        ny, nx = shape or self.shape
        fy = torch.fft.fftfreq(ny, d=self.spacing_m[0], dtype=dtype, device=device)
        fx = torch.fft.fftfreq(nx, d=self.spacing_m[1], dtype=dtype, device=device)
        return torch.meshgrid(fy, fx, indexing="ij")

@dataclass(frozen=True)
class Field:
    """Complex scalar field ``data`` of shape ``(*batch, L, rows, cols)`` sampled on ``grid`` at the
    ``L`` wavelengths ``wavelengths_m`` (metres)."""

    data: torch.Tensor
    grid: Grid
    wavelengths_m: tuple[float, ...]

    def __post_init__(self):
        wl = self.wavelengths_m
        wl = tuple(float(w) for w in (wl if isinstance(wl, (tuple, list)) else [wl]))
        for w in wl:
            check_positive("wavelength_m", w)
        object.__setattr__(self, "wavelengths_m", wl)
        check_tensor("Field data", self.data, min_ndim=3, complex_ok=True, real_ok=False, finite=False)
        if tuple(self.data.shape[-2:]) != self.grid.shape:
            raise InputError(f"Field data spatial shape {tuple(self.data.shape[-2:])} != grid shape {self.grid.shape}")
        if self.data.shape[-3] != len(wl):
            raise InputError(
                f"Field data has {self.data.shape[-3]} entries on its wavelength axis (-3) but "
                f"{len(wl)} wavelengths_m were given"
            )

    @classmethod
    def plane_wave(cls, grid: Grid, wavelengths_m, dtype=torch.float32, device=None) -> "Field":
        """Unit-amplitude normally incident plane wave, shape (L, rows, cols)."""
        wl = tuple(wavelengths_m) if isinstance(wavelengths_m, (tuple, list)) else (wavelengths_m,)
        data = torch.ones((len(wl), *grid.shape), dtype=complex_dtype_for(dtype), device=device)
        return cls(data, grid, wl)

    def replace(self, **changes) -> "Field":
        return replace(self, **changes)

    @property
    def intensity(self) -> torch.Tensor:
        """``|E|^2``, real, same shape as ``data``."""
        return self.data.real**2 + self.data.imag**2

    def power(self) -> torch.Tensor:
        """Total power per batch entry and wavelength: ``sum |E|^2 dy dx``, shape (*batch, L)."""
        return self.intensity.sum(dim=(-2, -1)) * self.grid.pixel_area_m2


def _is_pair(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2
