"""Set-ups that would alias or wrap around, and bad inputs, are refused with errors naming the culprit."""

import math

import pytest
import torch

from onn_core.errors import InputError, SamplingError
from simulator.field import Field, Grid
from simulator.lens import FourF, apply_thin_lens, thin_lens_phase
from simulator.propagation import propagate_asm, propagate_fresnel, propagate_to_focal_plane
from simulator.pupil import circular_pupil, psf_from_pupil
from simulator.sampling import (
    check_asm_sampling,
    check_phase_sampling,
    check_psf_nyquist,
    fast_fft_size,
    fresnel_validity,
)

WAVELENGTH = 0.5e-6


def _is_smooth(n):
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_fast_fft_size_is_the_smallest_7_smooth_size():
    for n in range(1, 600):
        m = fast_fft_size(n)
        assert m >= n and _is_smooth(m)
        assert not any(_is_smooth(k) for k in range(n, m))
    assert fast_fft_size(1025) == 1029 and fast_fft_size(2049) == 2058 and fast_fft_size(4096) == 4096


@pytest.mark.parametrize("bad", [0, -5, 2.5, None])
def test_fast_fft_size_rejects_bad_input(bad):
    with pytest.raises(InputError, match="fast_fft_size"):
        fast_fft_size(bad)


def test_phase_gradient_over_pi_per_sample_raises_naming_the_parameter():
    ramp = torch.arange(16, dtype=torch.float64).repeat(4, 1)
    check_phase_sampling(ramp * math.pi, "ok_phase")  # exactly pi per sample is the limit
    with pytest.raises(SamplingError, match="mask_phase.*> pi"):
        check_phase_sampling(ramp * 1.01 * math.pi, "mask_phase")
    # only steps touching the lit region count
    lit = torch.zeros((4, 16), dtype=torch.bool)
    lit[:, :5] = True
    steep_outside = torch.cat([ramp[:, :6] * 0.5, ramp[:, 6:] * 10.0], dim=1)
    check_phase_sampling(steep_outside, "masked", mask=lit)
    with pytest.raises(SamplingError):
        check_phase_sampling(steep_outside, "masked")


def test_thin_lens_too_strong_for_the_pixel_pitch_raises():
    grid = Grid.square(256, 2e-6)
    # edge r = 256 um: phase step 2 pi r dx / (lambda f) > pi  <=>  f < 2 r dx / lambda = 2.05 mm
    with pytest.raises(SamplingError, match="focal_length_m=0.001"):
        thin_lens_phase(grid, WAVELENGTH, 1e-3)
    thin_lens_phase(grid, WAVELENGTH, 2.1e-3)
    thin_lens_phase(grid, WAVELENGTH, 1e-3, aperture_radius_m=100e-6)  # only the lit part must be sampled
    with pytest.raises(InputError, match="focal_length_m"):
        thin_lens_phase(grid, WAVELENGTH, 0.0)


def test_distance_too_long_for_the_padded_window_raises():
    grid = Grid.square(64, 1e-6)
    field = Field.plane_wave(grid, (WAVELENGTH,))
    with pytest.raises(SamplingError, match=r"distance_m=0.01 m is too long.*padded_shape"):
        propagate_asm(field, 10e-3)
    with pytest.raises(SamplingError, match="distance_m"):
        propagate_fresnel(field, 10e-3)
    propagate_asm(field, 10e-3, padded_shape=(1024, 1024))  # a bigger window makes it legal
    with pytest.raises(SamplingError, match="distance_m"):
        check_asm_sampling(grid, WAVELENGTH, -10e-3, (128, 128))  # backwards as well


def test_unlimited_propagation_of_a_field_that_would_alias_raises():
    gen = torch.Generator().manual_seed(0)
    grid = Grid.square(64, 1e-6)
    field = Field(torch.randn((1, 64, 64), dtype=torch.complex128, generator=gen), grid, (WAVELENGTH,))
    with pytest.raises(SamplingError, match="band_limit=False.*distance_m"):
        propagate_asm(field, 500e-6, band_limit=False)
    with pytest.raises(SamplingError, match="band_limit=False"):
        propagate_fresnel(field, 500e-6, band_limit=False)
    propagate_asm(field, 500e-6)  # band-limited: fine, energy is dropped instead


def test_focal_plane_window_beyond_one_period_raises():
    grid = Grid.square(32, 10e-6)
    field = Field.plane_wave(grid, (WAVELENGTH,))
    # period lambda f / dx = 0.5 mm at f = 10 mm; a 1 mm window would show the replicas
    with pytest.raises(SamplingError, match="out_grid"):
        propagate_to_focal_plane(field, 10e-3, Grid.square(101, 10e-6))
    propagate_to_focal_plane(field, 10e-3, Grid.square(49, 10e-6))


def test_psf_nyquist_guard():
    check_psf_nyquist(1.25e-6, WAVELENGTH, 5.0)
    with pytest.raises(SamplingError, match="psf_spacing_m"):
        check_psf_nyquist(1.3e-6, WAVELENGTH, 5.0)
    with pytest.raises(SamplingError, match="sensor_pitch_m"):
        check_psf_nyquist((1e-6, 2e-6), (WAVELENGTH, 0.6e-6), 5.0, name="sensor_pitch_m")


def test_fresnel_validity_value():
    # k r^4 / (8 z^3) for r = 1 mm, z = 10 mm, lambda = 0.5 um
    assert fresnel_validity(1e-3, 10e-3, WAVELENGTH) == pytest.approx(2 * math.pi / WAVELENGTH * 1e-12 / 8e-6)


@pytest.mark.parametrize("spacing", [-1e-6, 0.0, float("nan"), float("inf")])
def test_bad_pixel_pitch_raises(spacing):
    with pytest.raises(InputError, match="spacing_m"):
        Grid.square(16, spacing)


@pytest.mark.parametrize("distance", [float("nan"), float("inf"), "far", torch.ones(2)])
def test_bad_distance_raises(distance):
    field = Field.plane_wave(Grid.square(8, 1e-6), (WAVELENGTH,))
    with pytest.raises(InputError, match="distance_m"):
        propagate_asm(field, distance)


def test_wrong_field_type_dtype_or_shape_raises():
    grid = Grid.square(8, 1e-6)
    with pytest.raises(InputError, match="field must be a simulator.field.Field"):
        propagate_asm(torch.ones((1, 8, 8), dtype=torch.complex64), 1e-6)
    with pytest.raises(InputError, match="Field data"):
        Field(torch.ones((1, 8, 8)), grid, (WAVELENGTH,))  # real data is not a field
    with pytest.raises(InputError, match="spatial shape"):
        Field(torch.ones((1, 8, 9), dtype=torch.complex64), grid, (WAVELENGTH,))
    with pytest.raises(InputError, match="pupil spatial shape"):
        psf_from_pupil(torch.ones((8, 9)), grid, WAVELENGTH, 1e-3, grid)
    with pytest.raises(InputError, match="pupil must be"):
        psf_from_pupil(torch.ones((8, 8), dtype=torch.int64), grid, WAVELENGTH, 1e-3, grid)
    with pytest.raises(InputError, match="wavelength_m"):
        apply_thin_lens(Field.plane_wave(grid, (WAVELENGTH,)), 1e-3).replace(wavelengths_m=(-1.0,))
    system = FourF(grid, WAVELENGTH, 1e-3, 1e-3)
    with pytest.raises(InputError, match="FourF's grid"):
        system(Field.plane_wave(Grid.square(8, 2e-6), (WAVELENGTH,)))
    with pytest.raises(InputError, match="radius_m"):
        circular_pupil(grid, -1e-6)
