"""Free-space propagation against analytic oracles: Gaussian beams, Parseval, time reversal, exact
Fourier transforms; and gradients."""

import cmath
import math

import numpy as np
import pytest
import torch

from simulator.field import Field, Grid
from simulator.propagation import (
    asm_transfer_function,
    default_padded_shape,
    propagate_asm,
    propagate_fresnel,
    propagate_to_focal_plane,
)

WAVELENGTH = 0.5e-6
WAIST = 50e-6  # w0 / lambda = 100: non-paraxial corrections to w(z) ~ (lambda / (pi w0))^2 / 4 < 3e-6
RAYLEIGH = math.pi * WAIST**2 / WAVELENGTH


def gaussian_field(dtype=torch.float64, n=256, spacing=4e-6, waist=WAIST):
    grid = Grid.square(n, spacing)
    y, x = grid.mesh(dtype)
    data = torch.exp(-(x**2 + y**2) / waist**2).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    return Field(data[None], grid, (WAVELENGTH,))


def second_moment_width(field):
    """1/e^2 intensity radius along x from the second moment: w = 2 sqrt(<x^2>)."""
    intensity = field.intensity[0].to(torch.float64)
    _, x = field.grid.mesh(torch.float64)
    return 2.0 * math.sqrt(float((intensity * x**2).sum() / intensity.sum()))


@pytest.mark.parametrize("z_over_zr", [0.1, 1.0, 2.0])
@pytest.mark.parametrize("propagate", [propagate_asm, propagate_fresnel])
def test_gaussian_beam_width_follows_analytic_law(z_over_zr, propagate):
    out = propagate(gaussian_field(), z_over_zr * RAYLEIGH)
    expected = WAIST * math.sqrt(1.0 + z_over_zr**2)
    assert second_moment_width(out) == pytest.approx(expected, rel=1e-5)


def test_gaussian_beam_complex_field_matches_fresnel_solution():
    # The paraxial Gaussian beam is the exact solution of Fresnel propagation, phase (Gouy) included.
    z = RAYLEIGH
    out = propagate_fresnel(gaussian_field(), z)
    y, x = out.grid.mesh(torch.float64)
    k = 2 * math.pi / WAVELENGTH
    q0 = -1j * RAYLEIGH  # exp(-r^2 / w0^2) = exp(i k r^2 / (2 q0)) with q0 = -i zR
    q = q0 + z
    expected = (q0 / q) * torch.exp(1j * k * z + 1j * k * (x**2 + y**2) / (2 * q))
    assert torch.allclose(out.data[0], expected.to(torch.complex128), atol=1e-9)


def test_forward_then_backward_returns_the_input():
    field = gaussian_field()
    back = propagate_asm(propagate_asm(field, RAYLEIGH), -RAYLEIGH)  # w(zR) = 71 um: nothing leaves the window
    assert (back.data - field.data).abs().max() < 1e-10


def test_negative_distance_is_time_reversal():
    gen = torch.Generator().manual_seed(3)
    grid = Grid.square(32, 1e-6)
    data = torch.randn((2, 1, 32, 32), dtype=torch.complex128, generator=gen)
    field = Field(data, grid, (WAVELENGTH,))
    back = propagate_asm(field, -20e-6)
    forward_of_conj = propagate_asm(field.replace(data=data.conj()), 20e-6)
    assert torch.allclose(back.data, forward_of_conj.data.conj(), atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_parseval_without_band_limit_loss(dtype, tol):
    field = gaussian_field(dtype)
    out = propagate_asm(field, RAYLEIGH, band_limit=False)
    assert out.data.dtype == field.data.dtype
    ratio = float(out.power().sum().double() / field.power().sum().double())
    assert abs(ratio - 1.0) < tol


def test_circular_propagation_of_random_field_is_unitary():
    # Without padding the window is periodic: all frequencies propagate, none alias (f_limit > Nyquist),
    # so the operator is unitary for any field.
    gen = torch.Generator().manual_seed(0)
    grid = Grid.square(64, 1e-6)
    field = Field(torch.randn((1, 64, 64), dtype=torch.complex128, generator=gen), grid, (WAVELENGTH,))
    out = propagate_asm(field, 5e-6, band_limit=False, pad=False)
    assert float(out.power() / field.power()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("distance", [10e-6, 200e-6, 1e-3, -1e-3])
def test_band_limited_energy_never_grows(distance):
    gen = torch.Generator().manual_seed(1)
    grid = Grid.square(64, 1e-6)
    field = Field(torch.randn((3, 2, 64, 64), dtype=torch.complex128, generator=gen), grid, (0.45e-6, 0.63e-6))
    out = propagate_asm(field, distance)
    assert bool((out.power() <= field.power() * (1 + 1e-12)).all())


def test_transfer_function_values_band_limit_and_cache():
    grid = Grid.square(16, 0.2e-6)  # Nyquist 2.5e6 > 1/lambda = 2e6: evanescent corner present
    padded = default_padded_shape(grid.shape)
    z = 3e-6
    h = asm_transfer_function(grid, WAVELENGTH, z, padded, band_limit=False, dtype=torch.complex128)
    assert h.shape == (1, *padded)
    assert complex(h[0, 0, 0]) == pytest.approx(complex(torch.exp(torch.tensor(2j * math.pi * z / WAVELENGTH))))
    fy, fx = grid.freq_mesh(padded)
    evanescent = fy**2 + fx**2 >= 1 / WAVELENGTH**2
    assert bool((h[0][evanescent] == 0).all()) and bool((h[0][~evanescent].abs() - 1).abs().max() < 1e-12)
    limited = asm_transfer_function(grid, WAVELENGTH, z, padded, band_limit=True, dtype=torch.complex128)
    f_lim = 1 / (WAVELENGTH * math.sqrt((2 * z / (padded[1] * grid.spacing_m[1])) ** 2 + 1))
    inside = (fx.abs() <= f_lim) & (fy.abs() <= f_lim) & ~evanescent
    assert torch.equal(limited[0] != 0, inside)
    # cached on every argument: same call -> a cache hit (handed out as a copy); any change -> a miss
    from simulator.propagation import _asm_kernel_cached

    before = _asm_kernel_cached.cache_info()
    again = asm_transfer_function(grid, WAVELENGTH, z, padded, band_limit=True, dtype=torch.complex128)
    assert torch.equal(again, limited) and again.data_ptr() != limited.data_ptr()
    assert _asm_kernel_cached.cache_info().hits == before.hits + 1
    assert asm_transfer_function(grid, WAVELENGTH, z, padded, band_limit=True, dtype=torch.complex64).dtype \
        == torch.complex64
    farther = asm_transfer_function(grid, WAVELENGTH, 2 * z, padded, band_limit=True, dtype=torch.complex128)
    assert _asm_kernel_cached.cache_info().misses == before.misses + 2 and not torch.equal(farther, limited)


def test_exact_fourier_transform_of_gaussian_in_front_focal_plane():
    # E(x, y) = exp(-r^2/w0^2)  ->  E_f(u) = exp(2ikf) / (i lambda f) * pi w0^2 exp(-(pi w0 u / (lambda f))^2)
    focal = 0.02 + 0.123e-6  # 2 k f not a multiple of 2 pi; focal waist lambda f / (pi w0) = 64 um
    field = gaussian_field(n=128, spacing=8e-6)
    out_grid = Grid.square(65, 10e-6)
    out = propagate_to_focal_plane(field, focal, out_grid, input_at_front_focal_plane=True)
    v, u = out_grid.mesh(torch.float64)
    k = 2 * math.pi / WAVELENGTH
    expected = (cmath.exp(2j * math.remainder(k * focal, math.pi)) / (1j * WAVELENGTH * focal) * math.pi * WAIST**2
                * torch.exp(-((math.pi * WAIST / (WAVELENGTH * focal)) ** 2) * (u**2 + v**2)))
    scale = float(expected.abs().max())
    assert float((out.data[0] - expected).abs().max()) < 1e-9 * scale
    assert float(out.power() / field.power()) == pytest.approx(1.0, abs=1e-9)


def test_gradcheck_propagate_asm_field_and_distance():
    grid = Grid.square(8, 1e-6)
    gen = torch.Generator().manual_seed(2)
    data = torch.randn((1, 8, 8), dtype=torch.complex128, generator=gen, requires_grad=True)
    distance_scaled = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)  # micrometres

    def run(d, s):
        return propagate_asm(Field(d, grid, (WAVELENGTH,)), s * 1e-6).data

    assert torch.autograd.gradcheck(run, (data, distance_scaled), eps=1e-6, atol=1e-7, fast_mode=True)


def test_cached_transfer_functions_and_bases_survive_callers():
    """Public builders hand out copies, and a cache first filled under inference_mode still serves autograd."""
    from simulator.propagation import asm_transfer_function, clear_transfer_function_cache
    from simulator.zernike import zernike_basis, zernike_wavefront

    clear_transfer_function_cache()
    grid = Grid.square(32, 1e-6)
    field = Field(torch.ones(1, 32, 32, dtype=torch.complex128), grid, (500e-9,))
    with torch.inference_mode():
        reference = propagate_asm(field, 20e-6).power()
        zernike_wavefront(torch.zeros(4, dtype=torch.float64), grid, 10e-6)
    asm_transfer_function(grid, (500e-9,), 20e-6, (64, 64), dtype=torch.complex128).mul_(0)
    zernike_basis(4, grid, 10e-6).zero_()
    data = torch.ones(1, 32, 32, dtype=torch.complex128, requires_grad=True)
    out = propagate_asm(Field(data, grid, (500e-9,)), 20e-6)
    assert torch.allclose(out.power(), reference)
    out.power().sum().backward()
    assert data.grad is not None and float(data.grad.abs().sum()) > 0
    coeffs = torch.tensor([0.0, 0.0, 0.0, 1e-7], dtype=torch.float64, requires_grad=True)
    zernike_wavefront(coeffs, grid, 10e-6).pow(2).sum().backward()
    assert float(coeffs.grad[3]) > 0


@pytest.mark.parametrize("dtype, tol", [(torch.complex128, 1e-13), (torch.complex64, 1e-6)])
def test_propagation_is_the_padded_linear_convolution_on_a_rectangular_grid(dtype, tol):
    """``ifft2(fft2(E, s=padded) * H)`` cropped to the window, checked in numpy float64 on a rectangular
    grid (rows != cols) with a batch and two wavelengths, so that a swapped axis or a missing 1/N shows."""
    gen = torch.Generator().manual_seed(4)
    grid = Grid((12, 20), (1e-6, 1.5e-6))
    wavelengths = (0.45e-6, 0.63e-6)
    data = torch.randn((2, 2, 12, 20), dtype=dtype, generator=gen)
    out = propagate_asm(Field(data, grid, wavelengths), 15e-6)
    padded = default_padded_shape(grid.shape)
    h = asm_transfer_function(grid, wavelengths, 15e-6, padded, dtype=torch.complex128).numpy()
    expected = np.fft.ifft2(np.fft.fft2(data.numpy().astype(np.complex128), s=padded) * h)[..., :12, :20]
    assert out.data.shape == data.shape and out.data.dtype == dtype
    assert np.abs(out.data.numpy() - expected).max() <= tol * np.abs(expected).max()
